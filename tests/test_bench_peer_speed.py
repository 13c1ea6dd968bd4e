"""bench/peer_speed.py: vaekit's half runs without the peer libraries (--no-peers), and without
them the full comparison says so in one line and exits 2. Nothing is timed here."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "peer_speed.py"


def _run(*args, data: str | None = None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)} | ({"VAEKIT_DATA": data} if data else {})
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)


def test_vaekit_half_runs_without_the_peers(shared_datasets):  # it trains on real MNIST
    out = _run("--quick", "--no-peers", "--threads", "1", "--only", "nice", "glow", data=shared_datasets)
    assert out.returncode == 0, out.stderr
    assert "vaekit nice-mnist" in out.stdout and "vaekit glow-mnist" in out.stdout
    assert "normflows" not in out.stdout.split("## nice")[1]


@pytest.mark.skipif(importlib.util.find_spec("normflows") is not None, reason="the peers are importable here")
def test_missing_peers_is_one_line_and_exit_2():
    out = _run("--quick", "--only", "nice")
    assert out.returncode == 2
    assert out.stdout.strip().count("\n") == 0 and "make peers" in out.stdout
    assert "Traceback" not in out.stderr
