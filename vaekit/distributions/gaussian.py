"""Diagonal Gaussians and the sampling helpers every objective uses on q(z|x) and p(x|z).

Reference: Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014 (the
reparameterised diagonal-Gaussian posterior).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from ..flows.distribution import FlowDistribution
from ..nets import full_precision


def diagonal_gaussian(mean: Tensor, log_var: Tensor) -> Distribution:
    """q(z|x) = N(mean, diag(exp(log_var))), batch [B], event [D]; reparameterisable. In float32
    when the parameters came out of bf16 autocast."""
    mean, log_var = full_precision(mean), full_precision(log_var)
    return Independent(Normal(mean, (0.5 * log_var).exp(), validate_args=False), 1, validate_args=False)


def rsample_and_log_prob(dist: Distribution, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
    """Reparameterised sample z ~ dist and log dist(z).

    Flow distributions (``FlowDistribution``: flow posteriors and priors) return both from one
    pass (log q of their own sample is cheap even where inverting the flow is not, e.g. IAF);
    other distributions use ``rsample`` then ``log_prob``.
    """
    if isinstance(dist, FlowDistribution):
        return dist.rsample_and_log_prob(sample_shape)
    z = dist.rsample(sample_shape)
    return z, dist.log_prob(z)


def distribution_mean(dist: Distribution) -> Tensor:
    """E[x] where the distribution has it in closed form, else one sample (e.g. PixelCNN)."""
    try:
        return dist.mean
    except NotImplementedError:
        return dist.sample()
