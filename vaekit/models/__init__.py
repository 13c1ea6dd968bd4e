"""Models by name: the composition roots. Each constructor takes ``(model_config, data_shape, train_config)``;
these builders are the only code that reads the ``ModelConfig`` (each only its own family's
fields) and pass explicit arguments to the nets, likelihoods and priors. :func:`build_model`
hands them the ``ModelConfig`` with ``dequantize`` resolved to a bool (:func:`resolve_dequantize`).

Every model honours one contract, which is all the training loop and the evaluator use:
``loss(x, step) -> dict`` of per-example terms in nats (``loss``; ``elbo``, ``rec``, ``kl``
where they exist), ``log_prob(x, ...) -> [B]`` (``log_prob_kind`` says exact or
importance-sampled) and ``sample(n, mean=False, temperature=1.0)``.
"""

from __future__ import annotations

import dataclasses
import itertools

import torch

from ..checks import lookup
from ..data import standardization_of
from ..distributions import N_LEVELS
from ..errors import ConfigError
from ..flows.coupling import Conditioner
from ..nets import maybe_compile
from ..nets.body import NetBody
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

# the tensor-to-tensor modules ``model.compile`` compiles in place: the encoders', decoders' and
# PixelCNNs' net bodies, and the flows' coupling conditioners
COMPILED_MODULES = (NetBody, Conditioner)


def compile_model(model: torch.nn.Module, enabled: bool, **kwargs) -> torch.nn.Module:
    """``model`` with its :data:`COMPILED_MODULES` compiled in place when ``enabled``
    (:func:`vaekit.nets.maybe_compile`, which refuses a model that has none)."""
    return maybe_compile(model, enabled, COMPILED_MODULES, **kwargs)


# model kind -> callable(ModelConfig) -> whether the model is of binary data x in {0, 1}; only
# those see binarised data, every other model grey levels or continuous values as they are
BINARY_DATA = {
    "vae": likelihood_is_binary,
    "autoencoder": likelihood_is_binary,  # the reconstruction likelihood
    "flow": lambda cfg: False,  # densities of dequantised 8-bit or continuous data
    "mixture": lambda cfg: False,  # Gaussian densities
}


# model kind -> callable(ModelConfig) -> whether ``model.dequantize`` applies to the model: a density
# of the data the model's own builder dequantises (flows have their own flow_dequantize)
DEQUANTIZABLE = {
    "vae": lambda cfg: cfg.likelihood == "gaussian",
    "autoencoder": lambda cfg: False,  # no density: its reconstruction term stays at the data
    "flow": lambda cfg: False,  # flow_dequantize
    "mixture": lambda cfg: True,
}


def resolve_dequantize(model_cfg, levels: int | None, standardized: bool = False) -> bool:
    """``model.dequantize`` as a bool for data with ``levels`` values per dimension (``standardized``:
    the model sees them standardised, no longer as levels k/255): ``auto`` is true for a model it
    applies to (:data:`DEQUANTIZABLE`; a kind registered in ``MODELS`` only, an extension, never gets
    it from auto) on unstandardised 8-bit data (levels 256); ``true`` for any other model or data is
    a ``ConfigError`` (the dequantisation is of 8-bit levels in [0, 1])."""
    applies = model_cfg.kind in DEQUANTIZABLE and DEQUANTIZABLE[model_cfg.kind](model_cfg)
    if model_cfg.dequantize == "auto":
        return applies and levels == N_LEVELS and not standardized
    if model_cfg.dequantize is True and not applies:
        this = f"a vae with likelihood={model_cfg.likelihood}" if model_cfg.kind == "vae" else f"a {model_cfg.kind}"
        raise ConfigError(
            f"model.dequantize=true applies to VAEs with likelihood=gaussian and to mixtures; this is {this}"
            + (" (flows: flow_dequantize)" if model_cfg.kind == "flow" else "")
        )
    if model_cfg.dequantize is True and levels != N_LEVELS:
        have = "are continuous (data.levels null)" if levels is None else f"have {levels} levels"
        raise ConfigError(f"model.dequantize=true needs 8-bit data (data.levels 256); these data {have}")
    if model_cfg.dequantize is True and standardized:
        raise ConfigError("model.dequantize=true needs the 8-bit levels in [0, 1]; data.standardize moves them")
    return bool(model_cfg.dequantize)


def dequantize_of(cfg) -> bool:
    """``model.dequantize`` of a ``Config`` as a bool (:func:`resolve_dequantize`), for the data its
    ``data`` section describes: their levels, and whether the run standardises them (the statistics
    it records, as ``data_transform`` reads them)."""
    return resolve_dequantize(cfg.model, cfg.data.levels, not standardization_of(cfg.data).identity)


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
    that model has no bits per dimension (``data_levels`` None), and neither have standardised data."""
    grey_under_bernoulli = cfg.data.binarize == "none" and cfg.data.levels != 2 and binary_data(cfg.model)
    transform = standardization_of(cfg.data)  # what its outputs invert (GenerativeModel)
    model_cfg = dataclasses.replace(cfg.model, dequantize=dequantize_of(cfg))
    model = lookup(MODELS, cfg.model.kind, "model kind")(model_cfg, tuple(data_shape), cfg.train)
    # standardised values are no levels: no bits per dimension
    model.data_levels = None if grey_under_bernoulli or not transform.identity else cfg.data.levels
    model.data_transform = transform
    return model


__all__ = [
    "BINARY_DATA",
    "COMPILED_MODULES",
    "DEQUANTIZABLE",
    "MODELS",
    "VAE",
    "Autoencoder",
    "FlowModel",
    "GaussianMixtureModel",
    "binary_data",
    "build_model",
    "build_vae",
    "compile_model",
    "build_flow_model",
    "dequantize_of",
    "model_device",
    "resolve_dequantize",
]
