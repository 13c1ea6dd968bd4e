"""bench/amp_speed.py runs in its smoke mode on real MNIST, for a VAE and a flow, so that it cannot rot:
one line per preset with both arms' images/s, their ratio and both arms' test numbers."""

import re

from bench.amp_speed import main, parse


def test_quick_run_reports_speed_and_quality_of_both_arms(shared_datasets, monkeypatch, capsys):
    monkeypatch.setenv("VAEKIT_DATA", shared_datasets)
    main(["--quick", "--threads", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert [r.split()[0] for r in rows] == ["dense-mnist", "glow-mnist"]
    for row in rows:
        assert re.search(r"img/s, amp/fp32 \d+\.\d\dx", row)
        nll = re.search(r"test NLL +(-?\d+\.\d+) -> +(-?\d+\.\d+) nats", row)
        assert nll and all(float(v) > 0 for v in nll.groups())
    assert "ELBO" in rows[0] and "ELBO" not in rows[1]  # a VAE has an ELBO, a flow an exact NLL


def test_quick_mode_is_small_and_keeps_explicit_choices():
    args = parse(["--quick", "--presets", "conv-mnist", "--batch-size", "16"])
    assert args.presets == ["conv-mnist"] and args.batch_size == 16 and args.threads == 1
    assert args.steps <= 2 and args.rounds <= 2 and args.n_test <= 8
