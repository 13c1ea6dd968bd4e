"""Per-datapoint SVI, semi-amortised SVI, and the gap decomposition.

Stochastic variational inference per datapoint (Hoffman et al. 2013; for VAEs: Krishnan et al.
2018, Kim et al. 2018 "semi-amortised VAEs"): for a trained, frozen decoder, free variational
parameters phi_i of q(z; phi_i) *in the encoder's own family* (``Encoder.posterior``: for a
Gaussian encoder phi_i = (mu_i, log sigma_i^2); for a flow posterior also the flow's context
h_i, with the flow's shared weights as trained) are optimised for every example by Adam on the
same ELBO the model was trained with (``objectives.elbo_terms``), all examples at once (the loss
is the *sum* of per-example negative ELBOs, so each phi_i sees its own gradient, independent of
the batch). Started from the prior (plain SVI) or from the encoder's phi(x) (semi-amortised:
the start is the amortised q(z|x) itself). Everything runs in the model's floating dtype.

Gap decomposition (Cremer, Li & Duvenaud, "Inference Suboptimality in VAEs", ICML 2018):

    log p(x) - ELBO[q_amortised] = (log p(x) - ELBO[q*])  +  (ELBO[q*] - ELBO[q_amortised])
                                    approximation gap         amortisation gap

with q* the best member of the encoder's family found by SVI, so both gaps are >= 0 up to the
optimiser and Monte-Carlo error (a q* from another family, e.g. a diagonal Gaussian for a flow
posterior, could make the amortisation gap negative). log p(x) is the larger, per example, of two
importance-sampled estimates with K samples each, one with q* and one with the encoder as proposal,
as Cremer et al. take the best of their estimates: a q* that SVI left poor (started at the prior,
few steps) then cannot bias log p(x) low and hide part of the gaps, and the approximation gap
stays >= 0 example by example. The price is a small upward bias where the two estimates are
equally good: the maximum of two noisy estimates exceeds either's mean by the order of their
Monte-Carlo spread, which shrinks as K grows. Each ELBO is the mean log-weight of K samples from its
q.

The objectives and the importance sampler take a *model*; :class:`PosteriorModel` is the model
they see here: a given q(z) for the examples at hand in place of the encoder, the trained
decoder (optionally restricted to observed dimensions by :class:`MaskedDecoder`) and prior.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from ..checks import lookup
from ..distributions import diagonal_gaussian
from ..errors import VaekitError
from ..objectives import elbo_terms
from .importance import (
    DEFAULT_ELEMENT_BUDGET,
    chunk_sizes,
    decoder_numel,
    importance_sampled_log_prob,
    mean_and_stderr,
)


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


class MaskedDecoder:
    """A trained decoder seen through an observation mask: ``decoder(z)`` is p(x|z), or p(x_obs|z)
    (:class:`MaskedLikelihood`) when ``mask`` [B, *data_shape] is given.

    Offers what the objectives use of a decoder: ``body``, ``likelihood`` (those of the trained
    decoder), ``__call__(z)`` and ``log_likelihood(z, x) -> [N]``."""

    def __init__(self, decoder, mask: Tensor | None = None):
        self.decoder, self.mask = decoder, mask

    @property
    def body(self) -> nn.Module:
        return self.decoder.body

    @property
    def likelihood(self) -> nn.Module:
        return self.decoder.likelihood

    def __call__(self, z: Tensor) -> Distribution:
        px = self.decoder(z)
        return px if self.mask is None else MaskedLikelihood(px, self.mask)

    def log_likelihood(self, z: Tensor, x: Tensor) -> Tensor:
        """log p(x|z) (or log p(x_obs|z)) [N] for codes z [N, D] and data x [N, *data_shape]."""
        if self.mask is None:  # the trained decoder's own (possibly streamed) log-likelihood
            return self.decoder.log_likelihood(z, x)
        return self(z).log_prob(x)


class PosteriorModel:
    """A stand-in model for ``objectives`` and :func:`importance_sampled_log_prob`: the given q(z)
    for the examples at hand as its ``encoder``, the trained model's decoder (through
    ``decoder_type``, masked to the observed dimensions when ``mask`` is given) and its prior.

    Args:
        model: a trained model with ``has_latents`` (``decoder``, ``prior``).
        q_fn: callable(x [B, *data_shape]) -> q(z), batch [B], event [D].
        mask: optional [B, *data_shape], 1 = observed.
    """

    has_latents = True
    has_codes = False
    decoder_type: type[MaskedDecoder] = MaskedDecoder  # subclasses may record or transform decoder calls

    def __init__(self, model, q_fn: Callable[[Tensor], Distribution], mask: Tensor | None = None):
        self.model, self.q_fn, self.mask = model, q_fn, mask
        self.decoder = self.decoder_type(model.decoder, mask)

    def encoder(self, x: Tensor) -> Distribution:
        return self.q_fn(x)

    @property
    def prior(self) -> Distribution:
        return self.model.prior


def _phi_from_encoder(model, x: Tensor) -> tuple[Tensor, ...]:
    """The encoder's own phi(x): SVI starts at the amortised q(z|x)."""
    return tuple(p.detach().clone() for p in model.encoder.variational_params(x))


def _phi_from_prior(model, x: Tensor) -> tuple[Tensor, ...]:
    """phi with the base Gaussian at p(z) (N(0, I) for mixture and flow priors), in the model's dtype."""
    p = model.prior
    base = p.base_dist if isinstance(p, Independent) else None
    D = p.event_shape[0]
    if isinstance(base, Normal):
        mu = base.loc.expand(x.shape[0], D)
        log_var = 2 * base.scale.log().expand(x.shape[0], D)
    else:  # mixture and flow priors: start at the origin with unit variance
        mu = torch.zeros(x.shape[0], D, device=x.device, dtype=_model_dtype(model, x))
        log_var = torch.zeros_like(mu)
    return tuple(t.detach().clone() for t in model.encoder.params_from_gaussian(mu, log_var))


def _model_dtype(model, x: Tensor) -> torch.dtype:
    """The floating dtype ``model`` computes in: of its first floating parameter (x's without one)."""
    if isinstance(model, nn.Module):
        for t in model.parameters():
            if t.is_floating_point():
                return t.dtype
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


# name -> callable(model, x [B, ...]) -> initial phi, a tuple of [B, ...] tensors in the encoder's
# family (``Encoder.variational_params``; for a Gaussian encoder (mu, log_var) [B, D] each)
SVI_INITS = {"encoder": _phi_from_encoder, "prior": _phi_from_prior}


@contextmanager
def frozen(model) -> Iterator[None]:
    """``model`` in eval mode with no trainable parameter; both restored on exit."""
    is_module = isinstance(model, nn.Module)
    was_training = model.training if is_module else False
    params = [p for p in model.parameters() if p.requires_grad] if is_module else []
    try:
        if is_module:
            model.eval()
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
        if is_module:
            model.train(was_training)


def _full_mask(mask: Tensor | None, x: Tensor) -> Tensor | None:
    """``mask`` [N, *data_shape] or [*data_shape] as [N, *data_shape] on x's device."""
    if mask is None:
        return None
    mask = mask.to(x.device)
    if mask.shape == x.shape[1:]:
        mask = mask.unsqueeze(0).expand_as(x)
    if mask.shape != x.shape:
        raise VaekitError(f"SVI mask has shape {tuple(mask.shape)}; data has {tuple(x.shape)}")
    return mask


def _fit_batch(model, xb: Tensor, mask, init_phi, steps: int, lr: float, samples: int, history: Tensor, progress):
    """Adam on the ELBO of one batch xb [b, ...]; adds the summed ELBO of each step to ``history``.

    Returns phi (a tuple of [b, ...] tensors) and the ELBO estimates [b] before the first and after
    the last step."""
    phi = [p.requires_grad_(True) for p in init_phi(model, xb)]
    post = PosteriorModel(model, lambda _x: model.encoder.posterior(*phi), mask)
    opt = torch.optim.Adam(phi, lr=lr)
    for step in range(steps + 1):
        elbo = elbo_terms(post, xb, samples)["elbo"]
        history[step] += elbo.detach().double().sum().cpu()
        if step == 0:
            first = elbo.detach()
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        (-elbo.sum()).backward()
        opt.step()
        if progress is not None:
            progress(step)
    return tuple(p.detach() for p in phi), first, elbo.detach()


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
    """Per-datapoint SVI: optimise q(z; phi_i) in the encoder's family for every example.

    Args:
        model: a VAE (``has_latents``, an :class:`~vaekit.distributions.Encoder` as ``encoder``);
            its weights are frozen (not changed).
        x: data [N, *data_shape] on the model's device.
        steps: Adam steps; lr: Adam learning rate; samples: L reparameterised samples per step.
        init: ``encoder`` (semi-amortised: start at q(z|x)) or ``prior`` (start at p(z)); see ``SVI_INITS``.
        mask: optional [N, *data_shape] (or [*data_shape]), 1 = observed: the ELBO of the
            observed part only, log p(x_obs|z) (image completion).
        batch_size: examples optimised together (default all; examples are independent, so
            this only bounds memory).
        progress: optional callable(step, mean_elbo) per step.

    Returns:
        ``params`` (the optimised phi_i: a tuple of [N, ...] tensors, see ``Encoder.variational_params``),
        ``mean``, ``log_var`` [N, D] (E and log Var of q(z; phi_i): for a Gaussian encoder phi_i
        itself, for a flow posterior ``Encoder.moments``' Monte-Carlo estimate), ``history``
        [steps + 1] (mean ELBO estimate over examples before each step and after the last, nats),
        ``elbo_init`` and ``elbo_final`` [N] (the per-example ELBO estimates with L samples at the
        first and last step).
    """
    init_phi = lookup(SVI_INITS, init, "SVI init")
    if steps < 0 or samples < 1 or lr <= 0:
        raise VaekitError("SVI wants steps >= 0, samples >= 1 and lr > 0")
    N = x.shape[0]
    mask = _full_mask(mask, x)
    B = batch_size or N
    out = {"params": [], "elbo_init": [], "elbo_final": []}
    history = torch.zeros(steps + 1, dtype=torch.float64)
    with frozen(model), torch.enable_grad():
        for i in range(0, N, B):
            last = i + B >= N  # progress reports the mean over all examples: only in the last batch
            report = (lambda step: progress(step + 1, (history[step] / N).item())) if progress and last else None
            xb, mb = x[i : i + B], None if mask is None else mask[i : i + B]
            res = _fit_batch(model, xb, mb, init_phi, steps, lr, samples, history, report)
            for key, v in zip(out, res):
                out[key].append(v)
    res = {key: torch.cat(v) for key, v in out.items() if key != "params"}
    res["params"] = tuple(torch.cat(parts) for parts in zip(*out["params"]))
    with torch.no_grad():
        res["mean"], res["log_var"] = model.encoder.moments(*res["params"])
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
    """``importance_sampled_log_prob`` with the Gaussian q(z; mean_i, log_var_i) [N, D] as proposal
    (e.g. a Gaussian encoder's SVI q*) instead of the encoder; with ``mask`` [N, *data_shape], of
    the observed part only.

    Returns [N] tensors ``log_px``, ``elbo``, ``ess`` as ``importance_sampled_log_prob``."""
    return proposal_log_prob(model, x, diagonal_gaussian, (mean, log_var), k, mask, batch_size)


def proposal_log_prob(
    model,
    x: Tensor,
    make_q: Callable[..., Distribution],
    params: tuple[Tensor, ...],
    k: int = 1000,
    mask: Tensor | None = None,
    batch_size: int | None = None,
) -> dict[str, Tensor]:
    """``importance_sampled_log_prob`` with the proposal ``make_q(*params_i)`` per example, e.g.
    ``model.encoder.posterior`` and SVI's ``params`` (q* in the encoder's family).

    Args:
        params: tensors [N, ...] each, sliced over examples alongside x [N, *data_shape].
        mask: optional [N, *data_shape], 1 = observed (log p(x_obs)).

    Returns [N] tensors ``log_px``, ``elbo``, ``ess`` as ``importance_sampled_log_prob``."""
    N = x.shape[0]
    auto_b, auto_s = chunk_sizes(N, k, decoder_numel(model, x.shape[1:]), DEFAULT_ELEMENT_BUDGET)
    B = batch_size or max(1, auto_b)
    out: dict[str, list] = {}
    for i in range(0, N, B):
        phi = tuple(p[i : i + B] for p in params)
        post = PosteriorModel(model, lambda _x, phi=phi: make_q(*phi), None if mask is None else mask[i : i + B])
        res = importance_sampled_log_prob(post, x[i : i + B], k=k, batch_size=B, sample_chunk=auto_s)
        for key, v in res.items():
            out.setdefault(key, []).append(v)
    return {key: torch.cat(v) for key, v in out.items()}


# the per-example terms of gap_decomposition, nats
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

    q* is optimised in the encoder's own family (a diagonal Gaussian for a Gaussian encoder; for
    a flow posterior the base Gaussian and the flow's context per example), as the definitions
    ask, so both gaps are non-negative up to optimisation and Monte-Carlo error.

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
    with frozen(model):  # all three stages in eval mode, as SVI runs: a net in train mode (batch norm)
        return _gap_terms(model, x, k, svi_steps, svi_lr, svi_samples, svi_init, batch_size, progress)


def _gap_terms(model, x, k, svi_steps, svi_lr, svi_samples, svi_init, batch_size, progress) -> dict:
    """:func:`gap_decomposition` with ``model`` already frozen in eval mode."""
    with torch.no_grad():
        amort = importance_sampled_log_prob(model, x, k=k)
    if progress is not None:
        progress("amortised", 1, 3)
    opt = svi(model, x, steps=svi_steps, lr=svi_lr, samples=svi_samples, init=svi_init, batch_size=batch_size)
    if progress is not None:
        progress("svi", 2, 3)
    with torch.no_grad():
        star = proposal_log_prob(model, x, model.encoder.posterior, opt["params"], k=k)
    if progress is not None:
        progress("optimised", 3, 3)
    per = {
        "log_px": torch.maximum(star["log_px"], amort["log_px"]),  # the better proposal, per example
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
