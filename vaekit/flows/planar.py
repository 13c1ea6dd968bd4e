"""Planar flows (Rezende & Mohamed 2015): f(z) = z + u_hat * tanh(w^T z + b).

log |det df/dz| = log |1 + u_hat^T w tanh'(w^T z + b)|. Invertibility needs
w^T u_hat >= -1, enforced by u_hat = u + (m(w^T u) - w^T u) w / |w|^2 with
m(a) = -1 + softplus(a) (Rezende & Mohamed 2015, App. A.1). Then 1 + u_hat^T w h' > 0
and the log-determinant is finite; it is computed with ``log1p`` on a term clamped at
-1 + 1e-6 (NaN-safe where rounding would reach the boundary).

``forward`` is the explicit formula (the generative direction in a posterior, so a
posterior flow uses ``Inverse(Planar)``). ``inverse`` has no closed form: with
a = w^T z the scalar equation w^T y = a + (w^T u_hat) tanh(a + b) is strictly increasing
in a, and its root lies within |w^T u_hat| of w^T y, so bisection in float64 finds it to
machine precision; then z = y - u_hat tanh(a + b).

With ``context_dim > 0`` (u, w, b) are produced per example from a context vector (the
encoder's features): amortised flow parameters as in van den Berg et al. 2018.

References:
- Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015.
- van den Berg, Hasenclever, Tomczak & Welling, "Sylvester Normalizing Flows for
  Variational Inference", UAI 2018.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..precision import OutputLinear
from .base import Compose, Transform

BISECTION_STEPS = 64  # halvings of an interval of width 2 |w^T u_hat| (float64 precision)


class Planar(Transform):
    """One planar layer on [B, dim] vectors, with global or context-dependent (u, w, b)."""

    def __init__(self, dim: int, context_dim: int = 0):
        super().__init__()
        self.dim, self.context_dim = dim, context_dim
        init = torch.randn(2 * dim + 1) * 0.1 / dim**0.5
        init[2 * dim] = 0.0
        if context_dim:
            self.hyper = OutputLinear(context_dim, 2 * dim + 1)
            nn.init.normal_(self.hyper.weight, std=0.01 / context_dim**0.5)
            with torch.no_grad():
                self.hyper.bias.copy_(init)
        else:
            self.params = nn.Parameter(init)

    def _params(self, batch: int, context: Tensor | None):
        p = self.hyper(context).to(self.hyper.bias.dtype) if self.context_dim else self.params.expand(batch, -1)
        u, w, b = p[:, : self.dim], p[:, self.dim : 2 * self.dim], p[:, 2 * self.dim]
        wu = (w * u).sum(1, keepdim=True)
        w_sq = (w * w).sum(1, keepdim=True).clamp_min(1e-12)
        u_hat = u + (F.softplus(wu) - 1 - wu) * w / w_sq
        return u_hat, w, b

    @staticmethod
    def _logabsdet(a: Tensor, w: Tensor, u_hat: Tensor) -> Tensor:
        wu = (w * u_hat).sum(1)
        return torch.log1p(((1 - torch.tanh(a) ** 2) * wu).clamp_min(-1 + 1e-6))

    def forward(self, z, context=None):
        u_hat, w, b = self._params(z.shape[0], context)
        a = (w * z).sum(1) + b
        return z + u_hat * torch.tanh(a)[:, None], self._logabsdet(a, w, u_hat)

    def inverse(self, y, context=None):
        u_hat, w, b = self._params(y.shape[0], context)
        c = (w * u_hat).sum(1).double()
        t = ((w * y).sum(1) + b).double()  # solve a + c tanh(a) = t for a = w^T z + b
        with torch.no_grad():
            lo, hi = t - c.abs(), t + c.abs()
            for _ in range(BISECTION_STEPS):
                mid = (lo + hi) / 2
                above = mid + c * torch.tanh(mid) > t
                hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
            a = (lo + hi) / 2
        # one Newton step at the root attaches the implicit-function gradient w.r.t. (y, u, w, b)
        a = a - (a + c * torch.tanh(a) - t) / (1 + c * (1 - torch.tanh(a) ** 2))
        a = a.to(y.dtype)
        return y - u_hat * torch.tanh(a)[:, None], -self._logabsdet(a, w, u_hat)


def planar_flow(dim: int, layers: int = 4, context_dim: int = 0) -> Compose:
    """``layers`` planar layers composed."""
    return Compose(*[Planar(dim, context_dim) for _ in range(layers)])
