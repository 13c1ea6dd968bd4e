"""EM speed: vaekit's PyTorch Gaussian mixture against scikit-learn's ``GaussianMixture``.

Same data (MNIST training images, grey levels in [0, 1], flattened), same initial
parameters, same number of EM iterations (tol=0, so neither stops early), same CPU; prints
seconds per iteration for each, their ratio, and the mean log-likelihood both reach (they
agree). Every timed fit runs in a fresh process, the two libraries alternating, and each
library's fastest run counts: on a shared machine this keeps one library's idle threads
(torch's OpenMP pool) from slowing the other's BLAS, and other users' load from deciding
the ratio. Never run by the test suite.

    python bench/em_speed.py                          # diag, K=10, all 60k images, 10 iterations
    python bench/em_speed.py --dtype float64          # vaekit in scikit-learn's precision
    python bench/em_speed.py --covariance full --n 10000 --iters 3
    python bench/em_speed.py --device cuda            # the PyTorch side on a GPU
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MNIST = os.environ.get("VAEKIT_MNIST", os.path.join(ROOT, "..", "shared", "datasets", "mnist"))
if not os.path.isdir(MNIST):
    MNIST = "/work/shared/datasets/mnist"


def load_mnist_images(folder: str, n: int) -> np.ndarray:
    """First n training images as float64 [n, 784] in [0, 1] (IDX format, gzipped)."""
    with gzip.open(os.path.join(folder, "train-images-idx3-ubyte.gz"), "rb") as f:
        raw = f.read()
    count, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    x = np.frombuffer(raw, np.uint8, offset=16).reshape(count, rows * cols)
    return x[:n].astype(np.float64) / 255.0


def worker(args) -> dict:
    """One timed fit of one library, in this (fresh) process."""
    X = load_mnist_images(MNIST, args.n)
    init = np.load(args.init)
    if args.worker == "sklearn":
        from sklearn.mixture import GaussianMixture

        if args.threads:  # the same number of BLAS threads as torch gets
            from threadpoolctl import threadpool_limits

            threadpool_limits(args.threads)
        sk = GaussianMixture(
            args.components,
            covariance_type=args.covariance,
            max_iter=args.iters,
            tol=0,
            reg_covar=args.reg_covar,
            weights_init=init["weights"],
            means_init=init["means"],
            precisions_init=init["precisions"],
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            sk.fit(X)
            secs = time.perf_counter() - t0
        return {"seconds": secs, "final_ll": float(sk.lower_bounds_[-1])}
    import torch

    sys.path.insert(0, ROOT)
    from vaekit.models.mixture import GaussianMixtureModel

    if args.threads:
        torch.set_num_threads(args.threads)
    model = GaussianMixtureModel(
        args.components,
        (784,),
        covariance_type=args.covariance,
        tol=0,
        max_iter=args.iters,
        reg_covar=args.reg_covar,
        dtype=args.dtype,
    ).to(args.device)
    xt = torch.as_tensor(X, dtype=model.dtype).to(args.device)
    params = dict(weights=init["weights"], means=init["means"], covariances=init["covariances"])
    model.fit(xt[:1000], init_params=params)  # warm-up (allocator, kernels)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    sync()
    t0 = time.perf_counter()
    hist = model.fit(xt, init_params=params)
    sync()
    return {"seconds": time.perf_counter() - t0, "final_ll": hist[-1], "torch_threads": torch.get_num_threads()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=60000, help="training images used")
    ap.add_argument("--components", type=int, default=10)
    ap.add_argument("--covariance", default="diag", choices=["full", "diag", "spherical"])
    ap.add_argument("--iters", type=int, default=10, help="EM iterations for both")
    ap.add_argument("--reg-covar", type=float, default=1e-3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="vaekit's arithmetic")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for both (torch threads; BLAS threads for scikit-learn); 0: each library's default",
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed fits of each (fresh processes, alternating)")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    ap.add_argument("--worker", choices=["sklearn", "vaekit"], help=argparse.SUPPRESS)
    ap.add_argument("--init", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return

    from sklearn.mixture import GaussianMixture

    X = load_mnist_images(MNIST, min(args.n, 10000))
    with warnings.catch_warnings():  # one shared start: scikit-learn's k-means init + one EM step
        warnings.simplefilter("ignore")
        g = GaussianMixture(
            args.components, covariance_type=args.covariance, max_iter=1, reg_covar=args.reg_covar, random_state=0
        ).fit(X)
    runs = {"sklearn": [], "vaekit": []}
    with tempfile.TemporaryDirectory() as tmp:
        init = os.path.join(tmp, "init.npz")
        np.savez(init, weights=g.weights_, means=g.means_, covariances=g.covariances_, precisions=g.precisions_)
        passthrough = [
            f"--n={args.n}",
            f"--components={args.components}",
            f"--covariance={args.covariance}",
            f"--iters={args.iters}",
            f"--reg-covar={args.reg_covar}",
            f"--dtype={args.dtype}",
            f"--device={args.device}",
            f"--threads={args.threads}",
        ]
        for _ in range(args.repeats):
            for lib in ("sklearn", "vaekit"):
                out = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), *passthrough, "--worker", lib, "--init", init],
                    capture_output=True,
                    text=True,
                )
                if out.returncode:
                    raise SystemExit(f"{lib} worker failed:\n{out.stderr}")
                runs[lib].append(json.loads(out.stdout.strip().splitlines()[-1]))
    t_sk = min(r["seconds"] for r in runs["sklearn"])
    t_vk = min(r["seconds"] for r in runs["vaekit"])
    res = {
        "n": args.n,
        "d": 784,
        "components": args.components,
        "covariance": args.covariance,
        "iterations": args.iters,
        "vaekit_dtype": args.dtype,
        "device": args.device,
        "torch_threads": runs["vaekit"][0].get("torch_threads"),
        "threads_arg": args.threads,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "sklearn_s_per_iter": t_sk / args.iters,
        "vaekit_s_per_iter": t_vk / args.iters,
        "speedup": t_sk / t_vk,
        "sklearn_all_s": [r["seconds"] for r in runs["sklearn"]],
        "vaekit_all_s": [r["seconds"] for r in runs["vaekit"]],
        "sklearn_final_ll": runs["sklearn"][0]["final_ll"],
        "vaekit_final_ll": runs["vaekit"][0]["final_ll"],
    }
    sys.path.insert(0, ROOT)
    from bench.common import cpu_name

    print(
        f"EM, MNIST n={args.n} D=784 K={args.components} {args.covariance}, {args.iters} iterations, {cpu_name()}, "
        f"{args.threads or 'default'} threads, fastest of {args.repeats} fresh-process runs each (load average now {res['load_average'][0]:.1f} "
        f"on {res['cpu_count']} CPUs)"
    )
    print(
        f"  scikit-learn (float64)        {res['sklearn_s_per_iter']:.3f} s/iter   final mean log-lik "
        f"{res['sklearn_final_ll']:.3f}"
    )
    print(
        f"  vaekit ({args.dtype}, {args.device:<4})      {res['vaekit_s_per_iter']:.3f} s/iter   final mean log-lik "
        f"{res['vaekit_final_ll']:.3f}"
    )
    print(f"  speed-up x{res['speedup']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
