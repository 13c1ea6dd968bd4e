"""Training and K=5000 evaluation throughput of the presets, against this machine's matmul peak.

For every preset, in one process:

- **peak**: ``torch.mm`` of two square 2048 x 2048 float32 matrices (bf16 too when --amp,
  --compare amp or --eval-amp, and with --as-shipped where the device has bf16 units), the median of
  repeats, as GFLOP/s. A CPU without bf16 instructions (AVX2) emulates bf16 products at about
  1 GFLOP/s, where one 2048 x 2048 product takes tens of seconds: there the bf16 peak is taken on
  512 x 512 matrices, 3 repeats, and the header says it is emulated. Training's "% peak"
  is against the peak of its precision; evaluation's against the float32 peak (the issue's counting),
  with the bf16 peak's share beside it when the hidden layers ran in bf16.
- **training**: synthetic data of the preset's shape (binary for Bernoulli likelihoods, k/255
  otherwise), the preset's own model and batch size (or --batch-size), Adam steps on
  ``model.loss``. FLOPs per step are counted once by ``torch.utils.flop_counter.FlopCounterMode``
  (forward and backward: matmuls and convolutions; elementwise work is not counted). Times exclude
  --warmup steps (and so torch.compile's compilation, reported apart).
- **evaluation**: for VAEs, ``importance_sampled_log_prob`` of one image with --eval-k samples (its
  own memory-bounded chunking, as ``vaekit evaluate`` runs it), projected linearly to K=5000
  samples per image (--target-k). The FLOPs per sample are those of the decoder's log p(x|z)
  counted on ``decoder(z).log_prob(x)`` for a batch of codes and copies of the image (work shared
  across the K samples of an image then counts as speed). For flows (no K): the exact
  ``log_prob`` of a batch of --flow-eval-batch images, FLOPs per image. Projected: the time of
  a full --test-images evaluation. The host's speed drifts from minute to minute, so each timed
  VAE evaluation call is also followed by a short peak measurement (3 timed products of the peak's
  size) and the row adds the median over the calls of each call's share of the peak measured beside
  it (the median call, where "% peak" takes the best one). That peak's matrices are allocated once
  and held, so measuring it does not change the heap the next call finds; the row also gives the
  median call's minor page faults (``getrusage``), where the allocator's state shows.

    python bench/arch_speed.py                                    # the eight MNIST presets, CPU
    python bench/arch_speed.py --quick --presets conv-mnist       # smoke run: one step, small K
    python bench/arch_speed.py --presets conv-mnist --compile     # torch.compile on
    python bench/arch_speed.py --presets pixelvae-mnist --sample 64   # 64-sample grid time
    python bench/arch_speed.py --device cuda --amp                # bf16 autocast on a GPU
    python bench/arch_speed.py --compare compile channels_last    # each option off vs on, one run
    python bench/arch_speed.py --skip-eval                        # training only
    python bench/arch_speed.py --preset-layout                    # each preset's own memory format
    python bench/arch_speed.py --as-shipped                       # ... and its amp settings (VAEs)

With --compare, every preset is timed with the option off and on side by side in one process and
the ratios (on/off images/s, training and evaluation) are printed: the evidence behind the config
defaults of ``compile``, ``channels_last`` and ``amp``. ``one_chunk_per_pass`` (evaluation only)
evaluates one chunk of importance samples per decoder pass, also where the likelihood declares
``chunks_per_thread`` (the PixelCNN): the evidence behind that declaration.

With --eval-amp RUN ..., trained runs (folders or checkpoint files; no training is timed) are
evaluated with K=--target-k on their first --eval-images test images twice, float32 and with the
evaluators' bf16 (``evaluate(..., amp=True)``, ``vaekit evaluate --amp``: ``AMP_EVAL``), interleaved
image by image (the order alternates) in one process. Image i draws its samples after
``derive_seed(--eval-seed, EVAL_CHUNK, i)`` in both, as ``vaekit evaluate --n N`` does for N <= 64,
so the two estimates are paired: the script prints the per-image difference of -log p(x) (mean,
its standard error, the largest), the median seconds per image of each and the median per-image
speed ratio, with the decoder's FLOPs per sample as a share of the fp32 and the bf16 peaks:

    python bench/arch_speed.py --threads 1 --eval-amp runs/conv-mnist --eval-images 30

Never run by the test suite (``bench/gpu.sh --quick``, which the suite runs, calls it in --quick).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench.common import cpu_name  # noqa: E402
from vaekit.checkpoint import load_shared  # noqa: E402
from vaekit.config import get_preset  # noqa: E402
from vaekit.data import prepare_data  # noqa: E402
from vaekit.inference import decoder_numel, importance_sampled_log_prob  # noqa: E402
from vaekit.models import binary_data, build_model, compile_model  # noqa: E402
from vaekit.nets import autocast, channels_last_input, resolve_amp, to_channels_last  # noqa: E402
from vaekit.seeding import EVAL_CHUNK, derive_seed  # noqa: E402

PRESETS = [
    "dense-mnist",
    "iwae-1l",
    "conv-mnist",
    "resnet-mnist",
    "pixelvae-mnist",
    "nice-mnist",
    "realnvp-mnist",
    "glow-mnist",
]
QUICK_PRESETS = ["conv-mnist", "nice-mnist"]
AMP_EVAL = (  # what the evaluators' bf16 rounds, for the printed method lines
    "hidden layers in bf16, output layers float32, except the PixelCNN likelihood's own pass: uncompiled, it"
    " rounds only the operands of its vertical convolutions and horizontal products on a CPU with oneDNN bf16"
    " kernels, and nothing elsewhere"
)
OPTION_KEYS = {
    "compile": "compile_",
    "channels_last": "channels_last",
    "amp": "amp",
    "one_chunk_per_pass": "one_chunk_per_pass",  # evaluation only: no chunks_per_thread passes
}
TRAIN_OPTIONS = ("compile_", "channels_last", "amp")  # the options bench_training takes


def data_shape(cfg) -> tuple[int, int, int]:
    return (3, 32, 32) if "cifar" in cfg.data.name else (1, 28, 28)


def synthetic_batch(cfg, batch: int, device) -> torch.Tensor:
    """[batch, C, H, W]: binary pixels for models of binary data, 8-bit grey levels k/255 otherwise."""
    x = torch.rand(batch, *data_shape(cfg), device=device)
    return (x > 0.5).float() if binary_data(cfg.model) else torch.round(x * 255) / 255


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def count_flops(fn) -> int:
    """FLOPs of one call of ``fn`` (matmuls and convolutions, forward and backward), by FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


class MatmulPeak:
    """GFLOP/s of ``torch.mm`` on two n x n matrices of ``dtype`` (2 n^3 FLOPs over the median time).

    The matrices are allocated once and held, so that measuring allocates nothing. Measured between
    timed calls, a peak that allocated and freed its three matrices (48 MiB at n = 2048) each time
    let glibc trim the heap, and the next call page-faulted its buffers anew: up to 50,000 minor
    faults and 3x the time per ``conv-mnist`` K=1000 call, which back-to-back calls do not see.
    """

    def __init__(self, device, dtype=torch.float32, n: int = 2048):
        self.device, self.n = device, n
        self.a = torch.randn(n, n, device=device).to(dtype)
        self.b = torch.randn(n, n, device=device).to(dtype)
        self.c = torch.empty(n, n, device=device, dtype=dtype)

    def __call__(self, repeats: int = 10) -> float:
        for _ in range(2):
            torch.mm(self.a, self.b, out=self.c)
        times = []
        for _ in range(repeats):
            sync(self.device)
            t0 = time.perf_counter()
            torch.mm(self.a, self.b, out=self.c)
            sync(self.device)
            times.append(time.perf_counter() - t0)
        return 2 * self.n**3 / statistics.median(times) / 1e9


def matmul_peak(device, dtype=torch.float32, n: int = 2048, repeats: int = 10) -> float:
    """:class:`MatmulPeak` measured once, its matrices freed afterwards."""
    return MatmulPeak(device, dtype, n)(repeats)


EMULATED_PEAK = (512, 3)  # (n, repeats) of the bf16 peak where bf16 is emulated: ~0.3 s a product


def measure_peaks(args, device) -> dict:
    """{"fp32": GFLOP/s, and "bf16" where a run uses it}: the float32 peak always; the bf16 one for
    --amp, --compare amp and --eval-amp, and for --as-shipped only where the device has bf16 units
    (elsewhere every preset's ``auto`` resolves to float32). Emulated bf16 is measured smaller
    (``EMULATED_PEAK``)."""
    peaks = {"fp32": matmul_peak(device, n=args.peak_size, repeats=args.peak_repeats)}
    native = bf16_native(device)
    if args.amp or "amp" in (args.compare or []) or args.eval_amp or (args.as_shipped and native):
        n, repeats = (args.peak_size, args.peak_repeats) if native else EMULATED_PEAK
        peaks["bf16"] = matmul_peak(device, torch.bfloat16, n=n, repeats=repeats)
    return peaks


def bf16_native(device) -> bool:
    """Whether ``device`` has bf16 units: what a preset's ``auto`` resolves to there."""
    return resolve_amp("auto", device)


def peak_line(args, device, peaks: dict) -> str:
    """The header line of the peaks, saying where bf16 is emulated and measured smaller."""
    line = f"# peak: torch.mm {args.peak_size} x {args.peak_size}, median of {args.peak_repeats}: " + ", ".join(
        f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items()
    )
    if "bf16" in peaks and not bf16_native(device):
        n, repeats = EMULATED_PEAK
        line += f" (bf16 emulated, no bf16 instructions on this device: {n} x {n}, median of {repeats})"
    return line


def minor_faults() -> int:
    """Minor page faults of this process so far (``getrusage``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(fn, device, calls: int, warmup: int, repeat: int) -> tuple[float, float, object]:
    """(best seconds per call over ``repeat`` blocks of ``calls``, warm-up seconds, last result).

    The best block is robust to a busy shared machine."""
    t0 = time.perf_counter()
    out = None
    for _ in range(warmup):
        out = fn()
    sync(device)
    warm = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeat):
        t1 = time.perf_counter()
        for _ in range(calls):
            out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t1)
    return best / calls, warm, out


def timed_beside_peak(fn, device, warmup: int, repeat: int, peak_size: int):
    """(seconds of each of ``repeat`` calls of ``fn``, the float32 matmul peak in GFLOP/s measured right after
    each, warm-up seconds, minor page faults of each call). On a host whose speed drifts from minute
    to minute a share of a peak measured once, at the start, moves with the drift; a call set
    against the peak of the same moment does not. The peak's matrices are held from before the
    warm-up on (:class:`MatmulPeak`), so the calls see the heap that back-to-back calls would."""
    probe = MatmulPeak(device, n=peak_size)
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync(device)
    warm = time.perf_counter() - t0
    times, peaks, faults = [], [], []
    for _ in range(repeat):
        f1, t1 = minor_faults(), time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t1)
        faults.append(minor_faults() - f1)
        peaks.append(probe(repeats=3))
    return times, peaks, warm, faults


def build(name: str, device, compile_: bool, channels_last: bool):
    """(config, model) of a preset with its speed options applied, seeded."""
    torch.manual_seed(0)
    cfg = get_preset(name)
    model = build_model(cfg, data_shape(cfg)).to(device)
    to_channels_last(model, channels_last)
    compile_model(model, compile_)
    return cfg, model


def bench_training(
    name: str,
    device,
    steps: int,
    warmup: int,
    batch: int | None,
    compile_: bool,
    channels_last: bool,
    amp: bool,
    repeat: int = 1,
    built: tuple | None = None,
) -> dict:
    """Training images/s of a preset and its FLOPs per image per step (counted on the model uncompiled).

    ``built``: the (config, model) of :func:`build` with these options (default: built here)."""
    cfg, model = built or build(name, device, compile_, channels_last)
    B = batch or cfg.train.batch_size
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    x = channels_last_input(synthetic_batch(cfg, B, device), channels_last)

    def step():
        with autocast(device, amp):
            loss = model.loss(x)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    if compile_:  # compiled graphs hide their operations from the counter: count an uncompiled twin
        _, twin = build(name, device, False, channels_last)
        flops = count_flops(lambda: twin.loss(x)["loss"].mean().backward())
        del twin
    else:  # one more untimed step, counted (ActNorm's data-dependent init happens here)
        flops = count_flops(step)
    seconds, warm, loss = timed(step, device, steps, warmup, repeat)
    return {
        "preset": name,
        "batch": B,
        "images_per_s": round(B / seconds, 1),
        "s_per_step": round(seconds, 4),
        "mflop_per_image": round(flops / B / 1e6, 2),
        "warmup_s": round(warm, 2),
        "loss": round(loss.item(), 2),
        "params": sum(p.numel() for p in model.parameters()),
        "compile": compile_,
        "channels_last": channels_last,
        "amp": amp,
        "amp_active": autocast_active(device, amp),
    }


def autocast_active(device, amp: bool) -> bool:
    """Whether ``vaekit.nets.autocast(device, amp)`` really switches autocast on for this device."""
    with autocast(device, amp):
        return torch.is_autocast_enabled(device.type)


def decoder_flops_per_sample(model, x1: torch.Tensor, codes: int = 8) -> float:
    """FLOPs of log p(x|z) for one code z, counted on ``decoder(z).log_prob(x)`` for ``codes`` codes
    drawn from q(z|x) and as many copies of the one image x1 [1, C, H, W] (the naive per-sample work)."""
    with torch.no_grad():
        z = model.encoder(x1).sample((codes,)).reshape(codes, -1)
        xs = x1.expand(codes, *x1.shape[1:]).contiguous()
        return count_flops(lambda: model.decoder(z).log_prob(xs)) / codes


@torch.no_grad()
def bench_evaluation(name: str, device, opts: dict, args, built: tuple | None = None) -> dict:
    """Seconds per test image of a K=``args.target_k`` evaluation (VAEs, projected from ``args.eval_k``
    samples) or of the exact log p(x) (flows), FLOPs per image, and the full test set's time.

    ``built``: the (config, model) of :func:`build` with the options ``opts`` (default: built here)."""
    cfg, model = built or build(name, device, opts["compile_"], opts["channels_last"])
    model.eval()
    # compiled graphs hide their operations from the counter: count on an uncompiled twin
    counted = build(name, device, False, opts["channels_last"])[1].eval() if opts["compile_"] else model
    if model.log_prob_kind == "importance-sampled":
        x = channels_last_input(synthetic_batch(cfg, 1, device), opts["channels_last"])
        k = min(args.eval_k, args.target_k)
        flops_image = decoder_flops_per_sample(counted, x) * args.target_k

        def call():  # with eval_amp: AMP_EVAL, as vaekit evaluate --amp
            one = 1 if opts["one_chunk_per_pass"] else None
            return importance_sampled_log_prob(model, x, k=k, chunks_per_pass=one, amp=opts["eval_amp"])["log_px"]

        # the issue counts shares of the float32 peak, also for a bf16 evaluation
        times, peaks, warm, faults = timed_beside_peak(call, device, args.eval_warmup, args.eval_repeat, args.peak_size)
        per_call = min(times)
        s_image, kind = per_call * args.target_k / k, f"K={args.target_k} from {k}"
        beside = statistics.median(flops_image * k / args.target_k / t / (p * 1e9) for t, p in zip(times, peaks))
    else:
        n = args.flow_eval_batch
        x = channels_last_input(synthetic_batch(cfg, n, device), opts["channels_last"])
        flops_image = count_flops(lambda: counted.log_prob(x)) / n

        def call():  # as vaekit evaluate runs it: output layers float32
            with autocast(device, opts["eval_amp"], outputs_float32=True):
                return model.log_prob(x)

        per_call, warm, _ = timed(call, device, 1, args.eval_warmup, args.eval_repeat)
        s_image, kind, beside, faults = per_call / n, "exact", None, None
    return {
        "preset": name,
        "eval": kind,
        "target_k": args.target_k,
        "eval_s_per_image": s_image,
        "eval_images_per_s": 1 / s_image,
        "eval_mflop_per_image": flops_image / 1e6,
        "eval_warmup_s": round(warm, 2),
        "test_set_s": s_image * args.test_images,
        "eval_share_beside_peak": beside,  # median over the timed calls of the share of the fp32 peak right after each
        "eval_faults_per_call": None if faults is None else statistics.median(faults),  # minor page faults, median call
        "eval_amp": opts["eval_amp"],
        "eval_amp_active": autocast_active(device, opts["eval_amp"]),
    }


def duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def share(mflop_per_image: float, images_per_s: float, peak_gflops: float) -> float:
    """Fraction of the matmul peak: counted FLOPs per second over the peak."""
    return mflop_per_image * 1e6 * images_per_s / (peak_gflops * 1e9)


def options_label(r: dict) -> str:
    on = [k for k in ("compile", "channels_last") if r.get(k)]
    if r.get("amp"):
        on.append("amp" if r["amp_active"] else "amp(inactive)")
    if r.get("eval_amp"):
        on.append("eval_amp" if r["eval_amp_active"] else "eval_amp(inactive)")
    if r.get("one_chunk_per_pass"):
        on.append("one_chunk_per_pass")
    return "+".join(on) or "plain"


def flops_label(r: dict) -> str:
    """MFLOP per importance sample (VAEs: the decoder's log p(x|z)) or per image (flows)."""
    per = r["eval_mflop_per_image"]
    if r["eval"] == "exact":
        return f"{per:.4g} MFLOP/img"
    return f"{per / r['target_k']:.4g} MFLOP/sample"


def format_row(r: dict, peaks: dict) -> str:
    """One line: training images/s and % peak, then evaluation s/image, images/s, % peak, test-set time."""
    peak = peaks["bf16" if r["amp_active"] else "fp32"]
    line = (
        f"{r['preset']:15s} {options_label(r):22s} train: batch {r['batch']:4d} {r['images_per_s']:9.1f} img/s"
        f" {r['mflop_per_image']:9.1f} MFLOP/img {100 * share(r['mflop_per_image'], r['images_per_s'], peak):5.1f}% peak"
        f" (warm-up {r['warmup_s']} s, {r['params'] / 1e6:.2f} M params)"
    )
    if "eval" in r:
        fp32 = 100 * share(r["eval_mflop_per_image"], r["eval_images_per_s"], peaks["fp32"])
        bf16 = (
            f" ({100 * share(r['eval_mflop_per_image'], r['eval_images_per_s'], peaks['bf16']):.1f}% of the bf16 peak)"
            if r.get("eval_amp_active") and "bf16" in peaks
            else ""
        )
        line += (
            f" | eval {r['eval']}: {r['eval_s_per_image']:.4g} s/img {r['eval_images_per_s']:.4g} img/s"
            f" {flops_label(r)} {fp32:5.1f}% fp32 peak{bf16},"
            + (
                f" {100 * r['eval_share_beside_peak']:5.1f}% of the fp32 peak beside each call"
                f" ({r['eval_faults_per_call']:.0f} page faults per call),"
                if r.get("eval_share_beside_peak") is not None
                else ""
            )
            + f" test set {duration(r['test_set_s'])} (warm-up {r['eval_warmup_s']} s)"
        )
    return line


def bench_sampling(name: str, device, n: int) -> dict:
    torch.manual_seed(0)
    cfg = get_preset(name)
    model = build_model(cfg, data_shape(cfg)).to(device).eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        x = model.sample(n)
    sync(device)
    return {"preset": name, "samples": n, "shape": list(x.shape[1:]), "seconds": round(time.perf_counter() - t0, 2)}


def write_json(path: str | None, rows: list[dict], device) -> None:
    """Append the result rows as JSON lines to ``path`` (nothing when None)."""
    if path:
        with open(path, "a") as f:
            for r in rows:
                f.write(json.dumps({**r, "device": str(device), "threads": torch.get_num_threads()}) + "\n")


def measure(name: str, device, opts: dict, args) -> dict:
    """Training and (unless --skip-eval) evaluation of one preset under the options ``opts``."""
    built = build(name, device, opts["compile_"], opts["channels_last"])  # trained a few steps, then evaluated
    train_opts = {key: opts[key] for key in TRAIN_OPTIONS}
    r = bench_training(
        name, device, args.steps, args.warmup, args.batch_size, repeat=args.repeat, built=built, **train_opts
    )
    r["one_chunk_per_pass"] = opts["one_chunk_per_pass"]
    if not args.skip_eval:
        r.update(bench_evaluation(name, device, opts, args, built))
    return r


def ratio_line(name: str, opt: str, on: dict, off: dict) -> str:
    line = f"{name:15s} {opt:22s} ratio on/off: train {on['images_per_s'] / off['images_per_s']:.2f}x"
    if "eval" in on:
        line += f", eval {on['eval_images_per_s'] / off['eval_images_per_s']:.2f}x"
    return line + f"  (warm-up {on['warmup_s']} s against {off['warmup_s']} s)"


def run_presets(args, device, peaks: dict, t_start: float) -> list[dict]:
    """Every preset, plain or (--compare) with each option toggled; rows printed as they come."""
    rows = []
    for name in args.presets:
        cfg = get_preset(name)
        own = (args.preset_layout or args.as_shipped) and cfg.model.channels_last
        shipped = args.as_shipped and cfg.model.kind == "vae"
        base = {
            "compile_": args.compile,
            "channels_last": args.channels_last or own,
            "amp": args.amp or (shipped and resolve_amp(cfg.train.amp, device)),
            "eval_amp": args.amp or (shipped and resolve_amp(cfg.train.eval_amp, device)),
            "one_chunk_per_pass": False,
        }
        if args.deadline and time.perf_counter() - t_start > args.deadline:
            print(f"{name:15s} skipped: past the --deadline of {args.deadline} s", flush=True)
            continue
        if get_preset(name).model.kind not in ("vae", "flow"):
            print(f"{name:15s} skipped: only VAEs and flows are trained by gradient and have a log p(x)", flush=True)
            continue
        off = measure(name, device, base, args)
        print(format_row(off, peaks), flush=True)
        rows.append(off)
        for opt in args.compare or []:
            key = OPTION_KEYS[opt]
            on = {**base, key: not base[key]}
            if key == "amp":  # training and evaluation together
                on["eval_amp"] = on["amp"]
            on = measure(name, device, on, args)
            print(format_row(on, peaks), flush=True)
            print(ratio_line(name, opt + (" off" if base[key] else " on"), on, off), flush=True)
            rows.append(on)
        if args.sample:
            s = bench_sampling(name, device, args.sample)
            print(f"{name:15s} {args.sample} samples {s['shape']}: {s['seconds']} s", flush=True)
            rows.append(s)
    return rows


def paired_amp(run: str, device, args) -> dict:
    """Per-image -log p(x) and seconds of a trained run's K=``args.target_k`` estimate, float32 against
    bf16 autocast on the same samples (module docstring); the order alternates image by image."""
    model, cfg, state = load_shared(run, device=device)
    model.eval()
    data = cfg.data if args.data_dir is None else dataclasses.replace(cfg.data, data_dir=args.data_dir)
    first = args.eval_from
    x = prepare_data(data)[1].x[first : first + args.eval_images].to(device)
    numel = decoder_numel(model, x.shape[1:])
    nll = {False: [], True: []}
    secs = {False: [], True: []}
    for j in range(x.shape[0]):
        i = first + j  # the test image's own index, which its samples' seed follows
        for amp in (False, True) if i % 2 == 0 else (True, False):
            torch.manual_seed(derive_seed(args.eval_seed, EVAL_CHUNK, i))
            sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                out = importance_sampled_log_prob(model, x[j : j + 1], k=args.target_k, data_numel=numel, amp=amp)
            sync(device)
            secs[amp].append(time.perf_counter() - t0)
            nll[amp].append(-out["log_px"].double().item())
    delta = torch.tensor(nll[True], dtype=torch.float64) - torch.tensor(nll[False], dtype=torch.float64)
    n = delta.numel()
    return {
        "run": run,
        "preset": cfg.preset,
        "step": int(state["step"]),
        "images": n,
        "k": args.target_k,
        "nll_fp32": statistics.fmean(nll[False]),
        "nll_bf16": statistics.fmean(nll[True]),
        "delta_mean": delta.mean().item(),
        "delta_stderr": delta.std().item() / n**0.5 if n > 1 else float("nan"),
        "delta_max_abs": delta.abs().max().item(),
        "s_fp32": statistics.median(secs[False]),
        "s_bf16": statistics.median(secs[True]),
        "speedup": statistics.median(a / b for a, b in zip(secs[False], secs[True])),
        "mflop_per_sample": decoder_flops_per_sample(model, x[:1]) / 1e6,
    }


def paired_line(r: dict, peaks: dict) -> str:
    """One line of :func:`paired_amp`: the NLL difference, then the speed and the shares of the peaks."""
    flops_s = {key: r["mflop_per_sample"] * 1e6 * r["k"] / r[f"s_{key}"] for key in ("fp32", "bf16")}
    shares = ", ".join(
        f"{key} {r[f's_{key}']:.3g} s/img = {100 * flops_s[key] / (peaks['fp32'] * 1e9):.1f}% of the fp32 peak"
        + (f", {100 * flops_s[key] / (peaks['bf16'] * 1e9):.1f}% of the bf16 peak" if key == "bf16" else "")
        for key in ("fp32", "bf16")
    )
    return (
        f"{r['preset']:15s} step {r['step']} K={r['k']} on {r['images']} test images:"
        f" NLL fp32 {r['nll_fp32']:.4f}, bf16 {r['nll_bf16']:.4f};"
        f" paired bf16 - fp32 {r['delta_mean']:+.4f} ± {r['delta_stderr']:.4f} nats (s.e.), max |.| {r['delta_max_abs']:.4f}"
        f" | {shares}; speed-up bf16/fp32 {r['speedup']:.2f}x (median per image), {r['mflop_per_sample']:.4g} MFLOP/sample"
    )


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=None, help=f"default: {' '.join(PRESETS)}")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 thread, 1 step, batch 4, K=16, 512 x 512 peak, presets " + " ".join(QUICK_PRESETS),
    )
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per preset")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (compilation happens here)")
    ap.add_argument("--repeat", type=int, default=2, help="timed blocks per preset; the best is reported")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    ap.add_argument("--eval-k", type=int, default=1000, help="importance samples actually drawn per timed image")
    ap.add_argument("--target-k", type=int, default=5000, help="K the evaluation time is projected to")
    ap.add_argument("--eval-warmup", type=int, default=1, help="untimed evaluation calls first")
    ap.add_argument("--eval-repeat", type=int, default=2, help="timed evaluation calls; the best is reported")
    ap.add_argument("--flow-eval-batch", type=int, default=157, help="images per exact log p call (flows)")
    ap.add_argument("--test-images", type=int, default=10000, help="test-set size of the projected evaluation")
    ap.add_argument("--skip-eval", action="store_true", help="time training only")
    ap.add_argument("--peak-size", type=int, default=2048, help="n of the n x n matmuls of the peak")
    ap.add_argument("--peak-repeats", type=int, default=10, help="timed matmuls of the peak (median)")
    ap.add_argument("--deadline", type=float, default=None, help="skip presets started after this many seconds")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--compile", action="store_true", help="torch.compile the net bodies")
    ap.add_argument("--channels-last", action="store_true", help="channels-last memory for every preset")
    ap.add_argument(
        "--preset-layout", action="store_true", help="each preset's own channels_last, as `vaekit train` runs it"
    )
    ap.add_argument(
        "--amp",
        action="store_true",
        help="bf16 autocast (vaekit.nets.autocast) of training, and of the evaluation's hidden layers",
    )
    ap.add_argument(
        "--as-shipped",
        action="store_true",
        help="each preset as vaekit train and vaekit evaluate run it on this device: its own channels_last"
        " and, for VAEs, its train.amp and train.eval_amp (auto resolved here)",
    )
    ap.add_argument("--sample", type=int, default=0, help="also time sampling N images (PixelCNN: the loop)")
    ap.add_argument("--json", default=None, help="append results as JSON lines to this file")
    ap.add_argument(
        "--eval-amp",
        nargs="+",
        metavar="RUN",
        default=None,
        help="instead of the presets: trained runs (folders or checkpoints), evaluated float32 and bf16 on the"
        " same samples, interleaved; prints the paired NLL difference and both speeds",
    )
    ap.add_argument("--eval-images", type=int, default=30, help="--eval-amp: N test images")
    ap.add_argument("--eval-from", type=int, default=0, help="--eval-amp: index of the first of them")
    ap.add_argument("--eval-seed", type=int, default=0, help="--eval-amp: seed of the importance samples")
    ap.add_argument("--data-dir", default=None, help="--eval-amp: folder of the runs' dataset files")
    ap.add_argument(
        "--compare",
        nargs="+",
        choices=list(OPTION_KEYS),
        default=None,
        help="time each preset with each of these options off and on; print the ratios",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.repeat, args.eval_warmup, args.eval_repeat = 1, 1, 1, 1, 1
        args.batch_size, args.threads = args.batch_size or 4, args.threads or 1
        args.eval_k, args.flow_eval_batch = min(args.eval_k, 16), min(args.flow_eval_batch, 4)
        args.peak_size, args.peak_repeats = 512, 3
    args.presets = args.presets or (QUICK_PRESETS if args.quick else PRESETS)
    return args


def print_method(args, device, peaks: dict) -> None:
    print(
        f"# torch {torch.__version__}, {device}, {torch.get_num_threads()} threads,"
        f" {cpu_name()}, cuda available: {torch.cuda.is_available()}, {datetime.now():%Y-%m-%d %H:%M}"
    )
    print(peak_line(args, device, peaks))
    print(
        f"# train: {args.steps} timed steps x best of {args.repeat} after {args.warmup} warm-up; FLOPs by"
        " FlopCounterMode (matmuls and convolutions, forward + backward) per image per step"
    )
    if not args.skip_eval:
        print(
            f"# eval (VAEs): importance_sampled_log_prob of 1 image with K={min(args.eval_k, args.target_k)}, best of"
            f" {args.eval_repeat}, time scaled linearly to K={args.target_k}; FLOPs = decoder log p(x|z) per sample"
            f" x {args.target_k}. Flows: exact log_prob of {args.flow_eval_batch} images per call."
            f" Test set: {args.test_images} images. % peak: training's counted FLOPs/s over the peak of its"
            " precision (bf16 where autocast is active; amp(inactive): vaekit's autocast does nothing on this"
            f" device), evaluation's over the fp32 peak, with the bf16 peak's share beside it (eval_amp: {AMP_EVAL}); '% of the fp32 peak beside each call' (VAEs): the median over the"
            " timed calls of each call's share of an fp32 peak measured right after it (2 warm-up and 3 timed"
            " products on matrices held from before the warm-up), with that call's minor page faults"
        )


def print_paired_method(args, device, peaks: dict) -> None:
    print(
        f"# torch {torch.__version__}, {device}, {torch.get_num_threads()} threads,"
        f" {cpu_name()}, {datetime.now():%Y-%m-%d %H:%M}"
    )
    print(peak_line(args, device, peaks))
    print(
        f"# paired: importance_sampled_log_prob with K={args.target_k} of each of the {args.eval_images} test images"
        f" from index {args.eval_from}, float32 and amp ({AMP_EVAL}) on the same samples (seed"
        f" derive_seed({args.eval_seed}, EVAL_CHUNK, i)), interleaved with alternating order; s/img: median over the"
        " images; FLOPs = decoder log p(x|z) per sample (FlopCounterMode)"
    )


def main(argv=None):
    args = parse(argv)
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(dev)
    peaks = measure_peaks(args, device)
    if args.eval_amp:
        print_paired_method(args, device, peaks)
        rows = []
        for run in args.eval_amp:
            rows.append(paired_amp(run, device, args))
            print(paired_line(rows[-1], peaks), flush=True)
        write_json(args.json, [{**r, "peak_gflops": peaks} for r in rows], device)
        return
    print_method(args, device, peaks)
    rows = run_presets(args, device, peaks, t_start)
    write_json(args.json, [{**r, "peak_gflops": peaks} for r in rows], device)


if __name__ == "__main__":
    main()
