"""bench/train_speed.py --burda runs end to end (a few steps: nothing is timed or compared here)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_burda_comparison_runs_and_names_every_side():
    if not (ROOT.parent / "shared" / "datasets" / "mnist").is_dir() and "VAEKIT_DATA" not in os.environ:
        pytest.skip("MNIST is not in ../shared/datasets")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "bench" / "train_speed.py"), "--burda", "--steps", "10", "--rounds", "1"]
    cmd += ["--batch", "20", "--threads", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    for side in ("bare eager loop", "vaekit train, hand-derived gradient", "vaekit train, autograd (fused=false)"):
        assert side in out.stdout
    assert "ratio vaekit (hand-derived) / bare loop" in out.stdout and "batch 20" in out.stdout
