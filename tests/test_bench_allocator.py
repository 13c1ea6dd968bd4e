"""bench/allocator.py: each arm's child process runs under its own environment and reports its
timing, page faults and peak memory; the table prints, so that the script cannot rot."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import allocator  # noqa: E402


def test_the_two_arms_run_in_their_own_environments(capsys):
    ns = argparse.Namespace(steps=1, warmup=1, threads=1, batch_size=4)
    default, kept = allocator.run_arm("dense-mnist", False, ns), allocator.run_arm("dense-mnist", True, ns)
    assert (default["kept"], kept["kept"]) == (False, True)
    for arm in (default, kept):
        assert arm["batch"] == 4 and arm["ms"] > 0 and arm["faults"] >= 0 and arm["peak_mib"] > 0
    assert allocator.main(["--presets", "dense-mnist", "--rounds", "1", "--steps", "1", "--warmup", "1",
                           "--threads", "1", "--batch-size", "4"]) == 0  # fmt: skip
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row.startswith("dense-mnist") and "x (rounds" in row
