"""fid: the Fréchet distance against closed forms, its symmetry and growth under a shift; the LeNet
feature classifier for small and MNIST-sized images, its cache (hit on the second call, keyed by
dataset, seed and version); ``vaekit fid`` end to end on the 8x8 digits."""

import json
import os

import numpy as np
import pytest
import torch

from vaekit import fid
from vaekit.cli import main
from vaekit.errors import DataError, VaekitError


def _random_psd(d, rng):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    """Diagonal covariances commute: d^2 = ||mu1 - mu2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expect = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expect, rel=1e-10)


def test_frechet_distance_of_full_covariances_matches_the_symmetric_form():
    """Tr (S1 S2)^{1/2} = Tr (S1^{1/2} S2 S1^{1/2})^{1/2}, the latter by symmetric eigendecompositions."""
    rng = np.random.default_rng(1)
    s1, s2 = _random_psd(5, rng), _random_psd(5, rng)
    w, v = np.linalg.eigh(s1)
    r1 = v @ np.diag(np.sqrt(w)) @ v.T
    tr = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum()
    mu = rng.standard_normal(5)
    expect = mu @ mu + np.trace(s1) + np.trace(s2) - 2 * tr
    assert fid.frechet_distance(mu, s1, np.zeros(5), s2) == pytest.approx(expect, rel=1e-9)


def test_fid_of_a_set_with_itself_is_zero_symmetric_and_a_shift_adds_its_square():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((500, 8)) @ rng.standard_normal((8, 8))
    b = rng.standard_normal((400, 8)) * 1.5 + 0.2
    assert abs(fid.fid_of_features(a, a)) < 1e-8
    assert fid.fid_of_features(a, b) == pytest.approx(fid.fid_of_features(b, a), rel=1e-9)
    delta = np.linspace(-1, 1, 8)
    # a shift moves the mean only: the distance is exactly ||delta||^2
    assert fid.fid_of_features(a, a + delta) == pytest.approx(delta @ delta, rel=1e-8)
    assert fid.fid_of_features(a, a + 2 * delta) > fid.fid_of_features(a, a + delta) > 0


def test_a_complex_square_root_is_an_error_not_a_number():
    with pytest.raises(VaekitError, match="numerically unreliable"):
        fid.frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(VaekitError, match="mismatched"):
        fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 32, 32), (1, 4, 6)])
def test_lenet_reads_small_and_mnist_sized_images(shape):
    net = fid.LeNet(shape, 3)
    x = torch.rand(2, *shape)
    assert net(x).shape == (2, 3) and net.features(x).shape == (2, fid.FEATURES)
    if shape == (1, 28, 28):  # LeNet-5's own sizes: 28 -> 14 -> 10 -> 5
        assert net.hidden[0].in_features == 16 * 5 * 5


def test_lenet_refuses_images_below_4x4():
    with pytest.raises(DataError, match="at least 4x4"):
        fid.LeNet((1, 3, 8), 2)


def _two_classes(path, n=160):
    """A synthetic 28x28 set of 2 classes: a bright square top-left (0) or bottom-right (1), in noise."""
    g = np.random.default_rng(0)
    y = np.arange(n) % 2
    x = g.uniform(0, 0.3, (n, 1, 28, 28)).astype(np.float32)
    for i, c in enumerate(y):
        r = slice(2, 12) if c == 0 else slice(16, 26)
        x[i, 0, r, r] = 0.9
    np.savez(path, x=x, y=y)
    return str(path)


@pytest.fixture
def few_steps(monkeypatch, tmp_path):
    """A short classifier training and a private cache."""
    monkeypatch.setattr(fid, "CLASSIFIER_MIN_STEPS", 15)
    monkeypatch.setenv("VAEKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_classifier_is_cached_and_not_retrained(few_steps, monkeypatch):
    data = _two_classes(few_steps / "two.npz")
    first = fid.classifier_for(data, seed=0)
    assert first.trained and first.path.is_file() and first.path.parent == few_steps / "cache" / "fid"
    assert f"seed0-v{fid.CLASSIFIER_VERSION}" in first.path.name
    assert first.test_accuracy > 0.9  # two well-separated classes
    mtime = os.stat(first.path).st_mtime_ns

    def no_training(*a, **kw):
        raise AssertionError("retrained although the classifier was cached")

    monkeypatch.setattr(fid, "train_classifier", no_training)
    second = fid.classifier_for(data, seed=0)
    assert not second.trained and os.stat(first.path).st_mtime_ns == mtime
    assert second.test_accuracy == first.test_accuracy
    x = torch.rand(5, 1, 28, 28)
    torch.testing.assert_close(second.net.features(x), first.net.features(x))
    with pytest.raises(AssertionError, match="retrained"):  # another seed is another classifier
        fid.classifier_for(data, seed=1)


def test_a_corrupt_cache_file_is_retrained(few_steps):
    data = _two_classes(few_steps / "two.npz")
    path = fid.cache_path(data, 0)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    clf = fid.classifier_for(data, seed=0)
    assert clf.trained and fid.classifier_for(data, seed=0).trained is False


def test_cache_key_names_the_dataset_seed_and_version(few_steps):
    assert fid.cache_path("MNIST", 3).name == f"lenet-mnist-seed3-v{fid.CLASSIFIER_VERSION}.pt"
    assert fid.cache_path("fashion_mnist", 0).name.startswith("lenet-fashion-mnist-seed0")
    assert fid.dataset_key("/some/file.npz").startswith("path-")


def test_a_dataset_without_labels_is_refused(few_steps):
    path = few_steps / "x.npy"
    np.save(path, np.random.default_rng(0).random((20, 1, 8, 8)).astype(np.float32))
    with pytest.raises(DataError, match="labels"):
        fid.classifier_for(str(path))


class _Replay:
    """A stand-in model whose samples are given images, shifted by ``shift``."""

    def __init__(self, x, shift=0.0):
        self.x, self.shift, self.data_shape = x, shift, tuple(x.shape[1:])

    def sample(self, n):
        return self.x[:n] + self.shift


def test_model_fid_is_zero_for_the_reference_itself_and_grows_with_a_shift(few_steps):
    data = _two_classes(few_steps / "two.npz", n=300)
    clf = fid.classifier_for(data, seed=0)
    x = torch.from_numpy(np.load(data)["x"])
    same = fid.model_fid(_Replay(x), clf, x, n=200)
    assert same["n"] == 200 and abs(same["fid"]) < 1e-6
    assert same["classifier_accuracy"] == clf.test_accuracy and same["features"] == fid.FEATURES
    small, large = (fid.model_fid(_Replay(x, s), clf, x, n=200)["fid"] for s in (0.1, 0.4))
    assert large > small > 1e-3
    with pytest.raises(VaekitError, match="more examples per set than the 84 features"):
        fid.model_fid(_Replay(x), clf, x, n=84)
    with pytest.raises(DataError, match="shape"):
        fid.model_fid(_Replay(torch.rand(100, 1, 8, 8)), clf, x, n=100)


def test_fid_cli_on_the_digits(few_steps, capsys, monkeypatch):
    monkeypatch.setattr(fid, "CLASSIFIER_MIN_STEPS", 100)
    tmp_path = few_steps
    run = tmp_path / "run"
    small = ["--set", "hidden=[16]", "--set", "latent_dim=2", "--set", "tensorboard=false", "--set", "eval_k=0"]
    argv = ["train", "--preset", "dense-digits", "--max-steps", "20", "--out", str(run), "--no-progress", *small]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["fid", str(run), "--n", "100", "-o", str(tmp_path / "fid.json")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("FID ") and "test accuracy" in out and "training the FID classifier of digits" in err
    res = json.loads((tmp_path / "fid.json").read_text())
    assert res["fid"] > 0 and res["n"] == 100 and res["dataset"] == "digits"
    assert res["classifier_accuracy"] > 0.3  # ten classes of 8x8 digits after 100 steps; chance is 0.1
    assert main(["fid", str(run), "--n", "100", "--seed", "1"]) == 0  # the cache is hit: no training line
    out, err = capsys.readouterr()
    assert "training the FID classifier" not in err and out.startswith("FID ")
    assert main(["fid", str(run), "--n", "50"]) == 2
    assert "more examples per set than the 84 features" in capsys.readouterr().err
