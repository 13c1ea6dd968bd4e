"""Training throughput (images/s) of the image-model presets, and PixelCNN sampling time.

Synthetic data of each preset's shape (binary for Bernoulli likelihoods, k/255 otherwise),
the preset's own model and batch size (or --batch-size), Adam steps on model.loss. Times
exclude --warmup steps (and so exclude torch.compile's compilation, reported apart).

    python bench/arch_speed.py                                    # all issue-3 presets, CPU
    python bench/arch_speed.py --presets conv-mnist --compile     # torch.compile on vs off
    python bench/arch_speed.py --presets conv-mnist resnet-cifar --channels-last
    python bench/arch_speed.py --presets pixelvae-mnist --sample 64   # 64-sample grid time
    python bench/arch_speed.py --device cuda --amp                # bf16 autocast on a GPU
    python bench/arch_speed.py --compare compile channels_last    # each option off vs on, one run

With --compare, every preset is timed with the option off and on side by side in one process and
the ratio (on/off images/s) is printed: the evidence behind the config defaults of
``compile`` and ``channels_last``.

Never run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from vaekit.config import get_preset  # noqa: E402
from vaekit.models.vae import build_vae  # noqa: E402
from vaekit.nets import autocast, channels_last_input, maybe_compile, to_channels_last  # noqa: E402

PRESETS = ["conv-mnist", "resnet-mnist", "pixelvae-mnist", "resnet-cifar", "pixelvae-cifar"]


def data_shape(cfg) -> tuple[int, int, int]:
    return (3, 32, 32) if "cifar" in cfg.data.name else (1, 28, 28)


def synthetic_batch(cfg, batch: int, device) -> torch.Tensor:
    x = torch.rand(batch, *data_shape(cfg), device=device)
    m = cfg.model
    binary = m.likelihood == "bernoulli" or (m.likelihood == "pixelcnn" and m.pixelcnn_output == "bernoulli")
    return (x > 0.5).float() if binary else torch.round(x * 255) / 255


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


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
) -> dict:
    torch.manual_seed(0)
    cfg = get_preset(name)
    B = batch or cfg.train.batch_size
    model = build_vae(cfg.model, data_shape(cfg), cfg.train).to(device)
    to_channels_last(model, channels_last)
    maybe_compile(model, compile_)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    x = channels_last_input(synthetic_batch(cfg, B, device), channels_last)

    def step():
        with autocast(device, amp):
            loss = model.loss(x)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warm = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeat):  # best of `repeat` timed blocks: robust to a busy shared machine
        t1 = time.perf_counter()
        for _ in range(steps):
            loss = step()
        sync(device)
        best = min(best, time.perf_counter() - t1)
    return {
        "preset": name,
        "batch": B,
        "images_per_s": round(steps * B / best, 1),
        "s_per_step": round(best / steps, 4),
        "warmup_s": round(warm, 2),
        "loss": round(loss.item(), 2),
        "params": sum(p.numel() for p in model.parameters()),
        "compile": compile_,
        "channels_last": channels_last,
        "amp": amp,
    }


@torch.no_grad()
def bench_sampling(name: str, device, n: int) -> dict:
    torch.manual_seed(0)
    cfg = get_preset(name)
    model = build_vae(cfg.model, data_shape(cfg), cfg.train).to(device).eval()
    t0 = time.perf_counter()
    x = model.sample(n)
    sync(device)
    return {"preset": name, "samples": n, "shape": list(x.shape[1:]), "seconds": round(time.perf_counter() - t0, 2)}


def write_json(path: str | None, rows: list[dict], device) -> None:
    """Append the result rows as JSON lines to ``path`` (nothing when None)."""
    if path:
        with open(path, "a") as f:
            for r in rows:
                f.write(json.dumps({**r, "device": str(device), "threads": torch.get_num_threads()}) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=PRESETS)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps per preset")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    ap.add_argument("--repeat", type=int, default=1, help="timed blocks per preset; the best is reported")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    ap.add_argument("--sample", type=int, default=0, help="also time sampling N images (PixelCNN: the loop)")
    ap.add_argument("--json", default=None, help="append results as JSON lines to this file")
    ap.add_argument(
        "--compare",
        nargs="+",
        choices=["compile", "channels_last", "amp"],
        default=None,
        help="time each preset with each of these options off and on; print the ratios",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(dev)
    print(
        f"# torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    rows = []
    if args.compare:
        for name in args.presets:
            base = dict(compile_=args.compile, channels_last=args.channels_last, amp=args.amp)
            off = bench_training(name, device, args.steps, args.warmup, args.batch_size, repeat=args.repeat, **base)
            print(f"{name:16s} baseline        {off['images_per_s']:9.1f} img/s", flush=True)
            for opt in args.compare:
                key = "compile_" if opt == "compile" else opt
                on = bench_training(
                    name,
                    device,
                    args.steps,
                    args.warmup,
                    args.batch_size,
                    repeat=args.repeat,
                    **{**base, key: not base[key]},
                )
                print(
                    f"{name:16s} {opt + (' off' if base[key] else ' on'):15s} {on['images_per_s']:9.1f} img/s"
                    f"  ratio {on['images_per_s'] / off['images_per_s']:.2f}x  (warm-up {on['warmup_s']} s"
                    f" against {off['warmup_s']} s)",
                    flush=True,
                )
                rows += [off, on]
        write_json(args.json, rows, device)
        return
    for name in args.presets:
        r = bench_training(
            name,
            device,
            args.steps,
            args.warmup,
            args.batch_size,
            args.compile,
            args.channels_last,
            args.amp,
            args.repeat,
        )
        print(
            f"{name:16s} batch {r['batch']:4d}  {r['images_per_s']:9.1f} img/s  {r['s_per_step']:.3f} s/step"
            f"  (warm-up {r['warmup_s']} s, {r['params'] / 1e6:.2f} M params)",
            flush=True,
        )
        rows.append(r)
        if args.sample:
            s = bench_sampling(name, device, args.sample)
            print(f"{name:16s} {args.sample} samples {s['shape']}: {s['seconds']} s", flush=True)
            rows.append(s)
    write_json(args.json, rows, device)


if __name__ == "__main__":
    main()
