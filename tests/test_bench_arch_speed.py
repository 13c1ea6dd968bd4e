"""bench/arch_speed.py --eval-amp on a small trained conv run, so that it cannot rot: its paired
per-image estimates are those of ``vaekit evaluate --n N`` with and without ``--amp``."""

import json
import types

import pytest
import torch

from bench.arch_speed import main
from vaekit.checkpoint import load_model
from vaekit.cli import main as vaekit
from vaekit.data import prepare_data
from vaekit.evaluate import evaluate, per_example_log_prob


def test_eval_amp_pairs_float32_and_bf16_on_the_samples_vaekit_evaluate_draws(tmp_path, capsys):
    run = tmp_path / "run"
    sets = ["--set", "channels=[4,8]", "--set", "latent_dim=3", "--set", "eval_k=0", "--set", "tensorboard=false"]
    argv = ["train", "--preset", "conv-mnist", "--data", "digits", "--epochs", "1", "--out", str(run)]
    assert vaekit(argv + sets + ["--no-progress"]) == 0
    capsys.readouterr()
    out = tmp_path / "rows.jsonl"
    small = ["--eval-images", "3", "--target-k", "8", "--peak-size", "64", "--peak-repeats", "1", "--threads", "1"]
    threads = torch.get_num_threads()
    try:
        main(["--eval-amp", str(run), "--json", str(out)] + small)
    finally:
        torch.set_num_threads(threads)  # the bench sets the process's threads
    line = [r for r in capsys.readouterr().out.splitlines() if not r.startswith("#")]
    assert len(line) == 1 and "paired bf16 - fp32" in line[0] and "speed-up bf16/fp32" in line[0]
    row = json.loads(out.read_text())
    assert (row["images"], row["k"], row["preset"]) == (3, 8, "conv-mnist")
    model, cfg, _ = load_model(run)
    x = prepare_data(cfg.data)[1].x[:3]
    fp32, bf16 = (evaluate(model, x, k=8, progress=False, seed=0, amp=amp)["nll"] for amp in (False, True))
    assert row["nll_fp32"] == pytest.approx(fp32, rel=1e-6) and row["nll_bf16"] == pytest.approx(bf16, rel=1e-6)
    assert row["delta_mean"] == pytest.approx(bf16 - fp32, abs=1e-6) and row["delta_max_abs"] > 0

    # --eval-from: later test images, each with the samples its own index draws in vaekit evaluate
    later = tmp_path / "later.jsonl"
    try:
        main(["--eval-amp", str(run), "--json", str(later), *small[2:], "--eval-images", "1", "--eval-from", "2"])
    finally:
        torch.set_num_threads(threads)
    row = json.loads(later.read_text())
    assert row["images"] == 1
    for amp, key in ((False, "nll_fp32"), (True, "nll_bf16")):
        log_px = per_example_log_prob(model, x, k=8, progress=False, seed=0, amp=amp)
        assert row[key] == pytest.approx(-log_px[2].item(), rel=1e-6)


def test_each_timed_evaluation_call_is_set_against_the_peak_measured_beside_it(tmp_path, monkeypatch):
    """The share beside the peak is the median over the timed calls of (FLOPs of one call / its
    seconds) over the peak measured right after it, by one probe that holds its matrices; the row
    also gives the median call's minor page faults. Flows (exact log p(x), no K) leave both empty."""
    import bench.arch_speed as bench

    peaks = iter([200.0, 100.0, 50.0, 25.0])  # GFLOP/s: the run's own, then after each of three timed calls
    monkeypatch.setattr(bench, "matmul_peak", lambda *a, **k: next(peaks))
    probes = []

    class Probe:  # one per timed evaluation, built before its warm-up and asked after every call
        def __init__(self, device, n):
            probes.append(self)

        def __call__(self, repeats):
            return next(peaks)

    monkeypatch.setattr(bench, "MatmulPeak", Probe)
    faults = iter([0, 10, 10, 30, 30, 60])  # before and after each timed call: 10, 20 and 30 faults
    monkeypatch.setattr(bench, "minor_faults", lambda: next(faults))
    clock = iter(range(1000))  # the bench's own clock only: every timed call takes 1 s
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    out = tmp_path / "rows.jsonl"
    small = "--steps 1 --warmup 1 --repeat 1 --eval-warmup 1 --eval-repeat 3 --batch-size 4 --threads 1"
    small += " --eval-k 16 --flow-eval-batch 4 --peak-size 512 --peak-repeats 3"
    main([*small.split(), "--presets", "conv-mnist", "nice-mnist", "--json", str(out)])
    rows = {r["preset"]: r for r in map(json.loads, out.read_text().splitlines()) if "preset" in r}
    conv = rows["conv-mnist"]
    per_call = conv["eval_mflop_per_image"] * 1e6 * 16 / 5000  # K=16 drawn of the 5000 counted
    assert conv["eval_share_beside_peak"] == pytest.approx(per_call / 1.0 / 50e9)  # the middle of 1/100, 1/50, 1/25
    assert len(probes) == 1 and conv["eval_faults_per_call"] == 20
    assert rows["nice-mnist"]["eval_share_beside_peak"] is None and rows["nice-mnist"]["eval_faults_per_call"] is None


def test_the_peak_probe_measures_without_allocating():
    """Measuring the peak between timed calls reuses the probe's matrices: nothing is allocated (the
    profiler's memory events), so the heap a timed call leaves is the heap the next call finds. A peak
    measured from scratch allocates its three matrices, which the profiler sees."""
    from torch.profiler import ProfilerActivity, profile

    import bench.arch_speed as bench

    def allocated(fn):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        return sum(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0)

    probe = bench.MatmulPeak(torch.device("cpu"), n=64)
    assert allocated(lambda: probe(repeats=3)) == 0
    torch.testing.assert_close(probe.c, probe.a @ probe.b)
    assert allocated(lambda: bench.matmul_peak(torch.device("cpu"), n=64, repeats=3)) >= 3 * 64 * 64 * 4


def test_as_shipped_times_each_vae_preset_with_its_own_layout_and_amp_settings(tmp_path, monkeypatch):
    """--as-shipped: conv-mnist trains and evaluates in bf16 where train.amp and train.eval_amp say auto and
    the device has bf16 units; resnet-mnist, train.amp off and train.eval_amp auto, trains in float32 and
    evaluates with bf16 hidden layers. Each follows its own preset, not the other's."""
    import vaekit.nets.speed

    monkeypatch.setattr(vaekit.nets.speed, "native_bf16", lambda device: True)
    out = tmp_path / "rows.jsonl"
    small = "--steps 1 --warmup 1 --repeat 1 --eval-warmup 1 --eval-repeat 1 --batch-size 2 --threads 1"
    small += " --eval-k 4 --peak-size 64 --peak-repeats 1"
    threads = torch.get_num_threads()
    try:
        main([*small.split(), "--as-shipped", "--presets", "conv-mnist", "resnet-mnist", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    rows = {r["preset"]: r for r in map(json.loads, out.read_text().splitlines()) if "preset" in r}
    conv, resnet = rows["conv-mnist"], rows["resnet-mnist"]
    assert (conv["amp"], conv["eval_amp"], conv["eval_amp_active"], conv["channels_last"]) == (True, True, True, True)
    assert (resnet["amp"], resnet["eval_amp"], resnet["eval_amp_active"]) == (False, True, True)


@pytest.mark.parametrize("native", [True, False])
def test_the_bf16_peak_is_measured_full_size_only_where_bf16_runs_natively(native, tmp_path, monkeypatch, capsys):
    """A CPU without bf16 instructions emulates bf16 products at about 1 GFLOP/s, so a 2048 x 2048
    bf16 peak would take minutes. --as-shipped, whose presets all resolve amp to float32 there,
    measures no bf16 peak; --amp measures it on the smaller EMULATED_PEAK and the header says so.
    Where bf16 is native both take it at the asked size."""
    import bench.arch_speed as bench
    import vaekit.nets.speed

    monkeypatch.setattr(vaekit.nets.speed, "native_bf16", lambda device: native)
    asked = []
    monkeypatch.setattr(
        bench,
        "matmul_peak",
        lambda device, dtype=torch.float32, n=2048, repeats=10: asked.append((dtype, n, repeats)) or 100.0,
    )
    monkeypatch.setattr(bench, "run_presets", lambda *a: [])
    size = ["--peak-size", "256", "--peak-repeats", "5"]
    for flag in ("--as-shipped", "--amp"):
        asked.clear()
        main([*size, flag])
        header = [line for line in capsys.readouterr().out.splitlines() if line.startswith("# peak")]
        bf16 = [(n, r) for dtype, n, r in asked if dtype == torch.bfloat16]
        assert (torch.float32, 256, 5) in asked
        if native:
            assert bf16 == [(256, 5)] and "emulated" not in header[0]
        elif flag == "--as-shipped":
            assert bf16 == [] and "bf16" not in header[0]
        else:
            assert bf16 == [bench.EMULATED_PEAK] and "bf16 emulated" in header[0]
