"""Coupling layers: one part of the input conditions an invertible map of the other.

With a binary mask m, x_a = m * x passes unchanged and the rest is transformed by
functions of x_a alone, so the Jacobian is triangular and the inverse is as cheap as
the forward pass:

- additive (NICE):  y = x + (1 - m) * t(m * x),                       log|det| = 0
- affine (RealNVP): y = m * x + (1 - m) * (x * exp(s(m * x)) + t(m * x)),
                    log|det| = sum (1 - m) * s   (s bounded, see ``base.log_scale``)

Masks: alternating for vectors, checkerboard and channel-wise for images
(Dinh et al. 2016, Fig. 3). The conditioner nets end in a zero-initialised layer, so
every coupling starts as the identity (Kingma & Dhariwal 2018, Sec. 3.3).

References:
- Dinh, Krueger & Bengio, "NICE: Non-linear Independent Components Estimation", 2014
  (additive coupling, the diagonal scaling layer).
- Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017
  (affine coupling, checkerboard and channel masks).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import Compose, Reshape, Transform, log_scale, sum_except_batch


# --- masks ---------------------------------------------------------------------------------
def alternating_mask(dim: int, parity: int) -> Tensor:
    """[dim] with ones at the indices i where i + parity is even."""
    return ((torch.arange(dim) + parity) % 2 == 0).float()


def checkerboard_mask(shape: tuple[int, int, int], parity: int) -> Tensor:
    """[C, H, W] checkerboard (the same on every channel), ones where h + w + parity is even."""
    c, h, w = shape
    board = (torch.arange(h)[:, None] + torch.arange(w)[None, :] + parity) % 2 == 0
    return board.float().expand(c, h, w).clone()


def channel_mask(shape: tuple[int, int, int], parity: int) -> Tensor:
    """[C, H, W] with ones on the first half of the channels (parity 0) or the second (1)."""
    c, h, w = shape
    first = (torch.arange(c) < c // 2).float()
    m = first if parity == 0 else 1 - first
    return m[:, None, None].expand(c, h, w).clone()


# --- conditioner nets ----------------------------------------------------------------------
class MLPConditioner(nn.Module):
    """[B, in_dim] (+ context [B, H], concatenated) -> [B, out_dim]; last layer starts at zero."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, n_hidden: int = 2, context_dim: int = 0):
        super().__init__()
        self.context_dim = context_dim
        widths = [in_dim + context_dim] + [hidden] * n_hidden
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        last = nn.Linear(widths[-1], out_dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.context_dim:
            x = torch.cat([x, context], dim=1)
        return self.net(x)


class _ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.net = nn.Sequential(nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x):
        return x + self.net(x)


class ConvConditioner(nn.Module):
    """[B, C_in, H, W] -> [B, C_out, H, W]: conv3x3, ``blocks`` residual blocks, conv1x1, conv3x3.

    With ``blocks=0`` this is Glow's coupling net (3x3, 1x1, zero-initialised 3x3); with
    residual blocks it is a small version of RealNVP's ResNet (without batch norm, so the
    flow is the same function in training and evaluation). ``context`` is not used.
    """

    def __init__(self, in_ch: int, out_ch: int, hidden: int, blocks: int = 0):
        super().__init__()
        last = nn.Conv2d(hidden, out_ch, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 3, padding=1),
            *[_ResBlock(hidden) for _ in range(blocks)],
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            last,
        )

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(x)


# --- layers --------------------------------------------------------------------------------
class AdditiveCoupling(Transform):
    """NICE: y = x + (1 - m) * t(m * x); volume preserving. ``net`` keeps the input's shape."""

    def __init__(self, mask: Tensor, net: nn.Module):
        super().__init__()
        self.register_buffer("mask", mask)
        self.net = net

    def _shift(self, x, context):
        return (1 - self.mask) * self.net(x * self.mask, context).to(x.dtype)

    def forward(self, x, context=None):
        return x + self._shift(x, context), x.new_zeros(x.shape[0])

    def inverse(self, y, context=None):
        return y - self._shift(y, context), y.new_zeros(y.shape[0])


class AffineCoupling(Transform):
    """RealNVP / Glow: y = x * exp(s) + t on the unmasked part, (s, t) = net(m * x).

    ``net`` maps [B, C, ...] to [B, 2C, ...] (log-scale then shift along axis 1); ``scale``
    picks the bounded log-scale of ``base.log_scale`` ('tanh' soft clamp or Glow's 'sigmoid').
    """

    def __init__(self, mask: Tensor, net: nn.Module, scale: str = "tanh"):
        super().__init__()
        log_scale(torch.zeros(1), scale)  # fail early on an unknown scale
        self.register_buffer("mask", mask)
        self.net = net
        self.scale = scale

    def _params(self, x, context):
        raw_s, t = self.net(x * self.mask, context).to(x.dtype).chunk(2, dim=1)  # bf16 under autocast
        keep = 1 - self.mask
        return log_scale(raw_s, self.scale) * keep, t * keep

    def forward(self, x, context=None):
        s, t = self._params(x, context)
        return x * s.exp() + t, sum_except_batch(s)

    def inverse(self, y, context=None):
        s, t = self._params(y, context)  # m * y == m * x: the conditioner sees the same input
        return (y - t) * (-s).exp(), -sum_except_batch(s)


class DiagonalScaling(Transform):
    """NICE's last layer: y = x * exp(s) with one learned s per dimension; log|det| = sum s."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(shape))

    def forward(self, x, context=None):
        return x * self.log_scale.exp(), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, y, context=None):
        return y * (-self.log_scale).exp(), (-self.log_scale.sum()).expand(y.shape[0])


# --- builders ------------------------------------------------------------------------------
def nice(data_shape: tuple[int, ...], couplings: int = 4, hidden: int = 1000, n_hidden: int = 5) -> Compose:
    """NICE on flattened data: alternating additive couplings with MLPs, then diagonal scaling."""
    dim = math.prod(data_shape)
    layers: list[Transform] = [Reshape(data_shape, (dim,))]
    for i in range(couplings):
        layers.append(AdditiveCoupling(alternating_mask(dim, i % 2), MLPConditioner(dim, dim, hidden, n_hidden)))
    layers += [DiagonalScaling((dim,)), Reshape((dim,), data_shape)]
    return Compose(*layers)


def dense_realnvp(
    dim: int, layers: int = 4, hidden: int = 64, n_hidden: int = 2, context_dim: int = 0, scale: str = "tanh"
) -> Compose:
    """RealNVP for vectors (latent codes, tabular data): affine couplings on alternating masks."""
    return Compose(
        *[
            AffineCoupling(
                alternating_mask(dim, i % 2), MLPConditioner(dim, 2 * dim, hidden, n_hidden, context_dim), scale
            )
            for i in range(layers)
        ]
    )
