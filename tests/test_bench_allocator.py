"""bench/allocator.py: each arm's child process runs under its own environment and reports its
timing, page faults and peak memory; the table prints, so that the script cannot rot."""

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import allocator  # noqa: E402


def test_the_two_arms_run_in_their_own_environments(capsys):
    ns = argparse.Namespace(steps=1, warmup=1, threads=1, batch_size=4, eval=None, train_heap=False)
    default, kept = allocator.run_arm("dense-mnist", False, ns), allocator.run_arm("dense-mnist", True, ns)
    assert (default["kept"], kept["kept"]) == (False, True)
    for arm in (default, kept):
        assert arm["batch"] == 4 and arm["ms"] > 0 and arm["faults"] >= 0 and arm["peak_mib"] > 0
    assert allocator.main(["--presets", "dense-mnist", "--rounds", "1", "--steps", "1", "--warmup", "1",
                           "--threads", "1", "--batch-size", "4"]) == 0  # fmt: skip
    row, rounds = capsys.readouterr().out.strip().splitlines()[-2:]
    assert row.startswith("dense-mnist") and "x (rounds" in row and "of 1" in row
    assert rounds.startswith("  per round, default then kept: ") and rounds.count("faults") == 2


def test_eval_children_time_k_sample_evaluations_of_the_preset_as_shipped(capsys):
    """--eval K: each child times K-sample importance-sampled evaluations of one image instead of
    training steps, and the table counts the children that page-faulted."""
    ns = argparse.Namespace(steps=2, warmup=1, threads=1, batch_size=None, eval=8, train_heap=False)
    arm = allocator.run_arm("dense-mnist", False, ns)
    assert arm["batch"] == 8 and arm["ms"] > 0 and arm["faults"] >= 0 and arm["kept"] is False
    assert allocator.main(["--presets", "dense-mnist", "--rounds", "2", "--steps", "2", "--warmup", "1",
                           "--threads", "1", "--eval", "8"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "K=8 evaluations of one image" in out and "faults/call" in out
    row = [line for line in out.splitlines() if line.startswith("dense-mnist")][0]
    faulting = row.split("|")[1].split()[-3:]  # "n of 2" for the default arm
    assert faulting[1:] == ["of", "2"] and 0 <= int(faulting[0]) <= 2


def test_train_heap_sets_the_default_arms_heap_as_vaekit_train_does():
    """--train-heap: the default arm's child calls vaekit.heap.keep, which the kept arm's variables
    turn into a no-op (on glibc; elsewhere it does nothing in either)."""
    from vaekit import heap

    ns = argparse.Namespace(steps=1, warmup=1, threads=1, batch_size=4, eval=None, train_heap=True)
    default, kept = allocator.run_arm("dense-mnist", False, ns), allocator.run_arm("dense-mnist", True, ns)
    assert (default["kept_by_vaekit"], kept["kept_by_vaekit"]) == (heap.is_glibc(), False)
    plain = allocator.run_arm("dense-mnist", False, argparse.Namespace(**{**vars(ns), "train_heap": False}))
    assert plain["kept_by_vaekit"] is None


def test_train_heap_is_refused_with_eval(capsys):
    with pytest.raises(SystemExit) as e:
        allocator.main(["--eval", "8", "--train-heap"])
    assert e.value.code == 2 and "--train-heap" in capsys.readouterr().err
