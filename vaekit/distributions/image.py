"""Likelihoods p(x|z) for 8-bit images x = k/255, k in 0..255.

- Discretised logistic mixture (Salimans et al. 2017, PixelCNN++): each value owns the bin
  [k-1/2, k+1/2]/255 of a mixture of logistics (on the [-1, 1] scale), the two edge bins
  (0 and 255) taking all the mass below and above. Colour channels follow PixelCNN++: one
  mixture indicator per pixel and each channel's mean shifted linearly by the channels
  before it.
- 256-way categorical per sub-pixel (van den Oord et al. 2016, PixelRNN).

Both are probability mass functions (``discrete``): bits per dimension are nll / (D ln 2).

References: Salimans, Karpathy, Chen & Kingma, "PixelCNN++: Improving the PixelCNN with
Discretized Logistic Mixture Likelihood and Other Modifications", ICLR 2017.
van den Oord, Kalchbrenner & Kavukcuoglu, "Pixel Recurrent Neural Networks", ICML 2016.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, constraints

from ..checks import image_shape
from ..errors import ConfigError
from .base import LOG_STD_MIN, N_LEVELS, Likelihood

# Values x = k/255 (k = 0..255) on the data side; the logistics live on the [-1, 1] scale,
# y = 2x - 1, where level k is centred at y_k = (2k - 255)/255 with bin half-width 1/255.


def levels_of(x: Tensor) -> Tensor:
    """8-bit data x = k/255 in [0, 1] (any shape) -> integer levels k (long, clamped to 0..255)."""
    return (x * (N_LEVELS - 1)).round().clamp(0, N_LEVELS - 1).long()


def discretized_logistic_log_prob(k: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(K = k) of one discretised logistic on the [-1, 1] scale, elementwise (broadcasting).

    Args:
        k: integer levels 0..255.
        mean, log_scale: location and log scale of the logistic (log scale clamped at -7).

    Level k owns [y_k - 1/255, y_k + 1/255]; the edge levels take the tails: k = 0 gets
    CDF(y_0 + 1/255) and k = 255 gets 1 - CDF(y_255 - 1/255) (Salimans et al. 2017). The
    middle mass sigmoid(a) - sigmoid(b), a > b, is evaluated exactly and stably as
    log sigmoid(a) + log sigmoid(-b) + log(1 - exp(b - a)), so no pdf fallback is needed.
    """
    inv_s = torch.exp(-log_scale.clamp(min=LOG_STD_MIN))
    y = (2.0 * k.to(mean.dtype) - (N_LEVELS - 1)) / (N_LEVELS - 1)
    a = (y - mean + 1.0 / (N_LEVELS - 1)) * inv_s  # upper bin edge, standardised
    b = (y - mean - 1.0 / (N_LEVELS - 1)) * inv_s  # lower bin edge, standardised
    log_cdf_upper = F.logsigmoid(a)
    log_sf_lower = F.logsigmoid(-b)
    log_width = torch.log(-torch.expm1(b - a))  # b - a = -2 inv_s / 255 < 0
    middle = log_cdf_upper + log_sf_lower + log_width
    return torch.where(k == 0, log_cdf_upper, torch.where(k == N_LEVELS - 1, log_sf_lower, middle))


def discretized_logistic_mean(mean: Tensor, log_scale: Tensor, chunk: int = 16) -> Tensor:
    """E[K]/255 of one discretised logistic, elementwise: sum_{k=1}^{255} P(K >= k) / 255 (exact)."""
    inv_s = torch.exp(-log_scale.clamp(min=LOG_STD_MIN)).unsqueeze(-1)
    lower_edges = (2.0 * torch.arange(1, N_LEVELS, device=mean.device, dtype=mean.dtype) - N_LEVELS) / (
        N_LEVELS - 1
    )  # lower edge of level k, k = 1..255
    mu = mean.unsqueeze(-1)
    total = torch.zeros_like(mean)
    for edges in lower_edges.split(chunk):
        total = total + torch.sigmoid((mu - edges) * inv_s).sum(-1)
    return total / (N_LEVELS - 1)


def _channel_pairs(n_channels: int) -> list[tuple[int, int]]:
    """(c, c') with c' < c in the order of the coefficient axis: (1,0), (2,0), (2,1), ..."""
    return [(c, c2) for c in range(1, n_channels) for c2 in range(c)]


class DiscretizedLogisticMixture(Distribution):
    """Mixture of discretised logistics over 8-bit images x = k/255; batch [B], event [C, H, W].

    Two layouts:

    - *coupled* (PixelCNN++): ``logits`` [B, M, H, W], one mixture indicator per pixel shared
      by its channels; ``coeffs`` [B, M, C(C-1)/2, H, W] shift channel c's mean by
      sum_{c' < c} coeff[c, c'] * y_{c'} (y = 2x - 1; pairs ordered (1,0), (2,0), (2,1), ...),
      so the channels of a pixel are autoregressive given the indicator.
    - *independent*: ``logits`` [B, M, C, H, W], ``coeffs`` None: a separate mixture per
      sub-pixel (used by the PixelCNN, whose masks already order the channels).

    Args:
        logits: mixture logits, as above.
        means, log_scales: [B, M, C, H, W], on the [-1, 1] scale.
        coeffs: [B, M, C(C-1)/2, H, W] (coupled layout, C > 1) or None.
    """

    arg_constraints: dict = {}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(self, logits: Tensor, means: Tensor, log_scales: Tensor, coeffs: Tensor | None = None):
        if means.dim() != 5 or log_scales.shape != means.shape:
            raise ValueError("means and log_scales must both be [B, M, C, H, W]")
        self.coupled = logits.dim() == 4
        if not self.coupled and coeffs is not None:
            raise ValueError("coeffs need shared logits [B, M, H, W]")
        self.logits, self.means, self.log_scales, self.coeffs = logits, means, log_scales, coeffs
        self.n_channels = means.shape[2]
        super().__init__(batch_shape=means.shape[:1], event_shape=means.shape[2:], validate_args=False)

    def _shifted_means(self, y: Tensor) -> Tensor:
        """means [B, M, C, H, W] with the linear channel shifts for values y [B, C, H, W]."""
        if self.coeffs is None or self.n_channels == 1:
            return self.means
        shifts = [torch.zeros_like(self.means[:, :, 0])]
        pairs = _channel_pairs(self.n_channels)
        for c in range(1, self.n_channels):
            shifts.append(sum(self.coeffs[:, :, p] * y[:, None, c2] for p, (cc, c2) in enumerate(pairs) if cc == c))
        return self.means + torch.stack(shifts, 2)

    def log_prob(self, x: Tensor) -> Tensor:
        """log P(x) [B] in nats, x [B, C, H, W] with values k/255."""
        k = levels_of(x)
        y = (2.0 * k.to(self.means.dtype) - (N_LEVELS - 1)) / (N_LEVELS - 1)
        lp = discretized_logistic_log_prob(k.unsqueeze(1), self._shifted_means(y), self.log_scales)
        log_w = F.log_softmax(self.logits, dim=1)
        if self.coupled:
            per_pixel = torch.logsumexp(log_w + lp.sum(2), dim=1)  # [B, H, W]
        else:
            per_pixel = torch.logsumexp(log_w + lp, dim=1)  # [B, C, H, W]
        return per_pixel.flatten(1).sum(1)

    def _pick(self, t: Tensor, onehot: Tensor) -> Tensor:
        return (t * onehot).sum(1)

    def _sample_n(self, n: int) -> Tensor:
        """n independent draws [n * B, C, H, W] (the parameters repeated n times along the batch)."""
        rep = (lambda t: t) if n == 1 else (lambda t: t.repeat(n, *([1] * (t.dim() - 1))))  # noqa: E731
        B, M, C, H, W = self.means.shape
        logits = self.logits.unsqueeze(2) if self.coupled else self.logits  # [B, M, 1|C, H, W]
        idx = torch.distributions.Categorical(logits=rep(logits).movedim(1, -1)).sample()  # [nB, 1|C, H, W]
        onehot = F.one_hot(idx, M).movedim(-1, 1).to(self.means.dtype)  # [nB, M, 1|C, H, W]
        mu = self._pick(rep(self.means), onehot)  # [nB, C, H, W]
        log_s = self._pick(rep(self.log_scales), onehot).clamp(min=LOG_STD_MIN)
        coeffs = None if self.coeffs is None else self._pick(rep(self.coeffs), onehot)
        u = torch.rand_like(mu).clamp(1e-6, 1 - 1e-6)
        noise = log_s.exp() * (u.log() - torch.log1p(-u))  # logistic(0, s)
        out = torch.empty_like(mu)
        pairs = _channel_pairs(C)
        for c in range(C) if coeffs is not None else [slice(None)]:
            y_cont = mu[:, c] + noise[:, c]
            if coeffs is not None:
                for p, (cc, c2) in enumerate(pairs):
                    if cc == c:
                        y_cont = y_cont + coeffs[:, p] * (2 * out[:, c2] - 1)
            # nearest level: the bins partition the line, so this is an exact draw
            out[:, c] = ((y_cont + 1) * (N_LEVELS - 1) / 2).round().clamp(0, N_LEVELS - 1) / (N_LEVELS - 1)
        return out

    def sample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        """x [*sample_shape, B, C, H, W] with values k/255."""
        with torch.no_grad():
            draws = self._sample_n(math.prod(sample_shape))
            return draws.view(*sample_shape, *self.batch_shape, *self.event_shape)

    @property
    def mean(self) -> Tensor:
        """E[x] [B, C, H, W], exact; not tractable for coupled colour channels (NotImplementedError)."""
        if self.coupled and self.coeffs is not None and self.n_channels > 1:
            raise NotImplementedError("the coupled colour mixture has no closed-form mean; draw a sample")
        w = F.softmax(self.logits, dim=1)
        w = w.unsqueeze(2) if self.coupled else w
        return (w * discretized_logistic_mean(self.means, self.log_scales)).sum(1)


class Categorical256(Distribution):
    """Independent 256-way categorical per sub-pixel over x = k/255; batch [B], event [C, H, W].

    Args:
        logits: [B, 256, C, H, W].
    """

    arg_constraints: dict = {}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(self, logits: Tensor):
        if logits.dim() != 5 or logits.shape[1] != N_LEVELS:
            raise ValueError("Categorical256 wants logits [B, 256, C, H, W]")
        self.logits = logits
        super().__init__(batch_shape=logits.shape[:1], event_shape=logits.shape[2:], validate_args=False)

    def log_prob(self, x: Tensor) -> Tensor:
        """log P(x) [B] in nats, x [B, C, H, W] with values k/255."""
        k = levels_of(x).unsqueeze(1)
        return F.log_softmax(self.logits, dim=1).gather(1, k).squeeze(1).flatten(1).sum(1)

    def sample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        """x [*sample_shape, B, C, H, W] with values k/255."""
        with torch.no_grad():
            k = torch.distributions.Categorical(logits=self.logits.movedim(1, -1)).sample(sample_shape)
            return k.to(self.logits.dtype) / (N_LEVELS - 1)

    @property
    def mean(self) -> Tensor:
        levels = torch.arange(N_LEVELS, device=self.logits.device, dtype=self.logits.dtype) / (N_LEVELS - 1)
        return (F.softmax(self.logits, dim=1) * levels.view(1, -1, 1, 1, 1)).sum(1)


class LogisticMixtureLikelihood(Likelihood):
    """p(x|z): coupled discretised logistic mixture (PixelCNN++) with ``n_mix`` components per pixel.

    The decoder outputs ``n_mix * (1 + 2C + C(C-1)/2)`` channels per pixel (30 for grey, 100 for
    RGB with 10 components): the logits first, then per component C means, C log scales and the
    C(C-1)/2 channel coefficients (squashed by tanh).
    """

    discrete = True
    factorised = False  # the colour channels of a pixel are coupled

    def __init__(self, data_shape: tuple[int, ...], n_mix: int = 10):
        super().__init__()
        if n_mix < 1:
            raise ConfigError(f"model.n_mix must be positive; got {n_mix}")
        self.data_shape = image_shape(data_shape, "likelihood 'logistic_mixture'")
        C, H, W = self.data_shape
        self.n_mix = n_mix
        self.per_component = 2 * C + C * (C - 1) // 2
        self.param_shape = (n_mix * (1 + self.per_component), H, W)

    def forward(self, params: Tensor) -> Distribution:
        """params [B, *param_shape] -> DiscretizedLogisticMixture, computed in float32."""
        params = params.float()
        B, (C, H, W), M = params.shape[0], self.data_shape, self.n_mix
        logits = params[:, :M]
        rest = params[:, M:].reshape(B, M, self.per_component, H, W)
        coeffs = torch.tanh(rest[:, :, 2 * C :]) if C > 1 else None
        return DiscretizedLogisticMixture(logits, rest[:, :, :C], rest[:, :, C : 2 * C], coeffs)


class CategoricalLikelihood(Likelihood):
    """p(x|z): a 256-way softmax per sub-pixel; the decoder outputs 256 * C channels per pixel."""

    discrete = True
    factorised = False  # independent per sub-pixel, but not exposed as an ``Independent``

    def __init__(self, data_shape: tuple[int, ...]):
        super().__init__()
        self.data_shape = image_shape(data_shape, "likelihood 'categorical'")
        C, H, W = self.data_shape
        self.param_shape = (N_LEVELS * C, H, W)

    def forward(self, params: Tensor) -> Distribution:
        """params [B, 256*C, H, W] (level-major: channel index k*C + c) -> Categorical256."""
        C, H, W = self.data_shape
        return Categorical256(params.float().reshape(params.shape[0], N_LEVELS, C, H, W))
