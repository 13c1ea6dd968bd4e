"""Inference for trained latent-variable models.

Importance-sampled marginal likelihood (Burda et al. 2015, Sec. 5; Rezende et al. 2014):

    log p(x) ~= log (1/K) sum_k p(x, z_k) / q(z_k|x),   z_k ~ q(z|x),

computed with logsumexp, vectorised over examples *and* samples, in chunks so memory
stays bounded whatever K: each chunk evaluates the decoder on (examples x samples)
codes at once and folds its log-weights into a running logsumexp per example. K = 1
is the ELBO; the estimate increases in expectation with K and is consistent as K grows.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .objectives import log_importance_weights

DEFAULT_ELEMENT_BUDGET = 1 << 22  # decoder outputs per chunk (~16 MiB of float32 per tensor)


def _chunk_sizes(n_examples: int, k: int, data_numel: int, budget: int) -> tuple[int, int]:
    """(examples per batch, samples per chunk) with batch * chunk * data_numel <= budget."""
    per_code = max(1, data_numel)
    codes = max(1, budget // per_code)  # decoder evaluations per chunk
    samples = min(k, codes)
    examples = max(1, min(n_examples, codes // samples))
    return examples, samples


@torch.no_grad()
def importance_sampled_log_prob(model, x: Tensor, k: int = 1000, batch_size: int | None = None,
                                sample_chunk: int | None = None,
                                element_budget: int = DEFAULT_ELEMENT_BUDGET,
                                progress=None) -> dict[str, Tensor]:
    """log p(x) by importance sampling with q(z|x) as proposal.

    Args:
        model: exposes ``encoder``, ``decoder``, ``prior`` (see ``vaekit.models.vae``).
        x: data [N, *data_shape] on the model's device.
        k: importance samples per example (K in the formula above).
        batch_size, sample_chunk: examples per pass and samples per chunk; by default chosen so
            that one chunk's decoder output holds at most ``element_budget`` numbers.
        progress: optional callable(n_done_examples) for progress bars.

    Returns:
        dict of [N] tensors in nats: ``log_px`` (the K-sample estimate), ``elbo`` (mean log-weight,
        an unbiased ELBO estimate from the same samples) and ``ess`` (effective sample size
        (sum w)^2 / sum w^2, a diagnostic of the proposal).
    """
    N = x.shape[0]
    # numbers the decoder keeps alive per code: its output, times the activation factor of
    # decoders that are deep nets over x itself (PixelCNN)
    data_numel = math.prod(x.shape[1:]) * getattr(getattr(model.decoder, "likelihood", None),
                                                   "activation_factor", 1)
    auto_b, auto_s = _chunk_sizes(N, k, data_numel, element_budget)
    B = batch_size or auto_b
    S = min(k, sample_chunk or auto_s)
    out = {"log_px": [], "elbo": [], "ess": []}
    for i in range(0, N, B):
        xb = x[i:i + B]
        q = model.encoder(xb)
        lse = torch.full((xb.shape[0],), -math.inf, device=x.device, dtype=torch.float64)
        lse2 = torch.full_like(lse, -math.inf)
        total = torch.zeros_like(lse)
        done = 0
        while done < k:
            s = min(S, k - done)
            log_w = log_importance_weights(model, xb, s, q=q).double()  # [s, b]
            lse = torch.logaddexp(lse, torch.logsumexp(log_w, 0).to(lse.dtype))
            lse2 = torch.logaddexp(lse2, torch.logsumexp(2 * log_w, 0).to(lse.dtype))
            total += log_w.sum(0).to(total.dtype)
            done += s
        out["log_px"].append((lse - math.log(k)).float())
        out["elbo"].append((total / k).float())
        out["ess"].append((2 * lse - lse2).exp().float())
        if progress is not None:
            progress(xb.shape[0])
    return {key: torch.cat(v) for key, v in out.items()}


def mean_and_stderr(values: Tensor) -> tuple[float, float]:
    """Mean over examples and its standard error std / sqrt(n)."""
    v = values.double()
    n = v.numel()
    se = v.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan")
    return v.mean().item(), se
