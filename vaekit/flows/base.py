"""Invertible maps and how they compose.

Contract (the project DESIGN.md): a :class:`Transform` is an ``nn.Module`` with

    forward(x, context=None) -> (y, logabsdet)     logabsdet = log |det dy/dx|, shape [B]
    inverse(y, context=None) -> (x, logabsdet)     logabsdet = log |det dx/dy| = -forward's

on batches [B, *event_shape]. ``context`` is an optional [B, H] tensor for conditional
flows (IAF, amortised planar flows); transforms that do not use it ignore it.

Direction. Everywhere in vaekit ``forward`` is the *normalising* direction, data -> base
noise, so that log p(x) = log p_base(T(x)) + log |det dT/dx| (Dinh et al. 2016, Eq. 3).
Sampling runs ``inverse``. A layer whose cheap direction is the generative one (planar
flows, IAF) is used through :class:`Inverse`; IAF *is* ``Inverse(MADE-flow)``.

Numerics. Log-determinants are summed per example in the input's dtype (float32 in
training). Under mixed-precision autocast (``vaekit.nets.speed.autocast``) the conditioner
nets compute in bf16 but their outputs are cast back to the data path's dtype before they
become log-scales and shifts, and the linear maps on the data path itself (the invertible
1x1 convolution) run with autocast off (:func:`full_precision_region`): the map stays
exactly invertible and its log-determinant float32. Every learned log-scale of a coupling
or autoregressive layer is bounded before it is exponentiated (:func:`log_scale`: a soft
clamp ``c tanh(s / c)``, c = 2, of the raw output or of Glow's ``log sigmoid(s + 2)``), so
no factor can overflow or underflow to 0 and a layer's log-determinant stays within D * c;
the soft clamp keeps gradients non-zero where a hard clamp would cut them.

References:
- Dinh, Krueger & Bengio, "NICE: Non-linear Independent Components Estimation", 2014.
- Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017.
- Ardizzone et al., "Analyzing Inverse Problems with Invertible Neural Networks", ICLR 2019
  (the soft clamp of affine log-scales).
- Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import lookup

SOFT_CLAMP = 2.0  # |log-scale| < SOFT_CLAMP for scale='tanh': each factor in (e^-2, e^2)


def sum_except_batch(x: Tensor) -> Tensor:
    """Sum over every axis but the first: [B, ...] -> [B]."""
    return x.reshape(x.shape[0], -1).sum(1)


def full_precision_region(x: Tensor):
    """Context with autocast off on ``x``'s device: products inside run in ``x``'s own dtype."""
    return torch.autocast(x.device.type, enabled=False)


def _tanh_log_scale(raw: Tensor) -> Tensor:
    return SOFT_CLAMP * torch.tanh(raw / SOFT_CLAMP)


def _sigmoid_log_scale(raw: Tensor) -> Tensor:
    return SOFT_CLAMP * torch.tanh(F.logsigmoid(raw + 2.0) / SOFT_CLAMP)


LOG_SCALES = {"tanh": _tanh_log_scale, "sigmoid": _sigmoid_log_scale}


def log_scale(raw: Tensor, kind: str = "tanh") -> Tensor:
    """A log-scale in (-SOFT_CLAMP, SOFT_CLAMP) from an unconstrained network output (in floating
    point [-SOFT_CLAMP, SOFT_CLAMP]: tanh rounds to 1 far out).

    ``tanh``: ``c tanh(raw / c)`` with c = SOFT_CLAMP, zero at raw = 0 (identity at init);
    ``sigmoid``: Glow's ``log sigmoid(raw + 2)`` (a scale in (0, 1), via ``logsigmoid`` so
    log 0 never happens), passed through the same soft clamp so that a scale can never
    underflow to 0 and make the inverse divide by it. Both are finite for any finite or
    infinite ``raw``; NaN stays NaN. An unknown ``kind`` is refused by ``checks.lookup``
    (as the layers that take one do at construction).
    """
    return lookup(LOG_SCALES, kind, "flow scale")(raw)


class Transform(nn.Module):
    """An invertible map with log-determinants (the contract in the module docstring)."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class Compose(Transform):
    """T_n o ... o T_1: forward runs the list in order, inverse in reverse; logdets add up."""

    def __init__(self, *transforms: Transform):
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    @staticmethod
    def _cascade(x: Tensor, steps, context: Tensor | None) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0])
        for step in steps:
            x, logabsdet = step(x, context=context)
            total = total + logabsdet
        return x, total

    def forward(self, x, context=None):
        return self._cascade(x, list(self.transforms), context)

    def inverse(self, y, context=None):
        return self._cascade(y, [t.inverse for t in reversed(self.transforms)], context)


class Inverse(Transform):
    """The inverse of a transform, as an object: its forward is the wrapped inverse."""

    def __init__(self, transform: Transform):
        super().__init__()
        self.transform = transform

    def forward(self, x, context=None):
        return self.transform.inverse(x, context=context)

    def inverse(self, y, context=None):
        return self.transform(y, context=context)


class Reverse(Transform):
    """Reverses the order of axis 1 (features of a vector, channels of an image); |det| = 1."""

    def forward(self, x, context=None):
        return x.flip(1), x.new_zeros(x.shape[0])

    def inverse(self, y, context=None):
        return self.forward(y)


class Reshape(Transform):
    """[B, *in_shape] <-> [B, *out_shape] (e.g. an image to a vector for NICE); |det| = 1."""

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]):
        super().__init__()
        if math.prod(in_shape) != math.prod(out_shape):
            raise ValueError(f"cannot reshape {in_shape} to {out_shape}")
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    def forward(self, x, context=None):
        return x.reshape(x.shape[0], *self.out_shape), x.new_zeros(x.shape[0])

    def inverse(self, y, context=None):
        return y.reshape(y.shape[0], *self.in_shape), y.new_zeros(y.shape[0])


class Shift(Transform):
    """y = x + shift with a fixed scalar (Glow's centring x - 1/2); |det| = 1."""

    def __init__(self, shift: float):
        super().__init__()
        self.shift = float(shift)

    def forward(self, x, context=None):
        return x + self.shift, x.new_zeros(x.shape[0])

    def inverse(self, y, context=None):
        return y - self.shift, y.new_zeros(y.shape[0])


class Logit(Transform):
    """y = logit(alpha + (1 - 2 alpha) x) for x in [0, 1] (Dinh et al. 2016, Sec. 4.1).

    ``alpha`` > 0 keeps the logit finite at x = 0 and x = 1; the log-determinant
    sum log((1 - 2 alpha) / (p (1 - p))), p = alpha + (1 - 2 alpha) x, is part of the
    model's density, so bits/dim in data space include it.
    """

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        if not 0.0 < alpha < 0.5:
            raise ValueError(f"logit alpha must be in (0, 0.5); got {alpha}")
        self.alpha = float(alpha)

    def forward(self, x, context=None):
        p = self.alpha + (1 - 2 * self.alpha) * x
        log_p, log_1mp = torch.log(p), torch.log1p(-p)
        logabsdet = sum_except_batch(math.log(1 - 2 * self.alpha) - log_p - log_1mp)
        return log_p - log_1mp, logabsdet

    def inverse(self, y, context=None):
        log_p, log_1mp = F.logsigmoid(y), F.logsigmoid(-y)
        x = (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)
        return x, sum_except_batch(log_p + log_1mp - math.log(1 - 2 * self.alpha))
