"""The `vaekit` command end to end on the 8x8 digits, and its one-line errors."""

import json

import numpy as np
import pytest
from PIL import Image

from vaekit.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    rc = main(
        [
            "train",
            "--preset",
            "dense-digits",
            "--epochs",
            "2",
            "--out",
            str(out),
            "--no-progress",
            "--set",
            "latent_dim=2",
            "--set",
            "tensorboard=false",
        ]
    )
    assert rc == 0
    return out


def test_train_writes_a_complete_run_folder(run):
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()
    assert list((run / "checkpoints").glob("step-*.pt"))


def test_resume_extends_the_run(run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert main(["train", "--resume", str(copy), "--epochs", "3", "--no-progress"]) == 0
    recs = [json.loads(l) for l in (copy / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in recs if "loss" in r]
    assert steps == sorted(set(steps)) and max(steps) == 3 * 24  # 1498 digits, batch 64: 24 steps/epoch
    assert [r["epoch"] for r in recs if "test_nll" in r] == [1, 2, 3]


def test_evaluate_writes_eval_json_with_the_documented_keys(run, capsys):
    assert main(["evaluate", str(run), "--k", "50", "--no-progress"]) == 0
    res = json.loads((run / "eval.json").read_text())
    for key in ("nll", "nll_stderr", "elbo", "kl", "rec", "bpd", "active_units", "k", "n", "split", "dataset"):
        assert key in res
    assert res["k"] == 50 and res["split"] == "test" and res["dataset"] == "digits"
    assert res["nll"] <= -res["elbo"] + 3 * res["elbo_stderr"]
    assert "nll" in capsys.readouterr().out


def _continuous_npz(path):
    g = np.random.default_rng(0)
    np.savez(path, x=g.beta(2.0, 5.0, size=(80, 6)).astype(np.float32))  # tabular values in (0, 1)
    return str(path)


def test_a_gaussian_likelihood_never_sees_binarised_data(tmp_path, capsys):
    """The default binarisation meets likelihood=gaussian as "none", recorded in the run's config;
    asking for binarisation with it explicitly is a one-line error."""
    import yaml

    from vaekit.checkpoint import load_model

    data = _continuous_npz(tmp_path / "tab.npz")
    small = ["--set", "hidden=[8]", "--set", "latent_dim=2", "--set", "tensorboard=false", "--set", "eval_k=0"]
    argv = ["train", "--data", data, "--epochs", "1", "--no-progress", "--set", "likelihood=gaussian", *small]
    assert main([*argv, "--out", str(tmp_path / "g")]) == 0
    assert yaml.safe_load((tmp_path / "g" / "config.yaml").read_text())["data"]["binarize"] == "none"
    assert load_model(tmp_path / "g")[1].data.binarize == "none"
    capsys.readouterr()
    for mode in ("dynamic", "static"):
        assert main([*argv, "--set", f"binarize={mode}", "--out", str(tmp_path / mode)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"data.binarize={mode}" in err[0] and "Traceback" not in err[0]
        assert not (tmp_path / mode).exists()
    # a Bernoulli likelihood keeps the configured binarisation
    assert main(["train", "--data", data, "--epochs", "1", "--no-progress", *small, "--out", str(tmp_path / "b")]) == 0
    assert load_model(tmp_path / "b")[1].data.binarize == "dynamic"


@pytest.mark.parametrize(
    "cmd, size",
    [
        (["sample", "-n", "16"], None),
        (["reconstruct", "-n", "8"], None),
        (["interpolate", "--steps", "5", "--slerp"], None),
        (["latent-map", "--grid", "6"], (1100, 500)),
    ],
)
def test_picture_commands_write_pngs(run, tmp_path, cmd, size):
    out = tmp_path / "p.png"
    assert main([cmd[0], str(run), *cmd[1:], "-o", str(out)]) == 0
    img = Image.open(out)
    assert img.format == "PNG"
    if size:
        assert img.size == size


def test_encode_writes_means_and_logvars(run, tmp_path):
    out = tmp_path / "f.npy"
    assert main(["encode", str(run), "-o", str(out), "--logvar"]) == 0
    feats = np.load(out)
    assert feats.shape[1] == 4 and np.isfinite(feats).all()
    assert np.load(tmp_path / "f.labels.npy").shape[0] == feats.shape[0]


def test_presets_lists_every_preset(capsys):
    from vaekit.config import PRESETS

    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--preset", "nosuch"], "unknown preset 'nosuch'"),
        (["train", "--preset", "dense-digits", "--set", "bogus=1"], "unknown config key 'bogus'"),
        (["train", "--preset", "dense-digits", "--data", "nosuchdata"], "nosuchdata"),
        (["evaluate", "/nonexistent/run"], "no run folder or checkpoint at /nonexistent/run"),
        (["train", "--resume", "/nonexistent/run"], "nothing to resume"),
        (["sample"], "the following arguments are required: run"),
        (["evaluate", "RUN", "--k", "0"], "--k must be positive"),
    ],
)
def test_user_errors_are_one_line_with_status_2(argv, fragment, capsys, tmp_path, run):
    argv = [str(run) if a == "RUN" else a for a in argv]
    with pytest.raises(SystemExit) if argv[0] == "sample" else _nullcontext():
        rc = main(argv)
        assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vaekit: error: ") and fragment in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_failed_config_leaves_no_run_folder(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["train", "--preset", "dense-digits", "--set", "lr=-1", "--out", str(out)]) == 2
    assert not out.exists()


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_every_registered_command_has_a_parser_and_a_runner():
    from vaekit.cli import COMMANDS, Command, build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == list(COMMANDS)
    for name, command in COMMANDS.items():
        assert isinstance(command, Command) and callable(command.run) and command.help
        assert sub.choices[name].description == command.help


@pytest.mark.parametrize("verb", ["gap", "complete"])
def test_inference_verbs_refuse_a_model_without_latents(verb, tmp_path, capsys):
    import torch

    from vaekit.config import build_config
    from vaekit.train import train

    out = tmp_path / "ae"
    cfg = build_config("dense-digits", overrides={"kind": "autoencoder", "eval_k": 0, "tensorboard": False})
    train(cfg, out, torch.rand(20, 1, 8, 8), progress=False, max_steps=1)
    assert main([verb, str(out), "--data", "digits"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vaekit: error: vaekit {verb} needs a VAE") and "autoencoder" in err
