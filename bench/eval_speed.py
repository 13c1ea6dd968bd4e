"""Speed of the K=5000 importance-sampled test log-likelihood.

Compares, side by side in one run on the same model and threads:
- vaekit: `vaekit.inference.importance_sampled_log_prob`, vectorised over examples and samples in
  memory-bounded chunks;
- reference: a per-datapoint loop (as Pythae's `get_nll` does), each example's K samples decoded
  as one batch.
The reference loop is timed on the first `--ref-n` test images and its per-image time is
extrapolated to the full test set (stated as such); vaekit runs the complete evaluation.

    python bench/eval_speed.py --run runs/demo          # a trained dense-mnist run
    python bench/eval_speed.py                           # an untrained dense-mnist (same cost)
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vaekit  # noqa: E402
from bench.common import Timer, data_dir, header, parser  # noqa: E402
from vaekit.config import build_config  # noqa: E402
from vaekit.data import binarize_static, load_dataset  # noqa: E402
from vaekit.inference import importance_sampled_log_prob, mean_and_stderr  # noqa: E402
from vaekit.models import build_model  # noqa: E402


def resident_mib() -> float:
    """This process's resident memory now (Linux /proc), MiB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@torch.no_grad()
def per_datapoint_loop(model, x, k):
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        q = model.encoder(xi)
        z = q.sample((k,))  # [k, 1, D]
        px = model.decoder(z[:, 0])
        log_w = px.log_prob(xi.expand(k, *xi.shape[1:])) + model.prior.log_prob(z[:, 0]) - q.log_prob(z)[:, 0]
        out.append(torch.logsumexp(log_w, 0) - math.log(k))
    return torch.stack(out)


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--run", help="trained run folder (default: an untrained dense-mnist)")
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--n", type=int, default=10000, help="test images for vaekit")
    p.add_argument("--ref-n", type=int, default=100, help="test images for the per-datapoint loop")
    args = p.parse_args()
    header(f"eval_speed: K={args.k} IS log-likelihood, MNIST test (statically binarised)", args)
    te = load_dataset("mnist", "test", data_dir=data_dir("mnist"))
    x = binarize_static(te.x, seed=1234)[: args.n].to(args.device)
    if args.run:
        model = vaekit.load(args.run, device=args.device)
        name = args.run
    else:
        torch.manual_seed(0)
        model = build_model(build_config("dense-mnist"), (1, 28, 28)).to(args.device).eval()
        name = "dense-mnist (untrained weights; the cost is the same)"
    m = min(args.ref_n, x.shape[0])
    torch.manual_seed(0)
    with Timer() as tr:
        ref = per_datapoint_loop(model, x[:m], args.k)
    torch.manual_seed(0)
    rss_before = resident_mib()
    with Timer() as tv:
        res = importance_sampled_log_prob(model, x, k=args.k)
    rss_after = resident_mib()
    nll, se = mean_and_stderr(-res["log_px"])
    ref_full = tr.seconds / m * x.shape[0]
    agree = (res["log_px"][:m] - ref).mean().item()  # both estimate the same log p(x)
    full = tv.seconds / x.shape[0] * 10000  # the whole 10,000-image test set
    print(f"model: {name}; {x.shape[0]} images, K={args.k}")
    print(
        f"vaekit chunked, vectorised: {tv.seconds:8.1f} s for {x.shape[0]} images "
        f"({tv.seconds / x.shape[0] * 1000:.1f} ms/image); NLL {nll:.2f} ± {se:.2f}; resident memory "
        f"{rss_before:.0f} MiB before, {rss_after:.0f} MiB after"
    )
    print(
        f"per-datapoint loop:         {ref_full:8.1f} s extrapolated from {m} images "
        f"({tr.seconds / m * 1000:.1f} ms/image)"
    )
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    print(f"peak resident memory of this process: {peak:.0f} MiB (target: under 2 GiB)")
    how = "measured" if x.shape[0] == 10000 else f"extrapolated from {x.shape[0]} images"
    print(
        f"ratio loop/vaekit: {ref_full / tv.seconds:.2f}x; K={args.k} over all 10,000 test images: "
        f"{full / 60:.1f} min ({how}), {'under' if full < 600 else 'OVER'} the 10-minute target; "
        f"mean log p(x) difference vaekit - loop on the shared {m} images: {agree:+.3f} nats "
        f"(Monte-Carlo noise)"
    )


if __name__ == "__main__":
    main()
