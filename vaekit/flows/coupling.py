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

Split evaluation. Where the mask is constant along every axis but axis 1 (any mask on
vectors; channel masks on images), the coupling indexes the two parts instead of
multiplying by the mask (Dinh et al. 2014, Sec. 3.2): the conditioner reads only the
kept part and writes only the changed part's parameters. Its input columns of the
masked-out part only ever saw zeros and its output rows of the kept part were only
ever multiplied by zero, so dropping them (``Conditioner.restrict``) computes the same
function with the same initial weights, in fewer FLOPs: Glow's coupling nets lose a
quarter of their work, NICE's a seventh. Checkpoints of the masked layout load by the
same slicing.

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

from ..checks import lookup
from ..precision import OutputConv2d, OutputLinear
from .base import LOG_SCALES, Compose, Reshape, Transform, log_scale, sum_except_batch


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


def split_index(mask: Tensor) -> tuple[Tensor, Tensor] | None:
    """(kept, changed) indices along axis 1 for a mask [D] or [C, *spatial] that is constant over
    every axis but the first; None when it is not (a checkerboard)."""
    rows = mask.reshape(mask.shape[0], -1)
    if not bool((rows == rows[:, :1]).all()):
        return None
    keep = rows[:, 0] > 0.5
    return keep.nonzero().flatten(), (~keep).nonzero().flatten()


# --- conditioner nets ----------------------------------------------------------------------
class Conditioner(nn.Module):
    """A coupling's conditioner: ``net`` is an ``nn.Sequential`` whose first module is its input
    layer (weights [out, in, ...]) and whose last is its output layer (zero-initialised);
    ``context_dim`` extra input columns follow the data's."""

    net: nn.Sequential
    context_dim: int = 0

    def _layers(self) -> tuple[str, str]:
        return "net.0", f"net.{len(self.net) - 1}"

    def _columns(self, keep: Tensor, n_in: int) -> Tensor:
        """Input columns of the first layer to keep: the kept data columns, then the context's."""
        return torch.cat([keep, n_in + torch.arange(self.context_dim, device=keep.device)])

    def restrict(self, keep: Tensor, rows: Tensor) -> None:
        """Keep the first layer's input columns ``keep`` (and the context's) and the last layer's
        output rows ``rows``, in place: the function on inputs that are zero outside ``keep``,
        restricted to the outputs ``rows``, is unchanged."""
        first, last = (self.get_submodule(name) for name in self._layers())
        n_in = first.weight.shape[1] - self.context_dim
        with torch.no_grad():
            first.weight = nn.Parameter(first.weight[:, self._columns(keep, n_in)].clone())
            last.weight = nn.Parameter(last.weight[rows].clone())
            last.bias = nn.Parameter(last.bias[rows].clone())
        for layer, attr, n in ((first, "in", first.weight.shape[1]), (last, "out", last.weight.shape[0])):
            setattr(layer, f"{attr}_features" if isinstance(layer, nn.Linear) else f"{attr}_channels", n)

    def restrict_state(self, state: dict, prefix: str, keep: Tensor, rows: Tensor, n_in: int) -> None:
        """Slice a state dict written for the unrestricted net (``n_in`` data inputs) as ``restrict``
        slices the weights; entries already of the restricted shape are left alone."""
        first, last = (f"{prefix}{name}." for name in self._layers())
        if f"{first}weight" in state and state[f"{first}weight"].shape[1] == n_in + self.context_dim:
            state[f"{first}weight"] = state[f"{first}weight"][:, self._columns(keep, n_in)]
        for key in (f"{last}weight", f"{last}bias"):
            if key in state and state[key].shape[0] != rows.numel():
                state[key] = state[key][rows]


class MLPConditioner(Conditioner):
    """[B, in_dim] (+ context [B, H], concatenated) -> [B, out_dim]; last layer starts at zero."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, n_hidden: int = 2, context_dim: int = 0):
        super().__init__()
        self.context_dim = context_dim
        widths = [in_dim + context_dim] + [hidden] * n_hidden
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]  # overwrites a product nothing else reads
        last = OutputLinear(widths[-1], out_dim)
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
        # the first activation reads x, which the skip connection adds back: not in place
        self.net = nn.Sequential(
            nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(ch, ch, 3, padding=1)
        )

    def forward(self, x):
        return x + self.net(x)


class ConvConditioner(Conditioner):
    """[B, C_in, H, W] -> [B, C_out, H, W]: conv3x3, ``blocks`` residual blocks, conv1x1, conv3x3.

    With ``blocks=0`` this is Glow's coupling net (3x3, 1x1, zero-initialised 3x3); with
    residual blocks it is a small version of RealNVP's ResNet (without batch norm, so the
    flow is the same function in training and evaluation). ``context`` is not used. The
    activations that follow a convolution overwrite its output: a fresh feature map per
    activation costs a pass over memory that the training step's elementwise work is bound by.
    """

    def __init__(self, in_ch: int, out_ch: int, hidden: int, blocks: int = 0):
        super().__init__()
        last = OutputConv2d(hidden, out_ch, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 3, padding=1),
            *[_ResBlock(hidden) for _ in range(blocks)],
            nn.ReLU(inplace=True),  # on a convolution's (or a skip sum's) output, which nothing else reads
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(inplace=True),
            last,
        )

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(x)


# --- layers --------------------------------------------------------------------------------
class _Coupling(Transform):
    """The mask, the conditioner and, where the mask allows, the split evaluation (module docstring).

    ``n_params`` is how many per-dimension parameters the net gives for each input dimension
    (1 additive, 2 affine: log-scale then shift along axis 1).
    """

    n_params = 1

    def __init__(self, mask: Tensor, net: nn.Module, split: bool = True):
        super().__init__()
        self.register_buffer("mask", mask)
        self.net = net
        index = split_index(mask) if split and isinstance(net, Conditioner) else None
        self.split = index is not None
        if self.split:
            keep, change = index
            self.register_buffer("keep", keep, persistent=False)
            self.register_buffer("change", change, persistent=False)
            # merged[:, order] puts cat([kept, changed]) back in the input's order along axis 1
            self.register_buffer("order", torch.argsort(torch.cat([keep, change])), persistent=False)
            net.restrict(keep, self._rows(change, mask.shape[0]))

    def _rows(self, change: Tensor, n: int) -> Tensor:
        """The net's output rows that act on the changed part: [changed] per parameter group."""
        return torch.cat([change + i * n for i in range(self.n_params)])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.split:  # a checkpoint of the masked layout: slice as ``restrict`` did
            n = self.mask.shape[0]
            self.net.restrict_state(state_dict, f"{prefix}net.", self.keep, self._rows(self.change, n), n)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.index_select(1, self.keep), x.index_select(1, self.change)

    def _merge(self, kept: Tensor, changed: Tensor) -> Tensor:
        return torch.cat([kept, changed], dim=1).index_select(1, self.order)


class AdditiveCoupling(_Coupling):
    """NICE: y = x + (1 - m) * t(m * x); volume preserving. ``net`` keeps the input's shape.

    ``split`` (default): evaluate a ``Conditioner`` on the kept part only where the mask allows."""

    def _shift(self, x, context):
        return (1 - self.mask) * self.net(x * self.mask, context).to(x.dtype)

    def forward(self, x, context=None):
        if self.split:
            kept, changed = self._parts(x)
            return self._merge(kept, changed + self.net(kept, context).to(x.dtype)), x.new_zeros(x.shape[0])
        return x + self._shift(x, context), x.new_zeros(x.shape[0])

    def inverse(self, y, context=None):
        if self.split:
            kept, changed = self._parts(y)
            return self._merge(kept, changed - self.net(kept, context).to(y.dtype)), y.new_zeros(y.shape[0])
        return y - self._shift(y, context), y.new_zeros(y.shape[0])


class AffineCoupling(_Coupling):
    """RealNVP / Glow: y = x * exp(s) + t on the unmasked part, (s, t) = net(m * x).

    ``net`` maps [B, C, ...] to [B, 2C, ...] (log-scale then shift along axis 1); ``scale``
    picks the bounded log-scale of ``base.log_scale`` ('tanh' soft clamp or Glow's 'sigmoid').
    ``split`` (default): evaluate a ``Conditioner`` on the kept part only where the mask allows.
    """

    n_params = 2

    def __init__(self, mask: Tensor, net: nn.Module, scale: str = "tanh", split: bool = True):
        lookup(LOG_SCALES, scale, "flow scale")  # an unknown scale is refused at construction
        super().__init__(mask, net, split)
        self.scale = scale

    def _params(self, x, context):
        raw_s, t = self.net(x * self.mask, context).to(x.dtype).chunk(2, dim=1)  # bf16 under autocast
        keep = 1 - self.mask
        return log_scale(raw_s, self.scale) * keep, t * keep

    def _split_params(self, kept, context):
        raw_s, t = self.net(kept, context).to(kept.dtype).chunk(2, dim=1)  # bf16 under autocast
        return log_scale(raw_s, self.scale), t

    def forward(self, x, context=None):
        if self.split:
            kept, changed = self._parts(x)
            s, t = self._split_params(kept, context)
            return self._merge(kept, changed * s.exp() + t), sum_except_batch(s)
        s, t = self._params(x, context)
        return x * s.exp() + t, sum_except_batch(s)

    def inverse(self, y, context=None):
        if self.split:
            kept, changed = self._parts(y)  # the kept part is the same in x and y
            s, t = self._split_params(kept, context)
            return self._merge(kept, (changed - t) * (-s).exp()), -sum_except_batch(s)
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
