"""The inference-gap table (Cremer, Li & Duvenaud 2018, Table 2) for dense VAEs on MNIST.

For each preset (default ``dense-mnist`` and ``iwae-1l``): train on the 60,000 MNIST training
images (dynamically binarised) for ``--minutes`` (or reuse the run folder under ``--runs``),
then on the first ``--n`` images of each split (statically binarised, test seed 1234, train
1235), report, in nats per example with standard errors over examples:

    log p(x)         importance-sampled, K samples, q* (the SVI optimum) as proposal
    ELBO q*          the ELBO of the per-example Gaussian q* found by semi-amortised SVI
    ELBO amortised   the ELBO of the encoder's q(z|x)
    approx. gap  = log p(x) - ELBO q*       (limited by the Gaussian family)
    amort. gap   = ELBO q* - ELBO amortised (limited by the encoder)

Cremer et al. report, for MNIST with a fully factorised Gaussian (their Table 2, 'FFG'):
approximation gap ~ 1.0 nats and amortisation gap ~ 1.8 nats on the training set (their
architecture and training differ; a reference point, not a replication target).

    python bench/gap.py --minutes 20 --k 5000 --n 1000 --svi-steps 500      # the full run
    python bench/gap.py --minutes 0.2 --k 50 --n 20 --svi-steps 20            # a smoke test
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vaekit  # noqa: E402
from bench.common import Timer, data_dir, header, parser, train_for  # noqa: E402
from vaekit.checkpoint import latest_checkpoint  # noqa: E402
from vaekit.config import build_config  # noqa: E402
from vaekit.data import binarize_dynamic, binarize_static, load_dataset  # noqa: E402
from vaekit.inference import format_gap_table, gap_decomposition  # noqa: E402
from vaekit.train import train  # noqa: E402


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["dense-mnist", "iwae-1l"])
    p.add_argument(
        "--runs",
        default="runs/gap-bench",
        help="run folders live here, one per preset; an existing one is reused, not retrained",
    )
    p.add_argument("--minutes", type=float, default=20.0, help="training budget per preset (new runs only)")
    p.add_argument("--max-steps", type=int, help="cap on training steps (smoke tests)")
    p.add_argument("--k", type=int, default=5000, help="importance samples")
    p.add_argument("--n", type=int, default=1000, help="examples per split")
    p.add_argument("--splits", nargs="+", default=["train", "test"])
    p.add_argument("--svi-steps", type=int, default=500)
    p.add_argument("--svi-lr", type=float, default=1e-2)
    p.add_argument("--svi-samples", type=int, default=1)
    p.add_argument("--json", default=None, help="write all numbers here (default RUNS/gap_bench.json)")
    args = p.parse_args(argv)
    header(f"gap: approximation and amortisation gaps on MNIST, K={args.k}, n={args.n} per split", args)
    ddir = data_dir("mnist")
    x_train_grey = load_dataset("mnist", "train", data_dir=ddir).x
    data = {
        "test": binarize_static(load_dataset("mnist", "test", data_dir=ddir).x[: args.n], seed=1234),
        "train": binarize_static(x_train_grey[: args.n], seed=1235),
    }
    runs = Path(args.runs)
    everything = {}
    for preset in args.presets:
        run = runs / preset
        if latest_checkpoint(run) is None:
            cfg = build_config(
                preset, overrides={"epochs": 10_000, "eval_k": 0, "tensorboard": False, "device": args.device}
            )
            if args.max_steps:
                train(
                    cfg, run, x_train_grey, None, transform=binarize_dynamic, progress=False, max_steps=args.max_steps
                )
                how = f"{args.max_steps} steps"
            else:
                epochs, secs = train_for(cfg, run, x_train_grey, args.minutes)
                how = f"{epochs} epochs in {secs / 60:.1f} min"
        else:
            how = "reused"
        model = vaekit.load(run, device=args.device)
        results = {}
        for split in args.splits:
            torch.manual_seed(0)
            with Timer() as t:
                res = gap_decomposition(
                    model,
                    data[split].to(args.device),
                    k=args.k,
                    svi_steps=args.svi_steps,
                    svi_lr=args.svi_lr,
                    svi_samples=args.svi_samples,
                )
            res.pop("per_example")
            res["seconds"] = t.seconds
            results[split] = res
        print(f"\n## {preset} ({run}, {how})")
        print(format_gap_table(results), flush=True)
        everything[preset] = {"run": str(run), "training": how, "splits": results}
    out = Path(args.json) if args.json else runs / "gap_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(everything, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
