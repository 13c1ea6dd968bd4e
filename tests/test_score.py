"""score: per-example log p(x) by the evaluator's own estimator (importance-sampled for VAEs with the
same chunks and seeds as ``evaluate``, exact for flows and mixtures), bits/dim by the model's own rule,
the CSV form, and ``vaekit score`` end to end."""

import json
import math

import numpy as np
import pytest
import torch
from helpers import tiny_vae_and_data

from vaekit.cli import main
from vaekit.config import apply_overrides, build_config, get_preset
from vaekit.errors import VaekitError
from vaekit.evaluate import evaluate
from vaekit.inference import importance_sampled_log_prob
from vaekit.models import build_model
from vaekit.models.mixture import GaussianMixtureModel
from vaekit.score import SCORE_COLUMNS, format_summary, score, scores_csv
from vaekit.seeding import EVAL_CHUNK, derive_seed


@pytest.fixture(scope="module")
def vae_and_data():
    return tiny_vae_and_data(10)


def test_vae_scores_are_evaluates_per_example_log_px(vae_and_data):
    """Chunk c (one example each here) draws its K samples after derive_seed(seed, EVAL_CHUNK, c), as
    evaluate does; the mean of the scores is evaluate's -nll for the same data, K and seed."""
    model, x = vae_and_data
    s = score(model, x, k=9, seed=5, progress=False)
    assert s.shape == (10, 2) and s.dtype == torch.float64
    with torch.no_grad():
        expect = []
        for c in range(x.shape[0]):
            torch.manual_seed(derive_seed(5, EVAL_CHUNK, c))
            expect.append(importance_sampled_log_prob(model, x[c : c + 1], k=9, batch_size=1)["log_px"])
    torch.testing.assert_close(s[:, 0], torch.cat(expect).double())
    assert -s[:, 0].mean().item() == pytest.approx(evaluate(model, x, k=9, progress=False, seed=5)["nll"], rel=1e-12)
    assert not torch.equal(s[:, 0], score(model, x, k=9, seed=6, progress=False)[:, 0])


def test_vae_bits_per_dim_column_is_the_models_own(vae_and_data):
    model, x = vae_and_data
    s = score(model, x, k=4, progress=False)
    # binary pixels: a probability mass, no discretisation term
    torch.testing.assert_close(s[:, 1], -s[:, 0] / (16 * math.log(2)))
    assert SCORE_COLUMNS == ("log_px", "bits_per_dim")


def test_caller_random_state_is_left_alone(vae_and_data):
    model, x = vae_and_data
    torch.manual_seed(3)
    state = torch.random.get_rng_state()
    score(model, x, k=3, progress=False)
    assert torch.equal(state, torch.random.get_rng_state())


def test_flow_scores_are_its_exact_log_prob():
    """A flow on continuous data: log p(x) is exact and deterministic; bits/dim are undefined (NaN)."""
    cfg = get_preset("nice-mnist")
    apply_overrides(cfg, {"flow_hidden": 8, "flow_blocks": 1, "flow_steps": 2, "flow_dequantize": "none"})
    cfg.data.levels = None
    model = build_model(cfg, (1, 4, 4)).eval()
    x = torch.rand(70, 1, 4, 4)  # more than SPLIT_MIN_CHUNKS examples: several per chunk
    s = score(model, x, k=1, progress=False)
    with torch.no_grad():
        torch.testing.assert_close(s[:, 0], model.log_prob(x).double())
    assert s[:, 1].isnan().all()


def test_dequantised_flow_scores_use_the_chunk_seeds():
    """With 8-bit data the flow's log_prob draws its dequantisation noise: chunk c after
    derive_seed(seed, EVAL_CHUNK, c), and bits/dim carry the 8-bit term (the model's own rule)."""
    cfg = get_preset("nice-mnist")
    apply_overrides(cfg, {"flow_hidden": 8, "flow_blocks": 1, "flow_steps": 2})
    model = build_model(cfg, (1, 4, 4)).eval()
    x = torch.randint(0, 256, (5, 1, 4, 4)).float() / 255
    s = score(model, x, seed=2, progress=False)
    with torch.no_grad():
        expect = []
        for c in range(5):
            torch.manual_seed(derive_seed(2, EVAL_CHUNK, c))
            expect.append(model.log_prob(x[c : c + 1]))
    torch.testing.assert_close(s[:, 0], torch.cat(expect).double())
    torch.testing.assert_close(s[:, 1], model.bits_per_dim(-s[:, 0]))


def test_mixture_scores_are_its_exact_log_prob():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(40, 4, generator=g), torch.randn(40, 4, generator=g) + 4])
    m = GaussianMixtureModel(2, (4,), covariance_type="full", max_iter=20, dtype="float64")
    m.fit(x)
    m.data_levels = None
    s = score(m, x, progress=False)
    torch.testing.assert_close(s[:, 0], m.log_prob(x).double())
    assert s[:, 1].isnan().all()


def test_a_model_without_a_density_is_refused():
    cfg = build_config("dense-digits", overrides={"model.kind": "autoencoder", "hidden": [8], "latent_dim": 2})
    ae = build_model(cfg, (1, 4, 4))
    with pytest.raises(VaekitError, match="no density"):
        score(ae, torch.rand(3, 1, 4, 4), progress=False)


def test_csv_has_a_header_empty_undefined_bits_and_labels():
    s = torch.tensor([[-1.5, 0.25], [-2.0, math.nan]], dtype=torch.float64)
    lines = scores_csv(s, torch.tensor([3, 7])).splitlines()
    assert lines == ["index,log_px,bits_per_dim,label", "0,-1.5,0.25,3", "1,-2.0,,7"]
    assert scores_csv(s).splitlines()[0] == "index,log_px,bits_per_dim"
    assert "bits/dim" not in format_summary(s, "exact", None)
    assert "K=5" in format_summary(s[:1], "importance-sampled", 5)
    assert "(importance-sampled, K=5; bf16 hidden layers)" in format_summary(
        s, "importance-sampled", 5, "bf16 hidden layers"
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    quiet = ["--no-progress", "--set", "tensorboard=false", "--set", "eval_k=0"]
    vae = ["--preset", "dense-digits", "--set", "hidden=[16]", "--set", "latent_dim=2", "--max-steps", "5"]
    gmm = ["--preset", "gmm-digits", "--set", "components=3", "--set", "em_restarts=1", "--set", "em_max_iter=3"]
    for name, argv in (("vae", vae), ("gmm", gmm)):
        assert main(["train", *argv, "--out", str(root / name), *quiet]) == 0
    return root


def test_cli_writes_an_n_by_2_array_whose_mean_is_evaluates_nll(runs, tmp_path, capsys):
    out, csv = tmp_path / "s.npy", tmp_path / "s.csv"
    argv = ["score", str(runs / "vae"), "--k", "5", "--n", "30", "--seed", "3", "--no-progress"]
    assert main([*argv, "-o", str(out), "--csv", str(csv)]) == 0
    assert "30 examples" in capsys.readouterr().out
    s = np.load(out)
    assert s.shape == (30, 2) and s.dtype == np.float64
    ev = tmp_path / "eval.json"
    evaluate_argv = ["evaluate", str(runs / "vae"), "--k", "5", "--n", "30", "--seed", "3", "--no-progress"]
    assert main([*evaluate_argv, "-o", str(ev)]) == 0

    assert -s[:, 0].mean() == pytest.approx(json.loads(ev.read_text())["nll"], rel=1e-12)
    rows = csv.read_text().splitlines()
    assert rows[0] == "index,log_px,bits_per_dim,label" and len(rows) == 31  # the digits have labels
    assert float(rows[1].split(",")[1]) == s[0, 0]


def test_cli_amp_scores_equal_evaluate_amp_and_differ_from_float32_by_rounding(runs, tmp_path):
    """``score --amp`` gives the per-example numbers whose mean ``evaluate --amp`` reports; bf16 nets
    move them by rounding only."""
    argv = ["--k", "5", "--n", "20", "--seed", "3", "--no-progress"]
    for flag in ([], ["--amp"]):
        assert main(["score", str(runs / "vae"), *argv, *flag, "-o", str(tmp_path / f"s{len(flag)}.npy")]) == 0
    ev = tmp_path / "eval.json"
    assert main(["evaluate", str(runs / "vae"), *argv, "--amp", "-o", str(ev)]) == 0
    fp32, bf16 = np.load(tmp_path / "s0.npy"), np.load(tmp_path / "s1.npy")
    assert -bf16[:, 0].mean() == pytest.approx(json.loads(ev.read_text())["nll"], rel=1e-12)
    assert not np.array_equal(fp32[:, 0], bf16[:, 0])  # bf16 really ran
    assert np.allclose(fp32[:, 0], bf16[:, 0], rtol=0.02)


def test_cli_scores_a_mixture_on_the_train_split(runs, tmp_path):
    out = tmp_path / "g.npy"
    assert main(["score", str(runs / "gmm"), "--split", "train", "--n", "7", "-o", str(out), "--no-progress"]) == 0
    assert np.load(out).shape == (7, 2)


def test_cli_refuses_a_non_npy_output(runs, tmp_path, capsys):
    assert main(["score", str(runs / "vae"), "-o", str(tmp_path / "s.csv")]) == 2
    assert capsys.readouterr().err.startswith("vaekit: error: cannot write")
