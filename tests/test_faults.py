"""No run is ever lost: SIGKILL at random points, corrupt checkpoints, a full disk.

The kill test runs ``tests/fault_driver.py``'s ``main`` in a forked child process (forked
rather than started afresh, so that each round does not pay for importing torch again) and
kills it with SIGKILL several times: at random moments (mostly inside a training step) and
in the middle of a checkpoint write (``VAEKIT_TEST_SLOW_CKPT`` stops each write half-way and
says so on stderr). After every kill each checkpoint file on disk must load. Then the run is
resumed to the end by ``python tests/fault_driver.py`` and must have the right step count, a
metrics log with every logged step exactly once, and the same weights, optimiser state, EMA
and logged means as an uninterrupted run, bit for bit (the driver's run keeps an EMA and a
warm-up and cosine learning-rate schedule).
"""

import errno
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from sklearn.datasets import load_digits

from vaekit import checkpoint as ckpt
from vaekit.config import build_config
from vaekit.errors import CheckpointError, ConfigError
from vaekit.models.base import GenerativeModel
from vaekit.train import train

sys.path.insert(0, str(Path(__file__).parent))
import fault_driver  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def digits(n_train=200, n_test=40):
    x = torch.tensor(load_digits().data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    return x[:n_train].clone(), x[1500 : 1500 + n_test].clone()


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _driver_child(work: Path, log: Path, slow: str) -> None:
    """Body of a forked child: stderr to ``log``, slow checkpoint writes, then the driver."""
    try:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND)
        os.dup2(fd, 2)
        sys.stderr = open(2, "w", closefd=False)
        os.environ["VAEKIT_TEST_SLOW_CKPT"] = slow
        fault_driver.main(work)
    finally:
        os._exit(0)


def wait_for(path: Path, text: str, proc, count: int = 1, timeout: float = 60.0) -> bool:
    """Wait until ``text`` occurs ``count`` times in the file; False if the process ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and path.read_text().count(text) >= count:
            return True
        if not (proc.is_alive() if hasattr(proc, "is_alive") else proc.poll() is None):
            return False
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {text!r}")


def all_checkpoints_load(run: Path) -> list[int]:
    steps = []
    for p in ckpt.list_checkpoints(run):
        steps.append(int(ckpt.read_checkpoint(p)["step"]))  # raises if any is unreadable
    return steps


def test_sigkill_at_random_points_then_resume(tmp_path, one_thread):
    tr, te = digits()
    torch.save({"train": tr, "test": te}, tmp_path / "data.pt")
    cfg = build_config("dense-digits", overrides=fault_driver.SETTINGS)
    ref = train(cfg, tmp_path / "ref", tr, te, transform=fault_driver.binarize, progress=False)
    total = ref["step"]
    assert total == 30

    rng = random.Random(20240611)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    kills = {"step": 0, "checkpoint": 0}
    fork = multiprocessing.get_context("fork")
    for i, mode in enumerate(["checkpoint", "step", "checkpoint", "step", "checkpoint", "step"]):
        log = tmp_path / f"stderr{i}.txt"
        log.write_text("")
        proc = fork.Process(target=_driver_child, args=(tmp_path, log, "0.25"))
        proc.start()
        try:
            assert wait_for(log, "vaekit-test: ready", proc), log.read_text()
            if mode == "step":
                time.sleep(rng.uniform(0.05, 0.5))
                alive = proc.is_alive()
            else:  # the first write of a new run is the step-0 checkpoint of a run folder not yet renamed
                alive = wait_for(log, "vaekit-test: writing", proc, count=rng.randint(1, 3))
                time.sleep(rng.uniform(0.0, 0.15))  # still inside the 0.25 s pause, half the bytes written
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.join()
        assert alive, f"the run ended before kill {i}: {log.read_text()[-2000:]}"
        assert proc.exitcode == -signal.SIGKILL
        kills[mode] += 1
        all_checkpoints_load(run)  # never an unreadable checkpoint, whenever the kill came
        if mode == "checkpoint":  # the kill did land in a write: its temp file (or folder) is there
            assert list(tmp_path.glob(".run.*.tmp")) + list(run.glob("checkpoints/.step-*.tmp"))

    # a flipped bit in the newest checkpoint: reported in one line, an older one is used
    newest = ckpt.list_checkpoints(run)[0]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x40
    newest.write_bytes(bytes(data))

    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fault_driver.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = [l for l in done.stderr.splitlines() if "corrupt or truncated checkpoint" in l]
    assert len(warnings) == 1 and str(newest) in warnings[0]

    assert kills == {"step": 3, "checkpoint": 3}
    steps = all_checkpoints_load(run)
    assert steps[0] == total
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]  # stale temps removed
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]  # no half-made run folders
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in recs if "loss" in r]
    test_steps = [r["step"] for r in recs if "test_nll" in r]
    assert train_steps == list(range(2, total + 1, 2))  # strictly increasing, no gaps, no duplicates
    assert test_steps == [10, 20, 30]
    a = ckpt.latest_checkpoint(tmp_path / "ref")[1]
    b = ckpt.latest_checkpoint(run)[1]
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=0, atol=1e-6)
    assert_same_training_state(a, b)
    ref_recs = [json.loads(l) for l in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(recs, ref_recs):
        for key in ("loss", "test_nll"):
            if key in y:
                assert x[key] == pytest.approx(y[key], rel=1e-6)


def assert_same_training_state(a: dict, b: dict) -> None:
    """Two checkpoints hold the same step, weights, EMA and optimiser state, bit for bit."""
    assert a["step"] == b["step"] and a["ema_n"] == b["ema_n"] > 0 and a["bad_steps"] == b["bad_steps"]
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    oa, ob = a["optimizer"], b["optimizer"]
    assert oa["param_groups"] == ob["param_groups"]  # the schedule's lr of the last step included
    assert oa["state"].keys() == ob["state"].keys()
    for i, sa in oa["state"].items():
        for k, v in sa.items():
            assert torch.equal(v, ob["state"][i][k]), ("optimizer", i, k)


def test_disk_full_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    tr, te = digits(100, 10)
    cfg = build_config(
        "dense-digits", overrides={"epochs": 1, "batch_size": 20, "ckpt_every": 2, "eval_k": 0, "tensorboard": False}
    )
    train(cfg, tmp_path / "r", tr, te, progress=False, max_steps=2)
    before = (tmp_path / "r" / "checkpoints" / "step-00000002.pt").read_bytes()

    real_save = torch.save

    def save_until_full(obj, f, *a, **kw):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", save_until_full)
    with pytest.raises(CheckpointError) as e:
        train(cfg, tmp_path / "r", tr, te, progress=False, resume=True)
    msg = str(e.value)
    assert "\n" not in msg and "disk full" in msg and "step-00000004.pt" in msg
    assert "step-00000002.pt is intact" in msg
    assert (tmp_path / "r" / "checkpoints" / "step-00000002.pt").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()) == [
        "step-00000000.pt",
        "step-00000002.pt",
    ]
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert train(cfg, tmp_path / "r", tr, te, progress=False, resume=True)["step"] == 5  # space again


def test_disk_full_through_the_command_is_one_line(tmp_path, monkeypatch, capsys):
    import numpy as np

    from vaekit.cli import main

    tr, _ = digits(60, 1)
    np.save(tmp_path / "d.npy", tr.numpy())
    quick = ["--max-steps", "2", "--no-progress"]
    assert (
        main(
            [
                "train",
                "--preset",
                "dense-digits",
                "--data",
                str(tmp_path / "d.npy"),
                "--out",
                str(tmp_path / "r"),
                "--set",
                "tensorboard=false",
                "--set",
                "batch_size=20",
                "--set",
                "ckpt_every=2",
                *quick,
            ]
        )
        == 0
    )

    def save_until_full(obj, f, *a, **kw):
        f.write(b"PK\x03\x04 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", save_until_full)
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "r"), "--max-steps", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    errors = [l for l in err.splitlines() if l.startswith("vaekit: error:")]
    assert errors == [
        f"vaekit: error: disk full while writing checkpoint {tmp_path / 'r' / 'checkpoints'}"
        f"/step-00000003.pt; the previous checkpoint step-00000002.pt is intact"
    ]  # 3: epoch end
    assert "Traceback" not in err
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(tmp_path / "r")[1]["step"] == 2


def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_no_folder(tmp_path, monkeypatch):
    tr, te = digits(40, 10)
    cfg = build_config("dense-digits", overrides={"epochs": 1, "batch_size": 20, "tensorboard": False})

    def full(obj, f, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(CheckpointError, match="disk full"):
        train(cfg, tmp_path / "out" / "r", tr, te, progress=False)
    assert list((tmp_path / "out").iterdir()) == []
    bad = build_config("dense-digits", overrides={"likelihood": "nope", "tensorboard": False})
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="likelihood"):  # the model cannot be built: no folder either
        train(bad, tmp_path / "out" / "r2", tr, te, progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_checkpoint_damage_is_a_one_line_error_naming_the_file(tmp_path):
    tr, te = digits(40, 10)
    cfg = build_config("dense-digits", overrides={"epochs": 1, "batch_size": 20, "tensorboard": False})
    train(cfg, tmp_path / "r", tr, te, progress=False)
    good = ckpt.list_checkpoints(tmp_path / "r")[0]
    raw = good.read_bytes()
    cases = {
        "truncated": raw[: len(raw) // 3],
        "bit flip": raw[:-200] + bytes([raw[-200] ^ 1]) + raw[-199:],
        "empty": b"",
        "not a zip": b"hello world" * 10,
    }
    mid = bytearray(raw)
    mid[len(raw) // 2] ^= 0x01  # inside tensor bytes: torch.load alone would not notice
    cases["flipped tensor byte"] = bytes(mid)
    for what, data in cases.items():
        bad = tmp_path / f"{what.replace(' ', '_')}.pt"
        bad.write_bytes(data)
        with pytest.raises(CheckpointError) as e:
            ckpt.read_checkpoint(bad)
        assert str(bad) in str(e.value) and "\n" not in str(e.value), what


def test_loading_a_checkpoint_never_runs_code_from_it(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": Payload(), "config": {}, "step": 1}, evil)
    with pytest.raises(CheckpointError, match="not a plain-tensor checkpoint"):
        ckpt.read_checkpoint(evil)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    evil.rename(tmp_path / "run" / "checkpoints" / "step-00000001.pt")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        ckpt.load_model(tmp_path / "run")
    assert not marker.exists()


# --- numerical guards -------------------------------------------------------------------------


class Poisoned(GenerativeModel):
    """A toy model whose ``term`` is NaN/inf at the steps in ``bad``: rec, kl and logdet terms."""

    log_prob_kind = "exact"

    def __init__(self, term: str, bad):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))
        self.term, self.bad = term, set(bad)

    def loss(self, x, step=0):
        h = x.flatten(1).mean(1, keepdim=True) * self.w  # [B, 3]
        out = {"rec": -((h[:, 0] - 1) ** 2), "kl": h[:, 1] ** 2, "logdet": h[:, 2]}
        if step in self.bad:
            out[self.term] = out[self.term] * float("nan" if self.term == "rec" else "inf")
        out["loss"] = -out["rec"] + out["kl"] - out["logdet"]
        return out


def poisoned_config(**over):
    return build_config(
        "dense-digits",
        overrides={
            "kind": "toy",
            "epochs": 2,
            "batch_size": 10,
            "log_every": 1,
            "eval_k": 0,
            "tensorboard": False,
            **over,
        },
    )


@pytest.mark.parametrize("term,name", [("rec", "reconstruction"), ("kl", "KL"), ("logdet", "logdet")])
def test_a_run_that_keeps_blowing_up_stops_naming_the_term(tmp_path, monkeypatch, term, name):
    from vaekit import models
    from vaekit.train import TrainingDiverged

    monkeypatch.setitem(models.MODELS, "toy", lambda mc, shape, tc: Poisoned(term, range(3, 100)))
    with pytest.raises(TrainingDiverged) as e:
        train(poisoned_config(max_bad_steps=4), tmp_path / term, torch.rand(40, 1, 4, 4), progress=False)
    msg = str(e.value)
    assert "\n" not in msg and f"{name}" in msg and "4 consecutive non-finite steps at step 6" in msg
    others = {"rec": "reconstruction", "kl": "KL", "logdet": "logdet"}
    assert not [n for t, n in others.items() if t != term and n in msg]  # only the culprit is named
    state = ckpt.latest_checkpoint(tmp_path / term)[1]
    assert state["step"] == 4 and state["bad_steps"] == 1  # epoch-end checkpoint; a resume goes on from it


def test_a_streak_of_non_finite_steps_counts_on_across_a_resume(tmp_path, monkeypatch):
    """Stopped mid-streak (max_steps) and resumed, the run diverges at the step an uninterrupted one does."""
    from vaekit import models
    from vaekit.train import TrainingDiverged

    monkeypatch.setitem(models.MODELS, "toy", lambda mc, shape, tc: Poisoned("kl", range(3, 100)))
    x, cfg = torch.rand(40, 1, 4, 4), poisoned_config(max_bad_steps=4, epochs=3)
    summary = train(cfg, tmp_path / "r", x, progress=False, max_steps=5)  # steps 3 and 4 were non-finite
    assert summary["step"] == 5 and ckpt.latest_checkpoint(tmp_path / "r")[1]["bad_streak"] == 2
    with pytest.raises(TrainingDiverged, match="4 consecutive non-finite steps at step 6"):
        train(cfg, tmp_path / "r", x, progress=False, resume=True)


def test_non_finite_steps_are_skipped_and_counted(tmp_path, monkeypatch):
    from vaekit import models

    seen = []

    def build(mc, shape, tc):
        seen.append(Poisoned("kl", {2, 5}))
        return seen[-1]

    monkeypatch.setitem(models.MODELS, "toy", build)
    summary = train(poisoned_config(), tmp_path / "r", torch.rand(40, 1, 4, 4), progress=False)
    assert summary["step"] == 8 and summary["bad_steps"] == 2
    recs = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["bad_steps"] for r in recs] == [0, 0, 1, 1, 1, 2, 2, 2]
    assert [r["grad_norm"] is None for r in recs] == [False, False, True, False, False, True, False, False]  # NaN
    assert torch.isfinite(seen[-1].w).all()


# --- Ctrl-C, a full disk inside torch's writer, an extension lost with its checkpoints ------------


def digits_npy(path: Path, n: int = 200) -> Path:
    import numpy as np

    np.save(path, digits(n, 1)[0].numpy())
    return path


def cli_train_args(data: Path, out: Path) -> list[str]:
    sets = {"batch_size": 20, "log_every": 1, "ckpt_every": 100, "eval_k": 0, "tensorboard": "false"}
    sets.update(ema=0.9, schedule="cosine")
    argv = ["train", "--preset", "dense-digits", "--data", str(data), "--out", str(out), "--epochs", "3"]
    return argv + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")] + ["--no-progress"]


def test_sigint_saves_the_step_reached_and_exits_130(tmp_path, one_thread):
    from vaekit.cli import main

    data = digits_npy(tmp_path / "d.npy")  # 200 examples, some held out for testing; batch 20
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    driver = [sys.executable, str(ROOT / "tests" / "fault_driver.py"), "--cli"]
    proc = subprocess.Popen(driver + cli_train_args(data, run), env=env, stderr=subprocess.PIPE, text=True)
    try:
        log = run / "metrics.jsonl"
        end = time.monotonic() + 120
        while not (log.exists() and len(log.read_text().splitlines()) >= 3):  # 3 steps done
            assert proc.poll() is None and time.monotonic() < end, proc.stderr.read()
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    step, total = (int(w) for w in last.split("interrupted at step ")[1].split(";")[0].split(" of "))
    assert 3 <= step < total and "Traceback" not in err
    assert last == (
        f"vaekit: interrupted at step {step} of {total}; {ckpt.checkpoint_path(run, step)} holds it; "
        f"continue with `vaekit train --resume {run}`"
    )
    assert ckpt.latest_checkpoint(run)[1]["step"] == step  # the step reached, not the last periodic one
    assert len((run / "metrics.jsonl").read_text().splitlines()) == step  # logged up to it, no further

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert main(cli_train_args(data, tmp_path / "ref")) == 0
    assert ckpt.latest_checkpoint(run)[1]["step"] == total
    assert_same_training_state(ckpt.latest_checkpoint(tmp_path / "ref")[1], ckpt.latest_checkpoint(run)[1])


def test_ctrl_c_before_the_run_folder_exists_does_not_suggest_resume(tmp_path, monkeypatch, capsys):
    import vaekit.data
    from vaekit.cli import main

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    data = digits_npy(tmp_path / "d.npy", 60)
    monkeypatch.setattr(vaekit.data, "prepare_data", interrupted)  # Ctrl-C while the data loads
    assert main(cli_train_args(data, tmp_path / "r")) == 130
    assert capsys.readouterr().err == "vaekit: interrupted\n"
    assert not (tmp_path / "r").exists()
    monkeypatch.undo()
    assert main(cli_train_args(data, tmp_path / "r") + ["--max-steps", "2"]) == 0
    monkeypatch.setattr(vaekit.data, "prepare_data", interrupted)  # the run exists: resume it
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "r")]) == 130
    assert capsys.readouterr().err == f"vaekit: interrupted; continue with `vaekit train --resume {tmp_path / 'r'}`\n"


class FullAfter:
    """A file that takes ``room`` bytes, then fails like a full disk (``OSError`` ENOSPC)."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, b) -> int:
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(b)
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()


def test_disk_full_inside_torchs_writer_names_the_file_and_the_checkpoint_kept(tmp_path, monkeypatch, capsys):
    """torch's zip writer turns the file's ENOSPC into ``RuntimeError: ... unexpected pos``."""
    from vaekit.cli import main

    data = digits_npy(tmp_path / "d.npy", 60)
    run = tmp_path / "r"
    assert main(cli_train_args(data, run) + ["--max-steps", "2"]) == 0
    real_save = torch.save
    monkeypatch.setattr(ckpt.torch, "save", lambda obj, f: real_save(obj, FullAfter(f, 3000)))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--max-steps", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unexpected pos" not in err
    assert err.strip().splitlines()[-1] == (
        f"vaekit: error: disk full while writing checkpoint {ckpt.checkpoint_path(run, 3)}; "
        "the previous checkpoint step-00000002.pt is intact"
    )
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")] == []  # no temp file
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(run)[1]["step"] == 2


def test_an_extension_survives_the_loss_of_its_checkpoints(tmp_path, capsys):
    """``--resume --epochs 3`` then a corrupt newest checkpoint: the fallback to one saved before
    the extension still trains to 3 epochs, and says why."""
    from vaekit.cli import main

    data = digits_npy(tmp_path / "d.npy", 60)  # 3 steps per epoch
    run = tmp_path / "r"
    first = cli_train_args(data, run)
    first[first.index("--epochs") + 1] = "1"
    assert main(first) == 0
    assert main(["train", "--resume", str(run), "--epochs", "3", "--max-steps", "5", "--no-progress"]) == 0
    newest = ckpt.list_checkpoints(run)[0]
    assert newest.name == "step-00000005.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # corrupt: the fallback is step 3, saved asking for 1 epoch
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"vaekit: note: {run / 'config.yaml'} asks for 3 epochs" in err
    assert ckpt.latest_checkpoint(run)[1]["step"] == 9


def test_a_checkpoint_refused_for_safety_is_named_so_by_the_command(tmp_path, capsys):
    from vaekit.cli import main

    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": Payload(), "config": {}, "step": 1}, evil)
    assert main(["evaluate", str(evil), "--k", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"vaekit: error: {evil} is not a plain-tensor checkpoint: it holds the Python object posix.system, "
        "which loading would have to run; refused for safety (vaekit loads only tensors and plain values, "
        "torch.load(weights_only=True))\n"
    )
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(b"PK\x03\x04" + bytes(40))  # a zip header, then nothing
    assert main(["evaluate", str(truncated), "--k", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vaekit: error: corrupt or truncated checkpoint {truncated} (") and err.endswith(")\n")
