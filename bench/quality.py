"""Test log-likelihood reached within a wall-clock budget, against the published anchors.

Each row trains one preset on full MNIST (60,000 training images, dynamically binarised each
batch, as Burda et al. 2015 do) for `--minutes` of wall-clock training, then reports the
importance-sampled test NLL (K=5000, K=1000 for PixelCNN decoders) on the 10,000 test images
(or the first `--n-test`), statically binarised with one seed, with its standard error over
the test images. A smaller `--k` gives a looser bound (the estimate is a stochastic lower
bound on log p(x) that tightens with K), so such rows over-state the NLL.

Anchors (nats, lower is better): Burda et al. 2015 Table 1, one stochastic layer: VAE 86.76,
IWAE (k=50) 84.78; PixelVAE 79.02 (Gulrajani et al. 2016); IAF-VAE 79.10; NVAE 78.01.
The anchors trained for 3^8 passes over the data on GPUs; on a 2-core CPU in minutes the
numbers here are what such a budget reaches, not a replication.

    python bench/quality.py --rows vae iwae --minutes 20
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vaekit  # noqa: E402
from bench.common import Timer, data_dir, header, parser, train_for  # noqa: E402
from vaekit.config import build_config  # noqa: E402
from vaekit.data import binarize_static, load_dataset  # noqa: E402
from vaekit.evaluate import evaluate  # noqa: E402

# row name -> (preset, overrides, eval K, anchor in nats, anchor source)
ROWS = {
    "vae": ("iwae-1l", {}, 5000, 86.76, "Burda et al. 2015 VAE, k=1"),
    "iwae": ("iwae-1l", {"objective": "iwae", "k": 50}, 5000, 84.78, "Burda et al. 2015 IWAE, k=50"),
    "dense": ("dense-mnist", {}, 5000, None, "pytorch/examples architecture"),
    "conv": ("conv-mnist", {}, 5000, None, "conv VAE (no published anchor for this exact net)"),
    "resnet": ("resnet-mnist", {}, 5000, None, "ResNet VAE; NVAE 78.01 is the record"),
    "pixelvae": ("pixelvae-mnist", {}, 1000, 79.02, "PixelVAE, Gulrajani et al. 2016"),
}


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", default=["vae", "iwae"], choices=sorted(ROWS))
    p.add_argument("--minutes", type=float, default=20.0, help="training budget per row")
    p.add_argument("--n-test", type=int, default=10000)
    p.add_argument("--k", type=int, help="override the evaluation K")
    args = p.parse_args()
    header(f"quality: test NLL on MNIST after {args.minutes:g} min of training per row", args)
    ddir = data_dir("mnist")
    x_train = load_dataset("mnist", "train", data_dir=ddir).x
    x_test = binarize_static(load_dataset("mnist", "test", data_dir=ddir).x, seed=1234)[: args.n_test]
    print(
        f"{'row':<8} {'preset':<14} {'objective':<10} {'epochs':>6} {'train min':>9} {'K':>5} {'n test':>6} "
        f"{'test NLL':>16} {'eval min':>8} {'anchor':>7}  source"
    )
    for row in args.rows:
        preset, over, k, anchor, source = ROWS[row]
        k = args.k or k
        cfg = build_config(
            preset, overrides={**over, "epochs": 10_000, "eval_k": 0, "tensorboard": False, "device": args.device}
        )
        with tempfile.TemporaryDirectory() as tmp:
            epochs, secs = train_for(cfg, Path(tmp) / "run", x_train, args.minutes)
            model = vaekit.load(Path(tmp) / "run", device=args.device)
        torch.manual_seed(0)
        with Timer() as te:
            res = evaluate(model, x_test, k=k, progress=False)
        obj = cfg.train.objective + (f" k={cfg.train.k}" if cfg.train.objective == "iwae" else "")
        print(
            f"{row:<8} {preset:<14} {obj:<10} {epochs:>6} {secs / 60:9.1f} {k:>5} {x_test.shape[0]:>6} "
            f"{res['nll']:9.2f} ± {res['nll_stderr']:.2f} {te.seconds / 60:8.1f} "
            f"{anchor if anchor else '-':>7}  {source}",
            flush=True,
        )


if __name__ == "__main__":
    main()
