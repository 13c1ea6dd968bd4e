"""Shared helpers of the benchmarks: data location, timing, a header that says what ran where."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vaekit.data import binarize_dynamic  # noqa: E402
from vaekit.nets.speed import cpu_bf16_units  # noqa: E402
from vaekit.train import train  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def data_dir(name: str) -> str:
    """Folder of a standard dataset: $VAEKIT_DATA/<name> or ../shared/datasets/<name>."""
    env = os.environ.get("VAEKIT_DATA")
    for base in ([Path(env)] if env else []) + [SHARED]:
        if (base / name).is_dir():
            return str(base / name)
    raise SystemExit(f"bench: dataset folder '{name}' not found under $VAEKIT_DATA or {SHARED}")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    return p


def cpu_name() -> str:
    """The CPU's model name and the bf16 units torch finds on it, e.g. "AMD EPYC (AVX512-BF16)".

    Sessions are given different hosts (an Intel Xeon with AMX, an AMD EPYC with AVX512-BF16 only),
    and what bf16 autocast buys differs between them, so every result file names its host."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        name = models[0] if models else name
    except OSError:  # not Linux
        pass
    return f"{name} ({', '.join(cpu_bf16_units()) or 'no bf16 units'})"


def header(title: str, args) -> None:
    torch.set_num_threads(args.threads)
    dev = args.device
    if dev.startswith("cuda") and torch.cuda.is_available():
        dev = f"{dev} ({torch.cuda.get_device_name(0)})"
    print(f"# {title}")
    print(
        f"# torch {torch.__version__}, device {dev}, {args.threads} CPU threads, "
        f"{cpu_name()}, {time.strftime('%Y-%m-%d %H:%M')}"
    )


class Timer:
    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t0


def train_for(cfg, run: Path, x_train, minutes: float) -> tuple[int, float]:
    """Train epoch by epoch (resuming) until the budget is spent; returns (epochs, seconds)."""
    steps_per_epoch = -(-x_train.shape[0] // cfg.train.batch_size)
    t0, epochs = time.perf_counter(), 0
    while time.perf_counter() - t0 < minutes * 60 and epochs < cfg.train.epochs:
        train(
            cfg,
            run,
            x_train,
            None,
            transform=binarize_dynamic,
            resume=epochs > 0,
            progress=False,
            max_steps=(epochs + 1) * steps_per_epoch,
        )
        epochs += 1
    return epochs, time.perf_counter() - t0
