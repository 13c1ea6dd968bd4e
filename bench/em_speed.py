"""EM speed: vaekit's PyTorch Gaussian mixture against scikit-learn's ``GaussianMixture``.

Same data (MNIST training images, grey levels in [0, 1], flattened), same initial
parameters, same number of EM iterations (tol=0, so neither stops early), same CPU
threads; prints seconds per iteration for each and their ratio, and checks that the two
reach the same mean log-likelihood. Never run by the test suite.

    python bench/em_speed.py                          # diag, K=10, all 60k images, 10 iterations
    python bench/em_speed.py --covariance full --n 10000 --iters 5
    python bench/em_speed.py --device cuda            # the PyTorch side on a GPU
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from vaekit.models.mixture import GaussianMixtureModel  # noqa: E402

MNIST = os.environ.get("VAEKIT_MNIST", "/work/shared/datasets/mnist")


def load_mnist_images(folder: str, n: int) -> np.ndarray:
    """First n training images as float64 [n, 784] in [0, 1] (IDX format, gzipped)."""
    with gzip.open(os.path.join(folder, "train-images-idx3-ubyte.gz"), "rb") as f:
        raw = f.read()
    count, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    x = np.frombuffer(raw, np.uint8, offset=16).reshape(count, rows * cols)
    return x[:n].astype(np.float64) / 255.0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=60000, help="training images used")
    ap.add_argument("--components", type=int, default=10)
    ap.add_argument("--covariance", default="diag", choices=["full", "diag", "spherical"])
    ap.add_argument("--iters", type=int, default=10, help="EM iterations for both")
    ap.add_argument("--reg-covar", type=float, default=1e-3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="vaekit's arithmetic")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=3, help="timed fits of each, interleaved; the fastest counts")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from sklearn.mixture import GaussianMixture

    X = load_mnist_images(MNIST, args.n)
    # one shared initialisation: scikit-learn's k-means init, one iteration, then frozen
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        init = GaussianMixture(args.components, covariance_type=args.covariance, max_iter=1,
                               reg_covar=args.reg_covar, random_state=0).fit(X[:10000])
        sk = GaussianMixture(args.components, covariance_type=args.covariance, max_iter=args.iters, tol=0,
                             reg_covar=args.reg_covar, weights_init=init.weights_, means_init=init.means_,
                             precisions_init=init.precisions_)

    model = GaussianMixtureModel(args.components, (784,), covariance_type=args.covariance, tol=0,
                                 max_iter=args.iters, reg_covar=args.reg_covar, dtype=args.dtype).to(args.device)
    xt = torch.as_tensor(X, dtype=model.dtype)
    if args.device != "cpu":
        xt = xt.to(args.device)
    params = dict(weights=init.weights_, means=init.means_, covariances=init.covariances_)
    model.fit(xt[:1000], init_params=params)  # warm-up (allocator, kernels)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    # the CPU may be shared: interleave the two and keep each one's fastest run
    t_sk, t_vk = [], []
    for _ in range(args.repeats):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            sk.fit(X)
            t_sk.append(time.perf_counter() - t0)
        sync()
        t0 = time.perf_counter()
        hist = model.fit(xt, init_params=params)
        sync()
        t_vk.append(time.perf_counter() - t0)
    t_sk, t_vk = min(t_sk), min(t_vk)

    out = {
        "n": args.n, "d": 784, "components": args.components, "covariance": args.covariance,
        "iterations": args.iters, "vaekit_dtype": args.dtype, "device": args.device,
        "torch_threads": torch.get_num_threads(), "repeats": args.repeats,
        "sklearn_s_per_iter": t_sk / args.iters, "vaekit_s_per_iter": t_vk / args.iters,
        "speedup": t_sk / t_vk,
        "sklearn_final_ll": float(sk.lower_bounds_[-1]), "vaekit_final_ll": hist[-1],
    }
    print(f"EM, MNIST n={args.n} D=784 K={args.components} {args.covariance}, {args.iters} iterations")
    print(f"  scikit-learn (float64)     {out['sklearn_s_per_iter']:.3f} s/iter   final mean log-lik {out['sklearn_final_ll']:.3f}")
    print(f"  vaekit ({args.dtype}, {args.device}) {out['vaekit_s_per_iter']:.3f} s/iter   final mean log-lik {out['vaekit_final_ll']:.3f}")
    print(f"  speed-up x{out['speedup']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
