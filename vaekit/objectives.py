"""Variational objectives, written once for every VAE architecture.

All functions take a model exposing ``encoder(x) -> q(z|x)``, ``decoder(z) -> p(x|z)``
and ``prior -> p(z)`` (torch distributions), whose decoder also offers
``log_likelihood(z, x) -> [N]`` (``vaekit.models.vae.Decoder``), and return per-example
tensors in nats.

- ELBO (Kingma & Welling 2014): log p(x) >= E_q[log p(x|z)] - KL(q(z|x) || p(z)),
  estimated with L reparameterised samples z = mu + sigma * eps; the KL term is
  analytic when ``torch.distributions.kl_divergence`` knows the pair (diagonal
  Gaussians), a Monte-Carlo average of log q(z|x) - log p(z) otherwise (flows).
- Importance-weighted bound (Burda, Grosse & Salakhutdinov 2015, "IWAE"):
  L_k = E[log (1/k) sum_j p(x, z_j) / q(z_j|x)], z_j ~ q(z|x); L_1 is the ELBO and L_k
  increases with k towards log p(x).
- Gradient estimators (``gradient``): ``reparam``, the plain reparameterised gradient of the
  bound; ``stl``, "sticking the landing" (Roeder, Wu & Duvenaud 2017) for the ELBO: the score
  term d log q_phi(z|x) / d phi (zero mean) is dropped by evaluating log q(z|x) with the
  variational parameters held fixed while z = z(phi, eps) keeps its path derivative, so the
  gradient vanishes when q is the exact posterior; ``dreg``, doubly reparameterised gradients
  (Tucker, Lawson, Gu & Maddison 2018) for the IWAE bound: with w~_j the normalised weights, the
  encoder's gradient is sum_j w~_j^2 (d log w_j / d z_j)(d z_j / d phi) (q's parameters held
  fixed in log q), the decoder's and prior's the usual sum_j w~_j d log w_j / d theta. Both are
  unbiased for the gradient of the same bound; they need log q(z|x) at a given z.
- beta (Higgins et al. 2017), linear KL warm-up (Bowman et al. 2016; Sonderby et al.
  2016) and free bits (Kingma et al. 2016, "Improving VI with IAF", Sec. C.8) change the
  *training loss* only; the reported ``elbo`` is always the true bound.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Independent, Normal, kl_divergence

from .checks import lookup
from .distributions import rsample_and_log_prob
from .errors import ConfigError

# gradient estimator -> the objective it estimates the gradient of
GRADIENTS = {"reparam": None, "stl": "elbo", "dreg": "iwae"}


def analytic_kl(q, p) -> Tensor | None:
    """KL(q || p) per example [B] in closed form, or ``None`` when torch has no formula."""
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return None


def kl_per_dimension(q, p) -> Tensor | None:
    """KL per latent dimension [B, D] for factorised Gaussians (for free bits), else None."""
    if (
        isinstance(q, Independent)
        and isinstance(p, Independent)
        and isinstance(q.base_dist, Normal)
        and isinstance(p.base_dist, Normal)
    ):
        return kl_divergence(q.base_dist, p.base_dist)
    return None


def importance_terms(model, x: Tensor, k: int, q=None, draw: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """For z_j ~ q(z|x), j = 1..k: (log p(x|z_j), log p(z_j), log q(z_j|x)), each [k, B].

    The decoder sees the k samples of all B examples as one batch of k*B codes, through
    ``decoder.log_likelihood``, which may stream it without materialising p(x|z)
    (``vaekit.inference.streamed``).

    draw: when given, the k samples are drawn in consecutive pieces of at most ``draw`` (one
        ``rsample`` each, concatenated), so that a caller evaluating several pieces in one decoder
        pass draws the very samples it would draw piece by piece, one pass each.
    """
    q = model.encoder(x) if q is None else q
    z, log_q = _draws(q, k, draw or k)  # [k, B, D], [k, B]
    log_pz = model.prior.log_prob(z)  # [k, B]
    B = x.shape[0]
    zf, xr = z.reshape(k * B, *z.shape[2:]), repeat_examples(x, k)
    log_px = model.decoder.log_likelihood(zf, xr)
    return log_px.view(k, B), log_pz, log_q


def repeat_examples(x: Tensor, k: int) -> Tensor:
    """x [B, ...] -> [k*B, ...], sample-major (row j*B + b is x[b]), matching z.reshape(k*B, D).

    For one example (B = 1, the case of K=5000 importance sampling) this is a stride-0 view,
    not a copy of k images."""
    if x.shape[0] == 1:
        return x.expand(k, *x.shape[1:])
    return x.unsqueeze(0).expand(k, *x.shape).reshape(k * x.shape[0], *x.shape[1:])


def _draws(q, k: int, piece: int) -> tuple[Tensor, Tensor]:
    """k reparameterised samples of q and their log q, drawn ``piece`` at a time: [k, B, D], [k, B]."""
    if piece >= k:
        return rsample_and_log_prob(q, (k,))
    zs, log_qs = zip(*(rsample_and_log_prob(q, (min(piece, k - j),)) for j in range(0, k, piece)))
    return torch.cat(zs), torch.cat(log_qs)


def log_importance_weights(model, x: Tensor, k: int, q=None, draw: int | None = None) -> Tensor:
    """log w_j = log p(x|z_j) + log p(z_j) - log q(z_j|x), z_j ~ q(z|x); shape [k, B]
    (``draw``: see :func:`importance_terms`)."""
    log_px, log_pz, log_q = importance_terms(model, x, k, q, draw)
    return log_px + log_pz - log_q


def iwae_bound(log_w: Tensor) -> Tensor:
    """log (1/k) sum_j w_j from log-weights [k, B] -> [B] (logsumexp, no overflow)."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


def elbo_terms(model, x: Tensor, L: int = 1) -> dict[str, Tensor]:
    """ELBO with L reparameterised samples; returns per-example ``rec``, ``kl``, ``elbo`` [B].

    Also returns ``kl_dims`` [B, D] when the KL is analytic and factorised (for free bits).
    """
    q = model.encoder(x)
    p = model.prior
    B = x.shape[0]
    kl_dims = kl_per_dimension(q, p)  # factorised Gaussians: the KL per dimension, summed below
    kl = kl_dims.sum(-1) if kl_dims is not None else analytic_kl(q, p)
    if kl is None:
        z, log_q = rsample_and_log_prob(q, (L,))  # [L, B, D]
        kl = (log_q - p.log_prob(z)).mean(0)
    else:
        z = q.rsample((L,))
    px = model.decoder(z.reshape(L * B, *z.shape[2:]))
    rec = px.log_prob(repeat_examples(x, L)).view(L, B).mean(0)
    out = {"rec": rec, "kl": kl, "elbo": rec - kl}
    if kl_dims is not None:
        out["kl_dims"] = kl_dims
    return out


class _LogDensity(nn.Module):
    """forward(x, z) = log encoder(x)(z): lets ``functional_call`` swap the encoder's parameters for
    the whole evaluation, including layers a distribution runs lazily inside ``log_prob``."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return self.encoder(x).log_prob(z)


def stopped_log_prob(model, x: Tensor, q, z: Tensor) -> Tensor:
    """log q(z|x) [*lead] with the encoder's parameters held fixed: gradients reach z, not phi.

    A diagonal Gaussian q is rebuilt from its detached mean and scale; other posteriors
    (hierarchical ones) are re-evaluated with detached copies of the encoder's parameters."""
    if isinstance(q, Independent) and isinstance(q.base_dist, Normal):
        base = Normal(q.base_dist.loc.detach(), q.base_dist.scale.detach(), validate_args=False)
        return Independent(base, q.reinterpreted_batch_ndims, validate_args=False).log_prob(z)
    wrapper = _LogDensity(model.encoder)
    params = {name: p.detach() for name, p in wrapper.named_parameters()}
    return torch.func.functional_call(wrapper, params, (x, z), strict=False)


def stopped_terms(model, x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """z_j ~ q(z|x) reparameterised, j = 1..k, and (log p(x|z_j), log p(z_j), log q(z_j|x)) with
    q's parameters held fixed in log q (:func:`stopped_log_prob`): z [k, B, D], the terms [k, B]."""
    q = model.encoder(x)
    z = q.rsample((k,))
    log_q = stopped_log_prob(model, x, q, z)
    B = x.shape[0]
    log_px = model.decoder.log_likelihood(z.reshape(k * B, *z.shape[2:]), repeat_examples(x, k)).view(k, B)
    return z, log_px, model.prior.log_prob(z), log_q


def stl_elbo_terms(model, x: Tensor, L: int = 1) -> dict[str, Tensor]:
    """The ELBO's ``rec``, ``kl`` (Monte Carlo) and ``elbo`` [B] from L samples, whose gradient is the
    sticking-the-landing estimator (Roeder et al. 2017): the same values as :func:`elbo_terms`
    with a Monte-Carlo KL, without the score term of log q."""
    _, log_px, log_pz, log_q = stopped_terms(model, x, L)
    rec, kl = log_px.mean(0), (log_q - log_pz).mean(0)
    return {"rec": rec, "kl": kl, "elbo": rec - kl}


def dreg_iwae_terms(model, x: Tensor, k: int) -> dict[str, Tensor]:
    """The k-sample IWAE bound [B] (``iwae``, with ``rec``, ``kl``, ``elbo`` from the same draws) and
    ``surrogate`` [B]: equal to ``iwae`` in value, its gradient is the DReG estimator (Tucker et
    al. 2018). The gradient reaching z_j is scaled by w~_j (a hook), which turns the IWAE
    path gradient w~_j d log w_j / d z_j into DReG's w~_j^2 d log w_j / d z_j for the encoder;
    the decoder and prior see w~_j d log w_j / d theta, the IWAE gradient."""
    z, log_px, log_pz, log_q = stopped_terms(model, x, k)
    log_w = log_px + log_pz - log_q
    bound = iwae_bound(log_w)
    surrogate = bound
    if z.requires_grad:
        w = torch.softmax(log_w.detach(), dim=0)  # [k, B], the normalised weights w~
        z.register_hook(lambda grad: grad * w.unsqueeze(-1).to(grad.dtype))
        weighted = (w * log_w).sum(0)
        surrogate = bound.detach() + weighted - weighted.detach()
    rec, kl = log_px.mean(0), (log_q - log_pz).mean(0)
    return {"iwae": bound, "surrogate": surrogate, "rec": rec, "kl": kl, "elbo": rec - kl}


def check_gradient(gradient: str, objective: str) -> None:
    """One-line ConfigError when ``gradient`` is unknown or estimates another objective's gradient."""
    estimates = lookup(GRADIENTS, gradient, "train.gradient")
    if estimates not in (None, objective):
        raise ConfigError(f"gradient={gradient} estimates the {estimates} gradient; objective is {objective}")


def kl_weight(step: int, beta: float = 1.0, warmup_steps: int = 0) -> float:
    """beta, ramped linearly from 0 over the first ``warmup_steps`` steps (a pure function)."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, step / warmup_steps)


def free_bits_kl(kl: Tensor, kl_dims: Tensor | None, free_bits: float) -> Tensor:
    """KL with each dimension's batch-mean KL floored at ``free_bits`` nats (per example [B]).

    Per-dimension when available (Kingma et al. 2016); otherwise (Monte-Carlo KL) the
    total KL's batch mean is floored at ``free_bits``. The floor acts on the batch mean, as in the
    paper, so gradients vanish only for
    dimensions whose average KL is below the floor.
    """
    if free_bits <= 0:
        return kl
    if kl_dims is not None:
        mean_dims = kl_dims.mean(0, keepdim=True)  # [1, D]
        below = (mean_dims < free_bits).to(kl_dims.dtype)
        floored = kl_dims * (1 - below) + below * free_bits
        # floored dims contribute a constant (no gradient); others their per-example KL
        return floored.sum(-1)
    return torch.where(kl.mean() < free_bits, torch.full_like(kl, free_bits), kl)


def vae_loss(
    model,
    x: Tensor,
    objective: str = "elbo",
    k: int = 1,
    beta: float = 1.0,
    warmup_steps: int = 0,
    free_bits: float = 0.0,
    step: int = 0,
    gradient: str = "reparam",
) -> dict[str, Tensor]:
    """The training loss and the honest per-example terms (nats).

    Returns ``loss`` (what is minimised), ``elbo`` (true bound with the samples drawn),
    ``rec`` and ``kl`` ([B] each); with ``objective='iwae'`` also ``iwae`` (the k-sample bound).
    ``gradient`` picks the estimator (module docstring); the values do not depend on it.
    """
    check_gradient(gradient, objective)
    if gradient == "dreg":
        t = dreg_iwae_terms(model, x, k)
        return {"loss": -t["surrogate"], "iwae": t["iwae"], "elbo": t["elbo"], "rec": t["rec"], "kl": t["kl"]}
    if objective == "iwae":
        log_px, log_pz, log_q = importance_terms(model, x, k)
        bound = iwae_bound(log_px + log_pz - log_q)
        # rec, kl and elbo from the same k draws (Monte-Carlo KL): mean of the log-weights
        rec, kl = log_px.mean(0), (log_q - log_pz).mean(0)
        return {"loss": -bound, "iwae": bound, "elbo": rec - kl, "rec": rec, "kl": kl}
    terms = stl_elbo_terms(model, x, k) if gradient == "stl" else elbo_terms(model, x, k)
    w = kl_weight(step, beta, warmup_steps)
    kl_train = free_bits_kl(terms["kl"], terms.get("kl_dims"), free_bits)
    loss = -(terms["rec"] - w * kl_train)
    return {"loss": loss, "elbo": terms["elbo"], "rec": terms["rec"], "kl": terms["kl"]}
