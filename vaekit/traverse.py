"""Latent traversals: what each latent dimension of a VAE does to a decoded image.

One row per latent dimension j: the posterior mean mu(x) = E_q[z|x] of one test example,
with its coordinate j replaced by mu_j(x) + c sigma_j for offsets c in [-span, +span]
(default +-3), decoded to E[x|z]. sigma_j is the standard deviation of the *prior* marginal
p(z_j) (1 for the standard-normal prior; a Monte-Carlo estimate for other priors,
``Prior.marginal_std``), not the example's posterior standard deviation: a unit's posterior is
narrow exactly where it carries information, so a sweep in posterior units would hide what an
active unit does, while prior units sweep each dimension over the range the model samples from
(the convention of beta-VAE traversals, Higgins et al. 2017, Fig. 7).

The rows are ordered by unit activity, Var_x(E_q[z_j|x]) over the test examples (the
active-units statistic of Burda et al. 2015, Sec. 5.2, ``vaekit.evaluate.unit_activity``), most
active first, so that the rows a collapsed posterior leaves unchanged come last. The middle
column (offset 0) is the decoded posterior mean itself. For a VAE with several stochastic
layers only the bottom layer z_1, the one the decoder reads, is traversed.

References:
    Burda, Grosse & Salakhutdinov, "Importance weighted autoencoders", ICLR 2016 (active units).
    Higgins et al., "beta-VAE: learning basic visual concepts with a constrained variational
        framework", ICLR 2017 (latent traversals).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .errors import VaekitError
from .evaluate import unit_activity
from .models import model_device

SPAN = 3.0  # offsets reach +- SPAN prior standard deviations
ENCODE_CHUNK = 1000  # examples encoded per pass


class Traversal(NamedTuple):
    """A traversal of K latent dimensions in S steps.

    images: [K, S, *data_shape], E[x|z] along each row; dims: [K] the dimensions (0-based),
    most active first; activity: [K] their Var_x(E_q[z_j|x]); std: [K] the prior standard
    deviations the offsets are in; offsets: [S] in prior standard deviations, 0 in the middle;
    centre: [D] the posterior mean every row starts from."""

    images: Tensor
    dims: Tensor
    activity: Tensor
    std: Tensor
    offsets: Tensor
    centre: Tensor


def traversal_offsets(steps: int, span: float = SPAN) -> Tensor:
    """``steps`` evenly spaced offsets from -span to +span, [steps] float32; ``steps`` odd and at
    least 3, so the middle one is exactly 0."""
    if steps < 3 or steps % 2 == 0:
        raise VaekitError(f"a traversal needs an odd number of steps >= 3 (0 in the middle); got {steps}")
    half = (steps - 1) // 2
    return ((torch.arange(steps, dtype=torch.float64) - half) * (span / half)).float()


def rank_units(means: Tensor) -> tuple[Tensor, Tensor]:
    """Latent dimensions by activity, most active first: (order [D] long, activity [D] float64 in
    that order) from posterior means [N, D], N >= 2; ties keep index order."""
    if means.dim() != 2 or means.shape[0] < 2:
        raise VaekitError(f"ranking units needs the posterior means of at least 2 examples; got {tuple(means.shape)}")
    activity = unit_activity(means)
    order = torch.sort(activity, descending=True, stable=True).indices
    return order, activity[order]


def traverse_codes(centre: Tensor, dims: Tensor, std: Tensor, offsets: Tensor) -> Tensor:
    """Codes [K, S, D]: ``centre`` [D] with coordinate dims[k] moved by offsets[s] * std[k]."""
    K, S = dims.shape[0], offsets.shape[0]
    z = centre.expand(K, S, centre.shape[0]).clone()
    rows = torch.arange(K, device=z.device)
    moved = centre[dims].unsqueeze(1) + offsets.to(z).unsqueeze(0) * std.to(z).unsqueeze(1)  # [K, S]
    z[rows, :, dims] = moved
    return z


@torch.no_grad()
def latent_traversal(model, x: Tensor, index: int, n_dims: int, steps: int, span: float = SPAN) -> Traversal:
    """Traverse the ``n_dims`` most active latent dimensions of ``model`` (a VAE: ``has_latents``)
    around the posterior mean of ``x[index]`` (module docstring).

    Args:
        x: test examples [N, *data_shape], N >= 2, on any device: the activity is measured over
            all of them.
        index: the example whose posterior mean is the centre of every row.
        n_dims: rows; at most the decoder's latent dimensions (fewer are returned when larger).
        steps: columns, odd (``traversal_offsets``); span: offsets reach +- span prior std.
    """
    if not 0 <= index < x.shape[0]:
        raise VaekitError(f"example index {index} is outside the {x.shape[0]} examples (0..{x.shape[0] - 1})")
    offsets = traversal_offsets(steps, span)
    dev = model_device(model)
    means = torch.cat([model.encode(x[i : i + ENCODE_CHUNK].to(dev))[0] for i in range(0, x.shape[0], ENCODE_CHUNK)])
    read = model.latent_layers[0]  # the decoder reads z_1
    order, activity = rank_units(means[:, :read])
    dims, activity = order[: max(1, n_dims)], activity[: max(1, n_dims)]
    std = model.prior_module.marginal_std()[:read].to(means)[dims]
    centre = means[index]
    z = traverse_codes(centre, dims, std, offsets.to(means))  # [K, S, D]
    K, S, D = z.shape
    flat = z.reshape(K * S, D)
    images = torch.cat([model.decode_to_x(flat[i : i + ENCODE_CHUNK]) for i in range(0, K * S, ENCODE_CHUNK)])
    return Traversal(images.view(K, S, *model.data_shape), dims, activity, std, offsets, centre)
