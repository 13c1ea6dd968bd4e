"""Gated PixelCNN body, conditioned on a map c(z): the network of the PixelVAE likelihood.

The model: p(x|z) = prod_i p(x_i | x_<i, z) in raster order (rows, then columns, then colour
channels R, G, B within a pixel). This module holds the tensor -> tensor network only:
:class:`GatedPixelCNN` maps x (and c(z)) to per-sub-pixel parameters in one parallel masked
pass and draws x by the autoregressive loop given a per-pixel sampler. The likelihood that
plugs it into the VAE, with its output heads, is ``vaekit.distributions.pixelcnn``.

Pieces:

- :class:`MaskedConv2d`: a convolution whose kernel only sees positions before its centre in
  raster order; at the centre, mask A lets colour group g see input groups < g (first layer),
  mask B groups <= g (later layers). Channel i belongs to colour group i mod C (PixelRNN,
  van den Oord et al. 2016a, Fig. 4).
- :class:`GatedLayer`: the gated block without blind spot (van den Oord et al. 2016b, Fig. 2):
  a vertical stack (a (k//2+1) x k convolution that sees the rows above and the current row)
  and a horizontal stack (a masked 1 x (k//2+1) convolution over the current row up to the
  current pixel). The vertical pre-activations, shifted down one row, feed the horizontal
  stack through a 1x1 convolution, so the horizontal stack sees every earlier row in full;
  gates are tanh(a) * sigmoid(b); the horizontal stack is residual after the first layer.
- Conditioning (Gulrajani et al. 2017, PixelVAE): c(z) enters every layer's vertical and
  horizontal pre-activations through 1x1 convolutions (computed once for all layers).
- A 1x1 masked output head gives ``n_out`` parameters per sub-pixel (the likelihood's head
  decides how many and what they mean).

Sampling without a cache but without waste: a pixel's parameters depend on a bounded
neighbourhood, L (k//2) rows above and L (k//2) columns to the left for L layers. Once per
row the vertical stack runs on the L (k//2) + 1 rows above it (the links into the row);
then per pixel (and per colour channel) only the horizontal stack runs, on the
L (k//2) + 1 columns ending at the pixel, and the head on that one pixel. Both crops
shrink by k//2 per layer, since layer l only has to be right where layers > l look. Outputs equal the
full parallel pass exactly (tested); a 64-sample 28x28 grid takes seconds on a CPU.

References: van den Oord, Kalchbrenner & Kavukcuoglu, "Pixel Recurrent Neural Networks",
ICML 2016 (masks A/B, colour groups); van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves
& Kavukcuoglu, "Conditional Image Generation with PixelCNN Decoders", NeurIPS 2016 (gated
blocks, vertical/horizontal stacks); Gulrajani, Kumar, Ahmed, Taiga, Visin, Vazquez &
Courville, "PixelVAE: A Latent Variable Model for Natural Images", ICLR 2017; Salimans,
Karpathy, Chen & Kingma, "PixelCNN++", ICLR 2017 (discretised logistic mixture).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..precision import OneDNNBF16Pass, OutputLayer, float32_outputs_active, onednn_bf16_products
from .body import NetBody
from .speed import fixed_parameters_scope


def _pair(k) -> tuple[int, int]:
    return (k, k) if isinstance(k, int) else tuple(k)  # type: ignore[return-value]


def colour_groups(n: int, data_channels: int) -> Tensor:
    """Colour group of each of ``n`` channels: channel i belongs to colour i mod C."""
    return torch.arange(n) % data_channels


class MaskedConv2d(nn.Conv2d):
    """Convolution that sees only inputs before its centre in raster order (and colour order).

    Input [B, c_in, H, W] -> output [B, c_out, H, W] (padding puts the kernel centre on the
    output pixel).

    Args:
        c_in, c_out: channels; channel i of either is in colour group i mod ``data_channels``.
        kernel_size: k or (kh, kw).
        mask_type: 'A' (at the centre, group g sees input groups < g) or 'B' (groups <= g).
        data_channels: C, the colours of the image.
        center: (row, col) of the output pixel inside the kernel; default the middle. The
            horizontal stack uses a 1 x (k//2+1) kernel with the centre in its last column.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size,
        mask_type: str,
        data_channels: int = 1,
        center: tuple[int, int] | None = None,
    ):
        kh, kw = _pair(kernel_size)
        super().__init__(c_in, c_out, (kh, kw), padding=0)
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        ch, cw = center if center is not None else (kh // 2, kw // 2)
        self.mask_type = mask_type
        self.pad = (cw, kw - 1 - cw, ch, kh - 1 - ch)  # F.pad order: left, right, top, bottom
        mask = torch.zeros(c_out, c_in, kh, kw)
        mask[:, :, :ch, :] = 1  # rows above the centre
        mask[:, :, ch, :cw] = 1  # left of the centre in its row
        g_out = colour_groups(c_out, data_channels)[:, None]
        g_in = colour_groups(c_in, data_channels)[None, :]
        mask[:, :, ch, cw] = (g_out > g_in if mask_type == "A" else g_out >= g_in).float()
        self.register_buffer("mask", mask, persistent=False)  # derived from the arguments

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, self.pad), self.weight * self.mask, self.bias)


class OutputMaskedConv2d(OutputLayer, MaskedConv2d):
    """:class:`MaskedConv2d` as the PixelCNN's last layer, the likelihood's parameters (``OutputLayer``)."""


def gate(t: Tensor) -> Tensor:
    """[B, 2F, ...] -> [B, F, ...]: tanh(first half) * sigmoid(second half)."""
    a, b = t.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def gate_last(t: Tensor) -> Tensor:
    """[..., 2F] -> [..., F]: the gate on the last axis."""
    a, b = t.chunk(2, dim=-1)
    return torch.tanh(a) * torch.sigmoid(b)


def shift_down(t: Tensor) -> Tensor:
    """[B, c, H, W] -> [B, c, H, W] moved down one row (zeros in row 0)."""
    return F.pad(t, (0, 0, 1, 0))[:, :, :-1]


class GatedLayer(nn.Module):
    """One gated layer with a vertical and a horizontal stack (no blind spot).

    Args:
        c_in: input channels (C for the first layer, which reads the image, else ``channels``).
        channels: F, feature maps of each stack; a multiple of ``data_channels``.
        kernel: odd k; vertical kernel (k//2+1) x k, horizontal 1 x (k//2+1).
        data_channels: C.
        first: the first layer uses mask A and has no residual connection.
    """

    def __init__(self, c_in: int, channels: int, kernel: int, data_channels: int, first: bool):
        super().__init__()
        r = kernel // 2
        self.pad_r = r
        self.v_pad = (r, r, r, 0)  # left, right, top, bottom: output row i sees rows i-r..i
        self.v_conv = nn.Conv2d(c_in, 2 * channels, (r + 1, kernel))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_conv = MaskedConv2d(c_in, 2 * channels, (1, r + 1), "A" if first else "B", data_channels, center=(0, r))
        self.h_out = MaskedConv2d(channels, channels, 1, "B", data_channels)
        self.residual = not first

    def vertical(self, v: Tensor, cond_v: Tensor | float, pad_top: bool = True) -> tuple[Tensor, Tensor]:
        """v [B, c_in, h, W] -> (pre-activation [B, 2F, h', W], next v [B, F, h', W]).

        h' = h with the zero padding above (the image's top edge); h' = h - k//2 without it
        (a crop inside the image: only rows with their whole context are returned).
        """
        pad = self.v_pad if pad_top else self.v_pad[:2] + (0, 0)
        pre = self.v_conv(F.pad(v, pad))
        return pre, gate(pre + cond_v)

    def link(self, v_pre_above: Tensor) -> Tensor:
        """Vertical pre-activations of the row above [B, 2F, h, W] -> horizontal input [B, 2F, h, W]."""
        return self.v_to_h(v_pre_above)

    def horizontal(self, h: Tensor, link: Tensor, cond_h: Tensor | float) -> Tensor:
        """h [B, c_in, h, w] -> [B, F, h, w], given the link and conditioning of the same positions."""
        out = self.h_out(gate(self.h_conv(h) + link + cond_h))
        return h + out if self.residual else out

    def row_weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The masked horizontal weights as matrices for :meth:`horizontal_seq`.

        Returns (W_h [2F, (r+1) c_in], b_h [2F], W_o [F, F], b_o [F]); column t * c_in + i of
        W_h is tap t (t = r is the current pixel) of input channel i.
        """
        w = (self.h_conv.weight * self.h_conv.mask)[:, :, 0]  # [2F, c_in, r+1]
        w_h = w.permute(0, 2, 1).reshape(w.shape[0], -1)
        w_o = (self.h_out.weight * self.h_out.mask)[:, :, 0, 0]
        return w_h, self.h_conv.bias, w_o, self.h_out.bias

    def horizontal_seq(self, h: Tensor, link_cond: Tensor, weights, pad_left: bool = True) -> Tensor:
        """:meth:`horizontal` on one row segment in [B, w, channels] layout, as matrix products.

        The sampler's form (small per-pixel problems run faster as GEMMs than as convolutions);
        equal to :meth:`horizontal` (tested). h [B, w, c_in]; link_cond [B, w', 2F] is the link
        plus the horizontal conditioning of the output columns. With ``pad_left`` (a segment
        starting at the image's left edge) the output has the w input columns (w' = w), else
        only the w' = w - k//2 columns whose whole context lies inside the segment.
        """
        w_h, b_h, w_o, b_o = weights
        r = self.pad_r
        src = F.pad(h, (0, 0, r, 0)) if pad_left else h
        taps = src.unfold(1, r + 1, 1)  # [B, w', c_in, r+1]
        B, w = taps.shape[:2]
        taps = taps.transpose(-1, -2).reshape(B * w, -1)  # [B w', (r+1) c_in], 2-D for one GEMM
        pre = F.linear(taps, w_h, b_h).view(B, w, -1) + link_cond
        out = F.linear(gate_last(pre).reshape(B * w, -1), w_o, b_o).view(B, w, -1)
        if not self.residual:
            return out
        return (h if pad_left else h[:, r:]) + out


class GatedPixelCNN(OneDNNBF16Pass, NetBody):
    """x [B, C, H, W] in [0, 1] (and c [B, cond, H, W]) -> parameters [B, n_out, C, H, W].

    Output [:, :, c, i, j] depends only on x at pixels before (i, j) in raster order and on
    channels < c of pixel (i, j).

    Args:
        data_channels: C.
        n_out: parameters per sub-pixel (1 for Bernoulli, 3 * n_mix, 256).
        channels: F, feature maps per stack (a multiple of C).
        layers: L, gated layers.
        kernel: odd k >= 3.
        cond_channels: channels of the conditioning map (0: unconditional).
    """

    def __init__(
        self,
        data_channels: int,
        n_out: int,
        channels: int = 32,
        layers: int = 6,
        kernel: int = 3,
        cond_channels: int = 0,
    ):
        super().__init__()
        C, Fm = data_channels, channels
        if Fm <= 0 or Fm % C:
            raise ConfigError(f"model.pixelcnn_channels must be a positive multiple of the {C} data channels; got {Fm}")
        if layers < 1:
            raise ConfigError(f"model.pixelcnn_layers must be positive; got {layers}")
        if kernel < 3 or kernel % 2 == 0:
            raise ConfigError(f"model.pixelcnn_kernel must be odd and >= 3; got {kernel}")
        self.data_channels, self.n_out, self.channels = C, n_out, Fm
        self.layers = nn.ModuleList(GatedLayer(C if l == 0 else Fm, Fm, kernel, C, first=l == 0) for l in range(layers))
        self.cond = nn.Conv2d(cond_channels, layers * 4 * Fm, 1) if cond_channels else None
        self.head = nn.Sequential(
            nn.ReLU(), MaskedConv2d(Fm, Fm, 1, "B", C), nn.ReLU(), OutputMaskedConv2d(Fm, n_out * C, 1, "B", C)
        )
        self.reach = layers * (kernel // 2)  # rows above / columns left that can reach a pixel
        self._scratch = _Scratch()  # work buffers of the no-grad pass, reused between calls

    def _cond_terms(self, cond: Tensor | None) -> list[tuple[Tensor | float, Tensor | float]]:
        """Per layer (vertical, horizontal) conditioning [B, 2F, H, W], or zeros when unconditional."""
        if self.cond is None or cond is None:
            return [(0.0, 0.0)] * len(self.layers)
        terms = self.cond(cond).chunk(len(self.layers), dim=1)
        return [tuple(t.chunk(2, dim=1)) for t in terms]  # type: ignore[misc]

    def features(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """The horizontal stack's output [B, F, H, W]; feature f is in colour group f mod C.

        When x is one image repeated (a stride-0 batch, as importance sampling passes the K codes of
        one image), the first layer's convolutions of x (vertical, link, horizontal), which do not
        see c(z), run once on that image and broadcast over the batch where c(z) enters: the same
        numbers up to float rounding, without the B-fold work of the first layer.
        """
        B = x.shape[0]
        if B > 1 and x.stride(0) == 0:  # every row is the same memory: one image
            x = x[:1]
        v = h = 2 * x - 1
        for layer, (cv, ch) in zip(self.layers, self._cond_terms(cond)):
            v_pre, v = layer.vertical(v, cv)  # broadcasts [1] + [B] where x is shared
            h = layer.horizontal(h, layer.link(shift_down(v_pre)), ch)
        return h.expand(B, *h.shape[1:])  # a view; batch 1 only when nothing depended on c(z)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """One parallel masked pass: x [B, C, H, W] -> [B, n_out, C, H, W].

        Without autograd (importance sampling, scoring) in float32 or float64, or in float32
        under autocast, the pass runs in the channels-last form of :meth:`_forward_nhwc`: the
        same function (under autocast, the same up to its products' rounding).
        """
        if not torch.is_grad_enabled() and self._nhwc_ready(x, cond):
            return self._forward_nhwc(x, cond)
        out = self.head(self.features(x, cond))
        return out.view(x.shape[0], self.n_out, self.data_channels, *x.shape[2:])

    def _nhwc_ready(self, x: Tensor, cond: Tensor | None) -> bool:
        """Whether :meth:`_forward_nhwc` applies: one full-precision dtype (float32 under autocast),
        no tracing or compiling (its scratch buffers and weight cache are Python state)."""
        dtypes = {x.dtype, next(self.parameters()).dtype} | ({cond.dtype} if cond is not None else set())
        full = {torch.float32} if torch.is_autocast_enabled(x.device.type) else {torch.float32, torch.float64}
        return dtypes <= full and len(dtypes) == 1 and not torch.jit.is_tracing() and not torch.compiler.is_compiling()

    @torch.no_grad()
    def _forward_nhwc(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """:meth:`forward` without autograd, on [positions, channels] matrices (NHWC).

        x [B, C, H, W], cond [B or 1, cond, H, W] or None -> [B, n_out, C, H, W], a non-contiguous
        view (stride 0 over the batch when no output depends on it). The same function as the
        NCHW pass (tested), laid out for a CPU:

        - the vertical stack's convolution runs channels-last, the layout in which oneDNN's direct
          kernels reach the matmul rate here;
        - the horizontal stack is one matrix product per layer: a buffer holds, per position, the
          r + 1 taps of the horizontal input and the vertical pre-activations one row up (the
          link), so the masked 1 x (r+1) convolution and the 1x1 link are one product of width
          (r+1) c_in + 2F instead of a convolution, a product and a sum; the buffer is written
          once per layer and reused, and its zero borders are the convolution's padding;
        - the conditioning enters each layer by a product accumulated into its pre-activations
          (a column of ones carries its bias), instead of a separate 4 L F-channel map;
        - the gates work in place, as half of tanh(a) sigmoid(b) with one sigmoid over the whole
          pre-activation tensor (:func:`_half_gate_weights` folds the factors 2 into the
          weights); the residual sum is accumulated in place.

        When x is one image repeated (stride-0 batch) its first-layer convolutions run once, as
        in :meth:`features`.

        Under autocast without :func:`~vaekit.precision.float32_outputs` the products, the
        convolutions and the gates compute in its dtype, as autocast would run the NCHW pass; the
        horizontal stack's residual sum stays in x's dtype.

        The evaluators' bf16 (bf16 autocast inside ``float32_outputs``) rounds less: on a CPU every
        tensor stays float32 and only the vertical convolutions and the horizontal products take
        bf16-rounded operands, with float32 sums and results
        (:func:`~vaekit.precision.onednn_bf16_products`; where oneDNN does not honour its bf16 math
        mode, :func:`~vaekit.precision.onednn_bf16_rounding`, they compute in float32). A
        horizontal product holds the taps, the link, the summed biases and, where it is folded in
        (every layer for distinct images; not the first layer for one image repeated, as
        importance sampling passes), the horizontal conditioning. The conditioning's product into
        the vertical pre-activations, the 1x1 outputs and the head stay float32: rounding the
        vertical conditioning's product is what moved a trained PixelVAE's importance-sampled
        estimate beyond 0.01 nats, where the two rounded kinds did not. On other devices that pass
        runs in float32 (no such mode measured there).
        """
        dev = x.device.type
        autocast_on = torch.is_autocast_enabled(dev)
        evaluators = autocast_on and float32_outputs_active() and torch.get_autocast_dtype(dev) == torch.bfloat16
        low = torch.get_autocast_dtype(dev) if autocast_on and not evaluators else x.dtype  # products, gates
        with torch.autocast(dev, enabled=False):  # every dtype below is explicit
            return self._nhwc_pass(
                x, cond, low, float32_outputs_active() or low == x.dtype, bf16_products=evaluators and dev == "cpu"
            )

    def _nhwc_pass(
        self, x: Tensor, cond: Tensor | None, low: torch.dtype, full_head: bool, bf16_products: bool = False
    ) -> Tensor:
        """:meth:`_forward_nhwc` with the products and gates in ``low``; the last head layer in x's
        dtype when ``full_head``; with ``bf16_products`` (float32 ``low``, CPU) the vertical
        convolutions and the horizontal products from bf16-rounded operands, float32 results."""
        B, C, H, W = x.shape
        Fm = self.channels
        xs = x[:1] if B > 1 and x.stride(0) == 0 else x
        h = (2 * xs - 1).permute(0, 2, 3, 1).contiguous()  # [b, H, W, C], b = 1 or B
        v = h.to(low)  # exact for binary x; 8-bit levels round as autocast rounds the NCHW pass's input
        c1 = None
        if self.cond is not None and cond is not None:
            c = cond.expand(B, *cond.shape[1:]).permute(0, 2, 3, 1).reshape(B * H * W, -1)  # a batch-1 map broadcasts
            c1 = torch.cat([c, c.new_ones(c.shape[0], 1)], 1).to(low)  # [BHW, cond + 1]: the ones carry the bias
        L, scratch = len(self.layers), self._scratch
        v_in = _padded_input(v, self.layers[0].v_pad)  # [b, H + r, W + 2r, C], zero borders
        tail_in = None  # the horizontal buffer that holds this pass's conditioning columns (the same in every layer)
        for l, (layer, wts) in enumerate(zip(self.layers, self._nhwc_weights(low))):
            with onednn_bf16_products(bf16_products):
                v_pre = _conv_padded(v_in, wts.v_conv, wts.v_bias)  # [b, H, W, 2F]
            fold = c1 is not None and v_pre.shape[0] == B  # the conditioning joins the product
            tail = c1.view(B, H, W, -1) if fold else None
            cols = _horizontal_inputs(h, v_pre, layer.pad_r, tail, scratch, min(l, 1), tail_in)
            tail_in = cols if fold else tail_in
            out = _scratch_tensor(scratch, ("h_pre", min(l, 1)), v_pre.shape, v_pre).view(-1, 2 * Fm)
            with onednn_bf16_products(bf16_products):
                h_pre = torch.mm(cols.view(-1, cols.shape[-1]), wts.h_cols if fold else wts.h_cols_plain, out=out)
            h_pre = h_pre.view(v_pre.shape)
            if l + 1 < L:  # the last layer's vertical output is read by no layer: only its v_pre (the link) is
                if c1 is not None:
                    v_pre = _add_product(v_pre, c1, wts.v_cond, B, scratch, "v_cond")
                # v / 2, which the next layer's weights double, written into the next convolution's padded input
                pad = self.layers[l + 1].v_pad
                v_in = _padded_buffer(scratch, "v", v_pre.shape[:3] + (Fm,), v_pre, pad)
                _half_gate_inplace(v_pre, out=_interior(v_in, pad))
            if c1 is not None and not fold:
                h_pre = _add_product(h_pre, c1, wts.h_cond, B, scratch, "h_cond")
            g = _half_gate_inplace(h_pre)
            if layer.residual:  # h has g's batch: only the first layer, never residual, widens it
                h.view(-1, Fm).add_(layer.h_out.bias)
                if low == h.dtype:
                    h.view(-1, Fm).addmm_(g.reshape(-1, Fm), wts.h_out)
                else:  # the residual sum in h's dtype
                    h.view(-1, Fm).add_(torch.mm(g.reshape(-1, Fm), wts.h_out))
            elif low == h.dtype:
                out = _scratch_tensor(scratch, "h", g.shape[:3] + (Fm,), h).view(-1, Fm)
                h = torch.addmm(layer.h_out.bias, g.reshape(-1, Fm), wts.h_out, out=out).view(*g.shape[:3], Fm)
            else:
                h = torch.mm(g.reshape(-1, Fm), wts.h_out).to(h.dtype).add_(layer.h_out.bias).view(*g.shape[:3], Fm)
        m1, m2 = (m for m in self.head if isinstance(m, MaskedConv2d))
        out = torch.relu(h).view(-1, Fm).to(low)
        w1 = (m1.weight * m1.mask)[:, :, 0, 0].t()
        out = torch.addmm(m1.bias.to(low), out, w1.to(low)).relu_()
        w2, b2 = (m2.weight * m2.mask)[:, :, 0, 0].t(), m2.bias
        out = torch.addmm(b2, out.to(w2.dtype), w2) if full_head else torch.addmm(b2.to(low), out, w2.to(low))
        out = out.view(-1, H, W, self.n_out, C).permute(0, 3, 4, 1, 2)  # [b, n_out, C, H, W]
        return out.expand(B, *out.shape[1:])

    def _nhwc_weights(self, dtype: torch.dtype) -> list[_HalfGateWeights]:
        """Per layer, the weights of :meth:`_forward_nhwc` in ``dtype``: kept for the calling thread's
        :func:`~vaekit.nets.speed.fixed_parameters` scope, else built on every call (a cache
        keyed on the parameters' versions would go stale, since fused optimisers and ``.data``
        writes update parameters without bumping them)."""
        scope = fixed_parameters_scope()
        bufs = self._scratch.mine()
        cached = bufs.get("weights")
        if scope is not None and cached is not None and cached[0] is scope and cached[1] == dtype:
            return cached[2]
        w_cond = None
        if self.cond is not None:  # [cond + 1, 4 F L]: bias last
            w_cond = torch.cat([self.cond.weight[:, :, 0, 0], self.cond.bias[:, None]], 1).t()
        Fm = self.channels
        wts = [
            _half_gate_weights(layer, None if w_cond is None else w_cond[:, 4 * Fm * l : 4 * Fm * (l + 1)], l > 0)
            for l, layer in enumerate(self.layers)
        ]
        wts = [_HalfGateWeights(*(None if t is None else t.to(dtype) for t in w)) for w in wts]  # exact scalings first
        bufs["weights"] = (scope, dtype, wts) if scope is not None else None
        return wts

    # --- the autoregressive loop -------------------------------------------------------------
    def _row_links(self, x: Tensor, terms, i: int) -> list[Tensor]:
        """Row i's input from the vertical stack plus its horizontal conditioning, per layer
        [B, W, 2F]; computed from rows < i only."""
        B, _, _, W = x.shape
        if i == 0:
            zero = x.new_zeros(B, 2 * self.channels, 1, W)
            links = [layer.link(zero) for layer in self.layers]
        else:
            # layer l (of L) needs its output on rows i-1-(L-l)r .. i-1 only, from its input on
            # r more rows above: the crop shrinks by r rows per layer, down to row i-1
            r = self.layers[0].pad_r
            top = max(0, i - 1 - self.reach)
            v = 2 * x[:, :, top:i] - 1
            links = []
            for l, (layer, (cv, _)) in enumerate(zip(self.layers, terms), start=1):
                out_top = max(0, i - 1 - (len(self.layers) - l) * r)
                pad_top = top == 0  # at the image's top edge the full pass pads with zeros
                v_pre, v = layer.vertical(
                    v, cv[:, :, top + (0 if pad_top else r) : i] if torch.is_tensor(cv) else cv, pad_top
                )
                first = top if pad_top else top + r  # row of v_pre[:, :, 0]
                v_pre, v = v_pre[:, :, out_top - first :], v[:, :, out_top - first :]
                top = out_top
                links.append(layer.link(v_pre[:, :, -1:]))
        return [
            (link[:, :, 0] + (ch[:, :, i] if torch.is_tensor(ch) else ch)).transpose(1, 2).contiguous()
            for link, (_, ch) in zip(links, terms)
        ]

    def _pixel_params(self, x: Tensor, links: list[Tensor], weights: list, i: int, j: int) -> Tensor:
        """Parameters of pixel (i, j) [B, n_out, C] from row i up to column j.

        links: row i's from :meth:`_row_links`; weights: per layer
        :meth:`GatedLayer.row_weights`, then the head's (:meth:`_sampling_weights`).
        """
        # as in _row_links, layer l of L needs its output on columns j-(L-l)r .. j only: the
        # segment shrinks by r columns per layer, from j - L r (the reach) down to j itself
        r, L = self.layers[0].pad_r, len(self.layers)
        start = max(0, j - self.reach)
        h = (2 * x[:, :, i, start : j + 1] - 1).transpose(1, 2)  # [B, w, C]
        for l, (layer, link, wts) in enumerate(zip(self.layers, links, weights), start=1):
            pad_left = start == 0  # at the image's left edge the full pass pads with zeros
            first = start if pad_left else start + r  # column of the layer's first output
            out_start = max(0, j - (L - l) * r)
            h = layer.horizontal_seq(h, link[:, first : j + 1], wts, pad_left)[:, out_start - first :]
            start = out_start
        (w1, b1), (w2, b2) = weights[-1]
        out = F.linear(F.relu(F.linear(F.relu(h[:, -1]), w1, b1)), w2, b2)
        return out.view(x.shape[0], self.n_out, self.data_channels)

    def _sampling_weights(self) -> list:
        heads = [m for m in self.head if isinstance(m, MaskedConv2d)]
        return [layer.row_weights() for layer in self.layers] + [
            [((m.weight * m.mask)[:, :, 0, 0], m.bias) for m in heads]
        ]

    @torch.no_grad()
    def sample(
        self,
        shape: tuple[int, int, int],
        sample_pixel: Callable[[Tensor], Tensor],
        cond: Tensor | None = None,
        n: int | None = None,
    ) -> Tensor:
        """Draw x [B, C, H, W] pixel by pixel, channel by channel (raster order, then R, G, B).

        Args:
            shape: (C, H, W).
            sample_pixel: parameters [B, n_out, C, 1, 1] -> a draw [B, C, 1, 1]; channel c of it
                is kept when sampling channel c.
            cond: conditioning map [B, cond, H, W] (its batch size is B), or None with ``n``.

        On CPU the loop runs on one thread: its many small products lose more to thread
        synchronisation than they gain (measured); the thread count is restored afterwards.
        """
        C, H, W = shape
        B = cond.shape[0] if cond is not None else n
        ref = cond if cond is not None else next(self.parameters())
        # at least float32, so the values k/255 are exact inputs even when c(z) came out of bf16 autocast
        x = torch.zeros(B, C, H, W, device=ref.device, dtype=torch.promote_types(ref.dtype, torch.float32))
        cond = None if cond is None else cond.to(x.dtype)
        with _one_cpu_thread(x.device):
            terms = self._cond_terms(cond)
            weights = self._sampling_weights()
            for i in range(H):
                links = self._row_links(x, terms, i)
                for j in range(W):
                    for c in range(C):
                        params = self._pixel_params(x, links, weights, i, j)
                        draw = sample_pixel(params.view(B, self.n_out, C, 1, 1))
                        x[:, c, i, j] = draw[:, c, 0, 0].to(x.dtype)
        return x


def _conv_padded(t: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Convolution without padding of t [b, H, W, c_in], a contiguous, already zero-padded input
    -> [b, H', W', c_out]."""
    cl = torch.channels_last  # input and weight both channels-last: oneDNN's fast direct kernels
    return F.conv2d(t.permute(0, 3, 1, 2), weight.contiguous(memory_format=cl), bias).permute(0, 2, 3, 1).contiguous()


def _interior(padded: Tensor, pad: tuple[int, int, int, int]) -> Tensor:
    """The view of ``padded`` [b, H', W', c] inside its ``pad`` (left, right, top, bottom) borders."""
    left, right, top, bottom = pad
    return padded[:, top : padded.shape[1] - bottom, left : padded.shape[2] - right]


def _padded_buffer(scratch, key, shape, like: Tensor, pad: tuple[int, int, int, int]) -> Tensor:
    """A scratch tensor [b, H + top + bottom, W + left + right, c] for a map of ``shape`` [b, H, W, c]:
    its borders are zero (only the interior is ever written), so a map written into
    :func:`_interior` is the map zero-padded by ``pad``, without a copy into a fresh tensor."""
    left, right, top, bottom = pad
    b, H, W, c = shape
    return _scratch_tensor(scratch, key, (b, H + top + bottom, W + left + right, c), like)


def _padded_input(t: Tensor, pad: tuple[int, int, int, int]) -> Tensor:
    """The image t [b, H, W, C] zero-padded by ``pad`` -> [b, H', W', C], a view of a fresh tensor.

    A copy of the NCHW padding, not a scratch buffer: with C = 1 a map is contiguous in both
    layouts and its strides decide which oneDNN kernel runs the first convolution; these strides
    keep the kernel that the pass has always used (a scratch buffer's moved log p by about 1e-7).
    The copy is of the C-channel image, not of an F-channel map, so it costs little."""
    nchw = F.pad(t.permute(0, 3, 1, 2), pad).contiguous(memory_format=torch.channels_last)
    return nchw.permute(0, 2, 3, 1)


class _Scratch(dict):
    """Work tensors of the no-grad pass, kept between calls: fresh multi-megabyte tensors cost
    page faults on every call. Each thread has its own set (a dict under its thread id, looked up
    once per request, so two threads never share a buffer, even when they run at once); a thread
    that finds no set of its own drops the others', so sets outlive their threads only until
    another thread calls. Copies of the module (``copy.deepcopy``, pickling) start empty."""

    def mine(self) -> dict:
        """This thread's buffers."""
        owner = threading.get_ident()
        bufs = self.get(owner)
        if bufs is None:
            for other in [k for k in list(self) if k != owner]:
                self.pop(other, None)  # a thread still using them holds its own reference
            bufs = self.setdefault(owner, {})
        return bufs

    def __deepcopy__(self, memo):
        return _Scratch()

    def __reduce__(self):
        return (_Scratch, ())


def _scratch_tensor(scratch: _Scratch, key, shape, like: Tensor, fill=None) -> Tensor:
    """A work tensor of ``shape`` from this thread's ``scratch``, reused while shape, dtype, device
    and the inference-mode flag match; otherwise replaced by a new one (zeros, then ``fill(t)``)."""
    bufs = scratch.mine()
    t = bufs.get(key)
    inference = torch.is_inference_mode_enabled()
    if (
        t is None
        or t.shape != torch.Size(shape)
        or t.dtype != like.dtype
        or t.device != like.device
        or t.is_inference() != inference
    ):
        t = like.new_zeros(shape)
        if fill is not None:
            fill(t)
        bufs[key] = t
    return t


def _horizontal_inputs(
    h: Tensor, v_pre: Tensor, r: int, tail: Tensor | None, scratch: _Scratch, key, tail_in: Tensor | None = None
) -> Tensor:
    """Per position (i, j): h at (i, j-r) .. (i, j), v_pre at (i-1, j), then ``tail`` or 1.

    h [b, H, W, c_in], v_pre [b, H, W, 2F], tail [b, H, W, e] (the conditioning with its column
    of ones) -> [b, H, W, (r+1) c_in + 2F + e] (e = 1 without a tail: a column of ones), written
    into a scratch buffer of v_pre's dtype. The tail is copied unless the buffer is ``tail_in``, one
    that already holds it (an earlier layer of the same pass wrote it). Off the image the taps and the
    link are zero: only the interior is overwritten, so the buffer's zero borders (the convolution's
    padding) stay.
    """
    b, H, W, c_in = h.shape
    e = 1 if tail is None else tail.shape[-1]
    shape = (b, H, W, (r + 1) * c_in + v_pre.shape[-1] + e)
    cols = _scratch_tensor(scratch, ("cols", key), shape, v_pre, fill=lambda t: t[..., -1].fill_(1))
    for t in range(r + 1):  # tap t reads column j - (r - t); left of the image it stays zero
        s = r - t
        if s < W:
            cols[:, :, s:, t * c_in : (t + 1) * c_in].copy_(h[:, :, : W - s])
    cols[:, 1:, :, (r + 1) * c_in : -e].copy_(v_pre[:, :-1])
    if tail is not None and cols is not tail_in:
        cols[..., -e:].copy_(tail)
    return cols


class _HalfGateWeights(NamedTuple):
    """One layer's weights for :meth:`GatedPixelCNN._forward_nhwc` (see :func:`_half_gate_weights`)."""

    v_conv: Tensor  # [2F, c_in, r+1, k]
    v_bias: Tensor  # [2F]
    h_cols: Tensor  # [(r+1) c_in + 2F + cond + 1, 2F]: columns of _horizontal_inputs with the conditioning
    h_cols_plain: Tensor  # [(r+1) c_in + 2F + 1, 2F]: the same without it
    v_cond: Tensor | None  # [cond + 1, 2F], bias last
    h_cond: Tensor | None  # [cond + 1, 2F], bias last
    h_out: Tensor  # [F, F], transposed


def _half_gate_weights(layer: GatedLayer, w_cond: Tensor | None, v_halved: bool) -> _HalfGateWeights:
    """The layer's weights, rescaled by powers of two so that the gates cost less.

    The gate tanh(a) sigmoid(b) equals 2 (sigmoid(2a) - 1/2) sigmoid(b). So every product that
    makes a pre-activation a is doubled (one sigmoid then covers a and b), the gate returns
    half its value, and the weights that read a gate's output (the next layer's vertical
    convolution, the horizontal 1x1 output) are doubled; the link, which reads the vertical
    pre-activations, halves its a rows again. Powers of two are exact in floating point.

    w_cond: the layer's conditioning weights [cond + 1, 4F] (vertical, then horizontal; bias
    last) or None; v_halved: the layer's vertical input is a halved gate output (layers > 0).
    """
    F2 = layer.v_conv.out_channels
    s = torch.ones(F2, dtype=layer.v_conv.weight.dtype, device=layer.v_conv.weight.device)
    s[: F2 // 2] = 2  # doubles the a half of the pre-activations
    w = (layer.h_conv.weight * layer.h_conv.mask)[:, :, 0]  # [2F, c_in, r+1]
    taps = w.permute(2, 1, 0).reshape(-1, F2)  # row t * c_in + i: tap t of channel i
    link = layer.v_to_h.weight[:, :, 0, 0].t() / s[:, None]  # reads the doubled a half of v_pre
    bias = (layer.h_conv.bias + layer.v_to_h.bias)[None]  # the link's bias reaches row 0 too
    v_cond = h_cond = None
    if w_cond is not None:
        v_cond, h_cond = w_cond.split(F2, 1)
        v_cond, h_cond = v_cond * s, h_cond * s
    h_cols_plain = torch.cat([taps, link, bias], 0) * s
    h_cols = h_cols_plain
    if h_cond is not None:  # the conditioning's rows before the bias row, which sums both biases
        h_cols = torch.cat([h_cols_plain[:-1], h_cond[:-1], h_cond[-1:] + h_cols_plain[-1:]], 0)
    v_in = 2 if v_halved else 1
    return _HalfGateWeights(
        v_conv=layer.v_conv.weight * (s * v_in)[:, None, None, None],
        v_bias=layer.v_conv.bias * s,
        h_cols=h_cols,
        h_cols_plain=h_cols_plain,
        v_cond=v_cond,
        h_cond=h_cond,
        h_out=2 * (layer.h_out.weight * layer.h_out.mask)[:, :, 0, 0].t(),
    )


def _add_product(pre: Tensor, a: Tensor, w: Tensor, B: int, scratch: _Scratch, key) -> Tensor:
    """pre [b, H, W, n] + (a [B HW, k] @ w [k, n]) viewed as [B, H, W, n]: in place when b = B, else
    (pre broadcast over the batch) into a scratch tensor under ``key``."""
    if pre.shape[0] == B:
        pre.view(-1, pre.shape[-1]).addmm_(a, w)
        return pre
    out = _scratch_tensor(scratch, key, (a.shape[0], w.shape[1]), pre)
    return torch.mm(a, w, out=out).view(B, *pre.shape[1:]).add_(pre)


def _half_gate_inplace(pre: Tensor, out: Tensor | None = None) -> Tensor:
    """pre [..., 2F] = (2a, b) -> tanh(a) sigmoid(b) / 2 = (sigmoid(2a) - 1/2) sigmoid(b) [..., F].

    Overwrites pre; the result is its first half, or ``out`` [..., F] (any strides) when given. One
    sigmoid over the whole contiguous tensor runs faster here than tanh and sigmoid over its strided
    halves; the factors 2 live in the weights (:func:`_half_gate_weights`).
    """
    a, b = pre.chunk(2, dim=-1)
    pre.sigmoid_()
    a.sub_(0.5)
    return a.mul_(b) if out is None else torch.mul(a, b, out=out)


class _one_cpu_thread:
    """Context: ``torch.set_num_threads(1)`` on CPU devices, restored on exit."""

    def __init__(self, device: torch.device):
        self.active = device.type == "cpu"

    def __enter__(self):
        if self.active:
            self.saved = torch.get_num_threads()
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.active:
            torch.set_num_threads(self.saved)
