"""Encoder and decoder bodies, by name: tensor -> tensor networks only.

An encoder body maps x [B, *data_shape] to features [B, out_features]; a decoder body
maps z [B, latent_dim] to likelihood parameters [B, *param_shape]. Each registry entry
is a constructor taking the shapes and a :class:`NetSpec` (the sizes and switches of the
bodies, built once by the model builder); new architectures register here. The gated
PixelCNN body (``vaekit.nets.pixelcnn``) is built by its likelihood,
``vaekit.distributions.PixelCNNLikelihood``, since it reads x itself. The speed switches
of the training loop live in ``vaekit.nets.speed`` and are re-exported here.
"""

from __future__ import annotations

from ..checks import lookup
from ..precision import full_precision
from .conv import conv_decoder, conv_encoder
from .mlp import mlp_decoder, mlp_encoder
from .resnet import resnet_decoder, resnet_encoder
from .spec import NetSpec
from .speed import (
    AUTOCAST_DEVICES,
    autocast,
    bf16_emulated,
    channels_last_input,
    fixed_parameters,
    fixed_parameters_scope,
    maybe_compile,
    native_bf16,
    resolve_amp,
    to_channels_last,
)

# name -> constructor(data_shape, out_features, spec: NetSpec) -> nn.Module
ENCODERS = {
    "mlp": mlp_encoder,
    "conv": conv_encoder,  # strided convs
    "resnet": resnet_encoder,  # pre-activation residual stages
}

# name -> constructor(latent_dim, param_shape, spec: NetSpec) -> nn.Module
DECODERS = {
    "mlp": mlp_decoder,
    "conv": conv_decoder,  # transposed conv / resize-conv
    "resnet": resnet_decoder,  # residual stages
}


def build_encoder(name: str, data_shape: tuple[int, ...], out_features: int, spec: NetSpec):
    """Encoder body ``name``: x [B, *data_shape] -> [B, out_features]."""
    return lookup(ENCODERS, name, "encoder")(tuple(data_shape), out_features, spec)


def build_decoder(name: str, latent_dim: int, param_shape: tuple[int, ...], spec: NetSpec):
    """Decoder body ``name``: z [B, latent_dim] -> [B, *param_shape]."""
    return lookup(DECODERS, name, "decoder")(latent_dim, tuple(param_shape), spec)


__all__ = [
    "AUTOCAST_DEVICES",
    "DECODERS",
    "ENCODERS",
    "NetSpec",
    "autocast",
    "bf16_emulated",
    "build_decoder",
    "build_encoder",
    "channels_last_input",
    "fixed_parameters",
    "fixed_parameters_scope",
    "full_precision",
    "maybe_compile",
    "native_bf16",
    "resolve_amp",
    "to_channels_last",
]
