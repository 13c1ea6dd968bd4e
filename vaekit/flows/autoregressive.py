"""Autoregressive flows built on MADE: MAF-style layers and IAF as their inverse.

MADE (Germain et al. 2015) masks the weights of an MLP so that output i depends only on
inputs 1..i-1: every unit gets a degree, and a weight from a unit of degree d to a
hidden unit of degree d' exists only if d' >= d (to an output of degree d', only if
d' > d). An optional context vector feeds the first hidden layer unmasked.

``MaskedAffineAutoregressive`` (the "MADE-flow"):

    forward:  y_i = x_i * exp(s_i(x_<i)) + t_i(x_<i)      one MADE pass, log|det| = sum s
    inverse:  x_i = (y_i - t_i(x_<i)) * exp(-s_i(x_<i))    D sequential passes

Its forward is the cheap density direction (MAF, Papamakarios et al. 2017). IAF
(Kingma et al. 2016) is the same map run the other way: ``IAF = Inverse(MADE-flow)``,
whose *inverse* -- the sampling direction z_0 -> z_1 -- takes a single pass with the
parameters computed from the noise, and whose log-density of its own samples is free.
Scales are bounded as in ``base.log_scale``; 'sigmoid' gives IAF's gated update
z' = sigma * z + shift with sigma in (0, 1) (Kingma et al. 2016, Eq. 14, up to the
parameterisation of the shift).

References:
- Germain, Gregor, Murray & Larochelle, "MADE: Masked Autoencoder for Distribution
  Estimation", ICML 2015.
- Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling, "Improved Variational
  Inference with Inverse Autoregressive Flow", NeurIPS 2016.
- Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for Density Estimation",
  NeurIPS 2017.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import lookup
from ..precision import OutputLayer
from .base import LOG_SCALES, Compose, Inverse, Reverse, Transform, log_scale


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask [out, in] (a buffer)."""

    def __init__(self, in_features: int, out_features: int, mask: Tensor):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.float())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class OutputMaskedLinear(OutputLayer, MaskedLinear):
    """:class:`MaskedLinear` as MADE's output layer, the flow's shift and log-scale (``OutputLayer``)."""


class MADE(nn.Module):
    """x [B, dim] (+ context [B, H]) -> [B, n_params, dim]; output [:, k, i] depends on x_<i only.

    Inputs take the natural order 1..dim (compose with ``Reverse`` to alternate orders);
    hidden degrees cycle through 1..dim-1, so every degree is present when the layers are
    at least dim-1 wide. The output layer starts at zero (an identity flow).
    """

    def __init__(self, dim: int, hidden: list[int], n_params: int = 2, context_dim: int = 0):
        super().__init__()
        self.dim, self.n_params = dim, n_params
        in_deg = torch.arange(1, dim + 1)
        degrees = [in_deg]
        for h in hidden:
            degrees.append(torch.arange(h) % max(1, dim - 1) + 1)
        layers: list[nn.Module] = []
        for d_in, d_out in zip(degrees[:-1], degrees[1:]):
            layers.append(MaskedLinear(len(d_in), len(d_out), d_out[:, None] >= d_in[None, :]))
        out_deg = in_deg.repeat(n_params)
        self.out = OutputMaskedLinear(len(degrees[-1]), n_params * dim, out_deg[:, None] > degrees[-1][None, :])
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.hidden = nn.ModuleList(layers)
        self.context = nn.Linear(context_dim, hidden[0]) if context_dim and hidden else None

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        h = x
        for i, layer in enumerate(self.hidden):
            h = layer(h)
            if i == 0 and self.context is not None:
                h = h + self.context(context)
            h = F.relu(h)
        return self.out(h).view(x.shape[0], self.n_params, self.dim)


class MaskedAffineAutoregressive(Transform):
    """The MADE-flow: affine autoregressive map, one pass forward, ``dim`` passes inverse."""

    def __init__(self, dim: int, hidden: list[int], context_dim: int = 0, scale: str = "tanh"):
        super().__init__()
        lookup(LOG_SCALES, scale, "flow scale")  # an unknown scale is refused at construction
        self.made = MADE(dim, hidden, 2, context_dim)
        self.scale = scale

    def _params(self, x, context):
        raw_s, t = self.made(x, context).to(x.dtype).unbind(1)  # bf16 under training's autocast
        return log_scale(raw_s, self.scale), t

    def forward(self, x, context=None):
        s, t = self._params(x, context)
        return x * s.exp() + t, s.sum(1)

    def inverse(self, y, context=None):
        x = torch.zeros_like(y)
        for _ in range(y.shape[1]):  # pass i fixes x_i, since x_i depends on x_<i only
            s, t = self._params(x, context)
            x = (y - t) * (-s).exp()
        return x, -s.sum(1)


class IAF(Inverse):
    """Inverse autoregressive flow layer: ``Inverse(MaskedAffineAutoregressive)``; samples in one pass."""

    def __init__(self, dim: int, hidden: list[int], context_dim: int = 0, scale: str = "sigmoid"):
        super().__init__(MaskedAffineAutoregressive(dim, hidden, context_dim, scale))


def _alternating(layers: int, make) -> Compose:
    """``layers`` layers from ``make()`` with the variable order reversed between consecutive ones."""
    steps: list[Transform] = []
    for i in range(layers):
        steps += ([Reverse()] if i else []) + [make()]
    return Compose(*steps)


def maf(
    dim: int, layers: int = 4, hidden: list[int] | None = None, context_dim: int = 0, scale: str = "tanh"
) -> Compose:
    """MADE-flow layers, order reversed between them: cheap density evaluation (MAF)."""
    return _alternating(layers, lambda: MaskedAffineAutoregressive(dim, hidden or [64, 64], context_dim, scale))


def iaf(
    dim: int, layers: int = 4, hidden: list[int] | None = None, context_dim: int = 0, scale: str = "sigmoid"
) -> Compose:
    """IAF layers, order reversed between them: cheap sampling and log q of the samples."""
    return _alternating(layers, lambda: IAF(dim, hidden or [64, 64], context_dim, scale))
