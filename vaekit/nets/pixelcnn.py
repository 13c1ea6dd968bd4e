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

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .body import NetBody


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


class GatedPixelCNN(NetBody):
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
            nn.ReLU(), MaskedConv2d(Fm, Fm, 1, "B", C), nn.ReLU(), MaskedConv2d(Fm, n_out * C, 1, "B", C)
        )
        self.reach = layers * (kernel // 2)  # rows above / columns left that can reach a pixel

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
        """One parallel masked pass: x [B, C, H, W] -> [B, n_out, C, H, W]."""
        out = self.head(self.features(x, cond))
        return out.view(x.shape[0], self.n_out, self.data_channels, *x.shape[2:])

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
