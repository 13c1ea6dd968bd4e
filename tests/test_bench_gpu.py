"""bench/gpu.sh, the one GPU command, runs on a CPU in its smoke mode, so that it cannot rot.

``bench/gpu.sh --device cpu --quick --out FILE`` runs the speed step of bench/arch_speed.py on two
presets (one step each, a small K) and skips the CUDA tests, torch.compile and NCCL with a note;
the output goes to FILE, never to bench/results/gpu.txt.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu.sh"
RESULTS = ROOT / "bench" / "results" / "gpu.txt"


def run_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    env.pop("VAEKIT_GPU_OUT", None)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def results_file_state():
    return RESULTS.read_bytes() if RESULTS.exists() else None


def test_quick_cpu_run_measures_both_presets_and_skips_the_gpu_steps(tmp_path):
    before = results_file_state()
    out = tmp_path / "nested" / "gpu.txt"
    r = run_script("--device", "cpu", "--quick", "--out", str(out))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = out.read_text()
    assert text.strip() in r.stdout  # what was printed is what was written
    assert f"torch.cuda.is_available() {torch.cuda.is_available()}" in text
    assert "## CUDA tests: skipped" in text and "## NCCL DDP, one process: skipped" in text
    assert "## speed: torch.compile off/on: skipped" in text
    assert "# peak: torch.mm" in text and "GFLOP/s" in text
    for preset, kind in (("conv-mnist", "eval K=5000 from 16"), ("glow-mnist", "eval exact")):
        rows = [line for line in text.splitlines() if line.startswith(preset) and "train:" in line]
        assert len(rows) == 2, text  # channels_last off and on
        assert all(kind in line and "% peak" in line and "test set" in line for line in rows)
    assert "- speed: channels_last off/on: ok" in text
    assert results_file_state() == before  # the test never writes the real results


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_cuda_run_without_cuda_is_refused_in_one_line(tmp_path):
    out = tmp_path / "gpu.txt"
    r = run_script("--out", str(out), timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("gpu.sh: error: torch ") and "torch.cuda.is_available() is False" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()


def test_unknown_arguments_are_refused_in_one_line():
    r = run_script("--device", "tpu", timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == "gpu.sh: error: --device must be cpu or cuda, not 'tpu'"
    r = run_script("--fast", timeout=60)
    assert r.returncode == 2 and "unknown argument '--fast'" in r.stderr
