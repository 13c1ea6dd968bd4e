"""Residual encoder and decoder bodies (ResNet-VAE).

Pre-activation residual blocks, x + conv(act(norm(conv(act(norm(x)))))), with identity
skips (He et al. 2016b), grouped in stages: ``resnet_blocks`` blocks per entry of
``channels``. The encoder runs a 3x3 stem, then per stage its blocks and a stride-2 3x3
convolution to the next stage's width (halving H and W, rounding up), then a linear map of
the flattened features; the decoder mirrors it with the up-sampling of ``vaekit.nets.conv``
(transposed conv or nearest + conv) to the exact sizes the encoder saw. Normalisation is
``none``, ``batch`` or ``weight`` (weight normalisation, as in the IAF ResNet VAE of
Kingma et al. 2016). Shapes are derived from the data shape.

References: He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016;
Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling, "Improving Variational Inference
with Inverse Autoregressive Flow", NeurIPS 2016 (ResNet VAE bodies with weight norm);
Gulrajani et al., "PixelVAE", ICLR 2017 (ResNet bodies around a PixelCNN decoder).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from ..checks import image_shape
from ..errors import ConfigError
from ..precision import OutputLinear
from .body import NetBody
from .conv import OutputConv, check_channels, conv3x3, norm_pair, stage_sizes, upsampler
from .mlp import activation
from .spec import NetSpec


class PreActBlock(nn.Module):
    """x [B, c, H, W] -> x + f(x), f = conv3x3 . act . norm . conv3x3 . act . norm (shape kept)."""

    def __init__(self, channels: int, act: str = "relu", norm: str = "none"):
        super().__init__()
        make_norm = norm_pair(norm)[1]
        self.branch = nn.Sequential(
            make_norm(channels),
            activation(act),  # not in place: without a norm its input is x, which the sum reads
            conv3x3(channels, channels, norm),
            make_norm(channels),
            activation(act, inplace=True),
            conv3x3(channels, channels, norm),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.branch(x)


def _blocks(n: int, channels: int, act: str, norm: str) -> list[nn.Module]:
    return [PreActBlock(channels, act, norm) for _ in range(n)]


def _check_blocks(n: int) -> int:
    if n < 0:
        raise ConfigError(f"model.resnet_blocks must be >= 0; got {n}")
    return n


class ResNetEncoder(NetBody):
    """x [B, C, H, W] -> [B, out_features] through residual stages, each ending in a stride-2 conv.

    Args:
        data_shape: (C, H, W) of one example.
        out_features: output width (2 * latent_dim).
        channels: stage widths; stage i runs at side s_i with width channels[i].
        blocks: residual blocks per stage; act: activation; norm: none | batch | weight.
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        out_features: int,
        channels: list[int],
        blocks: int = 2,
        act: str = "relu",
        norm: str = "none",
    ):
        super().__init__()
        C, H, W = image_shape(data_shape, "the resnet encoder")
        channels, blocks = check_channels(channels), _check_blocks(blocks)
        layers: list[nn.Module] = [conv3x3(C, channels[0], norm)]
        for i, c in enumerate(channels):
            c_next = channels[min(i + 1, len(channels) - 1)]
            layers += _blocks(blocks, c, act, norm) + [conv3x3(c, c_next, norm, stride=2)]
        layers += [norm_pair(norm)[1](channels[-1]), activation(act, inplace=True)]
        self.features = nn.Sequential(*layers)
        n = len(channels)
        self.head = OutputLinear(channels[-1] * stage_sizes(H, n)[-1] * stage_sizes(W, n)[-1], out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


class ResNetDecoder(NetBody):
    """z [B, latent_dim] -> [B, P, H, W]: linear to the smallest map, then per stage up-sample + blocks.

    Args:
        latent_dim: dimension of z.
        param_shape: (P, H, W), the likelihood's parameters per example.
        channels: the encoder's stage widths (run in reverse).
        blocks, act, norm: as for :class:`ResNetEncoder`; upsample: transpose | nearest.
    """

    def __init__(
        self,
        latent_dim: int,
        param_shape: tuple[int, ...],
        channels: list[int],
        blocks: int = 2,
        act: str = "relu",
        norm: str = "none",
        upsample: str = "transpose",
    ):
        super().__init__()
        P, H, W = image_shape(param_shape, "the resnet decoder")
        channels, blocks = check_channels(channels), _check_blocks(blocks)
        n = len(channels)
        hs, ws = stage_sizes(H, n), stage_sizes(W, n)
        self.start = (channels[-1], hs[-1], ws[-1])
        self.fc = nn.Linear(latent_dim, math.prod(self.start))
        layers: list[nn.Module] = []
        for i in reversed(range(n)):  # side s_{i+1} -> s_i, then the stage's blocks at width channels[i]
            c_in = channels[min(i + 1, n - 1)]
            layers.append(upsampler(upsample, c_in, channels[i], (hs[i + 1], ws[i + 1]), (hs[i], ws[i]), norm))
            layers += _blocks(blocks, channels[i], act, norm)
        layers += [norm_pair(norm)[1](channels[0]), activation(act, inplace=True, feeds_output=True)]
        self.features = nn.Sequential(*layers)
        self.out = OutputConv(channels[0], P)

    def forward(self, z: Tensor) -> Tensor:
        h = self.fc(z).view(z.shape[0], *self.start)
        return self.out(self.features(h))


def resnet_encoder(data_shape: tuple[int, ...], out_features: int, spec: NetSpec) -> nn.Module:
    """Registry constructor: x [B, C, H, W] -> [B, out_features]."""
    return ResNetEncoder(data_shape, out_features, list(spec.channels), spec.resnet_blocks, spec.activation, spec.norm)


def resnet_decoder(latent_dim: int, param_shape: tuple[int, ...], spec: NetSpec) -> nn.Module:
    """Registry constructor: z [B, latent_dim] -> [B, *param_shape]."""
    return ResNetDecoder(
        latent_dim, param_shape, list(spec.channels), spec.resnet_blocks, spec.activation, spec.norm, spec.upsample
    )
