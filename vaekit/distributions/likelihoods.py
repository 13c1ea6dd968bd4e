"""Likelihoods p(x|z) for binary and continuous data, and the registry of every likelihood.

- Bernoulli with logits, for binary (binarised) images (Kingma & Welling 2014, App. C.1).
- Gaussian with a fixed, a learned global, or a per-pixel (decoder-output) standard
  deviation (Kingma & Welling 2014, App. C.2). Densities are in nats per example of
  continuous data. On 8-bit data (``levels`` 256) the Gaussian models the uniformly dequantised
  levels (:class:`DequantizedNormal`): a density evaluated at the levels themselves bounds
  nothing about their probabilities (it grows without limit as a variance shrinks onto a
  level), while log N(y) - log 256 at y = (255 x + u) / 256, u ~ U[0, 1), is in expectation a
  lower bound on the log-probability of the level's bin (Theis, van den Oord & Bethge 2016,
  "A note on the evaluation of generative models", Sec. 3.1), the protocol of the flows.

The 8-bit image likelihoods are in ``image.py``, the PixelCNN likelihood in ``pixelcnn.py``;
:data:`LIKELIHOODS` names them all.

Reference: Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal

from ..checks import lookup
from ..data import dequantize, levels_of
from ..nets import full_precision
from .base import LOG_STD_MIN, N_LEVELS, Likelihood
from .image import CategoricalLikelihood, LogisticMixtureLikelihood
from .pixelcnn import PixelCNNLikelihood

VARIANCES = ("fixed", "global", "pixel")


class LogitBernoulli(Bernoulli):
    """torch's ``Bernoulli(logits=...)`` with a cheaper exact ``log_prob``.

    log p(x) = x * l - softplus(l): one transcendental per element instead of the several
    passes of ``binary_cross_entropy_with_logits`` (fewer passes over memory matter: the
    decoder's log-likelihood dominates importance sampling with K = 5000). Valid for x in [0, 1].
    """

    def log_prob(self, value: Tensor) -> Tensor:
        return value * self.logits - F.softplus(self.logits)


class BernoulliLikelihood(Likelihood):
    """p(x|z) = prod_d Bernoulli(x_d; sigmoid(logit_d)); decoder outputs one logit per dimension."""

    discrete = True  # a probability mass function: bpd = nll / (D ln 2)
    binary = True  # x in {0, 1}: binarised data
    factorised = True

    def __init__(self, data_shape: tuple[int, ...]):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.param_shape = self.data_shape

    def forward(self, params: Tensor) -> Distribution:
        """logits [B, *data_shape] -> p(x|z), in float32 when the logits came out of bf16 autocast."""
        bernoulli = LogitBernoulli(logits=full_precision(params), validate_args=False)
        return Independent(bernoulli, len(self.data_shape), validate_args=False)


class DequantizedNormal(Normal):
    """N(mu, sigma^2) over the 8-bit levels x = k / 255 through their uniform dequantisation.

    ``log_prob(x)`` = log N(y; mu, sigma^2) - log 256 per dimension at y = (255 x + u) / 256 with
    u ~ U[0, 1) drawn afresh on every call from torch's generator (``vaekit.data.dequantize``): the
    log-density of y times the bin width 1/256. Its expectation over u is at most log P(k), the
    log-probability of level k's bin (Jensen). An importance-sampled estimate then samples (z, u)
    jointly: with a fresh u per sample, (1/K) sum_j p(y_j|z_j) p(z_j) / (256^D q(z_j|x)) is unbiased
    for P(k) itself, so the K-sample log p(x) converges to the log-probability of the levels.
    Samples are the levels of the Gaussian's draws' bins, and the mean its mean mapped back from
    the bins' centres (``vaekit.data.levels_of``): both on the scale of x.
    """

    @property
    def mean(self) -> Tensor:
        return levels_of(self.loc, mean=True, levels=N_LEVELS)

    def sample(self, sample_shape: torch.Size | tuple = torch.Size()) -> Tensor:
        return levels_of(super().sample(sample_shape), levels=N_LEVELS)

    def log_prob(self, value: Tensor) -> Tensor:
        """value: levels k / 255 in [0, 1], broadcastable with the batch -> per-dimension terms of
        the broadcast shape, each with its own u (a value shared by several rows is not)."""
        value = value.expand(torch.broadcast_shapes(value.shape, self.batch_shape))
        return super().log_prob(dequantize(value, levels=N_LEVELS)) - math.log(N_LEVELS)


class GaussianLikelihood(Likelihood):
    """p(x|z) = prod_d N(x_d; mu_d, sigma_d^2).

    ``variance``: ``fixed`` (sigma = ``fixed_std``), ``global`` (one learned log sigma)
    or ``pixel`` (the decoder outputs a log sigma per dimension, stacked after the means
    on the first non-batch axis, so ``param_shape = (2 * C, ...)``).

    ``dequantize``: the data are 8-bit levels k / 255 and the Gaussian is over their uniform
    dequantisation (:class:`DequantizedNormal`, module docstring): ``log_prob`` is then a bound on
    the log-probability of the levels, so ``discrete`` is True for that instance. Otherwise it is
    a density at the data (``discrete`` False).
    """

    discrete = False  # a density at the data; an instance with dequantize sets True
    factorised = True

    def __init__(
        self, data_shape: tuple[int, ...], variance: str = "global", fixed_std: float = 1.0, dequantize: bool = False
    ):
        super().__init__()
        lookup(dict.fromkeys(VARIANCES), variance, "model.variance")
        self.data_shape = tuple(data_shape)
        self.variance = variance
        self.dequantize = dequantize
        self.discrete = dequantize  # log_prob then bounds the probability of the 8-bit levels
        self._normal = DequantizedNormal if dequantize else Normal
        if variance == "pixel":
            self.param_shape = (2 * self.data_shape[0],) + self.data_shape[1:]
        else:
            self.param_shape = self.data_shape
        if variance == "global":
            self.log_std = nn.Parameter(torch.zeros(()))
        elif variance == "fixed":
            self.register_buffer("log_std", torch.tensor(math.log(fixed_std)))

    def forward(self, params: Tensor) -> Distribution:
        """params [B, *param_shape] -> p(x|z), in float32 when they came out of bf16 autocast."""
        params = full_precision(params)
        if self.variance == "pixel":
            mean, log_std = params.chunk(2, dim=1)
        else:
            mean, log_std = params, self.log_std.expand_as(params)
        std = log_std.clamp(min=LOG_STD_MIN).exp()
        return Independent(self._normal(mean, std, validate_args=False), len(self.data_shape), validate_args=False)


# name -> constructor(data_shape, **keyword arguments of that class) -> Likelihood
LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": BernoulliLikelihood,  # ()
    "gaussian": GaussianLikelihood,  # (variance, fixed_std, dequantize)
    "logistic_mixture": LogisticMixtureLikelihood,  # (n_mix); 8-bit images
    "categorical": CategoricalLikelihood,  # (); 8-bit images
    "pixelcnn": PixelCNNLikelihood,  # (output, channels, layers, kernel, cond_channels, n_mix); PixelVAE
}


def build_likelihood(name: str, data_shape: tuple[int, ...], **kwargs) -> Likelihood:
    """The likelihood ``name`` for examples of ``data_shape``; ``kwargs`` are its constructor's."""
    return lookup(LIKELIHOODS, name, "likelihood")(tuple(data_shape), **kwargs)
