"""Image completion: sample the missing pixels of partly observed images from a VAE.

Given the observed pixels x_o of an image (a mask m, 1 = observed), the missing pixels x_u
are drawn from the model's conditional

    p(x_u | x_o) = ∫ p(x_u | z) p(z | x_o) dz,

with p(z | x_o) ∝ p(x_o | z) p(z) (the decoder's likelihood restricted to observed pixels:
p(x|z) factorises over pixels for the Bernoulli and Gaussian likelihoods, so p(x_o|z) is the
product over observed pixels only). The posterior over z is reached by importance sampling
from a proposal r(z):

- ``importance``: r = the encoder's q(z | x ⊙ m) (missing pixels set to 0; the weights
  correct for the encoder never having seen masked inputs);
- ``svi``: r = a Gaussian fitted by SVI to the ELBO of the observed part only (semi-amortised,
  started from the encoder's output; see ``vaekit.inference.variational``).

Weights w_j = p(x_o|z_j) p(z_j) / r(z_j); completions resample z from the weighted set
(sampling-importance-resampling, Rubin 1988) and draw x_u ~ p(x_u|z); observed pixels are
copied through unchanged. The held-out pixels' log-likelihood is the self-normalised estimate

    log p(x_u | x_o) ≈ log Σ_j w_j p(x_u | z_j) - log Σ_j w_j

(a ratio of the importance-sampled p(x) and p(x_o) from the same samples; consistent as K
grows), reported with the log-likelihood of the held-out pixels under each completion's z.

References: Rezende, Mohamed & Wierstra 2014 (Sec. 6, imputation); Burda et al. 2015;
Cremer et al. 2018 (SVI refinement); Mattei & Frellsen 2018 (importance-weighted imputation).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .checks import lookup, shown
from .distributions import diagonal_gaussian, distribution_mean
from .errors import DataError, VaekitError
from .inference import (
    DEFAULT_ELEMENT_BUDGET,
    MaskedDecoder,
    MaskedLikelihood,
    PosteriorModel,
    effective_sample_size,
    frozen,
    mean_and_stderr,
    svi,
)
from .models.base import check_data_levels
from .objectives import importance_terms, repeat_examples
from .seeding import RANDOM_MASK, derive_seed

HALVES = ("top", "bottom", "left", "right")


def parse_mask(spec: str, shape: tuple[int, ...], seed: int = 0) -> Tensor:
    """The observation mask of one example, float [*shape] with 1 = observed, 0 = missing.

    ``spec`` names the *missing* (to be completed) pixels:
      - ``top`` / ``bottom`` / ``left`` / ``right``: that half of the image (shape [C, H, W]);
      - ``random:P``: each pixel (all its channels) missing with probability P (seeded);
      - a file (``.npy`` or an image such as ``.png``) of shape [H, W], [1, H, W] or [C, H, W]
        (or [D] for flat data): nonzero / bright (> 0.5 after scaling to [0, 1]) = missing.
    """
    shape = tuple(shape)
    spec = str(spec).strip()
    if spec in HALVES:
        if len(shape) != 3:
            raise VaekitError(f"mask '{spec}' needs image data [C, H, W]; data has shape {shape}")
        _, H, W = shape
        m = torch.ones(shape)
        if spec == "top":
            m[:, : H // 2] = 0
        elif spec == "bottom":
            m[:, H // 2 :] = 0
        elif spec == "left":
            m[:, :, : W // 2] = 0
        else:
            m[:, :, W // 2 :] = 0
        return m
    if spec.startswith("random:") or spec == "random":
        try:
            p = float(spec.split(":", 1)[1]) if ":" in spec else 0.5
        except ValueError:
            raise VaekitError(f"mask '{spec}': the fraction after 'random:' must be a number") from None
        if not 0.0 < p < 1.0:
            raise VaekitError(f"mask '{spec}': the missing fraction must be in (0, 1)")
        g = torch.Generator().manual_seed(derive_seed(seed, RANDOM_MASK))  # apart from the samples' seed
        pix = shape[1:] if len(shape) == 3 else shape
        missing = torch.rand(pix, generator=g) < p
        m = (~missing).float()
        return m.unsqueeze(0).expand(shape).clone() if len(shape) == 3 else m
    path = Path(spec)
    if path.is_dir():
        raise DataError(f"mask file {shown(spec)} is a folder")
    if not path.is_file():
        if path.suffix or "/" in spec or "\\" in spec:  # it names a file, not a kind of mask
            raise DataError(f"mask file {shown(spec)} does not exist")
        raise VaekitError(f"unknown mask '{shown(spec)}': use top, bottom, left, right, random:P or a mask file")
    return _mask_from_file(path, shape)


def _mask_from_file(path: Path, shape: tuple[int, ...]) -> Tensor:
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False).astype(np.float64)
            if arr.size and arr.max() > 1:
                arr = arr / arr.max()
        else:
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read mask file {path}: {str(e).splitlines()[0]}") from None
    missing = torch.from_numpy(arr > 0.5)
    if missing.shape == shape:
        return (~missing).float()
    if len(shape) == 3 and missing.shape in ((shape[1], shape[2]), (1, shape[1], shape[2])):
        return (~missing).float().reshape(1, shape[1], shape[2]).expand(shape).clone()
    raise DataError(f"mask file {path} has shape {tuple(missing.shape)}; data has shape {shape}")


class _RecordingDecoder(MaskedDecoder):
    """A masked decoder that keeps the codes z and the full p(x|z) of its last call: the
    importance weights need p(x_obs|z), the held-out score and the resampling z and p(x_u|z)."""

    def __call__(self, z: Tensor):
        self.z = z
        self.px = self.decoder(z)
        return MaskedLikelihood(self.px, self.mask)

    def log_likelihood(self, z: Tensor, x: Tensor) -> Tensor:
        return self(z).log_prob(x)


class _Recording(PosteriorModel):
    """:class:`PosteriorModel` whose decoder records its last call (``decoder.z``, ``decoder.px``)."""

    decoder_type = _RecordingDecoder


@torch.no_grad()
def _complete_batch(model, x: Tensor, m: Tensor, q, n_completions: int, k: int, mean: bool) -> dict:
    B = x.shape[0]
    rec = _Recording(model, lambda _x: q, m)
    log_px_obs, log_pz, log_q = importance_terms(rec, x, k, q=q)  # [k, B] each
    log_w = (log_px_obs + log_pz - log_q).double()
    log_px_mis = (
        MaskedLikelihood(rec.decoder.px, 1 - m).log_prob(repeat_examples(x, k)).view(k, B).double()
    )  # log p(x_u|z_j)
    heldout = torch.logsumexp(log_w + log_px_mis, 0) - torch.logsumexp(log_w, 0)
    ess = effective_sample_size(log_w)
    # sampling-importance-resampling: S codes per example from the weighted k
    idx = torch.distributions.Categorical(logits=log_w.T.float()).sample((n_completions,))  # [S, B]
    z = rec.decoder.z.view(k, B, -1)[idx, torch.arange(B, device=x.device)]  # [S, B, D]
    px = model.decoder(z.reshape(n_completions * B, -1))
    xs = (distribution_mean(px) if mean else px.sample()).view(n_completions, B, *x.shape[1:])
    observed = m.bool().unsqueeze(0).expand_as(xs)
    comp = torch.where(observed, x.unsqueeze(0).expand_as(xs), xs)  # observed pixels: copied through
    per_comp = (
        MaskedLikelihood(px, 1 - m)
        .log_prob(x.unsqueeze(0).expand_as(xs).reshape(n_completions * B, *x.shape[1:]))
        .view(n_completions, B)
    )
    return {
        "completions": comp.transpose(0, 1),
        "heldout_log_lik": heldout.float(),
        "ess": ess.float(),
        "heldout_log_lik_per_completion": per_comp.T,
        "log_px_observed": (torch.logsumexp(log_w, 0) - math.log(k)).float(),
    }


def _observation_mask(mask, x: Tensor) -> Tensor:
    """``mask`` ([*data_shape] or [N, *data_shape], nonzero = observed) as 0/1 [N, *data_shape] in x's dtype."""
    mask = torch.as_tensor(mask, dtype=x.dtype, device=x.device)
    if mask.shape == x.shape[1:]:
        mask = mask.unsqueeze(0).expand_as(x)
    if mask.shape != x.shape:
        raise VaekitError(f"mask has shape {tuple(mask.shape)}; images have {tuple(x.shape)}")
    return (mask != 0).to(x.dtype)


def _encoder_proposal(model, x_in: Tensor, mask: Tensor, steps: int, lr: float, samples: int) -> tuple[Tensor, Tensor]:
    """The encoder's q(z | x ⊙ m): mean, log-variance [N, D]."""
    with torch.no_grad():
        return model.encode(x_in)


def _svi_proposal(model, x_in: Tensor, mask: Tensor, steps: int, lr: float, samples: int) -> tuple[Tensor, Tensor]:
    """A Gaussian fitted by SVI to the ELBO of the observed part, started at the encoder: mean, log-variance [N, D]."""
    fit = svi(model, x_in, steps=steps, lr=lr, samples=samples, init="encoder", mask=mask)
    return fit["mean"], fit["log_var"]


# method -> callable(model, masked x [N, ...], mask, svi steps, svi lr, svi samples) -> proposal (mean, log_var)
PROPOSALS = {"importance": _encoder_proposal, "svi": _svi_proposal}
METHODS = tuple(PROPOSALS)


def complete(
    model,
    x: Tensor,
    mask: Tensor,
    n_completions: int = 8,
    method: str = "importance",
    k: int = 1000,
    svi_steps: int = 200,
    svi_lr: float = 1e-2,
    svi_samples: int = 4,
    mean: bool = False,
    batch_size: int | None = None,
) -> dict:
    """Complete the missing pixels of ``x`` given the observed ones.

    Args:
        model: a VAE (``has_latents`` and ``has_codes``) with a factorised likelihood.
        x: images [N, *data_shape] on the model's device (the missing pixels' values are used
            only to score the completions, never to make them).
        mask: [*data_shape] or [N, *data_shape], 1 = observed (see :func:`parse_mask`).
        n_completions: S completions per image.
        method: ``importance`` (encoder proposal) or ``svi`` (proposal fitted to the observed part).
        k: importance samples per image.
        svi_steps, svi_lr, svi_samples: the SVI fit (``method='svi'``).
        mean: paste E[x_u|z] instead of a sample x_u ~ p(x_u|z).
        batch_size: images per pass (default: memory-bounded from k).

    Returns:
        ``completions`` [N, S, *data_shape] (observed pixels equal to x's exactly), ``mask``
        [N, *data_shape], ``heldout_log_lik`` [N] (log p(x_u|x_o), nats), its ``_per_pixel``
        version, ``heldout_log_lik_per_completion`` [N, S] (log p(x_u|z_s) of each completion's
        code), ``ess`` [N] (effective sample size of the weights), ``log_px_observed`` [N]
        (log p(x_o)), ``n_missing`` [N], and ``summary`` (means ± standard errors).
    """
    proposal = lookup(PROPOSALS, method, "completion method")
    if n_completions < 1 or k < 1:
        raise VaekitError("completion needs n_completions >= 1 and k >= 1")
    check_data_levels(model, x)
    with frozen(model):  # eval mode: with batch norm in train mode each image's q would depend on its batch
        return _complete(
            model, x, mask, proposal, n_completions, method, k, svi_steps, svi_lr, svi_samples, mean, batch_size
        )


def _complete(model, x, mask, proposal, n_completions, method, k, svi_steps, svi_lr, svi_samples, mean, batch_size):
    """:func:`complete` with ``model`` frozen in eval mode and the arguments checked."""
    N = x.shape[0]
    mask = _observation_mask(mask, x)
    n_missing = (1 - mask).flatten(1).sum(-1)
    if bool((n_missing == 0).any()):
        raise VaekitError("the mask hides no pixel of some image: nothing to complete")
    means, log_vars = proposal(model, x * mask, mask, svi_steps, svi_lr, svi_samples)
    numel = math.prod(x.shape[1:])
    B = batch_size or max(1, DEFAULT_ELEMENT_BUDGET // max(1, k * numel))
    parts: dict[str, list] = {}
    for i in range(0, N, B):
        q = diagonal_gaussian(means[i : i + B], log_vars[i : i + B])
        out = _complete_batch(model, x[i : i + B], mask[i : i + B], q, n_completions, k, mean)
        for key, v in out.items():
            parts.setdefault(key, []).append(v)
    res = {key: torch.cat(v) for key, v in parts.items()}
    res["mask"] = mask
    res["n_missing"] = n_missing
    res["heldout_log_lik_per_pixel"] = res["heldout_log_lik"] / n_missing
    summary = {"method": method, "k": k, "n": N, "n_completions": n_completions}
    for key in ("heldout_log_lik", "heldout_log_lik_per_pixel", "ess", "log_px_observed"):
        m_, se = mean_and_stderr(res[key])
        summary[key] = {"mean": m_, "stderr": se}
    summary["heldout_log_lik_per_completion"] = dict(
        zip(("mean", "stderr"), mean_and_stderr(res["heldout_log_lik_per_completion"].flatten()))
    )
    res["summary"] = summary
    return res


def format_completion_summary(summary: dict) -> str:
    """Lines for stdout: the held-out pixels' log-likelihood with standard errors."""
    s = summary
    f = lambda d: f"{d['mean']:.3f} ± {d['stderr']:.3f}"  # noqa: E731
    rows = [
        ("method", f"{s['method']} (K={s['k']}, {s['n_completions']} completions each, {s['n']} images)"),
        ("log p(held-out | observed)", f"{f(s['heldout_log_lik'])} nats per image"),
        ("  per held-out pixel", f"{f(s['heldout_log_lik_per_pixel'])} nats"),
        ("log p(held-out | z_s), each s", f"{f(s['heldout_log_lik_per_completion'])} nats per completion"),
        ("log p(observed)", f"{f(s['log_px_observed'])} nats per image"),
        ("effective sample size", f"{f(s['ess'])} of {s['k']}"),
    ]
    return "\n".join(f"{k:<30}  {v}" for k, v in rows)
