"""Convolutional encoder and decoder bodies, and the conv pieces the ResNet bodies share.

The encoder is a stack of stride-2 3x3 convolutions (one per entry of ``channels``, each
halving H and W, rounding up), then one linear map of the flattened features. The decoder
mirrors it: a linear map to the smallest feature map, then one up-sampling step per stage
back to the exact sizes the encoder saw, then a 3x3 convolution to the likelihood's
parameter channels. All sizes are derived from the data shape, so the same config serves
1x8x8 digits, 1x28x28 MNIST (28 -> 14 -> 7 -> 4) and 3x32x32 CIFAR-10.

Up-sampling (``upsample``): ``transpose`` (a stride-2 transposed convolution whose output
padding hits the target size exactly) or ``nearest`` (nearest-neighbour resize to the
target size, then a 3x3 convolution; avoids checkerboard artefacts, Odena et al. 2016).
Normalisation (``norm``): ``none``, ``batch`` (Ioffe & Szegedy 2015) or ``weight``
(weight normalisation, Salimans & Kingma 2016).

The decoders' last layer (:class:`OutputConv`) maps many feature channels to the one or two
parameter channels of a grey-scale likelihood. A direct convolution kernel fills its vector
lanes with output channels and wastes most of them there, so with at most
``TAP_SUM_MAX_OUT`` outputs the layer is computed instead as one matrix product to the nine
"tap maps" W[:, :, ky, kx] x, shifted and summed (:func:`conv3x3_tap_sum`): the same sums,
reassociated. That serves evaluation and sampling; a training step takes the direct kernel, whose
backward is cheaper than the sum's eight scattered slices. The activations after a convolution
overwrite its output: a fresh feature map of tens of megabytes per chunk of codes costs page
faults, not arithmetic.

References: Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep
Convolutional GANs", ICLR 2016 (strided/transposed conv bodies); Odena, Dumoulin & Olah,
"Deconvolution and Checkerboard Artifacts", Distill 2016; Salimans & Kingma, "Weight
Normalization", NeurIPS 2016; Ioffe & Szegedy, "Batch Normalization", ICML 2015.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..checks import image_shape, lookup
from ..errors import ConfigError
from ..precision import OutputConv2d, OutputLinear
from .body import NetBody
from .mlp import activation
from .spec import NetSpec
from .speed import stored_channels_last


# --- shapes ------------------------------------------------------------------------------
def stage_sizes(size: int, n_stages: int) -> list[int]:
    """[size, ceil(size/2), ...] with ``n_stages + 1`` entries: the side length before each stage."""
    sizes = [size]
    for _ in range(n_stages):
        sizes.append((sizes[-1] + 1) // 2)  # 3x3 conv, stride 2, padding 1
    return sizes


def check_channels(channels: list[int]) -> list[int]:
    if not channels or any(c <= 0 for c in channels):
        raise ConfigError(f"model.channels must be a non-empty list of positive widths; got {channels}")
    return list(channels)


# --- normalisation -------------------------------------------------------------------------
def _plain(conv: nn.Module) -> nn.Module:
    return conv


class WeightNorm(nn.Module):
    """Weight normalisation as a parametrization, w = g v / ||v||, the norm taken per slice along
    ``dim`` (0: the output channels of a Conv2d, the input channels of a ConvTranspose2d, as in
    torch; None: the whole tensor): ``torch.nn.utils.parametrizations.weight_norm``'s parameters
    (``original0`` = g, ``original1`` = v) and numbers, but w keeps the memory format of v. torch's
    fused kernel returns w contiguous (NCHW) whatever v's layout, so a channels-last model's
    weight-normalised convolutions, which see a channels-last weight only through w, ran NCHW, with
    oneDNN reordering every activation map in and out of each call; w is small next to those maps.
    Unlike torch's function, no hook renames the ``weight_g``/``weight_v`` keys of the older
    ``torch.nn.utils.weight_norm``, which vaekit never wrote.
    """

    def __init__(self, dim: int | None = 0):
        super().__init__()
        self.dim = -1 if dim is None else dim  # torch's convention for "the whole tensor"

    def forward(self, weight_g: Tensor, weight_v: Tensor) -> Tensor:
        w = torch._weight_norm(weight_v, weight_g, self.dim)
        return w.contiguous(memory_format=torch.channels_last) if stored_channels_last(weight_v) else w

    def right_inverse(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        return torch.norm_except_dim(weight, 2, self.dim), weight


def _weight_norm(conv: nn.Module) -> nn.Module:
    nn.utils.parametrize.register_parametrization(conv, "weight", WeightNorm(), unsafe=True)
    return conv


# name -> (wrap a conv, normalisation layer for `channels`)
NORMS = {
    "none": (_plain, lambda channels: nn.Identity()),
    "batch": (_plain, lambda channels: nn.BatchNorm2d(channels)),
    "weight": (_weight_norm, lambda channels: nn.Identity()),
}


def norm_pair(name: str):
    """(conv wrapper, norm-layer constructor) for normalisation ``name``."""
    return lookup(NORMS, name, "model.norm")


def conv3x3(c_in: int, c_out: int, norm: str, stride: int = 1) -> nn.Module:
    """3x3 convolution, padding 1, wrapped for weight norm when ``norm == 'weight'``."""
    return norm_pair(norm)[0](nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1))


TAP_SUM_MAX_OUT = 2  # more output channels: the 9 * P tap maps cost more than a direct kernel


def conv3x3_tap_sum(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """3x3 convolution, stride 1, zero padding 1, computed by its taps.

    out[:, p, y, x] = bias[p] + sum over (ky, kx) of T[ky, kx][:, p, y + ky - 1, x + kx - 1] (zero
    outside the image), where the tap maps T[ky, kx] = weight[:, :, ky, kx] applied to x at every
    pixel come from one matrix product [9 P, C] x [C, B H W] (batched over B for NCHW input). The
    sum runs in float32 at least, also when autocast gave the products in bf16.

    Args:
        x: [B, C, H, W], NCHW or channels-last memory (the product reads either without a copy).
        weight: [P, C, 3, 3]; bias: [P] or None.

    Returns:
        [B, P, H, W], contiguous; under autocast the products run in its dtype.
    """
    B, C, H, W = x.shape
    P = weight.shape[0]
    w = weight.permute(2, 3, 0, 1).reshape(9 * P, C)  # rows (ky, kx, p)
    if stored_channels_last(x):
        taps = torch.mm(w, x.permute(0, 2, 3, 1).reshape(B * H * W, C).t()).view(3, 3, P, B, H, W)
        out = taps[1, 1].permute(1, 0, 2, 3)  # [B, P, H, W] views of [P, B, H, W] maps
        tap = lambda ky, kx: taps[ky, kx].permute(1, 0, 2, 3)  # noqa: E731
    else:
        taps = torch.matmul(w, x.contiguous().view(B, C, H * W)).view(B, 3, 3, P, H, W)
        out = taps[:, 1, 1]
        tap = lambda ky, kx: taps[:, ky, kx]  # noqa: E731
    out = out.to(torch.promote_types(out.dtype, torch.float32), copy=True)
    if bias is not None:
        out += bias.view(1, P, 1, 1)
    for ky in range(3):
        for kx in range(3):
            if (ky, kx) == (1, 1):
                continue
            dy, dx = ky - 1, kx - 1  # out[y, x] takes tap (ky, kx) at (y + dy, x + dx)
            y0, y1, x0, x1 = max(0, -dy), H - max(0, dy), max(0, -dx), W - max(0, dx)
            out[:, :, y0:y1, x0:x1] += tap(ky, kx)[:, :, y0 + dy : y1 + dy, x0 + dx : x1 + dx]
    return out.contiguous()


class OutputConv(OutputConv2d):
    """The decoders' last layer: 3x3 convolution, padding 1, from ``c_in`` feature channels to the
    likelihood's ``P`` parameter channels; by :func:`conv3x3_tap_sum` when no gradient is
    recorded, ``P <= TAP_SUM_MAX_OUT`` and the 9 P tap maps are no wider than the input (so that
    they stay within the memory budget the evaluator sizes from the bodies' widest outputs).
    Parameters and ``state_dict`` keys are those of ``nn.Conv2d``."""

    def __init__(self, c_in: int, P: int):
        super().__init__(c_in, P, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if (
            self.out_channels <= TAP_SUM_MAX_OUT
            and 9 * self.out_channels <= self.in_channels
            and not _grad_wanted(x, self)
        ):
            return conv3x3_tap_sum(x, self.weight, self.bias)
        return super().forward(x)


def _grad_wanted(x: Tensor, module: nn.Module) -> bool:
    """Whether autograd records this call. The tap sum's backward scatters each of the eight
    shifted slices into a zeroed copy of the whole tap tensor, which made training steps slower
    than the direct kernel's backward, so it serves calls without gradients (evaluation, sampling)."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))


# --- up-sampling ---------------------------------------------------------------------------
class TransposeUp(nn.Module):
    """[B, c_in, h, w] -> [B, c_out, H, W] for H in {2h-1, 2h}: stride-2 3x3 transposed conv."""

    def __init__(self, c_in: int, c_out: int, size_in: tuple[int, int], size_out: tuple[int, int], norm: str):
        super().__init__()
        pad = tuple(o - (2 * i - 1) for i, o in zip(size_in, size_out))
        if any(p not in (0, 1) for p in pad):
            raise ValueError(f"cannot up-sample {size_in} to {size_out} by a factor of two")
        self.conv = norm_pair(norm)[0](nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=pad))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class NearestUp(nn.Module):
    """[B, c_in, h, w] -> [B, c_out, H, W]: nearest-neighbour resize to (H, W), then 3x3 conv."""

    def __init__(self, c_in: int, c_out: int, size_in: tuple[int, int], size_out: tuple[int, int], norm: str):
        super().__init__()
        self.up = nn.Upsample(size=tuple(size_out), mode="nearest")
        self.conv = conv3x3(c_in, c_out, norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.up(x))


# name -> constructor(c_in, c_out, size_in, size_out, norm)
UPSAMPLERS = {
    "transpose": TransposeUp,
    "nearest": NearestUp,
}


def upsampler(name: str, c_in: int, c_out: int, size_in, size_out, norm: str) -> nn.Module:
    """Up-sampling ``name`` from [B, c_in, *size_in] to [B, c_out, *size_out]."""
    return lookup(UPSAMPLERS, name, "model.upsample")(c_in, c_out, tuple(size_in), tuple(size_out), norm)


# --- the bodies ----------------------------------------------------------------------------
class ConvEncoder(NetBody):
    """x [B, C, H, W] -> [B, out_features]: stride-2 convs (one per width), then a linear map.

    Args:
        data_shape: (C, H, W) of one example.
        out_features: output width (2 * latent_dim for a Gaussian q(z|x)).
        channels: widths of the conv stages; stage i maps side s_i to ceil(s_i / 2).
        act: activation name; norm: none | batch | weight.
    """

    def __init__(
        self, data_shape: tuple[int, ...], out_features: int, channels: list[int], act: str = "relu", norm: str = "none"
    ):
        super().__init__()
        C, H, W = image_shape(data_shape, "the conv encoder")
        channels = check_channels(channels)
        layers: list[nn.Module] = []
        c_in = C
        for c in channels:
            layers += [conv3x3(c_in, c, norm, stride=2), norm_pair(norm)[1](c), activation(act, inplace=True)]
            c_in = c
        self.features = nn.Sequential(*layers)
        h, w = stage_sizes(H, len(channels))[-1], stage_sizes(W, len(channels))[-1]
        self.head = OutputLinear(channels[-1] * h * w, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


class ConvDecoder(NetBody):
    """z [B, latent_dim] -> [B, P, H, W]: linear to the smallest map, up-sample per stage, 3x3 conv.

    Args:
        latent_dim: dimension of z.
        param_shape: (P, H, W), the likelihood's parameters per example.
        channels: the encoder's widths (the decoder runs them in reverse).
        act, norm: as for :class:`ConvEncoder`; upsample: transpose | nearest.
    """

    def __init__(
        self,
        latent_dim: int,
        param_shape: tuple[int, ...],
        channels: list[int],
        act: str = "relu",
        norm: str = "none",
        upsample: str = "transpose",
    ):
        super().__init__()
        P, H, W = image_shape(param_shape, "the conv decoder")
        channels = check_channels(channels)
        n = len(channels)
        hs, ws = stage_sizes(H, n), stage_sizes(W, n)
        self.start = (channels[-1], hs[-1], ws[-1])
        self.fc = nn.Sequential(nn.Linear(latent_dim, math.prod(self.start)), activation(act, inplace=True))
        layers: list[nn.Module] = []
        for i in reversed(range(n)):  # side s_{i+1} -> s_i, width channels[i] -> channels[i-1]
            c_out = channels[max(i - 1, 0)]
            layers += [
                upsampler(upsample, channels[i], c_out, (hs[i + 1], ws[i + 1]), (hs[i], ws[i]), norm),
                norm_pair(norm)[1](c_out),
                # the output of a conv (or batch norm) nothing else reads; the last is the output layer's input
                activation(act, inplace=True, feeds_output=i == 0),
            ]
        self.features = nn.Sequential(*layers)
        self.out = OutputConv(channels[0], P)

    def forward(self, z: Tensor) -> Tensor:
        h = self.fc(z).view(z.shape[0], *self.start)
        return self.out(self.features(h))


def conv_encoder(data_shape: tuple[int, ...], out_features: int, spec: NetSpec) -> nn.Module:
    """Registry constructor: x [B, C, H, W] -> [B, out_features]."""
    return ConvEncoder(data_shape, out_features, list(spec.channels), spec.activation, spec.norm)


def conv_decoder(latent_dim: int, param_shape: tuple[int, ...], spec: NetSpec) -> nn.Module:
    """Registry constructor: z [B, latent_dim] -> [B, *param_shape]."""
    return ConvDecoder(latent_dim, param_shape, list(spec.channels), spec.activation, spec.norm, spec.upsample)
