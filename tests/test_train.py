"""The training loop: learns, resumes exactly, survives bad steps and bad checkpoints."""

import json

import pytest
import torch
from sklearn.datasets import load_digits

import vaekit
from vaekit import checkpoint as ckpt
from vaekit.config import build_config
from vaekit.errors import CheckpointError, VaekitError
from vaekit.train import TrainingDiverged, epoch_permutation, learning_rate, train


def digits():
    x = torch.tensor(load_digits().data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    return x[:1500], x[1500:]


def binarize(x, g):
    return torch.bernoulli(x, generator=g)


def cfg_for(**over):
    sets = {
        "epochs": 3,
        "batch_size": 50,
        "log_every": 5,
        "ckpt_every": 10,
        "eval_k": 20,
        "eval_n": 50,
        "tensorboard": False,
    }
    sets.update(over)
    return build_config("dense-digits", overrides=sets)


def read_metrics(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def test_short_training_lowers_the_loss(tmp_path):
    tr, te = digits()
    summary = train(cfg_for(epochs=4), tmp_path / "r", tr, te, transform=binarize, progress=False)
    recs = [r for r in read_metrics(tmp_path / "r") if "loss" in r]
    assert summary["step"] == 4 * 30
    assert recs[-1]["loss"] < recs[0]["loss"] - 5
    tests = [r for r in read_metrics(tmp_path / "r") if "test_nll" in r]
    assert len(tests) == 4 and tests[-1]["test_nll"] < tests[0]["test_nll"]
    assert tests[-1]["test_nll"] <= -tests[-1]["test_elbo"] + 1.0  # IS bound above the ELBO (noisy)


def state_of(run):
    return ckpt.latest_checkpoint(run)[1]


def test_resume_after_kill_continues_the_same_run(tmp_path):
    tr, te = digits()
    cfg = cfg_for(ema=0.9)
    train(cfg, tmp_path / "full", tr, te, transform=binarize, progress=False)
    # "killed" after step 25: the newest checkpoint is step 20, steps 21-25 are lost
    train(cfg, tmp_path / "cut", tr, te, transform=binarize, progress=False, max_steps=25)
    newest = ckpt.list_checkpoints(tmp_path / "cut")[0]
    assert newest.name == "step-00000025.pt"
    newest.unlink()
    train(cfg, tmp_path / "cut", tr, te, transform=binarize, progress=False, resume=True)
    a, b = state_of(tmp_path / "full"), state_of(tmp_path / "cut")
    assert a["step"] == b["step"] == 90
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=1e-6)
    for key in a["ema"]:
        torch.testing.assert_close(a["ema"][key], b["ema"][key], rtol=0, atol=1e-6)
    steps = [r["step"] for r in read_metrics(tmp_path / "cut") if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 90  # no duplicated or missing log steps
    assert steps == [r["step"] for r in read_metrics(tmp_path / "full") if "loss" in r]


def test_refuses_to_overwrite_and_to_resume_nothing(tmp_path):
    tr, te = digits()
    train(cfg_for(epochs=1), tmp_path / "r", tr, te, progress=False)
    with pytest.raises(VaekitError, match="already holds a run"):
        train(cfg_for(epochs=1), tmp_path / "r", tr, te, progress=False)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(cfg_for(epochs=1), tmp_path / "empty", tr, te, progress=False, resume=True)


def test_corrupt_newest_checkpoint_falls_back_to_older_one(tmp_path, capsys):
    tr, te = digits()
    train(cfg_for(epochs=1), tmp_path / "r", tr, te, progress=False)
    paths = ckpt.list_checkpoints(tmp_path / "r")
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) // 2])  # truncated
    path, state = ckpt.latest_checkpoint(tmp_path / "r")
    assert path == paths[1]
    assert "corrupt or truncated checkpoint" in capsys.readouterr().err
    with pytest.raises(CheckpointError) as e:
        ckpt.read_checkpoint(paths[0])
    assert str(paths[0]) in str(e.value) and "\n" not in str(e.value)
    for p in paths[1:]:
        p.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        ckpt.latest_checkpoint(tmp_path / "r", warn=False)


def test_checkpoint_round_trip_through_vaekit_load(tmp_path):
    tr, te = digits()
    train(cfg_for(epochs=1), tmp_path / "r", tr, te, progress=False)
    model = vaekit.load(tmp_path / "r")
    state = state_of(tmp_path / "r")
    assert state["config"]["preset"] == "dense-digits"
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state["model"][k])
    assert model.sample(5).shape == (5, 1, 8, 8)


def test_nan_steps_are_skipped_then_the_run_stops_naming_the_term(tmp_path):
    tr, te = digits()
    bad = tr.clone()
    bad[::2] = float("nan")  # every other example NaN: some batches clean, most poisoned
    with pytest.raises(TrainingDiverged, match="rec") as e:
        train(cfg_for(epochs=2, max_bad_steps=5, batch_size=10), tmp_path / "r", bad, te, progress=False)
    assert "\n" not in str(e.value)


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "f.bin"
    ckpt.atomic_write(target, lambda f: f.write(b"old"))

    def failing(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        ckpt.atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temp file left behind


def test_schedule_and_permutation_are_pure_functions():
    assert learning_rate(0, 100, 1.0, "constant", 10) == pytest.approx(0.1)
    assert learning_rate(10, 100, 1.0, "cosine", 10) == pytest.approx(1.0)
    assert learning_rate(100, 100, 1.0, "cosine", 10) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(55, 100, 1.0, "linear", 10) == pytest.approx(0.5)
    p1, p2 = epoch_permutation(50, 0, 3, "cpu"), epoch_permutation(50, 0, 3, "cpu")
    assert torch.equal(p1, p2) and not torch.equal(p1, epoch_permutation(50, 0, 4, "cpu"))
    assert sorted(p1.tolist()) == list(range(50))


def test_channels_last_training_matches_the_default_layout(tmp_path):
    """NHWC is a memory layout, not a model change: the same steps give the same weights."""
    tr, te = digits()
    over = dict(encoder="conv", decoder="conv", channels=[8, 16], hidden=[32], eval_k=0)
    train(cfg_for(**over), tmp_path / "a", tr, te, transform=binarize, progress=False, max_steps=5)
    train(
        cfg_for(**over, channels_last=True, amp=True),
        tmp_path / "b",
        tr,
        te,
        transform=binarize,
        progress=False,
        max_steps=5,
    )
    a, b = state_of(tmp_path / "a")["model"], state_of(tmp_path / "b")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k].contiguous(), rtol=1e-4, atol=1e-5)
