"""Scaling of DistributedDataParallel training on CPU: images/s with 2 gloo ranks vs 1.

    python bench/ddp_scaling.py [--steps 60] [--preset dense-mnist] [--batch 128] [--repeat 2]

Each configuration is a real ``vaekit.train.train`` run launched with torchrun
(``python -m torch.distributed.run --standalone --nproc-per-node W``) on synthetic 28x28
images (throughput does not depend on the pixel values), one BLAS thread per rank unless
stated. Throughput is the ``examples_per_s`` that rank 0 logs in ``metrics.jsonl`` (global
examples per second, all ranks together), averaged over the log windows after the first
(warm-up) one; the best of ``--repeat`` launches is kept, since other jobs on a shared
machine only ever slow a run down.

Configurations:

- ``1 rank x 1 thread``, batch B: the baseline;
- ``2 ranks x 1 thread``, global batch 2B (B per rank, weak scaling: what DDP is for);
- ``2 ranks x 1 thread``, global batch B (B/2 per rank, strong scaling);
- ``1 rank x 2 threads``, batch B: the same two cores used by intra-op threads instead.

Scaling efficiency = throughput(2 ranks) / (2 x throughput(1 rank x 1 thread)).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from vaekit.config import build_config
    from vaekit.train import train

    g = torch.Generator().manual_seed(0)
    x = torch.round(torch.rand(args.images, 1, 28, 28, generator=g) * 255) / 255  # 8-bit levels, as images
    cfg = build_config(
        args.preset,
        overrides={
            "batch_size": args.batch,
            "epochs": 1000,
            "log_every": args.log_every,
            "ckpt_every": 10**9,
            "eval_k": 0,
            "tensorboard": False,
            "device": "cpu",
        },
    )
    train(
        cfg,
        args.out,
        x,
        transform=lambda b, gen: torch.bernoulli(b, generator=gen),
        progress=False,
        max_steps=args.steps,
    )


def launch(ranks: int, threads: int, batch: int, args) -> float:
    """Global images/s of one torchrun launch (mean over the log windows after the first)."""
    with tempfile.TemporaryDirectory(prefix="vaekit-ddp-bench-") as d:
        out = Path(d) / "run"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(ranks),
            __file__,
            "--worker",
            "--out",
            str(out),
            "--threads",
            str(threads),
            "--batch",
            str(batch),
            "--steps",
            str(args.steps),
            "--log-every",
            str(args.log_every),
            "--preset",
            args.preset,
            "--images",
            str(args.images),
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"launch failed ({ranks} ranks):\n{proc.stderr[-3000:]}")
        recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        speeds = [r["examples_per_s"] for r in recs if "examples_per_s" in r][1:]
        return sum(speeds) / len(speeds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--preset", default="dense-mnist")
    p.add_argument("--batch", type=int, default=128, help="per-step batch of the 1-rank baseline")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--images", type=int, default=8192, help="synthetic training images")
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    B = args.batch
    configs = [
        ("1 rank x 1 thread", 1, 1, B),
        ("2 ranks x 1 thread, global batch 2B", 2, 1, 2 * B),
        ("2 ranks x 1 thread, global batch B", 2, 1, B),
        ("1 rank x 2 threads", 1, 2, B),
    ]
    sys.path.insert(0, str(ROOT))
    from bench.common import cpu_name

    print(
        f"# {args.preset}, B={B}, {args.steps} steps, {os.cpu_count()} CPUs ({cpu_name()}), "
        f"load average {os.getloadavg()[0]:.1f} at start ({time.strftime('%Y-%m-%d %H:%M')})"
    )
    results = {}
    for name, ranks, threads, batch in configs:
        best = max(launch(ranks, threads, batch, args) for _ in range(args.repeat))
        results[name] = best
        print(f"{name:<40} {best:10.0f} images/s", flush=True)
    base = results["1 rank x 1 thread"]
    for name in configs[1:3]:
        print(f"scaling efficiency, {name[0]:<31} {results[name[0]] / (2 * base):10.2f}")
    print(f"# load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
