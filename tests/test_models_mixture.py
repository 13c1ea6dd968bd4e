"""Gaussian mixture by EM: monotone EM, agreement with scikit-learn, chunking, the contract."""

import math
import warnings

import numpy as np
import pytest
import torch

from vaekit.config import build_config
from vaekit.errors import ConfigError, DataError, VaekitError
from vaekit.models import build_model
from vaekit.models.mixture import GaussianMixtureModel, cluster

sk_mixture = pytest.importorskip("sklearn.mixture")
COVS = ["full", "diag", "spherical"]


def blobs(n=150, d=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(k, d))
    x = np.concatenate([rng.normal(size=(n, d)) * (0.5 + i) + centers[i] for i in range(k)])
    return x[rng.permutation(len(x))]


def sklearn_init(x, cov, k=3):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = sk_mixture.GaussianMixture(k, covariance_type=cov, max_iter=1, random_state=0).fit(x)
    return g


@pytest.mark.parametrize("cov", COVS)
def test_em_never_decreases_log_likelihood(cov):
    x = torch.tensor(blobs(seed=1))
    m = GaussianMixtureModel(3, (4,), covariance_type=cov, tol=0, max_iter=40, dtype="float64", init="random")
    hist = np.array(m.fit(x))
    assert len(hist) == 40
    assert (np.diff(hist) >= -1e-9 * np.abs(hist[1:])).all()
    # the fitted model's log-likelihood is at least the last E-step's (one more M-step)
    assert m.score(x) >= hist[-1] - 1e-9


@pytest.mark.parametrize("cov", COVS)
def test_em_agrees_with_sklearn_from_same_initialisation(cov):
    x = blobs()
    g0 = sklearn_init(x, cov)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = sk_mixture.GaussianMixture(
            3,
            covariance_type=cov,
            max_iter=8,
            tol=0,
            weights_init=g0.weights_,
            means_init=g0.means_,
            precisions_init=g0.precisions_,
        ).fit(x)
    m = GaussianMixtureModel(3, (4,), covariance_type=cov, tol=0, max_iter=8, dtype="float64")
    hist = m.fit(torch.tensor(x), init_params=dict(weights=g0.weights_, means=g0.means_, covariances=g0.covariances_))
    np.testing.assert_allclose(hist, sk.lower_bounds_, rtol=0, atol=1e-9)
    np.testing.assert_allclose(m.weights.numpy(), sk.weights_, atol=1e-10)
    np.testing.assert_allclose(m.means.numpy(), sk.means_, atol=1e-9)
    np.testing.assert_allclose(m.covariances.numpy(), sk.covariances_, atol=1e-9)
    np.testing.assert_allclose(m.precisions_cholesky.numpy(), sk.precisions_cholesky_, atol=1e-8)


@pytest.mark.parametrize("cov", COVS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_log_prob_equals_sklearn_score_samples_for_same_parameters(cov, dtype):
    x = blobs(seed=2)
    m = GaussianMixtureModel(3, (4,), covariance_type=cov, max_iter=20, dtype=dtype)
    m.fit(torch.tensor(x))
    sk = sk_mixture.GaussianMixture(3, covariance_type=cov)
    sk.weights_ = m.weights.double().numpy()
    sk.means_ = m.means.double().numpy()
    sk.covariances_ = m.covariances.double().numpy()
    from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

    sk.precisions_cholesky_ = _compute_precision_cholesky(sk.covariances_, cov)
    ours = m.log_prob(torch.tensor(x)).double().numpy()
    tol = 1e-5 if dtype == "float64" else 1e-5 * np.abs(ours).max()
    np.testing.assert_allclose(ours, sk.score_samples(x), rtol=0, atol=tol)
    np.testing.assert_allclose(
        m.responsibilities(torch.tensor(x)).double().numpy(),
        sk.predict_proba(x),
        atol=1e-5 if dtype == "float64" else 1e-3,
    )
    if dtype == "float64":
        assert m.bic(torch.tensor(x)) == pytest.approx(sk.bic(x), rel=1e-10)
        assert m.aic(torch.tensor(x)) == pytest.approx(sk.aic(x), rel=1e-10)


def test_responsibilities_sum_to_one_and_cluster():
    x = torch.tensor(blobs(), dtype=torch.float32)
    m = GaussianMixtureModel(3, (4,), covariance_type="diag", n_init=2)
    m.fit(x)
    soft, hard = cluster(m, x)
    assert soft.shape == (450, 3) and hard.shape == (450,)
    torch.testing.assert_close(soft.sum(-1), torch.ones(450))
    assert torch.equal(hard, soft.argmax(-1))
    assert torch.equal(hard, m.predict(x))
    # three well separated blobs: the clustering is a relabelling of nearly all of them
    assert len(torch.unique(hard)) == 3


@pytest.mark.parametrize("cov", COVS)
def test_chunked_e_step_matches_one_pass(cov):
    x = torch.tensor(blobs(n=40))
    kw = dict(covariance_type=cov, tol=0, max_iter=5, dtype="float64", seed=3)
    h1 = GaussianMixtureModel(3, (4,), **kw).fit(x)
    m2 = GaussianMixtureModel(3, (4,), chunk_size=7, **kw)
    h2 = m2.fit(x)
    np.testing.assert_allclose(h1, h2, atol=1e-10)
    import vaekit.models.mixture as mm

    old = mm.DEFAULT_CACHE_ELEMENTS
    mm.DEFAULT_CACHE_ELEMENTS = 0  # no feature cache: chunks recomputed every iteration
    try:
        h3 = GaussianMixtureModel(3, (4,), chunk_size=11, **kw).fit(x)
    finally:
        mm.DEFAULT_CACHE_ELEMENTS = old
    np.testing.assert_allclose(h1, h3, atol=1e-10)


def test_restarts_keep_the_best():
    x = torch.tensor(blobs(seed=4), dtype=torch.float32)
    one = GaussianMixtureModel(3, (4,), n_init=1, init="kmeans++", seed=5)
    h1 = one.fit(x)
    many = GaussianMixtureModel(3, (4,), n_init=4, init="kmeans++", seed=5)
    h4 = many.fit(x)
    assert h4[-1] >= h1[-1] - 1e-4  # restart 0 is the single run
    assert float(many.lower_bound) == pytest.approx(h4[-1])


def test_state_dict_round_trip_and_images():
    x = torch.rand(60, 1, 3, 3, dtype=torch.float32)
    m = GaussianMixtureModel(2, (1, 3, 3), covariance_type="full", reg_covar=1e-3)
    m.fit(x)
    m2 = GaussianMixtureModel(2, (1, 3, 3), covariance_type="full", reg_covar=1e-3)
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m2.log_prob(x), m.log_prob(x))
    assert bool(m2.fitted)
    loss = m2.loss(x)
    torch.testing.assert_close(loss["loss"], -m.log_prob(x))
    s, k = m2.sample(5, return_labels=True)
    assert s.shape == (5, 1, 3, 3) and k.shape == (5,)


@pytest.mark.parametrize("cov", COVS)
def test_sampling_matches_parameters(cov):
    torch.manual_seed(1)
    m = GaussianMixtureModel(1, (3,), covariance_type=cov, dtype="float64")
    c = {
        "full": torch.tensor([[[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 0.5]]]),
        "diag": torch.tensor([[2.0, 1.0, 0.5]]),
        "spherical": torch.tensor([0.7]),
    }[cov]
    m.set_parameters(torch.ones(1), torch.tensor([[1.0, -1.0, 0.0]]), c)
    s = m.sample(20000).double()
    full = c[0] if cov == "full" else torch.diag(c[0]) if cov == "diag" else 0.7 * torch.eye(3)
    full = full.double()
    torch.testing.assert_close(s.mean(0), torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64), atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(s.T), full, atol=0.07, rtol=0)


def test_bad_input_and_config():
    m = GaussianMixtureModel(2, (4,))
    with pytest.raises(VaekitError, match="not fitted"):
        m.log_prob(torch.zeros(3, 4))
    with pytest.raises(DataError, match="shape"):
        m.fit(torch.zeros(10, 5))
    with pytest.raises(DataError, match="NaN"):
        m.fit(torch.full((10, 4), math.nan))
    with pytest.raises(DataError, match="components"):
        GaussianMixtureModel(5, (4,)).fit(torch.randn(3, 4))
    with pytest.raises(ConfigError, match="unknown model.covariance 'tied'; known: full, diag, spherical"):
        build_model(build_config(overrides={"kind": "mixture", "covariance": "tied"}), (4,))
    with pytest.raises(ConfigError, match="unknown model.em_init 'kmean' \\(did you mean 'kmeans'\\?\\)"):
        build_model(build_config(overrides={"kind": "mixture", "em_init": "kmean"}), (4,))


def test_registry_builds_from_preset():
    cfg = build_config("gmm-digits", overrides=["components=2", "em_max_iter=3"])
    m = build_model(cfg, (1, 8, 8))
    assert isinstance(m, GaussianMixtureModel) and m.K == 2 and m.log_prob_kind == "exact"
    hist = m.fit(torch.rand(30, 1, 8, 8))
    assert 1 <= len(hist) <= 3


@pytest.fixture
def cli():
    from vaekit.cli import main

    return main


def test_cli_train_mixture_then_cluster(cli, tmp_path, capsys):
    run = tmp_path / "gmm"
    assert (
        cli(
            [
                "train",
                "--model",
                "mixture",
                "--data",
                "digits",
                "--set",
                "binarize=none",
                "--set",
                "components=3",
                "--set",
                "covariance=diag",
                "--set",
                "em_max_iter=5",
                "--set",
                "tensorboard=false",
                "--out",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    assert cli(["cluster", str(run), "-o", str(tmp_path / "labels.npy")]) == 0
    hard = np.load(tmp_path / "labels.npy")
    soft = np.load(tmp_path / "labels.soft.npy")
    assert soft.shape == (hard.shape[0], 3)
    np.testing.assert_allclose(soft.sum(1), 1, atol=1e-5)
    np.testing.assert_array_equal(soft.argmax(1), hard)
    assert "adjusted Rand" in capsys.readouterr().out


def test_sampling_has_the_uniform_signature_and_refuses_a_temperature_in_one_line():
    m = GaussianMixtureModel(2, (3,), covariance_type="diag", dtype="float64")
    m.set_parameters(torch.ones(2) / 2, torch.tensor([[1.0, -1.0, 0.0], [0.0, 2.0, 1.0]]), torch.ones(2, 3))
    torch.manual_seed(0)
    s, k = m.sample(4, mean=True, temperature=1.0, return_labels=True)
    torch.testing.assert_close(s, m.means[k].view(4, 3))
    with pytest.raises(VaekitError) as e:
        m.sample(4, temperature=0.5)
    assert "\n" not in str(e.value) and "temperature=0.5 (--temperature)" in str(e.value)


def test_cluster_features_recovers_well_separated_clusters_in_any_units():
    """Three Gaussian clusters 6 sd apart, one feature in units a thousand times larger and another of
    pure noise: EM on the standardised features recovers the clusters (ARI, NMI near 1)."""
    from vaekit.models.mixture import agreement, cluster_features

    g = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 60)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    x = centres[y] + g.normal(size=(180, 2))
    x = np.concatenate([x * [1.0, 1000.0], g.normal(size=(180, 1))], 1)  # feature 2 in other units; noise
    soft, hard, model = cluster_features(x, 3, seed=0)
    assert soft.shape == (180, 3) and torch.allclose(soft.sum(1), torch.ones(180, dtype=soft.dtype))
    score = agreement(y, hard.numpy())
    assert score["ari"] > 0.9 and score["nmi"] > 0.9
    means = model.means.numpy()  # in standardised units: every feature of the means within a few sd
    assert np.abs(means).max() < 3
    renamed = (y + 1) % 3  # the scores do not depend on the clusters' names
    assert agreement(y, renamed) == {"ari": 1.0, "nmi": 1.0}
    with pytest.raises(VaekitError, match="between 1 and the 180 examples"):
        cluster_features(x, 181)


def test_a_dequantised_mixture_clusters_at_bin_centres_and_samples_levels():
    """With ``dequantize`` the mixture lives on y = (255 x + u) / 256: clustering reads x at its bin's
    centre (x = k/255 is a bin's edge), draws come back as levels k/255 and means on that scale."""
    g = torch.Generator().manual_seed(3)
    x = torch.round(torch.rand(60, 1, 2, 2, generator=g, dtype=torch.float64) * 255) / 255
    m = GaussianMixtureModel(2, (1, 2, 2), covariance_type="diag", max_iter=10, dtype="float64", dequantize=True)
    m.fit(x)
    centres = (x.reshape(60, 4) * 255 + 0.5) / 256
    torch.testing.assert_close(m.predict(x), m.component_log_prob(centres).argmax(-1))
    torch.testing.assert_close(m.responsibilities(x), torch.softmax(m.component_log_prob(centres), -1))
    draws, labels = m.sample(40, return_labels=True)
    assert torch.equal(torch.round(draws * 255) / 255, draws) and 0 <= draws.min() and draws.max() <= 1
    means, labels = m.sample(40, mean=True, return_labels=True)
    torch.testing.assert_close(means.reshape(40, 4), ((m.means[labels] * 256 - 0.5) / 255).clamp(0, 1))
