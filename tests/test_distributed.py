"""Distributed data parallel on PyTorch's engine: two gloo processes equal one process.

What is compared: a 2-process run (torchrun, gloo, CPU) against a single-process run of the
same config with the same 2 data shards (``train(..., shards=2)``), i.e. the same global batch
of 2 x 25 examples per step and the same noise per example (see ``vaekit.train``). The weights
must be identical on both ranks and equal to the single process's within float tolerance
(on this machine they come out bit-identical), and so must the end-of-epoch test NLL, whose
examples are split over the ranks and gathered. Resuming on another number of processes is
checked both ways (2 -> 1 exactly, 1 -> 2 by re-sharding).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from vaekit import checkpoint as ckpt
from vaekit import distributed
from vaekit.config import build_config
from vaekit.errors import VaekitError
from vaekit.evaluate import evaluate
from vaekit.models import build_model
from vaekit.train import shard_permutation, shard_size, shard_slice, train

sys.path.insert(0, str(Path(__file__).parent))
import ddp_driver  # noqa: E402  (settings shared with the torchrun workers)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers run with one thread: same float arithmetic
    yield
    torch.set_num_threads(n)


def metrics(run):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def assert_weights_close(a, b, exact=False):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0 if exact else 1e-4, atol=0 if exact else 1e-5)


def test_two_gloo_processes_equal_one_process_with_the_doubled_batch(tmp_path, one_thread):
    x = torch.tensor(load_digits().data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    tr, te = x[:200].clone(), x[1500:1560].clone()
    torch.save({"train": tr, "test": te}, tmp_path / "data.pt")
    np.save(tmp_path / "digits.npy", tr.numpy())
    cfg = build_config("dense-digits", overrides=ddp_driver.SETTINGS)
    kw = dict(transform=ddp_driver.binarize, progress=False)
    train(cfg, tmp_path / "single", tr, te, max_steps=3, **kw)  # resumed on 2 ranks by the workers

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(ROOT / "tests" / "ddp_driver.py"),
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[:3000]

    ref = train(cfg, tmp_path / "ref", tr, te, max_steps=6, shards=2, **kw)  # 1 process, 2 shards
    ref_w = ckpt.latest_checkpoint(tmp_path / "ref")[1]["model"]

    def ranks(name):
        return [torch.load(tmp_path / f"{name}.rank{r}.pt", weights_only=True) for r in (0, 1)]

    r0, r1 = ranks("ddp")
    assert_weights_close(r0["weights"], r1["weights"], exact=True)  # DDP keeps the ranks in lockstep
    assert_weights_close(r0["weights"], ref_w)
    assert_weights_close(ckpt.latest_checkpoint(tmp_path / "ddp")[1]["model"], r0["weights"], exact=True)
    # metrics are all-reduced global-batch means; the evaluation split over ranks gives the same NLL
    m_ddp, m_ref = metrics(tmp_path / "ddp"), metrics(tmp_path / "ref")
    assert [r["step"] for r in m_ddp] == [r["step"] for r in m_ref] == [1, 2, 3, 4, 4, 5, 6]
    for a, b in zip(m_ddp, m_ref):
        for key in ("loss", "rec", "kl", "test_nll", "test_elbo"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-5), key
    assert r0["summary"] == r1["summary"]
    assert r0["summary"]["test_nll"] == pytest.approx(ref["test_nll"], rel=1e-5)
    assert ckpt.latest_checkpoint(tmp_path / "ddp")[1]["shards"] == 2

    # a 2-process run stopped at step 3 and resumed on 2 processes, or on 1, continues the same run
    c0, c1 = ranks("cut2")
    assert_weights_close(c0["weights"], c1["weights"], exact=True)
    assert_weights_close(c0["weights"], ref_w)
    train(cfg, tmp_path / "cut", tr, te, max_steps=6, resume=True, **kw)
    assert_weights_close(ckpt.latest_checkpoint(tmp_path / "cut")[1]["model"], ref_w)
    assert [r["step"] for r in metrics(tmp_path / "cut")] == [1, 2, 3, 4, 4, 5, 6]

    # a 1-process run resumed on 2 processes is re-sharded and goes on in lockstep
    s0, s1 = ranks("single")
    assert_weights_close(s0["weights"], s1["weights"], exact=True)
    state = ckpt.latest_checkpoint(tmp_path / "single")[1]
    assert state["step"] == 6 and state["shards"] == 2
    assert [r["step"] for r in metrics(tmp_path / "single")] == [1, 2, 3, 4, 4, 5, 6]

    # a NaN example that only rank 1 sees: both ranks skip that step, like the single process
    n0, n1 = ranks("nan")
    assert_weights_close(n0["weights"], n1["weights"], exact=True)
    nan_ref = train(cfg, tmp_path / "nan_ref", ddp_driver.nan_data(tr), te, max_steps=6, shards=2, progress=False)
    assert n0["summary"]["bad_steps"] == nan_ref["bad_steps"] >= 1
    assert_weights_close(n0["weights"], ckpt.latest_checkpoint(tmp_path / "nan_ref")[1]["model"])
    assert [r["bad_steps"] for r in metrics(tmp_path / "nan") if "loss" in r] == [
        r["bad_steps"] for r in metrics(tmp_path / "nan_ref") if "loss" in r
    ]

    # the command under torchrun: rank 0 alone reports; `vaekit evaluate` split over the ranks
    # gives the IS estimate one process computes from the same checkpoint
    c0, c1 = [json.loads((tmp_path / f"cli.rank{r}.json").read_text()) for r in (0, 1)]
    assert c0["rc"] == c1["rc"] == 0, c0["err"] + c1["err"]
    assert c1["out"] == "" and "vaekit: error" not in c1["err"]
    summary = json.loads(c0["out"].splitlines()[0])
    assert summary["step"] == 4 and ckpt.latest_checkpoint(tmp_path / "cli")[1]["shards"] == 2
    v0, v1 = [json.loads((tmp_path / f"cli_eval.rank{r}.json").read_text()) for r in (0, 1)]
    assert v0["rc"] == v1["rc"] == 0 and "nll" in v0["out"] and v1["out"] == "", v0["err"] + v1["err"]
    from vaekit.cli import main as vaekit_main

    assert (
        vaekit_main(
            [
                "evaluate",
                str(tmp_path / "cli"),
                "--k",
                "4",
                "--seed",
                "0",
                "--no-progress",
                "-o",
                str(tmp_path / "eval_one.json"),
            ]
        )
        == 0
    )
    ddp_eval, one = (json.loads((tmp_path / f).read_text()) for f in ("eval_ddp.json", "eval_one.json"))
    for key in ("nll", "nll_stderr", "elbo", "kl", "ess_mean", "active_units", "n"):
        assert ddp_eval[key] == pytest.approx(one[key], rel=1e-6), key
    e0, e1 = [json.loads((tmp_path / f"cli_err.rank{r}.json").read_text()) for r in (0, 1)]
    assert e0["rc"] == e1["rc"] == 2
    assert [l for l in e0["err"].splitlines() if l.startswith("vaekit: error: ")] and e1["err"] == ""

    # closing the session frees the process group (DDP included), so no gloo thread outlives it
    for r in (0, 1):
        assert json.loads((tmp_path / f"closed.rank{r}.json").read_text()) == {"group_alive": False}


def test_shards_deal_every_example_once_per_epoch():
    N, S, spe = 103, 3, 7
    seen = []
    for s in range(S):
        n = shard_size(N, S, s)
        perm = shard_permutation(n, 5, 2, s, "cpu")
        ids = torch.arange(N)[s::S]
        slices = [shard_slice(n, spe, i) for i in range(spe)]
        assert slices[0][0] == 0 and slices[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))
        assert max(hi - lo for lo, hi in slices) - min(hi - lo for lo, hi in slices) <= 1
        seen += ids[perm].tolist()
    assert sorted(seen) == list(range(N))
    assert torch.equal(shard_permutation(10, 5, 2, 0, "cpu"), shard_permutation(10, 5, 2, 0, "cpu"))
    assert not torch.equal(shard_permutation(10, 5, 2, 0, "cpu"), shard_permutation(10, 5, 2, 1, "cpu"))


def test_batch_too_small_for_the_shards_is_a_one_line_error(tmp_path):
    x = torch.rand(20, 1, 8, 8)
    cfg = build_config("dense-digits", overrides={"batch_size": 4, "tensorboard": False})
    with pytest.raises(VaekitError, match="too small for 8 data shards"):
        train(cfg, tmp_path / "r", x, progress=False, shards=8)
    assert not (tmp_path / "r").exists()  # refused before the run folder appeared


def test_seeded_evaluation_does_not_depend_on_chunking_of_the_caller():
    torch.manual_seed(0)
    cfg = build_config("dense-digits")
    model = build_model(cfg, (1, 8, 8))
    x = torch.bernoulli(torch.rand(30, 1, 8, 8))
    a = evaluate(model, x, k=7, progress=False, seed=3)
    torch.manual_seed(123)  # the caller's random state does not matter, and is left alone
    state = torch.random.get_rng_state()
    b = evaluate(model, x, k=7, progress=False, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())
    for key in ("nll", "elbo", "kl", "ess_mean", "active_units"):
        assert a[key] == b[key]
    assert evaluate(model, x, k=7, progress=False, seed=4)["nll"] != a["nll"]


def test_helpers_are_the_identity_without_a_process_group():
    assert not distributed.active() and distributed.world_size() == 1 and distributed.rank() == 0
    t = torch.arange(6.0).view(3, 2)
    assert distributed.all_reduce_sum(t) is t
    assert distributed.all_gather_rows(t)[0] is t
    assert distributed.broadcast_bytes(b"abc") == b"abc"
    assert distributed.agree(lambda: 41 + 1) == 42
