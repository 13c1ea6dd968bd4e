"""The journal of a long evaluation: finished chunks survive a kill, and the evaluation started again
computes only the missing ones and returns, bit for bit, what an uninterrupted run returns."""

import json
import math
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_vae_and_data

import vaekit.evaluate
import vaekit.journal
from vaekit.config import build_config
from vaekit.errors import CheckpointError
from vaekit.evaluate import evaluate, journal_file, per_example_log_prob
from vaekit.journal import Journal, key_digest, module_digest, tensor_digest
from vaekit.models import build_model

KEY = {"what": "test", "k": 5, "seed": 0}


def test_appended_units_read_back_exactly(tmp_path):
    path = tmp_path / "j.jsonl"
    j = Journal(path, KEY)
    a = torch.tensor([[1 / 3, -math.inf], [math.nan, 2.0**-1074]], dtype=torch.float64)
    j.append(4, a, 1.5)
    j.append(0, a[:1] * 7, 0.25)
    j.close()
    back = Journal(path, KEY).done
    assert sorted(back) == [0, 4]
    rows, seconds = back[4]
    assert seconds == 1.5
    assert torch.equal(rows.isnan(), a.isnan())
    assert torch.equal(rows.nan_to_num(), a.nan_to_num())  # float64 repr round-trips, inf and subnormals too
    assert torch.equal(back[0][0], a[:1] * 7)


def test_a_killed_write_leaves_a_partial_line_that_is_dropped_and_cut_off(tmp_path):
    path = tmp_path / "j.jsonl"
    j = Journal(path, KEY)
    j.append(0, torch.ones(2, 3), 1.0)
    j.close()
    whole = path.read_bytes()
    for partial in (b'{"unit": 1, "seconds": 1.0, "rows": [[1.0, 2', b'{"unit": 1, "seconds": 1.0, "rows": [[1.0]]}'):
        path.write_bytes(whole + partial)  # a kill before the newline: even a line that parses is not whole
        k = Journal(path, KEY)
        assert sorted(k.done) == [0]
        assert path.read_bytes() == whole
        k.close()
    k = Journal(path, KEY)
    k.append(1, torch.zeros(1, 3), 2.0)  # appends after the cut start on a line of their own
    k.close()
    assert sorted(Journal(path, KEY).done) == [0, 1]


@pytest.mark.parametrize("torn", [b'{"vaekit_journal": 1, "key": {"wh', b'{"vaekit_jo', b"\0" * 40, b""])
def test_a_header_cut_short_is_written_again(tmp_path, torn):
    path = tmp_path / "j.jsonl"
    path.write_bytes(torn)  # killed (or a power loss) before the header's newline
    j = Journal(path, KEY)
    assert j.done == {}
    j.close()
    assert json.loads(path.read_text().splitlines()[0])["key"] == KEY


def test_another_computations_journal_is_refused_by_name(tmp_path):
    path = tmp_path / "j.jsonl"
    j = Journal(path, KEY)
    j.append(0, torch.ones(1, 1), 1.0)
    j.close()
    with pytest.raises(CheckpointError, match=r"records a different computation \(differing: k, seed\)"):
        Journal(path, {**KEY, "k": 6, "seed": 1})
    other = tmp_path / "notes.txt"
    other.write_text("my notes, no newline")
    with pytest.raises(CheckpointError, match="is not a vaekit journal"):
        Journal(other, KEY)
    assert other.read_text() == "my notes, no newline"  # never overwritten


@pytest.mark.skipif(vaekit.journal.fcntl is None, reason="advisory locks are POSIX")
def test_a_journal_in_use_is_refused_to_a_second_writer(tmp_path):
    path = tmp_path / "j.jsonl"
    first = Journal(path, KEY)
    with pytest.raises(CheckpointError, match="held by another running evaluation"):
        Journal(path, KEY)
    first.append(0, torch.ones(1, 2), 1.0)
    first.close()
    assert sorted(Journal(path, KEY).done) == [0]  # free again once closed


def test_digests_tell_apart_what_differs():
    a = {"w": torch.arange(6.0).reshape(2, 3)}
    assert tensor_digest(a) == tensor_digest({"w": torch.arange(6.0).reshape(2, 3)})
    assert tensor_digest(a) != tensor_digest({"w": torch.arange(6.0).reshape(3, 2)})  # shape
    assert tensor_digest(a) != tensor_digest({"w": torch.arange(6.0, dtype=torch.float64).reshape(2, 3)})  # dtype
    assert tensor_digest(a) != tensor_digest({"v": torch.arange(6.0).reshape(2, 3)})  # name
    assert tensor_digest({"s": torch.tensor(1.0, dtype=torch.bfloat16)})  # 0-d and bf16 tensors hash too
    assert key_digest({"a": 1, "b": 2}) == key_digest({"b": 2, "a": 1}) != key_digest({"a": 1, "b": 3})


def test_the_model_digest_sees_settings_that_no_tensor_holds():
    """Two NICE flows with the same weights and another base distribution compute another log p(x):
    their journals must not meet."""
    flows = []
    for base in ("logistic", "normal"):
        torch.manual_seed(0)
        flows.append(build_model(build_config("nice-mnist", overrides={"flow_base": base}), (1, 4, 4)))
    a, b = flows
    assert tensor_digest(a.state_dict()) == tensor_digest(b.state_dict())
    assert module_digest(a) != module_digest(b)
    torch.manual_seed(0)
    again = build_model(build_config("nice-mnist", overrides={"flow_base": "logistic"}), (1, 4, 4))
    assert module_digest(again) == module_digest(a)


@pytest.fixture(scope="module")
def vae_and_data():
    return tiny_vae_and_data(12)


class Killed(Exception):
    pass


def _kill_after(monkeypatch, n: int) -> list:
    """Make the evaluator's importance sampler raise on its (n+1)-th call, as a kill would stop it;
    returns the list of calls made."""
    real = vaekit.evaluate.importance_sampled_log_prob
    calls = []

    def sampler(*a, **kw):
        if len(calls) == n:
            raise Killed
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(vaekit.evaluate, "importance_sampled_log_prob", sampler)
    return calls


def _killed(monkeypatch, n: int, run) -> None:
    """``run()`` stopped, as by a kill, when the importance sampler is called for the (n+1)-th time."""
    with monkeypatch.context() as m:
        _kill_after(m, n)
        with pytest.raises(Killed):
            run()


def test_an_evaluation_killed_and_run_again_gives_the_uninterrupted_numbers(vae_and_data, tmp_path, monkeypatch):
    model, x = vae_and_data
    whole = evaluate(model, x, k=7, progress=False, seed=3)
    _killed(monkeypatch, 5, lambda: evaluate(model, x, k=7, progress=False, seed=3, journal_dir=tmp_path))
    (journal,) = tmp_path.glob("eval-*.partial.jsonl")
    assert len(journal.read_text().splitlines()) == 1 + 5  # the header and the 5 finished chunks
    with monkeypatch.context() as m:
        calls = _kill_after(m, 10**9)
        again = evaluate(model, x, k=7, progress=False, seed=3, journal_dir=tmp_path)
    assert len(calls) == x.shape[0] - 5  # one example per chunk here: only the 7 missing ones
    assert again["resumed"] == 5 and whole["resumed"] == 0
    for key in ("nll", "nll_stderr", "elbo", "rec", "kl", "ess_mean", "active_units", "bpd"):
        assert again[key] == whole[key]  # bit for bit
    assert again["seconds"] > 0
    assert journal == journal_file(tmp_path, model, x, k=7, seed=3)  # the one its caller deletes
    assert journal.exists()  # kept until the caller has kept the result: a call before that is instant
    with monkeypatch.context() as m:
        calls = _kill_after(m, 10**9)
        assert evaluate(model, x, k=7, progress=False, seed=3, journal_dir=tmp_path)["nll"] == whole["nll"]
    assert calls == []


def test_a_journal_is_found_only_by_the_same_evaluation(vae_and_data, tmp_path, monkeypatch):
    model, x = vae_and_data
    _killed(monkeypatch, 4, lambda: evaluate(model, x, k=7, progress=False, seed=3, journal_dir=tmp_path))
    # another seed, K, data or model: another journal, and the first one is left for its own evaluation
    assert evaluate(model, x, k=7, progress=False, seed=4, journal_dir=tmp_path)["resumed"] == 0
    assert evaluate(model, x, k=8, progress=False, seed=3, journal_dir=tmp_path)["resumed"] == 0
    assert evaluate(model, x[:-1], k=7, progress=False, seed=3, journal_dir=tmp_path)["resumed"] == 0
    torch.manual_seed(123)
    other = build_model(build_config("dense-digits", overrides={"hidden": [16], "latent_dim": 3}), (1, 4, 4))
    assert tensor_digest(other.state_dict()) != tensor_digest(model.state_dict())
    other.eval()
    assert evaluate(other, x, k=7, progress=False, seed=3, journal_dir=tmp_path)["resumed"] == 0
    assert len(list(tmp_path.glob("eval-*.partial.jsonl"))) == 5
    assert evaluate(model, x, k=7, progress=False, seed=3, journal_dir=tmp_path)["resumed"] == 4


def test_per_example_log_prob_resumes_the_same_way(vae_and_data, tmp_path, monkeypatch):
    model, x = vae_and_data
    whole = per_example_log_prob(model, x, k=6, progress=False, seed=1)
    _killed(monkeypatch, 3, lambda: per_example_log_prob(model, x, k=6, progress=False, seed=1, journal_dir=tmp_path))
    assert torch.equal(per_example_log_prob(model, x, k=6, progress=False, seed=1, journal_dir=tmp_path), whole)


EVAL_SCRIPT = """
import sys, time
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[2])
from helpers import tiny_vae_and_data
import vaekit.evaluate as ev
real = ev.importance_sampled_log_prob
def slow(*a, **kw):  # each chunk takes a while, so that a kill lands inside one
    time.sleep(0.04)
    return real(*a, **kw)
ev.importance_sampled_log_prob = slow
model, x = tiny_vae_and_data(60)
print("ready", file=sys.stderr, flush=True)
res = ev.evaluate(model, x, k=5, progress=False, seed=1, journal_dir=sys.argv[1])
print(repr(res["nll"]), res["resumed"])
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_an_evaluation_killed_by_sigkill_at_random_moments_ends_with_the_uninterrupted_numbers(tmp_path):
    script = tmp_path / "evaluate_slowly.py"
    script.write_text(EVAL_SCRIPT)
    argv = [sys.executable, str(script), str(tmp_path / "journal"), str(Path(__file__).parent)]
    rng = random.Random(0)
    for _ in range(3):
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stderr.readline().strip() == "ready"
        time.sleep(rng.uniform(0.3, 0.5))  # at most about 12 of the 60 chunks per run
        p.send_signal(signal.SIGKILL)
        p.communicate()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    nll, resumed = done.stdout.split()
    model, x = tiny_vae_and_data(60)
    assert float(nll) == evaluate(model, x, k=5, progress=False, seed=1)["nll"]  # bit for bit
    assert 0 < int(resumed) < 60  # the kills left finished chunks, and killed runs did not finish


def test_a_journal_is_refused_to_an_evaluation_split_across_processes(vae_and_data, tmp_path, monkeypatch):
    """Processes of one torchrun job each compute their share of the chunks: one journal file cannot
    hold them, so asking for one there is a one-line configuration error, before any chunk runs."""
    from vaekit import distributed
    from vaekit.errors import ConfigError

    model, x = vae_and_data
    calls = _kill_after(monkeypatch, 10**6)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    with pytest.raises(ConfigError, match="runs on one process") as e:
        evaluate(model, x, k=7, progress=False, journal_dir=tmp_path)
    assert "\n" not in str(e.value) and not calls and not list(tmp_path.iterdir())


def test_a_bf16_journal_is_keyed_by_the_revision_of_the_bf16_numerics(vae_and_data, tmp_path, monkeypatch):
    """A change that moves what the evaluators' bf16 computes raises ``precision.BF16_REVISION``; a
    bf16 journal of another revision is then not resumed (its chunks hold other numbers), while a
    float32 journal's key does not carry the revision at all."""
    import vaekit.evaluate as E

    model, x = vae_and_data
    _killed(monkeypatch, 3, lambda: evaluate(model, x, k=7, progress=False, seed=3, journal_dir=tmp_path, amp=True))
    _killed(monkeypatch, 3, lambda: evaluate(model, x, k=7, progress=False, seed=3, journal_dir=tmp_path))
    monkeypatch.setattr(E, "BF16_REVISION", E.BF16_REVISION + 1)
    assert evaluate(model, x, k=7, progress=False, seed=3, journal_dir=tmp_path)["resumed"] == 3
    assert evaluate(model, x, k=7, progress=False, seed=3, journal_dir=tmp_path, amp=True)["resumed"] == 0


def test_a_bf16_journal_of_a_pixelcnn_is_keyed_by_what_onednns_math_mode_rounds(vae_and_data, tmp_path, monkeypatch):
    """The PixelCNN's bf16 evaluation pass rounds its products through oneDNN's math mode, which
    rounds on some CPUs and computes float32 on others with the same bf16 kernels (the Xeons with AMX
    against the Zen 4): its journal's key records which, so chunks of the two never mix. A model
    without such a pass keys alike on both, so its journal moves between them; a float32 key never
    holds it."""
    import vaekit.evaluate as E
    from vaekit.config import ModelConfig
    from vaekit.models.vae import build_vae

    torch.manual_seed(0)
    pixel = build_vae(
        ModelConfig(
            encoder="conv",
            decoder="conv",
            channels=[4],
            latent_dim=2,
            likelihood="pixelcnn",
            pixelcnn_layers=1,
            pixelcnn_channels=4,
            pixelcnn_cond=2,
        ),
        (1, 4, 4),
    ).eval()
    dense, x = vae_and_data

    def names(model, amp):
        files = []
        for rounding in [("conv", "matmul"), ()]:
            monkeypatch.setattr(E, "onednn_bf16_rounding", lambda rounding=rounding: rounding)
            files.append(journal_file(tmp_path, model, x, k=3, amp=amp).name)
        return files

    assert len(set(names(pixel, amp=True))) == 2
    assert len(set(names(dense, amp=True))) == 1
    assert len(set(names(pixel, amp=False))) == 1
