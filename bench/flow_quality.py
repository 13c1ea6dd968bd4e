"""Flow quality within a wall-clock budget: bits/dim of flow models, and VAE posteriors with flows.

Two tables; every row trains one model with the project's own training loop
(``vaekit.train.train``) for the same wall-clock budget, then evaluates it with
``vaekit.evaluate.evaluate`` on MNIST test images.

  bpd   flow presets (default realnvp-mnist, glow-mnist) on dequantised MNIST:
        bits/dim = -log2 P(x) / 784 with the 8-bit correction (see vaekit.models.flow),
        exact up to the dequantisation bound, mean +- standard error over test images.
        Anchors (bits/dim, many GPU-days): RealNVP 1.06 (Papamakarios et al. 2017,
        Table 2, MNIST), Glow 1.05 (Kingma & Dhariwal 2018, Table 2).
  vae   iwae-1l (784-200-200-50 tanh, Bernoulli) with its diagonal Gaussian posterior
        against planar and IAF posteriors (``posterior_flow``), on MNIST dynamically
        binarised for training and binarised once (data.binarize_seed) for testing; test
        NLL by importance sampling with K samples (default 5000), with its standard error.

    python bench/flow_quality.py bpd --minutes 20 --device cuda
    python bench/flow_quality.py vae --minutes 20 --device cuda
    python bench/flow_quality.py bpd --minutes 0.2 --n-test 64 --set flow_hidden=8   # smoke test

Training runs in chunks of steps (each a resumed ``train`` call, sized from the measured
step rate, each taking half the remaining budget, so the overrun is at most 20 steps); the end-of-epoch
evaluation is switched off (eval_k=0) so the budget is spent on training.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vaekit  # noqa: E402
from bench.common import Timer, data_dir, header, parser  # noqa: E402
from vaekit.config import build_config, parse_set  # noqa: E402
from vaekit.data import binarize_dynamic, binarize_static, load_dataset  # noqa: E402
from vaekit.evaluate import evaluate  # noqa: E402
from vaekit.train import train  # noqa: E402

FIRST_CHUNK = 20  # steps timed before the chunk size is chosen from the measured rate; the smallest chunk


def _bpd(bpd) -> str:
    """Bits per dimension as printed: "-" where the model has none (a density at the levels)."""
    return "-" if bpd is None else f"{bpd:.4f}"


def train_for(cfg, run: Path, x_train, seconds: float, transform=None) -> tuple[int, float]:
    """Train in resumed chunks of steps until ``seconds`` of wall clock are spent; (steps, seconds)."""
    t0, target, step = time.perf_counter(), FIRST_CHUNK, 0
    while True:
        step = train(cfg, run, x_train, None, transform=transform, resume=step > 0, progress=False, max_steps=target)[
            "step"
        ]
        spent = time.perf_counter() - t0
        if spent >= seconds or step < target:  # budget spent, or the configured epochs ran out
            return step, spent
        rate = step / spent
        target = step + max(FIRST_CHUNK, int(rate * (seconds - spent) / 2))  # half the remaining budget


def run_rows(args, rows, x_train, x_test, transform):
    print(
        f"{'model':<28} {'params':>9} {'steps':>7} {'epochs':>7} {'train s':>8} {'K':>5} "
        f"{'test nll (nats)':>18} {'bpd':>7} {'eval s':>7}"
    )
    results = []
    for name, preset, overrides in rows:
        cfg = build_config(
            preset,
            overrides={
                **overrides,
                **parse_set(args.set),
                "epochs": 10_000,
                "eval_k": 0,
                "tensorboard": False,
                "device": args.device,
                "seed": args.seed,
            },
        )
        with tempfile.TemporaryDirectory() as tmp:
            steps, secs = train_for(cfg, Path(tmp) / "run", x_train, args.minutes * 60, transform)
            model = vaekit.load(Path(tmp) / "run", device=args.device)
        torch.manual_seed(args.seed)
        with Timer() as te:
            res = evaluate(model, x_test, k=args.k, progress=False)
        params = sum(p.numel() for p in model.parameters())
        epochs = steps * cfg.train.batch_size / x_train.shape[0]
        k = res["k"] if res["k"] is not None else "exact"
        print(
            f"{name:<28} {params:>9} {steps:>7} {epochs:>7.2f} {secs:>8.1f} {k:>5} "
            f"{res['nll']:>9.2f} +- {res['nll_stderr']:<5.2f} {_bpd(res['bpd']):>7} {te.seconds:>7.1f}",
            flush=True,
        )
        results.append({"model": name, "steps": steps, "train_seconds": secs, **res})
    return results


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("bench", choices=["bpd", "vae"])
    p.add_argument("--minutes", type=float, default=20.0, help="training budget per model")
    p.add_argument("--presets", nargs="+", default=["realnvp-mnist", "glow-mnist"], help="bpd: flow presets")
    p.add_argument(
        "--posteriors",
        nargs="+",
        default=["none", "planar", "iaf"],
        help="vae: posterior flows of iwae-1l ('none': the diagonal Gaussian)",
    )
    p.add_argument("--k", type=int, default=5000, help="vae: importance samples per test image")
    p.add_argument("--n-train", type=int, default=0, help="training images (0: all 60,000)")
    p.add_argument("--n-test", type=int, default=10000, help="test images")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every row, repeatable"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    header(f"flow_quality {args.bench}: MNIST, {args.minutes:g} min of training per model", args)
    ddir = data_dir("mnist")
    x_train = load_dataset("mnist", "train", data_dir=ddir).x[: args.n_train or None]
    x_test = load_dataset("mnist", "test", data_dir=ddir).x[: args.n_test]
    if args.bench == "bpd":
        rows = [(preset, preset, {}) for preset in args.presets]
        return run_rows(args, rows, x_train, x_test, transform=None)
    rows = [
        (f"iwae-1l posterior={pf}", "iwae-1l", {} if pf == "none" else {"posterior_flow": pf}) for pf in args.posteriors
    ]
    seed = build_config("iwae-1l").data.binarize_seed
    return run_rows(args, rows, x_train, binarize_static(x_test, seed), transform=binarize_dynamic)


if __name__ == "__main__":
    main()
