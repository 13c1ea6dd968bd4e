"""The contracts of this package: a likelihood p(x|z) and an amortised posterior q(z|x); bits per dimension.

A *likelihood* is an ``nn.Module`` built for one data shape. It tells the decoder body
how many numbers to produce per example (``param_shape``) and turns them into a
distribution over x whose ``log_prob(x)`` returns one value per example, in nats,
summed over all data dimensions. What callers may rely on is declared as class
attributes of :class:`Likelihood` (``discrete``, ``binary``, ``activation_factor``,
``factorised``), so nobody probes a likelihood with ``getattr``.

An *encoder* (:class:`Encoder`) maps x to q(z|x) in two declared steps: its amortised
variational parameters phi(x) (:meth:`Encoder.variational_params`) and the member q(z; phi) of
its family (:meth:`Encoder.posterior`), so per-datapoint inference (SVI) can optimise phi_i in
the encoder's own family. :meth:`Encoder.moments` gives the mean and log-variance of q(z; phi),
in closed form or by Monte Carlo as ``exact_moments`` declares. Every encoder of vaekit is
built on a diagonal Gaussian q0(z|x) (the posterior itself, the base of a flow posterior, or
the ancestral mean pass of a hierarchical posterior, ``hierarchy.py``) and returns it from
:meth:`Encoder.base_posterior`.

Bits per dimension: discrete likelihoods give nats of a probability mass function, so
bpd = nll / (D ln 2); :func:`image_bits_per_dim` first adds D ln 256 (the bin width 1/256) to
the nats of a continuous density on data in [0, 1], which bound the levels' probability only
for uniformly dequantised data. The models therefore dequantise their densities of 8-bit data
and report no bits for a density at the levels (``GenerativeModel.bits_per_dim``).

References: Theis, van den Oord & Bethge, "A note on the evaluation of generative models",
ICLR 2016 (the discretisation correction for continuous densities).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ..seeding import POSTERIOR_MOMENTS, derive_seed

LOG_STD_MIN = -7.0  # clamp of learned log std (std >= ~1e-3), keeps densities finite
N_LEVELS = 256  # values per sub-pixel of 8-bit data, k = 0..255


class Likelihood(nn.Module):
    """Base: maps decoder output ``params`` [B, *param_shape] to p(x|z) with batch [B].

    Declared attributes (class attributes; a subclass states its own values):

    - ``data_shape``, ``param_shape``: shape of one example, and of the decoder output that
      parameterises its distribution (set per instance).
    - ``discrete``: ``log_prob`` is the log of a probability mass function (True) or of a
      density on continuous data (False); bits per dimension add D ln 256 for the latter.
    - ``binary``: a distribution over x in {0, 1} (Bernoulli): its data are binarised
      (``DataConfig.binarize``); a likelihood of grey levels or continuous values never sees
      binarised data. :meth:`binary_for` answers it from the constructor's arguments, before
      anything is built (the PixelCNN's depends on its output head).
    - ``activation_factor``: roughly how many floats per data element one no-grad
      ``log_prob`` keeps alive (1 for a pointwise likelihood; more for a likelihood that runs a
      network over x, the PixelCNN); memory budgets that count decoder outputs multiply by it.
    - ``chunks_per_thread``: n > 0: a CPU decoder pass of importance sampling evaluates n chunks of
      samples per intra-op thread (``vaekit.inference.importance``), for a likelihood whose no-grad
      ``log_prob`` is a long run of operations on a few codes each (the PixelCNN's: 2), which two
      threads split poorly at one chunk's size; 0 (the default): one chunk per pass, where a
      chunk's operations are already large enough to split and wider passes would only leave the
      cache. A likelihood with n > 0 draws no random numbers in ``log_prob``: the samples of a pass
      of several chunks are those of one pass per chunk only because nothing draws between the
      chunks' draws.
    - ``dequantize``: ``log_prob`` is of the uniform dequantisation y = (255 x + u) / 256 of 8-bit
      data, log p(y) - D log 256 with a fresh u per call (set per instance: the Gaussian's), a
      bound on the log-probability of the levels; False for every other likelihood.
    - ``factorised``: p(x|z) is a product over data dimensions returned as a torch
      ``Independent`` whose ``base_dist.log_prob(x)`` gives the per-dimension terms, so a
      subset of dimensions can be scored (partial observations, completion).
    """

    data_shape: tuple[int, ...]
    param_shape: tuple[int, ...]
    discrete: bool = True
    binary: bool = False
    activation_factor: int = 1
    chunks_per_thread: int = 0
    dequantize: bool = False
    factorised: bool = False

    def forward(self, params: Tensor) -> Distribution:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def binary_for(cls, **kwargs) -> bool:
        """``binary`` of the likelihood this class builds from the keyword arguments ``kwargs``."""
        return cls.binary


MOMENT_SAMPLES = 1024  # draws of a Monte-Carlo posterior moment (encoders with exact_moments False)
MOMENT_SEED = 0  # root seed of their fixed noise (with seeding.POSTERIOR_MOMENTS)
MOMENT_CHUNK = 1 << 16  # codes per pass through a net while estimating moments (bounds memory)


def moment_noise(dim: int, like: Tensor) -> Tensor:
    """The fixed standard-normal noise [MOMENT_SAMPLES, dim] of Monte-Carlo posterior moments.

    Drawn on the CPU in float64 from ``derive_seed(MOMENT_SEED, POSTERIOR_MOMENTS)`` and cast to
    ``like``'s device and dtype: the same on every device up to rounding, shared by all examples
    (so an example's moments do not depend on its batch), and the caller's random state is left alone.
    """
    gen = torch.Generator().manual_seed(derive_seed(MOMENT_SEED, POSTERIOR_MOMENTS))
    eps = torch.randn(MOMENT_SAMPLES, dim, generator=gen, dtype=torch.float64)
    return eps.to(device=like.device, dtype=like.dtype)


class Encoder(nn.Module):
    """Base of amortised posteriors: x [B, *data_shape] -> q(z|x), batch [B], event [latent_dim].

    q(z|x) = q(z; phi(x)): :meth:`variational_params` gives phi(x), a tuple of tensors [B, ...]
    (for a Gaussian encoder the mean and log-variance), and :meth:`posterior` the member of the
    family they select; ``forward`` composes the two. Per-datapoint inference optimises free
    phi_i in the same family (``vaekit.inference.svi``).

    Declared attribute:

    - ``exact_moments``: :meth:`moments` is in closed form (True: Gaussian encoders) or a
      Monte-Carlo estimate with a fixed number of samples and a fixed seed (False: flow
      posteriors), deterministic in either case.

    Every encoder is built on a diagonal Gaussian q0(z|x); :meth:`base_posterior` returns it
    (the posterior itself for a Gaussian encoder, the flow's base for a flow posterior). The
    VampPrior mixes these Gaussians; ``VAE.encode`` reports the moments of q(z|x) itself.
    """

    exact_moments: bool = True

    def forward(self, x: Tensor) -> Distribution:
        """q(z|x) = q(z; phi(x))."""
        return self.posterior(*self.variational_params(x))

    def variational_params(self, x: Tensor) -> tuple[Tensor, ...]:  # pragma: no cover - interface
        """phi(x): the parameters of q(z|x) in the encoder's family, each [B, ...]."""
        raise NotImplementedError

    def posterior(self, *params: Tensor) -> Distribution:  # pragma: no cover - interface
        """q(z; phi) for parameters shaped as :meth:`variational_params` returns them."""
        raise NotImplementedError

    def params_from_gaussian(self, mean: Tensor, log_var: Tensor) -> tuple[Tensor, ...]:
        """phi whose base Gaussian is N(mean, diag exp(log_var)) [B, D] each (SVI from the prior);
        for a Gaussian encoder that is q(z; phi) itself."""
        return mean, log_var

    def moments(self, *params: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance [B, D] of q(z; phi): closed form here (a Gaussian family)."""
        q = self.posterior(*params)
        return q.mean, 2 * q.stddev.log()

    def base_posterior(self, x: Tensor) -> Distribution:  # pragma: no cover - interface
        """q0(z|x) = N(mu(x), diag sigma^2(x)): batch [B], event [latent_dim]."""
        raise NotImplementedError


def bits_per_dim(nll_nats: Tensor | float, num_dims: int) -> Tensor | float:
    """nats per example -> bits per dimension: nll / (D ln 2)."""
    return nll_nats / (num_dims * math.log(2.0))


BPD_LEVELS = (2, N_LEVELS)  # data whose bits per dimension mean something: binary and 8-bit


def data_bits_per_dim(
    nll_nats: Tensor | float, num_dims: int, discrete: bool, levels: int | None
) -> Tensor | float | None:
    """:func:`image_bits_per_dim` where bits per dimension are defined, None elsewhere.

    They are defined for binary and 8-bit data (``levels`` in ``BPD_LEVELS``); for continuous
    data (``levels`` None) or other quantisations a density's nats have no bit count per
    dimension (a density on tabular values can exceed 1 and give negative "bits").
    """
    if levels not in BPD_LEVELS:
        return None
    return image_bits_per_dim(nll_nats, num_dims, discrete, levels)


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
