"""What a run folder's ``metrics.jsonl`` says about its training: the epochs logged, the mean
training ELBO over the last epochs, and the training speed per log window (median and the 10th-90th
percentiles), for comparing runs of ``bench/reproduce.py`` (or any ``vaekit train`` run) without
re-running them.

    python bench/run_summary.py /path/to/runs/1l-k1 /path/to/other-runs/1l-k1 --last 10
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def summary(run: Path, last: int) -> str:
    """One line on the run folder ``run``: epochs logged, mean training ELBO over its last ``last``
    epochs (nats per example, as logged), images/s per log window."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"run_summary: error: {path} does not exist")
    rows = [r for r in map(json.loads, path.read_text().splitlines()) if "elbo" in r and "examples_per_s" in r]
    if not rows:
        raise SystemExit(f"run_summary: error: {path} has no training records")
    top = max(r["epoch"] for r in rows)
    tail = [r["elbo"] for r in rows if r["epoch"] > top - last]
    rate = sorted(r["examples_per_s"] for r in rows)
    q = lambda p: rate[round(p * (len(rate) - 1))]  # noqa: E731
    return (
        f"{run}: {top} epochs logged, training ELBO over the last {last}: {statistics.mean(tail):.2f} nats; "
        f"images/s per log window: median {statistics.median(rate):.0f}, 10th-90th percentile {q(0.1):.0f}-{q(0.9):.0f}"
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (each with a metrics.jsonl)")
    p.add_argument("--last", type=int, default=10, help="epochs the training ELBO is averaged over")
    args = p.parse_args(argv)
    for run in args.runs:
        print(summary(run, args.last))


if __name__ == "__main__":
    main()
