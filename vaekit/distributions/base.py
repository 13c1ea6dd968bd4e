"""The contracts of this package: a likelihood p(x|z) and an amortised posterior q(z|x); bits per dimension.

A *likelihood* is an ``nn.Module`` built for one data shape. It tells the decoder body
how many numbers to produce per example (``param_shape``) and turns them into a
distribution over x whose ``log_prob(x)`` returns one value per example, in nats,
summed over all data dimensions. What callers may rely on is declared as class
attributes of :class:`Likelihood` (``discrete``, ``activation_factor``, ``factorised``),
so nobody probes a likelihood with ``getattr``.

An *encoder* (:class:`Encoder`) maps x to q(z|x); every encoder of vaekit is built on a
diagonal Gaussian q0(z|x) (the posterior itself, the base of a flow posterior, or the
ancestral mean pass of a hierarchical posterior, ``hierarchy.py``) and returns it from
:meth:`Encoder.base_posterior`.

Bits per dimension: discrete likelihoods give nats of a probability mass function, so
bpd = nll / (D ln 2); a continuous density on data in [0, 1] first adds D ln 256 (the
bin width 1/256), see :func:`image_bits_per_dim`.

References: Theis, van den Oord & Bethge, "A note on the evaluation of generative models",
ICLR 2016 (the discretisation correction for continuous densities).
"""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.distributions import Distribution

LOG_STD_MIN = -7.0  # clamp of learned log std (std >= ~1e-3), keeps densities finite
N_LEVELS = 256  # values per sub-pixel of 8-bit data, k = 0..255


class Likelihood(nn.Module):
    """Base: maps decoder output ``params`` [B, *param_shape] to p(x|z) with batch [B].

    Declared attributes (class attributes; a subclass states its own values):

    - ``data_shape``, ``param_shape``: shape of one example, and of the decoder output that
      parameterises its distribution (set per instance).
    - ``discrete``: ``log_prob`` is the log of a probability mass function (True) or of a
      density on continuous data (False); bits per dimension add D ln 256 for the latter.
    - ``activation_factor``: roughly how many floats per data element one no-grad
      ``log_prob`` keeps alive (1 for a pointwise likelihood; more for a likelihood that runs a
      network over x, the PixelCNN); memory budgets that count decoder outputs multiply by it.
    - ``factorised``: p(x|z) is a product over data dimensions returned as a torch
      ``Independent`` whose ``base_dist.log_prob(x)`` gives the per-dimension terms, so a
      subset of dimensions can be scored (partial observations, completion).
    """

    data_shape: tuple[int, ...]
    param_shape: tuple[int, ...]
    discrete: bool = True
    activation_factor: int = 1
    factorised: bool = False

    def forward(self, params: Tensor) -> Distribution:  # pragma: no cover - interface
        raise NotImplementedError


class Encoder(nn.Module):
    """Base of amortised posteriors: x [B, *data_shape] -> q(z|x), batch [B], event [latent_dim].

    Every encoder is built on a diagonal Gaussian q0(z|x); :meth:`base_posterior` returns it
    (the posterior itself for a Gaussian encoder, the flow's base for a flow posterior). The
    VampPrior mixes these Gaussians and ``VAE.encode`` reports their means and variances.
    """

    def forward(self, x: Tensor) -> Distribution:  # pragma: no cover - interface
        raise NotImplementedError

    def base_posterior(self, x: Tensor) -> Distribution:  # pragma: no cover - interface
        """q0(z|x) = N(mu(x), diag sigma^2(x)): batch [B], event [latent_dim]."""
        raise NotImplementedError


def bits_per_dim(nll_nats: Tensor | float, num_dims: int) -> Tensor | float:
    """nats per example -> bits per dimension: nll / (D ln 2)."""
    return nll_nats / (num_dims * math.log(2.0))


def image_bits_per_dim(
    nll_nats: Tensor | float, num_dims: int, discrete: bool, levels: int = N_LEVELS
) -> Tensor | float:
    """Bits per dimension of an image model on data with ``levels`` values per sub-pixel.

    The rule: a *discrete* likelihood (Bernoulli, categorical, discretised logistic, PixelCNN;
    ``Likelihood.discrete``) already gives -log of a probability, so bpd = nll / (D ln 2). A
    *continuous* density (Gaussian, flows) on data scaled into [0, 1] gives nats of a density;
    a bin of width 1/levels holds probability ~ p(x)/levels, so the discrete nll is
    nll + D ln(levels) before dividing (an upper bound on the discrete nll when the data were
    dequantised uniformly, x = (k + u)/levels; Theis et al. 2016).

    Args:
        nll_nats: negative log-likelihood per example (nats), a float or a tensor [B].
        num_dims: D, dimensions per example (C*H*W).
        discrete: whether the nll is of a probability mass function.
        levels: values per sub-pixel (256 for 8-bit data, 2 for binary).
    """
    if not discrete:
        nll_nats = nll_nats + num_dims * math.log(levels)
    return bits_per_dim(nll_nats, num_dims)
