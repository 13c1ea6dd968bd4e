"""evaluate: per-chunk seeds by seeding.derive_seed, a pure function of (model, x, k, seed); bits per
dimension by the model's own bits_per_dim; exact models through log_prob."""

import math

import pytest
import torch
from helpers import digits, tiny_vae_and_data

import vaekit
from vaekit.config import build_config
from vaekit.evaluate import SPLIT_MIN_CHUNKS, evaluate, format_table, per_example_log_prob
from vaekit.inference import importance_sampled_log_prob
from vaekit.models import build_model
from vaekit.models.mixture import GaussianMixtureModel
from vaekit.objectives import elbo_terms
from vaekit.seeding import EVAL_CHUNK, derive_seed


@pytest.fixture(scope="module")
def vae_and_data():
    return tiny_vae_and_data(10)


def test_chunk_c_draws_after_derive_seed(vae_and_data):
    """10 examples < SPLIT_MIN_CHUNKS: one example per chunk, chunk c seeded by derive_seed(seed, EVAL_CHUNK, c)."""
    model, x = vae_and_data
    assert x.shape[0] < SPLIT_MIN_CHUNKS
    res = evaluate(model, x, k=9, progress=False, seed=5)
    log_px, elbo = [], []
    with torch.no_grad():
        for c in range(x.shape[0]):
            torch.manual_seed(derive_seed(5, EVAL_CHUNK, c))
            log_px.append(importance_sampled_log_prob(model, x[c : c + 1], k=9, batch_size=1)["log_px"])
            elbo.append(elbo_terms(model, x[c : c + 1], 1)["elbo"])
    assert res["nll"] == pytest.approx(-torch.cat(log_px).double().mean().item(), rel=1e-6)
    assert res["elbo"] == pytest.approx(torch.cat(elbo).double().mean().item(), rel=1e-6)
    assert res["k"] == 9 and res["n"] == 10 and res["log_prob_kind"] == "importance-sampled"


def test_a_pure_function_of_model_data_k_and_seed(vae_and_data):
    model, x = vae_and_data
    torch.manual_seed(1)
    state = torch.random.get_rng_state()
    a = evaluate(model, x, k=5, progress=False, seed=2)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's random state is left alone
    torch.manual_seed(99)
    b = evaluate(model, x, k=5, progress=False, seed=2)
    c = evaluate(model, x, k=5, progress=False, seed=2, batch_size=3)  # the chunking is capped, not the caller's
    for key in ("nll", "elbo", "rec", "kl", "ess_mean", "active_units", "bpd"):
        assert a[key] == b[key] == c[key]
    assert evaluate(model, x, k=5, progress=False, seed=3)["nll"] != a["nll"]


def test_bpd_is_the_models_own(vae_and_data):
    model, x = vae_and_data
    res = evaluate(model, x, k=3, progress=False)
    assert res["bpd"] == pytest.approx(model.bits_per_dim(res["nll"]))
    assert res["bpd"] == pytest.approx(res["nll"] / (16 * math.log(2)))  # binary pixels: no discretisation term
    table = format_table(res)
    assert "nll" in table and "bpd" in table and "active_units" in table and f"/ {model.latent_dim}" in table


def test_exact_models_report_log_prob():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 4, generator=g, dtype=torch.float64)
    m = GaussianMixtureModel(2, (4,), covariance_type="diag", max_iter=5, dtype="float64")
    m.fit(x)
    res = evaluate(m, x, progress=False)
    assert res["log_prob_kind"] == "exact" and res["k"] is None and res["elbo"] is None
    assert res["nll"] == pytest.approx(-m.log_prob(x).double().mean().item(), rel=1e-9)
    assert res["bpd"] == pytest.approx(m.bits_per_dim(res["nll"]))
    assert evaluate(m, x, progress=False, amp=True)["precision"] == "float64"  # no nets: nothing ran in bf16
    m32 = GaussianMixtureModel(2, (4,), covariance_type="diag", max_iter=5)
    m32.fit(x.float())
    assert evaluate(m32, x.float(), progress=False, amp=True)["precision"] == "float32"


def _fitted_mixture(x, levels, cov="full"):
    m = GaussianMixtureModel(2, tuple(x.shape[1:]), covariance_type=cov, max_iter=20, dtype="float64")
    m.fit(x)
    m.data_levels = levels
    return m


@pytest.mark.parametrize("cov", ["full", "diag", "spherical"])
def test_a_mixture_on_continuous_data_has_no_bits_per_dim_and_reports_sklearns_bic(cov):
    """Bits/dim of a density on continuous values mean nothing (null); BIC = -2 log L + p log N is
    scikit-learn's for the same fitted parameters."""
    sk_mixture = pytest.importorskip("sklearn.mixture")
    from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

    g = torch.Generator().manual_seed(4)
    x = torch.cat([torch.randn(60, 3, generator=g, dtype=torch.float64) * 0.1 + c for c in (0.2, 0.7)])
    m = _fitted_mixture(x, None, cov)
    res = evaluate(m, x, progress=False)
    assert res["nll"] < 0  # a density above 1: "bits" would be negative
    assert res["bpd"] is None and "bpd" not in format_table(res)
    sk = sk_mixture.GaussianMixture(2, covariance_type=cov)
    sk.weights_, sk.means_, sk.covariances_ = m.weights.numpy(), m.means.numpy(), m.covariances.numpy()
    sk.precisions_cholesky_ = _compute_precision_cholesky(sk.covariances_, cov)
    assert res["bic"] == pytest.approx(sk.bic(x.numpy()), rel=1e-9)
    assert res["bic"] == pytest.approx(m.bic(x), rel=1e-9)
    assert "bic" in format_table(res)


def test_a_mixture_of_dequantised_8bit_data_bounds_the_probability_of_the_levels():
    """With ``dequantize`` a diagonal mixture's -log p(y) + D log 256 at y = (255 x + u) / 256 is, in
    expectation over u, at least -log P(x), the exact probability of the levels' bins (a product of
    Gaussian CDF differences per component); bpd = nll / (D ln 2). Undequantised: no bits/dim."""
    g = torch.Generator().manual_seed(5)
    x = torch.round(torch.rand(80, 1, 2, 2, generator=g, dtype=torch.float64) * 255) / 255
    m = GaussianMixtureModel(2, (1, 2, 2), covariance_type="diag", max_iter=20, dtype="float64", dequantize=True)
    history = m.fit(x)
    assert not m.density
    res = evaluate(m, x, progress=False)
    assert res["bpd"] == pytest.approx(res["nll"] / (4 * math.log(2)))
    # EM's history is on log_prob's scale (log p(y) - D log 256), not on that of the density of y
    assert abs(history[-1] + res["nll"]) < 1.0 and float(m.lower_bound) == history[-1]
    k = torch.round(x.reshape(80, 4) * 255)
    normal = torch.distributions.Normal(m.means[:, None], m.covariances.sqrt()[:, None])  # [K, 1, D]
    bins = normal.cdf((k + 1) / 256) - normal.cdf(k / 256)  # [K, N, D]
    exact = -torch.logsumexp(bins.log().sum(-1) + m.weights.log()[:, None], 0)  # -log P(x) [N]
    torch.manual_seed(0)
    draws = torch.stack([-m.log_prob(x) for _ in range(400)])  # [400, N]
    gap = draws.mean(0) - exact
    assert (gap > -4 * draws.std(0) / 20).all()  # a bound, up to the Monte-Carlo error
    assert gap.mean() < 0.05  # and a tight one: the components are far wider than a bin
    m.dequantize = False  # the density at the levels: nats of a density, no bits
    res = evaluate(m, x, progress=False)
    assert m.density and res["bpd"] is None


def test_cli_evaluate_of_a_mixture_on_tabular_data(tmp_path, capsys):
    """`vaekit train` records that float data are continuous; `evaluate` then prints no bits/dim
    and the BIC the README promises."""
    import json

    import numpy as np

    from vaekit.cli import main

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tab.npz", x=rng.beta(2.0, 5.0, size=(90, 3)).astype(np.float32))
    run = tmp_path / "gmm"
    argv = ["train", "--model", "mixture", "--data", str(tmp_path / "tab.npz"), "--no-progress", "--out", str(run)]
    sets = [a for s in ("components=2", "covariance=diag", "em_max_iter=5", "tensorboard=false") for a in ("--set", s)]
    assert main(argv + sets) == 0
    out = tmp_path / "e.json"
    assert main(["evaluate", str(run), "--no-progress", "-o", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["bpd"] is None and isinstance(res["bic"], float)
    printed = capsys.readouterr().out
    assert "bic" in printed and "bpd" not in printed
    # levels the user declares (8-bit images stored as floats) are recorded instead, and the mixture
    # models their dequantisation: its nats bound the levels' probability (bpd = nll / (D ln 2)) ...
    unscaled = ["--set", "levels=256", "--set", "standardize=false"]
    assert main(argv[:-1] + [str(tmp_path / "g8"), *unscaled] + sets) == 2  # the floats are no levels k/255
    assert "not 8-bit levels" in capsys.readouterr().err and not (tmp_path / "g8").exists()
    np.savez(tmp_path / "tab.npz", x=np.round(rng.beta(2.0, 5.0, size=(90, 3)) * 255).astype(np.float32) / 255)
    assert main(argv[:-1] + [str(tmp_path / "g8"), *unscaled] + sets) == 0
    assert vaekit.load(tmp_path / "g8").dequantize
    assert main(["evaluate", str(tmp_path / "g8"), "--no-progress", "-o", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["bpd"] == pytest.approx(res["nll"] / (3 * math.log(2)))
    # ... unless the vectors are standardised (auto), which leaves no levels to dequantise or count
    assert main(argv[:-1] + [str(tmp_path / "gs"), "--set", "levels=256"] + sets) == 0
    assert not vaekit.load(tmp_path / "gs").dequantize
    assert main(["evaluate", str(tmp_path / "gs"), "--no-progress", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["bpd"] is None


def test_active_units_are_counted_per_stochastic_layer():
    """Burda et al. 2015, Sec. 5.2: a unit is active when Var_x(E_q[z_u|x]) > 0.01, per layer."""
    torch.manual_seed(0)
    cfg = build_config("base", overrides={"hidden": [16], "latent_dim": 5, "stochastic_layers": [3, 2]})
    model = build_model(cfg, (1, 6, 6))
    x = torch.rand(40, 1, 6, 6)
    with torch.no_grad():  # z_1's first unit and z_2's first unit follow x; the others are constant
        model.encoder.body.net[-1].weight[:3].zero_()
        model.encoder.body.net[-1].weight[0].fill_(1.0)
        model.encoder.layers[0].body.net[-1].weight[:2].zero_()
        model.encoder.layers[0].body.net[-1].weight[0].fill_(5.0)
    res = evaluate(model, x, k=4, progress=False)
    means = model.encode(x)[0]
    assert means[:, 0].var() > 0.01 and means[:, 3].var() > 0.01
    assert res["active_units_per_layer"] == [1, 1] and res["active_units"] == 2
    assert "(per layer: 1, 1)" in format_table(res)
    one = evaluate(
        build_model(build_config("base", overrides={"hidden": [16], "latent_dim": 4}), (1, 6, 6)),
        x,
        k=4,
        progress=False,
    )
    assert one["active_units_per_layer"] == [one["active_units"]] and "per layer" not in format_table(one)


def trained_conv_vae_on_digits(steps: int = 200):
    """A small conv VAE (channels 8, 16; 4 latents) after ``steps`` Adam steps on 512 binarised 8x8
    digits, and 88 held-out digits: trained far from its initial NLL, so its decoder is not trivial."""
    x = digits(binary=True, n=600)
    train_x, test_x = x[:512], x[512:]
    torch.manual_seed(0)
    model = build_model(build_config("conv-mnist", overrides={"channels": [8, 16], "latent_dim": 4}), (1, 8, 8))
    untrained = evaluate(model, test_x, k=20, progress=False)["nll"]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for s in range(steps):
        i = (s * 64) % 512
        loss = model.loss(train_x[i : i + 64])["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), test_x, untrained


def test_bf16_bodies_move_the_is_nll_of_a_trained_conv_vae_by_less_than_a_hundredth_of_a_nat():
    """With ``amp`` the conv bodies compute in bf16 but the log-weights and their logsumexp stay
    float32/float64: on the same seed the K-sample estimate moves by the bodies' rounding alone,
    under 0.01 nats on the mean NLL, each example's log p(x) by well under 0.1 nats, and it does move
    (bf16 really ran)."""
    model, x, untrained = trained_conv_vae_on_digits()
    fp32 = per_example_log_prob(model, x, k=100, progress=False, seed=3)
    bf16 = per_example_log_prob(model, x, k=100, progress=False, seed=3, amp=True)
    assert -fp32.mean().item() < untrained - 10  # the decoder learned the digits
    delta = bf16 - fp32
    assert abs(delta.mean().item()) < 0.01, delta.mean().item()
    assert delta.abs().max().item() < 0.1
    assert (delta != 0).any()
    a = evaluate(model, x[:8], k=20, progress=False, seed=3)
    b = evaluate(model, x[:8], k=20, progress=False, seed=3, amp=True)
    assert a["amp"] is False and b["amp"] is True  # the result says how it was computed
    assert b["nll"] == pytest.approx(a["nll"], abs=0.05) and b["elbo"] == pytest.approx(a["elbo"], abs=0.05)


@pytest.mark.parametrize(
    "preset, over",
    [
        ("conv-mnist", {"channels": [4, 8], "latent_dim": 3}),
        ("dense-mnist", {"hidden": [16], "latent_dim": 3, "posterior_flow": "iaf", "prior": "flow"}),
        (
            "dense-mnist",
            {"hidden": [16], "latent_dim": 3, "posterior_flow": "planar", "prior": "flow", "prior_flow": "maf"},
        ),
        (
            "dense-mnist",
            {"hidden": [16], "latent_dim": 3, "posterior_flow": "realnvp", "prior": "flow", "prior_flow": "planar"},
        ),
    ],
)
def test_evaluate_with_amp_runs_hidden_layers_in_bf16_and_every_output_layer_in_float32(monkeypatch, preset, over):
    """The issue's rule for a bf16 evaluation: the parameters of every density (the likelihood's, the
    posterior's, a posterior or prior flow's shifts and scales) come out of float32 layers; only hidden
    layers are rounded. ``amp='auto'`` is resolved, and recorded as a bool."""
    from vaekit.precision import OutputLayer

    torch.manual_seed(0)
    model = build_model(build_config(preset, overrides=over), (1, 8, 8)).eval()
    x = digits(binary=True, n=6)
    seen = {"hidden": set(), "output": set()}
    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            kind = "output" if isinstance(m, OutputLayer) else "hidden"
            m.register_forward_hook(lambda m, i, out, kind=kind: seen[kind].add(out.dtype))
    monkeypatch.setattr(vaekit.evaluate, "decoder_numel", lambda model, shape: 512)  # its probe runs float32
    res = evaluate(model, x, k=4, progress=False, amp=True)
    assert seen["output"] == {torch.float32} and torch.bfloat16 in seen["hidden"], seen
    assert res["amp"] is True and res["precision"] == "bf16 hidden layers" and math.isfinite(res["nll"])
    assert evaluate(model, x, k=4, progress=False)["precision"] == "float32"
    assert evaluate(model, x, k=4, progress=False, amp="auto")["amp"] in (True, False)
    assert evaluate(model.double(), x.double(), k=4, progress=False, amp=True)["precision"] == "float64"
    with pytest.raises(vaekit.errors.ConfigError, match="amp must be auto, true or false"):
        evaluate(model, x, k=4, progress=False, amp="yes")


def test_a_launched_process_outside_a_process_group_evaluates_every_chunk(vae_and_data, monkeypatch):
    """torchrun sets RANK for every process; without an open group each one computes all the chunks
    (not only its round-robin share) and gets the whole answer."""
    model, x = vae_and_data
    whole = per_example_log_prob(model, x, k=4, progress=False, seed=2)
    monkeypatch.setenv("RANK", "1")
    assert torch.equal(per_example_log_prob(model, x, k=4, progress=False, seed=2), whole)


def test_log_lines_report_examples_done_rate_and_time_left_at_most_once_per_interval(capsys):
    """A background evaluation's log gets one line per interval: examples done (resumed ones
    included), seconds per example computed here (resumed ones excluded) and the time the rest takes
    at that rate; nothing before the first interval, and nothing once everything is done. The rate is
    a median, so a paused process does not inflate it."""
    from vaekit.evaluate import LogLines

    now = [100.0]
    log = LogLines(total=10_000, initial=4_000, desc="evaluate", every=300.0, clock=lambda: now[0])
    now[0] += 299.0
    log.update(100)  # within the first interval: silent
    assert capsys.readouterr().err == ""
    now[0] += 1.0
    log.update(100)  # 200 computed in 300 s: 1.5 s each; 5,800 left: 8,700 s
    assert capsys.readouterr().err == "vaekit: evaluate: 4,200 of 10,000 examples, 1.5 s each, about 2.4 h left\n"
    now[0] += 10.0
    log.update(1)  # 10 s after the last line: silent
    assert capsys.readouterr().err == ""
    now[0] += 1_000.0
    log.update(5_799)  # all done: the caller prints the result, not a progress line
    log.close()
    assert capsys.readouterr().err == ""
    short = LogLines(total=50, initial=0, desc="score", every=0.0, clock=lambda: now[0])
    now[0] += 20.0
    short.update(10)
    assert capsys.readouterr().err == "vaekit: score: 10 of 50 examples, 2 s each, about 80 s left\n"
    now[0] += 40.0
    short.update(10)
    assert capsys.readouterr().err == "vaekit: score: 20 of 50 examples, 3 s each, about 2 min left\n"  # 90 s
    now[0] += 3_000.0
    short.update(10)  # a 2,960 s pause (kill -STOP) lands on one update: the median stays 4 s
    assert capsys.readouterr().err == "vaekit: score: 30 of 50 examples, 4 s each, about 80 s left\n"
    # The median looks back over the last `window` examples: a host that slows down shows.
    slowing = LogLines(total=100, initial=0, desc="evaluate", every=0.0, clock=lambda: now[0], window=20)
    for each in [1.0] * 20 + [3.0] * 20:
        now[0] += each
        slowing.update(1)
    lines = capsys.readouterr().err.splitlines()
    assert lines[29] == "vaekit: evaluate: 30 of 100 examples, 2 s each, about 2 min left"  # 10 at 1 s, 10 at 3 s
    assert lines[-1] == "vaekit: evaluate: 40 of 100 examples, 3 s each, about 3 min left"
    # Chunks larger than the window: the last three updates still outvote a paused one.
    big = LogLines(total=1_000, initial=0, desc="evaluate", every=0.0, clock=lambda: now[0], window=10)
    for pause in (100.0, 100.0, 3_100.0):
        now[0] += pause
        big.update(100)
    assert capsys.readouterr().err.splitlines()[-1] == (
        "vaekit: evaluate: 300 of 1,000 examples, 1 s each, about 12 min left"
    )
    # An empty update keeps its time for the next one; a window under one example is refused.
    empty = LogLines(total=10, initial=0, desc="score", every=0.0, clock=lambda: now[0])
    now[0] += 5.0
    empty.update(0)
    now[0] += 5.0
    empty.update(1)
    assert capsys.readouterr().err == "vaekit: score: 1 of 10 examples, 10 s each, about 2 min left\n"
    with pytest.raises(ValueError):
        LogLines(total=10, initial=0, desc="score", every=0.0, window=0)
