"""Models by name: the composition roots. Each constructor takes ``(model_config, data_shape, train_config)``;
these builders are the only code that reads the ``ModelConfig`` (each only its own family's
fields) and pass explicit arguments to the nets, likelihoods and priors.

Every model honours one contract, which is all the training loop and the evaluator use:
``loss(x, step) -> dict`` of per-example terms in nats (``loss``; ``elbo``, ``rec``, ``kl``
where they exist), ``log_prob(x, ...) -> [B]`` (``log_prob_kind`` says exact or
importance-sampled) and ``sample(n, mean=False, temperature=1.0)``.
"""

from __future__ import annotations

import itertools

import torch

from ..checks import lookup
from ..data import standardization_of
from .autoencoder import Autoencoder, build_autoencoder
from .flow import FlowModel, build_flow_model
from .mixture import GaussianMixtureModel, build_mixture
from .vae import VAE, build_vae, likelihood_is_binary

MODELS = {
    "vae": build_vae,
    "flow": build_flow_model,
    "mixture": build_mixture,
    "autoencoder": build_autoencoder,
}

# model kind -> callable(ModelConfig) -> whether the model is of binary data x in {0, 1}; only
# those see binarised data, every other model grey levels or continuous values as they are
BINARY_DATA = {
    "vae": likelihood_is_binary,
    "autoencoder": likelihood_is_binary,  # the reconstruction likelihood
    "flow": lambda cfg: False,  # densities of dequantised 8-bit or continuous data
    "mixture": lambda cfg: False,  # Gaussian densities
}


def binary_data(model_cfg) -> bool:
    """Whether the model a ``ModelConfig`` describes is of binary data (its likelihood declares
    ``binary``): what ``vaekit.data.resolve_binarize`` needs to know."""
    return lookup(BINARY_DATA, model_cfg.kind, "model kind")(model_cfg)


def model_device(model) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a model with neither)."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def build_model(cfg, data_shape):
    """Build the model named by ``cfg.model.kind`` for data of ``data_shape``, with its ``data_levels``
    (what its bits per dimension follow) from ``cfg.data.levels`` and its ``data_transform`` from the
    standardisation ``cfg.data`` records. A likelihood over x in {0, 1} on data nothing binarises
    (``binarize=none`` on grey levels) scores a cross-entropy, not the probability of the data, so
    that model has no bits per dimension (``data_levels`` None)."""
    model = lookup(MODELS, cfg.model.kind, "model kind")(cfg.model, tuple(data_shape), cfg.train)
    grey_under_bernoulli = cfg.data.binarize == "none" and cfg.data.levels != 2 and binary_data(cfg.model)
    model.data_levels = None if grey_under_bernoulli else cfg.data.levels
    model.data_transform = standardization_of(cfg.data)  # what its outputs invert (GenerativeModel)
    return model


__all__ = [
    "BINARY_DATA",
    "MODELS",
    "VAE",
    "Autoencoder",
    "FlowModel",
    "GaussianMixtureModel",
    "binary_data",
    "build_model",
    "build_vae",
    "build_flow_model",
    "model_device",
]
