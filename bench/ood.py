"""Out-of-distribution detection by likelihood: MNIST-trained models against Fashion-MNIST.

Each model (a VAE, a flow and a Gaussian mixture) is trained briefly on the 60,000 MNIST training
images with vaekit's own loop, then scores the first ``--n-test`` MNIST test images and as many
Fashion-MNIST test images with ``vaekit.score.score`` (the evaluator's estimator: importance-sampled
log p(x) with ``--k`` samples for the VAE, exact for the flow and the mixture). The AUROC
(``sklearn.metrics.roc_auc_score``) measures how well log p(x) separates the two sets, MNIST taken as
in-distribution (higher log p(x) = in-distribution): 1 is perfect, 0.5 is chance, below 0.5 means the
model prefers the out-of-distribution set.

Models and their data (as ``vaekit train`` would give them):
  vae      dense-mnist (784-400-20 ReLU MLP, Bernoulli decoder), dynamically binarised MNIST;
           both test sets binarised once with the preset's seed.
  flow     NICE (nice-mnist, narrowed: ``--flow-hidden`` units, ``--flow-blocks`` layers per coupling)
           on dequantised 8-bit MNIST; log p(x) with the -D log 256 term (a bound on the discrete
           log-probability; the dequantisation noise is seeded per chunk).
  mixture  gmm-mnist (10 diagonal Gaussians by EM, ``--em-iter`` iterations) on grey levels: a
           density, so bits/dim add D log 256.

``--reverse`` also trains the three models on Fashion-MNIST and scores MNIST as the
out-of-distribution set: the direction in which Nalisnick et al. (2019) found likelihood models to
fail.

Caveat (Nalisnick, Matsukawa, Teh, Gorur & Lakshminarayanan, "Do deep generative models know what
they don't know?", ICLR 2019): a likelihood model can give *higher* likelihood to data it has never
seen than to its own test data; for models trained on Fashion-MNIST, MNIST digits score higher than
Fashion-MNIST test images (and CIFAR-10 models prefer SVHN). MNIST-trained models, measured here by
default, usually do separate the two sets well; a high AUROC in this direction does not make log p(x)
a reliable detector in general.

    python bench/ood.py --epochs 2 --n-test 1000 --k 100
    python bench/ood.py --epochs 2 --n-test 1000 --k 100 --reverse
    python bench/ood.py --epochs 1 --n-train 500 --n-test 50 --k 5 --em-iter 2   # smoke test
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vaekit  # noqa: E402
from bench.common import data_dir, header, parser  # noqa: E402
from vaekit.config import build_config  # noqa: E402
from vaekit.data import binarize_dynamic, binarize_static, load_dataset  # noqa: E402
from vaekit.score import score  # noqa: E402
from vaekit.train import train  # noqa: E402

DATASETS = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}


def model_configs(args) -> dict:
    """model name -> (preset, overrides, binary data)."""
    common = {"eval_k": 0, "tensorboard": False, "device": args.device, "seed": args.seed, "epochs": args.epochs}
    return {
        "vae": ("dense-mnist", {**common, "data.levels": 2}, True),
        "flow": (
            "nice-mnist",
            {**common, "flow_hidden": args.flow_hidden, "flow_blocks": args.flow_blocks, "data.levels": 256},
            False,
        ),
        "mixture": ("gmm-mnist", {**common, "em_max_iter": args.em_iter, "data.levels": 256}, False),
    }


def one_model(name, preset, overrides, binary, data, args) -> dict:
    """Train ``name`` on ``data[train]``, score both test sets; the row's numbers."""
    from sklearn.metrics import roc_auc_score

    cfg = build_config(preset, overrides=overrides)
    seed = cfg.data.binarize_seed
    x_train = data["train"]
    sets = {k: binarize_static(v, seed) if binary else v for k, v in data["test"].items()}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, Path(tmp) / "run", x_train, None, transform=binarize_dynamic if binary else None, progress=False)
        model = vaekit.load(Path(tmp) / "run", device=args.device)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    s = {k: score(model, x, k=args.k, seed=args.seed, progress=False) for k, x in sets.items()}
    score_s = time.perf_counter() - t0
    ind, ood = list(s)
    y = torch.cat([torch.ones(len(s[ind])), torch.zeros(len(s[ood]))]).numpy()
    auroc = roc_auc_score(y, torch.cat([s[ind][:, 0], s[ood][:, 0]]).numpy())
    return {
        "model": name,
        "auroc": float(auroc),
        "lp_in": float(s[ind][:, 0].mean()),
        "lp_ood": float(s[ood][:, 0].mean()),
        "bpd_in": float(s[ind][:, 1].mean()),
        "bpd_ood": float(s[ood][:, 1].mean()),
        "k": args.k if model.log_prob_kind == "importance-sampled" else "exact",
        "train_s": train_s,
        "score_s": score_s,
    }


def direction(train_name: str, ood_name: str, args) -> list[dict]:
    """All models trained on ``train_name``, scored on its test set and ``ood_name``'s."""
    load = {n: (lambda split, n=n: load_dataset(n, split, data_dir=data_dir(n))) for n in (train_name, ood_name)}
    data = {
        "train": load[train_name]("train").x[: args.n_train or None],
        "test": {n: load[n]("test").x[: args.n_test] for n in (train_name, ood_name)},
    }
    n_in, n_ood = (data["test"][n].shape[0] for n in (train_name, ood_name))
    print(
        f"\n## trained on {DATASETS[train_name]} ({data['train'].shape[0]} images, {args.epochs} epochs; "
        f"mixture: {args.em_iter} EM iterations); in-distribution: {n_in} {DATASETS[train_name]} test images, "
        f"out-of-distribution: {n_ood} {DATASETS[ood_name]} test images"
    )
    print(
        f"{'model':<8} {'K':>6} {'AUROC':>6} {'log p in':>10} {'log p OOD':>10} {'bpd in':>7} {'bpd OOD':>8} "
        f"{'train s':>8} {'score s':>8}"
    )
    rows = []
    for name, (preset, overrides, binary) in model_configs(args).items():
        if name not in args.models:
            continue
        overrides = {**overrides, "data.name": train_name}
        r = one_model(name, preset, overrides, binary, data, args)
        print(
            f"{r['model']:<8} {r['k']:>6} {r['auroc']:>6.3f} {r['lp_in']:>10.1f} {r['lp_ood']:>10.1f} "
            f"{r['bpd_in']:>7.3f} {r['bpd_ood']:>8.3f} {r['train_s']:>8.1f} {r['score_s']:>8.1f}",
            flush=True,
        )
        rows.append(r)
    return rows


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2, help="training epochs of the VAE and the flow")
    p.add_argument("--em-iter", type=int, default=20, help="EM iterations of the mixture")
    p.add_argument("--n-train", type=int, default=0, help="training images (0: all 60,000)")
    p.add_argument("--n-test", type=int, default=1000, help="test images per set")
    p.add_argument("--k", type=int, default=100, help="importance samples per image (VAE)")
    p.add_argument("--flow-hidden", type=int, default=256, help="units per layer of the flow's coupling nets")
    p.add_argument("--flow-blocks", type=int, default=2, help="hidden layers per coupling net")
    p.add_argument("--models", default="vae,flow,mixture", help="comma-separated subset of vae,flow,mixture")
    p.add_argument("--reverse", action="store_true", help="also train on Fashion-MNIST and score MNIST as OOD")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    header("ood: likelihood AUROC of MNIST test (in-distribution) against Fashion-MNIST test", args)
    t0 = time.perf_counter()
    rows = direction("mnist", "fashion-mnist", args)
    if args.reverse:
        rows += direction("fashion-mnist", "mnist", args)
    worst = min(rows, key=lambda r: r["auroc"])
    print(
        "\nCaveat (Nalisnick et al. 2019, 'Do deep generative models know what they don't know?'): likelihood "
        "models can give higher likelihood to out-of-distribution data than to their own test data; "
        "MNIST-trained models usually separate Fashion-MNIST well, but models trained on Fashion-MNIST "
        f"prefer MNIST. Lowest AUROC measured here: {worst['auroc']:.3f} ({worst['model']})"
        + ("." if args.reverse else " (MNIST-trained only; --reverse measures the failing direction).")
    )
    print(f"# total {time.perf_counter() - t0:.0f} s")
    return rows


if __name__ == "__main__":
    main()
