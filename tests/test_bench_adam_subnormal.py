"""bench/adam_subnormal.py runs on real MNIST in a few steps, so that it cannot rot: it reports both
arms' images/s and their subnormal counts, and leaves vaekit.train's flush period as it found it."""

import re

import vaekit.train
from bench.adam_subnormal import main


def test_short_run_reports_both_arms_and_restores_the_flush_period(shared_datasets, monkeypatch, capsys):
    monkeypatch.setenv("VAEKIT_DATA", shared_datasets)
    every = vaekit.train.MOMENT_FLUSH_EVERY
    main(["--preset", "dense-mnist", "--steps", "3", "--speed-steps", "2", "--rounds", "2", "--threads", "1"])
    out = capsys.readouterr().out
    assert "dense-mnist on MNIST" in out and "float32" in out
    for arm in ("without", "with   "):
        assert re.search(rf"^{arm} the flush: +\d+\.\d img/s .*subnormal moments at the end$", out, re.M)
    assert re.search(r"^with/without: \d+\.\d\dx", out, re.M)
    assert vaekit.train.MOMENT_FLUSH_EVERY == every
