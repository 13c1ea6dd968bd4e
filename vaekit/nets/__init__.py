"""Encoder and decoder bodies, by name.

An encoder body maps x [B, *data_shape] to features [B, out_features]; a decoder body
maps z [B, latent_dim] to likelihood parameters [B, *param_shape]. Each registry entry
is a constructor taking the shapes and the ``ModelConfig``; new architectures register
here (conv, resnet). Decoders that need x itself (PixelCNN) are built by the
likelihood instead, see ``vaekit.distributions``.
"""

from __future__ import annotations

from ..errors import ConfigError
from .conv import conv_decoder, conv_encoder
from .mlp import mlp_decoder, mlp_encoder
from .resnet import resnet_decoder, resnet_encoder

# name -> constructor(data_shape, out_features, model_config) -> nn.Module
ENCODERS = {
    "mlp": mlp_encoder,
    "conv": conv_encoder,  # strided convs
    "resnet": resnet_encoder,  # pre-activation residual stages
}

# name -> constructor(latent_dim, param_shape, model_config) -> nn.Module
DECODERS = {
    "mlp": mlp_decoder,
    "conv": conv_decoder,  # transposed conv / resize-conv
    "resnet": resnet_decoder,  # residual stages
}


def build_encoder(data_shape, out_features, cfg):
    if cfg.encoder not in ENCODERS:
        raise ConfigError(f"unknown encoder '{cfg.encoder}'; known: {', '.join(ENCODERS)}")
    return ENCODERS[cfg.encoder](tuple(data_shape), out_features, cfg)


def build_decoder(latent_dim, param_shape, cfg):
    if cfg.decoder not in DECODERS:
        raise ConfigError(f"unknown decoder '{cfg.decoder}'; known: {', '.join(DECODERS)}")
    return DECODERS[cfg.decoder](latent_dim, tuple(param_shape), cfg)
