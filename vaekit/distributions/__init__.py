"""Likelihoods p(x|z), priors p(z) and the mixture density, as ``torch.distributions`` objects.

- ``base``: the contracts (:class:`Likelihood` with its declared attributes, :class:`Encoder`)
  and bits per dimension.
- ``gaussian``: the diagonal Gaussian and the sampling helpers of the objectives.
- ``likelihoods``: Bernoulli and Gaussian likelihoods, and the ``LIKELIHOODS`` registry.
- ``image``: discretised logistic mixture (PixelCNN++) and 256-way categorical, for 8-bit images.
- ``pixelcnn``: the PixelCNN likelihood of a PixelVAE and its output heads.
- ``mixture``: the mixture of Gaussians (EM model and mixture / Vamp priors).
- ``priors``: normal, mixture, Vamp and flow priors, and the ``PRIORS`` registry.
- ``hierarchy``: stacks of stochastic layers, q(z|x) = q(z_1|x) q(z_2|z_1) ... and
  p(z) = p(z_L) ... p(z_1|z_2) as distributions over z = (z_1, ..., z_L) (Burda et al. 2015).

This package may import ``vaekit.flows`` and ``vaekit.nets``; neither imports it.
"""

from .base import (
    BPD_LEVELS,
    LOG_STD_MIN,
    N_LEVELS,
    Encoder,
    Likelihood,
    bits_per_dim,
    data_bits_per_dim,
    image_bits_per_dim,
)
from .gaussian import diagonal_gaussian, distribution_mean, rsample_and_log_prob
from .image import (
    Categorical256,
    CategoricalLikelihood,
    DiscretizedLogisticMixture,
    LogisticMixtureLikelihood,
    discretized_logistic_log_prob,
    discretized_logistic_mean,
    levels_of,
)
from .likelihoods import LIKELIHOODS, BernoulliLikelihood, GaussianLikelihood, LogitBernoulli, build_likelihood
from .mixture import MixtureOfGaussians
from .pixelcnn import OUTPUT_HEADS, PixelCNNDistribution, PixelCNNLikelihood
from .priors import (
    PRIORS,
    FlowPrior,
    MixturePrior,
    Prior,
    StandardNormalPrior,
    VampPrior,
    build_prior,
    flow_prior,
)

__all__ = [
    "BPD_LEVELS",
    "LIKELIHOODS",
    "LOG_STD_MIN",
    "N_LEVELS",
    "OUTPUT_HEADS",
    "PRIORS",
    "BernoulliLikelihood",
    "Categorical256",
    "CategoricalLikelihood",
    "DiscretizedLogisticMixture",
    "Encoder",
    "FlowPrior",
    "GaussianLikelihood",
    "Likelihood",
    "LogisticMixtureLikelihood",
    "LogitBernoulli",
    "MixtureOfGaussians",
    "MixturePrior",
    "PixelCNNDistribution",
    "PixelCNNLikelihood",
    "Prior",
    "StandardNormalPrior",
    "VampPrior",
    "bits_per_dim",
    "build_likelihood",
    "build_prior",
    "data_bits_per_dim",
    "diagonal_gaussian",
    "discretized_logistic_log_prob",
    "discretized_logistic_mean",
    "distribution_mean",
    "flow_prior",
    "image_bits_per_dim",
    "levels_of",
    "rsample_and_log_prob",
]
