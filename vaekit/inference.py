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


def release_large_blocks() -> None:
    """Make glibc return every block of 128 KiB or more to the OS when it is freed.

    glibc serves large allocations with mmap but raises that threshold each time such a
    block is freed (up to 32 MiB), after which the chunk-sized tensors of importance
    sampling come from the heap, which fragments: measured at K=5000 on MNIST, resident
    memory grew ~12 MB per test image with 2 threads (4.9 GB after 400 images; the full test
    set was killed for lack of memory) and ~1.3 MB per image with 1 thread (iwae-1l), against
    a flat ~240 MB with the threshold fixed at its default starting value of 128 KiB (the
    1 MiB tried first still let 1 MB latent-sample tensors fragment the heap). Called once
    per process; a no-op where libc has no ``mallopt``.
    """
    global _RELEASED
    if _RELEASED:
        return
    _RELEASED = True
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 128 << 10)  # M_MMAP_THRESHOLD = 128 KiB, fixed: no dynamic raise
    except (OSError, AttributeError):
        pass


_RELEASED = False


def _chunk_sizes(n_examples: int, k: int, data_numel: int, budget: int) -> tuple[int, int]:
    """(examples per batch, samples per chunk) with batch * chunk * data_numel <= budget."""
    per_code = max(1, data_numel)
    codes = max(1, budget // per_code)  # decoder evaluations per chunk
    samples = min(k, codes)
    examples = max(1, min(n_examples, codes // samples))
    return examples, samples


@torch.no_grad()
def importance_sampled_log_prob(
    model,
    x: Tensor,
    k: int = 1000,
    batch_size: int | None = None,
    sample_chunk: int | None = None,
    element_budget: int = DEFAULT_ELEMENT_BUDGET,
    progress=None,
) -> dict[str, Tensor]:
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
    release_large_blocks()
    N = x.shape[0]
    # numbers the decoder keeps alive per code: its output, times the activation factor of
    # decoders that are deep nets over x itself (PixelCNN)
    data_numel = math.prod(x.shape[1:]) * getattr(getattr(model.decoder, "likelihood", None), "activation_factor", 1)
    auto_b, auto_s = _chunk_sizes(N, k, data_numel, element_budget)
    B = batch_size or auto_b
    S = min(k, sample_chunk or auto_s)
    out = {"log_px": [], "elbo": [], "ess": []}
    for i in range(0, N, B):
        xb = x[i : i + B]
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


# --- per-datapoint SVI, semi-amortised SVI, and the gap decomposition ---------------------------
#
# Stochastic variational inference per datapoint (Hoffman et al. 2013; for VAEs: Krishnan et al.
# 2018, Kim et al. 2018 "semi-amortised VAEs"): for a trained, frozen decoder, free variational
# parameters phi_i = (mu_i, log sigma_i^2) of a Gaussian q(z; phi_i) are optimised for every
# example by Adam on the same ELBO the model was trained with (``objectives.elbo_terms``), all
# examples at once (the loss is the *sum* of per-example negative ELBOs, so each phi_i sees its
# own gradient, independent of the batch). Started from the prior (plain SVI) or from the
# encoder's q(z|x) (semi-amortised).
#
# Gap decomposition (Cremer, Li & Duvenaud, "Inference Suboptimality in VAEs", ICML 2018):
#     log p(x) - ELBO[q_amortised] = (log p(x) - ELBO[q*])  +  (ELBO[q*] - ELBO[q_amortised])
#                                     approximation gap         amortisation gap
# with q* the best Gaussian found by SVI. log p(x) is estimated by importance sampling with q*
# as proposal; each ELBO is the mean log-weight of K samples from its q.

from torch import nn  # noqa: E402
from torch.distributions import Distribution, Independent, Normal  # noqa: E402

from .distributions import diagonal_gaussian  # noqa: E402
from .errors import VaekitError  # noqa: E402
from .objectives import elbo_terms  # noqa: E402


class MaskedLikelihood(Distribution):
    """p(x_obs|z): the decoder's factorised p(x|z) with only the ``mask`` dimensions counted.

    ``mask`` [B, *data_shape] (1 = observed) is repeated over sample copies when the batch of
    ``px`` is a multiple of B (the layout of ``importance_terms`` / ``elbo_terms``)."""

    arg_constraints: dict = {}

    def __init__(self, px: Distribution, mask: Tensor):
        if not isinstance(px, Independent):
            raise VaekitError(
                "masked (partial-observation) inference needs a factorised likelihood such as bernoulli or gaussian"
            )
        self.px, self.mask = px, mask
        super().__init__(batch_shape=px.batch_shape, event_shape=px.event_shape, validate_args=False)

    def _mask_for(self, n: int) -> Tensor:
        b = self.mask.shape[0]
        if n % b:
            raise VaekitError(f"mask batch {b} does not divide decoder batch {n}")
        return self.mask.repeat(n // b, *([1] * (self.mask.dim() - 1)))

    def log_prob(self, x: Tensor) -> Tensor:
        lp = self.px.base_dist.log_prob(x)
        return (lp * self._mask_for(x.shape[0]).to(lp.dtype)).flatten(1).sum(-1)

    @property
    def mean(self) -> Tensor:
        return self.px.mean

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        return self.px.sample(sample_shape)


class _Posterior:
    """A stand-in model for ``objectives`` / ``importance_sampled_log_prob``: the given
    q(z) for the examples at hand as its 'encoder', the model's decoder (optionally
    masked to observed dimensions) and prior."""

    def __init__(self, model, q_fn, mask: Tensor | None = None):
        self.model, self.q_fn, self.mask = model, q_fn, mask

    def encoder(self, x: Tensor) -> Distribution:
        return self.q_fn(x)

    def decoder(self, z: Tensor) -> Distribution:
        px = self.model.decoder(z)
        return px if self.mask is None else MaskedLikelihood(px, self.mask)

    @property
    def prior(self) -> Distribution:
        return self.model.prior


def _initial_phi(model, x: Tensor, init: str) -> tuple[Tensor, Tensor]:
    if init == "encoder":
        if hasattr(model, "encode"):
            mu, log_var = model.encode(x)
        else:
            q = model.encoder(x)
            mu, log_var = q.mean, 2 * q.stddev.log()
        return mu.detach().clone(), log_var.detach().clone()
    if init == "prior":
        p = model.prior
        base = p.base_dist if isinstance(p, Independent) else None
        D = p.event_shape[0]
        if isinstance(base, Normal):
            mu = base.loc.expand(x.shape[0], D)
            log_var = 2 * base.scale.log().expand(x.shape[0], D)
        else:  # mixture priors: start at the origin with unit variance
            mu = torch.zeros(x.shape[0], D, device=x.device)
            log_var = torch.zeros_like(mu)
        return mu.detach().clone().float(), log_var.detach().clone().float()
    raise VaekitError(f"SVI init must be 'encoder' or 'prior'; got '{init}'")


def svi(
    model,
    x: Tensor,
    steps: int = 500,
    lr: float = 1e-2,
    samples: int = 1,
    init: str = "encoder",
    mask: Tensor | None = None,
    batch_size: int | None = None,
    progress=None,
) -> dict[str, Tensor]:
    """Per-datapoint SVI: optimise a Gaussian q(z; mu_i, log_var_i) for every example.

    Args:
        model: a VAE (``encoder``, ``decoder``, ``prior``); its weights are frozen (not changed).
        x: data [N, *data_shape] on the model's device.
        steps: Adam steps; lr: Adam learning rate; samples: L reparameterised samples per step.
        init: ``encoder`` (semi-amortised: start at q(z|x)) or ``prior`` (start at p(z)).
        mask: optional [N, *data_shape] (or [*data_shape]), 1 = observed: the ELBO of the
            observed part only, log p(x_obs|z) (image completion).
        batch_size: examples optimised together (default all; examples are independent, so
            this only bounds memory).
        progress: optional callable(step, mean_elbo) per step.

    Returns:
        ``mean``, ``log_var`` [N, D] (the optimised phi_i), ``history`` [steps + 1] (mean ELBO
        estimate over examples before each step and after the last, nats), ``elbo_init`` and
        ``elbo_final`` [N] (the per-example ELBO estimates with L samples at the first and last step).
    """
    if steps < 0 or samples < 1 or lr <= 0:
        raise VaekitError("SVI wants steps >= 0, samples >= 1 and lr > 0")
    N = x.shape[0]
    if mask is not None:
        mask = mask.to(x.device)
        if mask.shape == x.shape[1:]:
            mask = mask.unsqueeze(0).expand_as(x)
        if mask.shape != x.shape:
            raise VaekitError(f"SVI mask has shape {tuple(mask.shape)}; data has {tuple(x.shape)}")
    B = batch_size or N
    was_training = model.training if isinstance(model, nn.Module) else False
    params = [p for p in model.parameters() if p.requires_grad] if isinstance(model, nn.Module) else []
    out = {"mean": [], "log_var": [], "elbo_init": [], "elbo_final": []}
    history = torch.zeros(steps + 1, dtype=torch.float64)
    try:
        if isinstance(model, nn.Module):
            model.eval()
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            for i in range(0, N, B):
                xb = x[i : i + B]
                mu, log_var = _initial_phi(model, xb, init)
                mu.requires_grad_(True)
                log_var.requires_grad_(True)
                post = _Posterior(
                    model,
                    lambda _x, mu=mu, log_var=log_var: diagonal_gaussian(mu, log_var),
                    None if mask is None else mask[i : i + B],
                )
                opt = torch.optim.Adam([mu, log_var], lr=lr)
                for step in range(steps + 1):
                    elbo = elbo_terms(post, xb, samples)["elbo"]
                    history[step] += elbo.detach().double().sum().cpu()
                    if step == 0:
                        out["elbo_init"].append(elbo.detach())
                    if step == steps:
                        out["elbo_final"].append(elbo.detach())
                        break
                    opt.zero_grad(set_to_none=True)
                    (-elbo.sum()).backward()
                    opt.step()
                    if progress is not None and i + B >= N:
                        progress(step + 1, (history[step] / N).item())
                out["mean"].append(mu.detach())
                out["log_var"].append(log_var.detach())
    finally:
        for p in params:
            p.requires_grad_(True)
        if isinstance(model, nn.Module):
            model.train(was_training)
    res = {key: torch.cat(v) for key, v in out.items()}
    res["history"] = history / N
    return res


def posterior_log_prob(
    model,
    x: Tensor,
    mean: Tensor,
    log_var: Tensor,
    k: int = 1000,
    mask: Tensor | None = None,
    batch_size: int | None = None,
) -> dict[str, Tensor]:
    """``importance_sampled_log_prob`` with the Gaussian q(z; mean_i, log_var_i) as proposal
    (e.g. SVI's q*) instead of the encoder; with ``mask``, of the observed part only.

    Returns [N] tensors ``log_px``, ``elbo``, ``ess`` as ``importance_sampled_log_prob``."""
    N = x.shape[0]
    auto_b, _ = _chunk_sizes(N, k, math.prod(x.shape[1:]), DEFAULT_ELEMENT_BUDGET)
    B = batch_size or max(1, auto_b)
    out: dict[str, list] = {}
    for i in range(0, N, B):
        mu, lv = mean[i : i + B], log_var[i : i + B]
        post = _Posterior(
            model, lambda _x, mu=mu, lv=lv: diagonal_gaussian(mu, lv), None if mask is None else mask[i : i + B]
        )
        res = importance_sampled_log_prob(post, x[i : i + B], k=k, batch_size=B)
        for key, v in res.items():
            out.setdefault(key, []).append(v)
    return {key: torch.cat(v) for key, v in out.items()}


GAP_TERMS = ("log_px", "elbo_svi", "elbo_amortised", "approximation_gap", "amortisation_gap", "inference_gap")


def gap_decomposition(
    model,
    x: Tensor,
    k: int = 5000,
    svi_steps: int = 500,
    svi_lr: float = 1e-2,
    svi_samples: int = 1,
    svi_init: str = "encoder",
    batch_size: int | None = None,
    progress=None,
) -> dict:
    """Approximation and amortisation gaps of a VAE on ``x`` (Cremer et al. 2018).

    Args:
        model: a trained VAE; x: data [N, *data_shape] on its device.
        k: importance samples for log p(x) and for each ELBO estimate.
        svi_steps, svi_lr, svi_samples, svi_init: the per-example optimisation of q* (see :func:`svi`;
            ``encoder`` = semi-amortised, which starts at the amortised ELBO and climbs).
        batch_size: examples per SVI batch (memory bound only).
        progress: optional callable(stage: str, done, total).

    Returns:
        dict with, for each of ``GAP_TERMS``, ``{"mean", "stderr"}`` in nats per example (standard
        errors over examples; gaps are paired differences); ``per_example`` (the [N] tensors),
        ``n``, ``k``, ``svi`` settings and ``svi_history`` (mean ELBO per step), and
        ``log_px_amortised_proposal`` (the usual IS estimate with the encoder as proposal).
    """
    if k < 1:
        raise VaekitError(f"gap: k must be at least 1; got {k}")
    with torch.no_grad():
        amort = importance_sampled_log_prob(model, x, k=k)
    if progress is not None:
        progress("amortised", 1, 3)
    opt = svi(model, x, steps=svi_steps, lr=svi_lr, samples=svi_samples, init=svi_init, batch_size=batch_size)
    if progress is not None:
        progress("svi", 2, 3)
    with torch.no_grad():
        star = posterior_log_prob(model, x, opt["mean"], opt["log_var"], k=k)
    if progress is not None:
        progress("optimised", 3, 3)
    per = {
        "log_px": star["log_px"],
        "elbo_svi": star["elbo"],
        "elbo_amortised": amort["elbo"],
    }
    per["approximation_gap"] = per["log_px"] - per["elbo_svi"]
    per["amortisation_gap"] = per["elbo_svi"] - per["elbo_amortised"]
    per["inference_gap"] = per["log_px"] - per["elbo_amortised"]
    res = {}
    for key in GAP_TERMS:
        m, se = mean_and_stderr(per[key])
        res[key] = {"mean": m, "stderr": se}
    m, se = mean_and_stderr(amort["log_px"])
    res["log_px_amortised_proposal"] = {"mean": m, "stderr": se}
    res.update(
        n=x.shape[0],
        k=k,
        svi={"steps": svi_steps, "lr": svi_lr, "samples": svi_samples, "init": svi_init},
        svi_history=opt["history"].tolist(),
        per_example={key: v.cpu() for key, v in per.items()},
    )
    return res


def format_gap_table(results: dict[str, dict]) -> str:
    """A plain-text table of :func:`gap_decomposition` results keyed by split name."""
    cols = [
        ("log p(x)", "log_px"),
        ("ELBO q*", "elbo_svi"),
        ("ELBO amort.", "elbo_amortised"),
        ("approx. gap", "approximation_gap"),
        ("amort. gap", "amortisation_gap"),
    ]
    head = f"{'split':<8} {'n':>6} " + " ".join(f"{c:>18}" for c, _ in cols)
    lines = [head, "-" * len(head)]
    for split, r in results.items():
        cells = " ".join(f"{r[key]['mean']:>10.2f} ± {r[key]['stderr']:<5.2f}" for _, key in cols)
        lines.append(f"{split:<8} {r['n']:>6} {cells}")
    lines.append(
        "nats per example; ± one standard error over examples; "
        f"K={next(iter(results.values()))['k'] if results else '-'} importance samples"
    )
    return "\n".join(lines)
