"""bench/run_summary.py: the epochs, the last epochs' mean training ELBO and the speed quantiles of a
metrics.jsonl; one error line for a folder without one."""

import json

import pytest

from bench.run_summary import summary


def test_summary_of_a_metrics_log(tmp_path):
    rows = [{"step": 0, "epoch": 0, "lr": 1e-3}]  # a record without training terms is skipped
    rows += [{"epoch": e, "elbo": -100.0 + e, "examples_per_s": 1000.0 * e} for e in range(1, 11)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    line = summary(tmp_path, last=2)
    assert "10 epochs logged" in line
    assert "last 2: -90.50 nats" in line  # epochs 9 and 10
    assert "median 5500, 10th-90th percentile 2000-9000" in line


def test_a_folder_without_a_log_is_one_error(tmp_path):
    with pytest.raises(SystemExit, match="run_summary: error: .*metrics.jsonl does not exist"):
        summary(tmp_path, 10)
