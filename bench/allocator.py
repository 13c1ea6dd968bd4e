"""Training speed under glibc's default allocator against one that keeps freed memory mapped.

glibc returns large freed blocks to the kernel (blocks above the mmap threshold are unmapped on
free; the top of the heap is trimmed), so the next step's tensors of the same size are fresh
pages again and every one of their 4 KiB pages costs a minor page fault, which a virtual machine
makes expensive. vaekit only primes glibc's own dynamic thresholds once per process
(``vaekit.heap.prime``: blocks up to ~31 MiB are then reused); the environment of a training
process can go further:

    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=17179869184 vaekit train ...

serves every block up to 1 GiB from the heap and keeps up to 16 GiB of freed heap mapped, so
after the first steps few pages fault; the price is that the process holds its peak heap.

This script measures it per preset: each round runs one child process per arm (default, then
the variables above; the order alternates between rounds), each building the preset's model
(``bench.peer_speed.vaekit_side``: the training loop's own step) and timing --steps steps on a
fixed synthetic batch after --warmup steps. It prints the median ms per step, the minor page
faults per step (``getrusage``), the peak resident memory of each arm and the median per-round
speed ratio:

    python bench/allocator.py --threads 2 --presets glow-mnist conv-mnist --rounds 3

With ``--eval K`` the children time importance-sampled evaluation instead: calls of
``importance_sampled_log_prob`` with K samples on one synthetic image, of the preset as
``vaekit evaluate`` runs it here (its memory format and ``train.eval_amp``). Whether glibc hands
freed memory back differs from process to process with the heap's layout, so the line also
counts the children that page-faulted (more than 1,000 minor faults per call):

    python bench/allocator.py --threads 2 --presets conv-mnist --eval 1000 --rounds 8

With ``--train-heap`` the default arm's children first set the heap as ``vaekit train`` does
(``vaekit.heap.keep``; the kept arm's variables make that a no-op), so a ratio near 1 says the
command gets what the variables give:

    python bench/allocator.py --threads 2 --presets pixelvae-mnist --rounds 3 --steps 3 --warmup 2 --train-heap
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEEP = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}
PRESETS = ["dense-mnist", "conv-mnist", "resnet-mnist", "nice-mnist", "glow-mnist"]
FAULTING = 1000  # minor faults per step or call above which a child counts as page-faulting


def eval_child(preset: str, k: int, calls: int, warmup: int, threads: int) -> dict:
    """Time ``calls`` K-sample evaluations of one image by ``preset`` as shipped, in this process."""
    sys.path.insert(0, str(ROOT))
    import torch

    from vaekit.config import get_preset
    from vaekit.inference import importance_sampled_log_prob
    from vaekit.models import build_model
    from vaekit.nets import resolve_amp, to_channels_last

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = get_preset(preset)
    model = build_model(cfg, (1, 28, 28)).eval()
    to_channels_last(model, cfg.model.channels_last)
    amp = resolve_amp(cfg.train.eval_amp, "cpu", "train.eval_amp")
    x = torch.bernoulli(torch.full((1, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(0))
    if cfg.model.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        return {**timed(lambda: importance_sampled_log_prob(model, x, k=k, amp=amp), calls, warmup), "batch": k}


def timed(call, n: int, warmup: int) -> dict:
    """``call()`` ``warmup`` times, then the median ms and the minor page faults of ``n`` more, the
    process's peak memory and whether it runs under the kept arm's variables."""
    for _ in range(warmup):
        call()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {
        "ms": 1e3 * statistics.median(times),
        "faults": faults / n,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "kept": all(os.environ.get(k) == v for k, v in KEEP.items()),
    }


def child(preset: str, steps: int, warmup: int, threads: int, batch: int | None, train_heap: bool) -> dict:
    """Time ``steps`` training steps of ``preset`` in this process (the arm is its environment)."""
    sys.path.insert(0, str(ROOT))
    import torch

    from bench.peer_speed import vaekit_side
    from vaekit import heap
    from vaekit.config import get_preset

    kept_by_vaekit = heap.keep() if train_heap else None

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = get_preset(preset)
    batch = batch or cfg.train.batch_size
    side = vaekit_side(preset, batch, amp=False)  # float32, as its table was measured
    x = torch.randint(0, 256, (batch, 1, 28, 28), generator=torch.Generator().manual_seed(0)).float() / 255
    return {**timed(lambda: side.step(x), steps, warmup), "batch": batch, "kept_by_vaekit": kept_by_vaekit}


def run_arm(preset: str, keep: bool, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in KEEP}
    env.update(KEEP if keep else {})
    cmd = [sys.executable, __file__, "--child", preset, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--threads", str(args.threads)] + (["--batch-size", str(args.batch_size)] if args.batch_size else [])
    cmd += ["--eval", str(args.eval)] if args.eval else []
    cmd += ["--train-heap"] if args.train_heap else []
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=PRESETS)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of one child per arm (order alternates)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per child")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=None, help="default: each preset's")
    ap.add_argument("--eval", type=int, default=None, metavar="K", help="time K-sample evaluation calls, not steps")
    ap.add_argument("--train-heap", action="store_true", help="default arm: the heap as `vaekit train` sets it")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.eval and args.train_heap:
        ap.error("--train-heap sets the heap of training children; --eval children evaluate")
    if args.child:
        if args.eval:
            row = eval_child(args.child, args.eval, args.steps, args.warmup, args.threads)
        else:
            row = child(args.child, args.steps, args.warmup, args.threads, args.batch_size, args.train_heap)
        print(json.dumps(row))
        return 0
    sys.path.insert(0, str(ROOT))
    import torch

    from bench.common import cpu_name

    what, unit = (f"K={args.eval} evaluations of one image", "call") if args.eval else ("training steps", "step")
    print(
        f"# bench/allocator.py: {what} under glibc's default allocator"
        f"{' as vaekit train sets it (vaekit.heap.keep)' if args.train_heap else ''}"
        f" and with {' '.join(f'{k}={v}' for k, v in KEEP.items())}"
    )
    print(f"# torch {torch.__version__}, {args.threads} threads, {cpu_name()}, "
          f"{args.rounds} rounds x {args.steps} {unit}s after {args.warmup} warm-up, synthetic 28x28 input, one child process per arm and round; "
          f"faulting children: more than {FAULTING} minor faults per {unit}")  # fmt: skip
    col = "K" if args.eval else "batch"
    print(f"{'preset':15s} {col:>5s} | {'default ms/' + unit:>15s} {'faults/' + unit:>11s} {'peak MiB':>8s} {'faulting':>8s} | "
          f"{'kept ms/' + unit:>12s} {'faults/' + unit:>11s} {'peak MiB':>8s} {'faulting':>8s} | speed-up")  # fmt: skip
    for preset in args.presets:
        arms: dict[bool, list[dict]] = {False: [], True: []}
        for r in range(args.rounds):
            for keep in (False, True) if r % 2 == 0 else (True, False):
                arms[keep].append(run_arm(preset, keep, args))
        ratios = [d["ms"] / k["ms"] for d, k in zip(arms[False], arms[True])]

        def med(keep: bool, key: str, arms=arms) -> float:
            return statistics.median(a[key] for a in arms[keep])

        def faulting(keep: bool, arms=arms) -> str:
            return f"{sum(a['faults'] > FAULTING for a in arms[keep])} of {len(arms[keep])}"

        print(f"{preset:15s} {arms[False][0]['batch']:5d} | {med(False, 'ms'):15.1f} {med(False, 'faults'):11.0f} "
              f"{med(False, 'peak_mib'):8.0f} {faulting(False):>8s} | {med(True, 'ms'):12.1f} {med(True, 'faults'):11.0f} "
              f"{med(True, 'peak_mib'):8.0f} {faulting(True):>8s} | {statistics.median(ratios):.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f})",
              flush=True)  # fmt: skip
        print("  per round, default then kept: " + "; ".join(
            f"{d['ms']:.1f} ms {d['faults']:.0f} faults, {k['ms']:.1f} ms {k['faults']:.0f} faults"
            for d, k in zip(arms[False], arms[True])), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
