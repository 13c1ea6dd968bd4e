"""Multi-scale image flows: squeeze, factor-out, and the RealNVP and Glow architectures.

- Squeeze: [C, H, W] -> [4C, H/2, W/2], each 2x2 block into channels (``pixel_unshuffle``).
- FactorOut(inner, keep): the first ``keep`` channels go on through ``inner``; the others
  are final latent variables (Dinh et al. 2016, Sec. 3.6). Half the dimensions leave at
  every scale, so later, coarser levels cost less.

Every architecture here maps [B, C, H, W] to [B, C, H, W] (each level ends by undoing its
squeeze, ``Inverse(Squeeze())``), so the base density is one N(0, I) over the data's shape
and temperature sampling scales all latents alike.

RealNVP level (Dinh et al. 2016, Sec. 4.1): ``steps`` checkerboard couplings, squeeze,
``steps`` channel couplings, factor out half; the last level has ``steps + 1``
checkerboard couplings. Glow level (Kingma & Dhariwal 2018, Fig. 2): squeeze, ``steps``
x (ActNorm, invertible 1x1 conv, affine coupling on a channel split), factor out half.
Glow's learned prior over the factored-out half (its "split" layer) is replaced by N(0, I).

References:
- Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017.
- Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Compose, Inverse, Transform
from .coupling import AffineCoupling, ConvConditioner, MLPConditioner, alternating_mask, channel_mask, checkerboard_mask
from .glow import ActNorm, InvConv1x1


class Squeeze(Transform):
    """Space to depth by 2: [B, C, H, W] -> [B, 4C, H/2, W/2]; |det| = 1."""

    def forward(self, x, context=None):
        return F.pixel_unshuffle(x, 2), x.new_zeros(x.shape[0])

    def inverse(self, y, context=None):
        return F.pixel_shuffle(y, 2), y.new_zeros(y.shape[0])


class FactorOut(Transform):
    """Apply ``inner`` to channels [:keep] and pass the rest through as finished latents."""

    def __init__(self, inner: Transform, keep: int):
        super().__init__()
        self.inner, self.keep = inner, keep

    def forward(self, x, context=None):
        y, logabsdet = self.inner(x[:, : self.keep], context=context)
        return torch.cat([y, x[:, self.keep :]], dim=1), logabsdet

    def inverse(self, y, context=None):
        x, logabsdet = self.inner.inverse(y[:, : self.keep], context=context)
        return torch.cat([x, y[:, self.keep :]], dim=1), logabsdet


def realnvp(
    data_shape: tuple[int, int, int],
    levels: int = 2,
    steps: int = 3,
    hidden: int = 64,
    blocks: int = 2,
    scale: str = "tanh",
) -> Transform:
    """RealNVP's multi-scale architecture; H and W must be divisible by 2**(levels - 1)."""

    def coupling(mask):
        c = mask.shape[0]
        return AffineCoupling(mask, ConvConditioner(c, 2 * c, hidden, blocks), scale)

    def level(i, c, h, w):
        if i == levels - 1:
            return Compose(*[coupling(checkerboard_mask((c, h, w), j % 2)) for j in range(steps + 1)])
        layers = [coupling(checkerboard_mask((c, h, w), j % 2)) for j in range(steps)]
        layers.append(Squeeze())
        layers += [coupling(channel_mask((4 * c, h // 2, w // 2), j % 2)) for j in range(steps)]
        layers += [FactorOut(level(i + 1, 2 * c, h // 2, w // 2), keep=2 * c), Inverse(Squeeze())]
        return Compose(*layers)

    return level(0, *data_shape)


def glow_step(shape: tuple[int, ...], hidden: int, scale: str = "sigmoid") -> Compose:
    """ActNorm, invertible 1x1 conv (or linear map), affine coupling: one Glow step."""
    c = shape[0]
    if len(shape) == 1:
        net = MLPConditioner(c, 2 * c, hidden, 2)
        mask = alternating_mask(c, 0)
    else:
        net = ConvConditioner(c, 2 * c, hidden, 0)
        mask = channel_mask(shape, 0)
    return Compose(ActNorm(c), InvConv1x1(c), AffineCoupling(mask, net, scale))


def glow(
    data_shape: tuple[int, int, int], levels: int = 2, steps: int = 8, hidden: int = 128, scale: str = "sigmoid"
) -> Transform:
    """Glow's multi-scale architecture; H and W must be divisible by 2**levels."""

    def level(i, c, h, w):
        c, h, w = 4 * c, h // 2, w // 2
        layers: list[Transform] = [Squeeze()] + [glow_step((c, h, w), hidden, scale) for _ in range(steps)]
        if i < levels - 1:
            layers.append(FactorOut(level(i + 1, c // 2, h, w), keep=c // 2))
        layers.append(Inverse(Squeeze()))
        return Compose(*layers)

    return level(0, *data_shape)


def dense_glow(dim: int, steps: int = 4, hidden: int = 64, scale: str = "sigmoid") -> Compose:
    """Glow steps on vectors (ActNorm, invertible linear map, affine coupling)."""
    return Compose(*[glow_step((dim,), hidden, scale) for _ in range(steps)])
