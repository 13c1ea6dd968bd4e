"""Glow's layers: activation normalisation and the invertible 1x1 convolution.

- ActNorm: y = (x + b) * exp(s) per channel, b and s initialised from the first batch
  so that y has zero mean and unit variance per channel (data-dependent initialisation).
  The "initialised" flag is a buffer, so it travels with ``state_dict`` and ``.to``.
- InvConv1x1: y = W x at every pixel (a learned channel permutation), with
  W = P L (U + diag(sign * exp(log_s))) (LU parameterisation), so
  log|det| = H * W * sum(log_s) costs O(C) and the inverse needs two triangular solves.
  On vectors [B, D] the same layer is an invertible linear map.

References:
- Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Transform, full_precision_region

ACTNORM_MIN_STD = 1e-3  # below this spread on the first batch a channel keeps unit scale


def _per_channel(p: Tensor, x: Tensor) -> Tensor:
    """Broadcast a [C] parameter against x [B, C, *spatial]."""
    return p.view(1, -1, *([1] * (x.dim() - 2)))


def _spatial(x: Tensor) -> int:
    return x[0, 0].numel()


class ActNorm(Transform):
    """Per-channel affine map with data-dependent initialisation on the first forward batch
    (Kingma & Dhariwal 2018): zero mean and unit variance per channel on that batch. A channel
    without spread there (one value, or a constant) starts at unit scale rather than at 1/std,
    which would be infinite or huge and, once ``initialized`` is set, permanent."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))
        self.eps = eps

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)  # [C, B * spatial]
        self.bias.copy_(-flat.mean(1))
        std = flat.std(1) if flat.shape[1] > 1 else torch.zeros_like(flat[:, 0])
        self.log_scale.copy_(-torch.log(torch.where(std > ACTNORM_MIN_STD, std + self.eps, torch.ones_like(std))))
        self.initialized.fill_(True)

    def forward(self, x, context=None):
        if not self.initialized:
            self._initialize(x)
        y = (x + _per_channel(self.bias, x)) * _per_channel(self.log_scale, x).exp()
        return y, (_spatial(x) * self.log_scale.sum()).expand(x.shape[0])

    def inverse(self, y, context=None):
        x = y * _per_channel(-self.log_scale, y).exp() - _per_channel(self.bias, y)
        return x, (-_spatial(y) * self.log_scale.sum()).expand(y.shape[0])


class InvConv1x1(Transform):
    """Invertible 1x1 convolution (channel mixing), LU-parameterised, started at a random rotation."""

    def __init__(self, channels: int):
        super().__init__()
        w = torch.linalg.qr(torch.randn(channels, channels))[0]
        p, lower, upper = torch.linalg.lu(w)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(s.abs()))

    def _factors(self):
        eye = torch.eye(self.log_s.numel(), device=self.log_s.device, dtype=self.log_s.dtype)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * self.log_s.exp())
        return lower, upper

    def weight(self) -> Tensor:
        lower, upper = self._factors()
        return self.perm @ lower @ upper

    def inverse_weight(self) -> Tensor:
        """W^-1 = U^-1 L^-1 P^T by triangular solves, in float64 so round trips stay tight."""
        lower, upper = (f.double() for f in self._factors())
        eye = torch.eye(lower.shape[0], dtype=torch.float64, device=lower.device)
        inv_l = torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)
        inv_u = torch.linalg.solve_triangular(upper, eye, upper=True)
        return (inv_u @ inv_l @ self.perm.double().T).to(self.log_s.dtype)

    @staticmethod
    def _mix(x: Tensor, w: Tensor) -> Tensor:
        if x.dim() == 2:
            return F.linear(x, w)
        return F.conv2d(x, w.view(*w.shape, 1, 1))

    def forward(self, x, context=None):
        with full_precision_region(x):  # the data path: no bf16 rounding between the layers of a flow
            return self._mix(x, self.weight()), (_spatial(x) * self.log_s.sum()).expand(x.shape[0])

    def inverse(self, y, context=None):
        with full_precision_region(y):
            return self._mix(y, self.inverse_weight()), (-_spatial(y) * self.log_s.sum()).expand(y.shape[0])
