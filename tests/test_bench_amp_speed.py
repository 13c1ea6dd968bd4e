"""bench/amp_speed.py runs in its smoke mode on real MNIST, for a VAE and a flow, so that it cannot rot:
one line per preset with both arms' images/s, their ratio and both arms' test numbers."""

import re

import torch

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


def test_float32_outputs_trains_the_amp_arm_with_float32_output_layers(shared_datasets, monkeypatch, capsys):
    """--float32-outputs: under the amp arm's autocast the nets' output layers return float32 (only the
    hidden layers round to bf16); without it they return bf16, as plain autocast rounds every layer."""
    import vaekit.precision

    monkeypatch.setenv("VAEKIT_DATA", shared_datasets)
    seen = []
    real = vaekit.precision.OutputLayer.__call__

    def spy(self, x, *a, **kw):
        out = real(self, x, *a, **kw)
        if torch.is_autocast_enabled("cpu"):
            seen.append(out.dtype)
        return out

    monkeypatch.setattr(vaekit.precision.OutputLayer, "__call__", spy)
    for flag, want in ([], torch.bfloat16), (["--float32-outputs"], torch.float32):
        seen.clear()
        main(["--quick", "--threads", "1", "--presets", "glow-mnist", *flag])
        out = capsys.readouterr().out
        assert seen and set(seen) == {want}, flag
        assert ("float32 output layers in training" in out) == bool(flag)
        assert re.search(r"test NLL +\d+\.\d+ -> +\d+\.\d+ nats", out)


def test_seed_sets_the_first_quality_seed(shared_datasets, monkeypatch):
    """--seed S runs the pairs with seeds S, S+1, ...: a second run adds seeds to a first one's."""
    from bench.amp_speed import config

    monkeypatch.setenv("VAEKIT_DATA", shared_datasets)
    assert config("nice-mnist", parse(["--seed", "3"])).train.seed == 3
    assert config("nice-mnist", parse([])).train.seed == 0  # the preset's own


def test_the_amp_arm_keeps_a_presets_own_float32_output_layers(shared_datasets, monkeypatch):
    """Without --float32-outputs the amp arm is the preset with --set amp=true: nice-mnist keeps its
    float32 output layers, conv-mnist rounds every layer; the flag turns them on for any preset."""
    from bench.amp_speed import config

    monkeypatch.setenv("VAEKIT_DATA", shared_datasets)
    assert config("nice-mnist", parse([])).train.amp_outputs_float32 is True
    assert config("conv-mnist", parse([])).train.amp_outputs_float32 is False
    assert config("conv-mnist", parse(["--float32-outputs"])).train.amp_outputs_float32 is True
