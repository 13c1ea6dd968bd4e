"""Honest metrics, the same for every model.

- ``nll``: -log p(x) in nats per example, averaged over the evaluated examples, with its
  standard error over examples. Exact for flows and mixtures; for VAEs the importance-
  sampled estimate with K samples from q(z|x) (Burda et al. 2015), which is a stochastic
  lower bound on log p(x), so the reported NLL is an upper bound in expectation.
- ``elbo``, ``rec`` (E_q log p(x|z)), ``kl`` (KL(q(z|x) || p(z))): one-sample terms with the
  analytic KL where it exists.
- ``bpd``: nll / (D ln 2), bits per data dimension (of the data as modelled: binary pixels
  for Bernoulli decoders; a model may define ``bits_per_dim`` for its own discretisation).
- ``active_units``: latent dimensions u with Cov_x(E_q[z_u | x]) > 0.01 (Burda et al. 2015,
  Sec. 5.2).
"""
from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from .distributions import bits_per_dim
from .models import model_device
from .inference import importance_sampled_log_prob, mean_and_stderr
from .objectives import elbo_terms

ACTIVE_UNIT_THRESHOLD = 0.01


@torch.no_grad()
def active_units(model, x: Tensor, batch_size: int = 1000, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Number of latent dimensions whose posterior mean varies across x: Var_x(E_q[z_u]) > threshold."""
    means = torch.cat([model.encode(x[i:i + batch_size])[0] for i in range(0, x.shape[0], batch_size)])
    if means.shape[0] < 2:
        return 0
    return int((means.double().var(0) > threshold).sum())


@torch.no_grad()
def evaluate(model, x: Tensor, k: int = 5000, batch_size: int | None = None,
             progress: bool = True, desc: str = "evaluate") -> dict:
    """Metrics of ``model`` on data ``x`` [N, *data_shape]; keys as in ``eval.json``.

    Args:
        k: importance samples per example (VAEs); ignored by exact models.
        batch_size: examples per pass (default: chosen to bound memory).
    """
    model.eval()
    x = x.to(model_device(model))
    N = x.shape[0]
    D = math.prod(x.shape[1:])
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=N, desc=desc, unit="ex", leave=False, dynamic_ncols=True)
    t0 = time.perf_counter()
    res: dict = {"log_prob_kind": model.log_prob_kind, "n": N}
    if model.log_prob_kind == "importance-sampled":
        out = importance_sampled_log_prob(model, x, k=k, batch_size=batch_size,
                                          progress=bar.update if bar else None)
        log_px = out["log_px"]
        res["k"] = k
        res["ess_mean"] = float(out["ess"].mean())
        # one-sample terms with the analytic KL
        bs = batch_size or 500
        terms = [elbo_terms(model, x[i:i + bs], 1) for i in range(0, N, bs)]
        for key in ("elbo", "rec", "kl"):
            v = torch.cat([t[key] for t in terms])
            res[key], res[f"{key}_stderr"] = mean_and_stderr(v)
        res["active_units"] = active_units(model, x)
        res["latent_dim"] = int(model.latent_dim)
    else:
        bs = batch_size or 1000
        parts = []
        for i in range(0, N, bs):
            parts.append(model.log_prob(x[i:i + bs]))
            if bar:
                bar.update(min(bs, N - i))
        log_px = torch.cat(parts)
        res["k"] = None
        for key in ("elbo", "rec", "kl", "active_units"):
            res[key] = None
    if bar:
        bar.close()
    mean_lp, se = mean_and_stderr(log_px)
    res["nll"], res["nll_stderr"] = -mean_lp, se
    to_bpd = getattr(model, "bits_per_dim", None) or (lambda nll: bits_per_dim(nll, D))
    res["bpd"] = float(to_bpd(res["nll"]))
    res["seconds"] = time.perf_counter() - t0
    return res


def format_table(res: dict) -> str:
    """A two-column text table of the metrics, with ± standard errors."""
    rows = []
    for key in ("dataset", "split", "n", "k", "log_prob_kind", "nll", "elbo", "rec", "kl", "bpd",
                "active_units", "ess_mean", "seconds"):
        if key not in res or res[key] is None:
            continue
        v = res[key]
        if isinstance(v, float):
            se = res.get(f"{key}_stderr")
            s = f"{v:.3f}" + (f" ± {se:.3f}" if se is not None and not math.isnan(se) else "")
        else:
            s = str(v)
        if key == "active_units" and "latent_dim" in res:
            s += f" / {res['latent_dim']}"
        rows.append((key, s))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
