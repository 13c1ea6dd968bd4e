"""Likelihoods p(x|z) and priors p(z), as ``torch.distributions`` objects.

A *likelihood* is an ``nn.Module`` built for one data shape. It tells the decoder body
how many numbers to produce per example (``param_shape``) and turns them into a
distribution over x whose ``log_prob(x)`` returns one value per example, in nats,
summed over all data dimensions.

- Bernoulli with logits, for binary (binarised) images (Kingma & Welling 2014, App. C.1).
- Gaussian with a fixed, a learned global, or a per-pixel (decoder-output) standard
  deviation (Kingma & Welling 2014, App. C.2). Densities are in nats per example of
  continuous data.
- Discretised logistic mixture for 8-bit images (Salimans et al. 2017, PixelCNN++):
  x = k/255, k in 0..255, each value owning the bin [k-1/2, k+1/2]/255 of a mixture of
  logistics (on the [-1, 1] scale), the two edge bins (0 and 255) taking all the mass
  below and above. Colour channels follow PixelCNN++: one mixture indicator per pixel
  and each channel's mean shifted linearly by the channels before it.
- 256-way categorical per sub-pixel (van den Oord et al. 2016, PixelRNN).
- The PixelCNN likelihood (``pixelcnn``, PixelVAE) lives in ``vaekit.nets.pixelcnn``.

Bits per dimension: discrete likelihoods give nats of a probability mass function, so
bpd = nll / (D ln 2); a continuous density on data in [0, 1] first adds D ln 256 (the
bin width 1/256), see :func:`image_bits_per_dim`.

A *prior* is an ``nn.Module`` whose ``forward()`` returns p(z) with event shape
``[latent_dim]``; its parameters or buffers move with ``.to(device)``.

References: Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
Salimans, Karpathy, Chen & Kingma, "PixelCNN++: Improving the PixelCNN with Discretized
Logistic Mixture Likelihood and Other Modifications", ICLR 2017.
van den Oord, Kalchbrenner & Kavukcuoglu, "Pixel Recurrent Neural Networks", ICML 2016.
Theis, van den Oord & Bethge, "A note on the evaluation of generative models", ICLR 2016
(the discretisation correction for continuous densities).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal, constraints

from .errors import ConfigError

LOG_STD_MIN = -7.0  # clamp of learned log std (std >= ~1e-3), keeps densities finite


class Likelihood(nn.Module):
    """Base: maps decoder output ``params`` [B, *param_shape] to p(x|z) with batch [B]."""

    data_shape: tuple[int, ...]
    param_shape: tuple[int, ...]

    def forward(self, params: Tensor) -> Distribution:  # pragma: no cover - interface
        raise NotImplementedError


class LogitBernoulli(Bernoulli):
    """torch's ``Bernoulli(logits=...)`` with a cheaper exact ``log_prob``.

    log p(x) = x * l - softplus(l): one transcendental per element instead of the several
    passes of ``binary_cross_entropy_with_logits`` (about 2x faster on CPU; the decoder's
    log-likelihood dominates importance sampling with K = 5000). Valid for x in [0, 1].
    """

    def log_prob(self, value: Tensor) -> Tensor:
        return value * self.logits - F.softplus(self.logits)


class BernoulliLikelihood(Likelihood):
    """p(x|z) = prod_d Bernoulli(x_d; sigmoid(logit_d)); decoder outputs one logit per dimension."""

    discrete = True  # a probability mass function: bpd = nll / (D ln 2)

    def __init__(self, data_shape: tuple[int, ...]):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.param_shape = self.data_shape

    def forward(self, params: Tensor) -> Distribution:
        return Independent(
            LogitBernoulli(logits=params, validate_args=False), len(self.data_shape), validate_args=False
        )


class GaussianLikelihood(Likelihood):
    """p(x|z) = prod_d N(x_d; mu_d, sigma_d^2).

    ``variance``: ``fixed`` (sigma = ``fixed_std``), ``global`` (one learned log sigma)
    or ``pixel`` (the decoder outputs a log sigma per dimension, stacked after the means
    on the first non-batch axis, so ``param_shape = (2 * C, ...)``).
    """

    discrete = False  # a density: add D ln 256 before bpd on 8-bit data (image_bits_per_dim)

    def __init__(self, data_shape: tuple[int, ...], variance: str = "global", fixed_std: float = 1.0):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.variance = variance
        if variance == "pixel":
            self.param_shape = (2 * self.data_shape[0],) + self.data_shape[1:]
        else:
            self.param_shape = self.data_shape
        if variance == "global":
            self.log_std = nn.Parameter(torch.zeros(()))
        elif variance == "fixed":
            self.register_buffer("log_std", torch.tensor(math.log(fixed_std)))
        elif variance != "pixel":
            raise ConfigError(f"unknown gaussian variance '{variance}' (fixed, global, pixel)")

    def forward(self, params: Tensor) -> Distribution:
        if self.variance == "pixel":
            mean, log_std = params.chunk(2, dim=1)
        else:
            mean, log_std = params, self.log_std.expand_as(params)
        std = log_std.clamp(min=LOG_STD_MIN).exp()
        return Independent(Normal(mean, std, validate_args=False), len(self.data_shape), validate_args=False)


# --- 8-bit image likelihoods ----------------------------------------------------
# Values x = k/255 (k = 0..255) on the data side; the logistics live on the [-1, 1] scale,
# y = 2x - 1, where level k is centred at y_k = (2k - 255)/255 with bin half-width 1/255.

N_LEVELS = 256


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


def _image_shape(data_shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    if len(data_shape) != 3:
        raise ConfigError(f"likelihood '{name}' needs image data [C, H, W]; got shape {tuple(data_shape)}")
    return tuple(data_shape)  # type: ignore[return-value]


class LogisticMixtureLikelihood(Likelihood):
    """p(x|z): coupled discretised logistic mixture (PixelCNN++) with ``n_mix`` components per pixel.

    The decoder outputs ``n_mix * (1 + 2C + C(C-1)/2)`` channels per pixel (30 for grey, 100 for
    RGB with 10 components): the logits first, then per component C means, C log scales and the
    C(C-1)/2 channel coefficients (squashed by tanh).
    """

    discrete = True

    def __init__(self, data_shape: tuple[int, ...], n_mix: int = 10):
        super().__init__()
        if n_mix < 1:
            raise ConfigError(f"model.n_mix must be positive; got {n_mix}")
        self.data_shape = _image_shape(data_shape, "logistic_mixture")
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

    def __init__(self, data_shape: tuple[int, ...]):
        super().__init__()
        self.data_shape = _image_shape(data_shape, "categorical")
        C, H, W = self.data_shape
        self.param_shape = (N_LEVELS * C, H, W)

    def forward(self, params: Tensor) -> Distribution:
        """params [B, 256*C, H, W] (level-major: channel index k*C + c) -> Categorical256."""
        C, H, W = self.data_shape
        return Categorical256(params.float().reshape(params.shape[0], N_LEVELS, C, H, W))


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I) over ``latent_dim`` dimensions (buffers, so it follows ``.to``)."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> Distribution:
        return Independent(Normal(self.loc, self.scale, validate_args=False), 1, validate_args=False)


class MixturePrior(nn.Module):
    """p(z) = sum_k pi_k N(z; mu_k, diag(sigma_k^2)) with learnable weights, means and variances.

    The density is ``vaekit.models.mixture.MixtureOfGaussians``, the same code as the EM
    mixture model; the KL term of the ELBO is then Monte-Carlo (no closed form).
    """

    def __init__(self, latent_dim: int, n_components: int):
        super().__init__()
        if n_components < 1:
            raise ConfigError(f"mixture prior needs at least one component; got {n_components}")
        self.logits = nn.Parameter(torch.zeros(n_components))
        self.means = nn.Parameter(torch.randn(n_components, latent_dim))
        self.log_std = nn.Parameter(torch.zeros(n_components, latent_dim))

    def forward(self) -> Distribution:
        from .models.mixture import MixtureOfGaussians

        log_std = self.log_std.clamp(min=LOG_STD_MIN)
        return MixtureOfGaussians(self.logits, self.means, (-log_std).exp(), "diag")


class VampPrior(nn.Module):
    """p(z) = (1/K) sum_k q(z | u_k): the encoder's posterior at K learned pseudo-inputs u_k
    (Tomczak & Welling, "VAE with a VampPrior", AISTATS 2018).

    Needs the VAE's encoder and the data shape: ``bind(encoder, data_shape)`` creates the
    pseudo-inputs (call it once, when the VAE is built, before loading a state dict). The
    encoder is referenced, not registered, so its weights are stored once. The density is
    ``vaekit.models.mixture.MixtureOfGaussians`` over the encoder's diagonal Gaussians.
    """

    def __init__(
        self,
        latent_dim: int,
        n_pseudo_inputs: int,
        encoder: nn.Module | None = None,
        data_shape: tuple[int, ...] | None = None,
    ):
        super().__init__()
        if n_pseudo_inputs < 1:
            raise ConfigError(f"VampPrior needs at least one pseudo-input; got {n_pseudo_inputs}")
        self.latent_dim, self.n_pseudo_inputs = latent_dim, n_pseudo_inputs
        self._encoder: list[nn.Module] = []  # a plain list: not a submodule
        self.pseudo_inputs = None
        if encoder is not None and data_shape is not None:
            self.bind(encoder, data_shape)

    def bind(self, encoder: nn.Module, data_shape: tuple[int, ...]) -> VampPrior:
        self._encoder[:] = [encoder]
        if self.pseudo_inputs is None or tuple(self.pseudo_inputs.shape[1:]) != tuple(data_shape):
            self.pseudo_inputs = nn.Parameter(0.5 + 0.05 * torch.randn(self.n_pseudo_inputs, *data_shape))
        return self

    def forward(self) -> Distribution:
        from .models.mixture import MixtureOfGaussians

        if not self._encoder:
            raise ConfigError("the VampPrior is not bound to an encoder (VampPrior.bind(encoder, data_shape))")
        q = self._encoder[0](self.pseudo_inputs)
        base = getattr(q, "base", q)  # flow posteriors: their Gaussian q0
        mean, std = base.mean, base.stddev
        if mean.shape[-1] != self.latent_dim:
            raise ConfigError(f"VampPrior: encoder gives {mean.shape[-1]} latents, prior has {self.latent_dim}")
        logits = torch.zeros(mean.shape[0], dtype=mean.dtype, device=mean.device)
        return MixtureOfGaussians(logits, mean, 1.0 / std, "diag")


def diagonal_gaussian(mean: Tensor, log_var: Tensor) -> Distribution:
    """q(z|x) = N(mean, diag(exp(log_var))), batch [B], event [D]; reparameterisable."""
    return Independent(Normal(mean, (0.5 * log_var).exp(), validate_args=False), 1, validate_args=False)


def rsample_and_log_prob(dist: Distribution, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
    """Reparameterised sample z ~ dist and log dist(z).

    Flow posteriors define ``rsample_and_log_prob`` themselves (log q of their own sample
    is cheap even where inverting the flow is not, e.g. IAF); plain distributions use
    ``rsample`` then ``log_prob``.
    """
    if hasattr(dist, "rsample_and_log_prob"):
        return dist.rsample_and_log_prob(sample_shape)
    z = dist.rsample(sample_shape)
    return z, dist.log_prob(z)


def distribution_mean(dist: Distribution) -> Tensor:
    """E[x] where the distribution has it in closed form, else one sample (e.g. PixelCNN)."""
    try:
        return dist.mean
    except NotImplementedError:
        return dist.sample()


def _bernoulli(data_shape, cfg):
    return BernoulliLikelihood(data_shape)


def _gaussian(data_shape, cfg):
    return GaussianLikelihood(data_shape, variance=cfg.variance, fixed_std=cfg.fixed_std)


def _logistic_mixture(data_shape, cfg):
    return LogisticMixtureLikelihood(data_shape, n_mix=cfg.n_mix)


def _categorical(data_shape, cfg):
    return CategoricalLikelihood(data_shape)


def _pixelcnn(data_shape, cfg):
    from .nets.pixelcnn import pixelcnn_likelihood  # lazy: the nets import this module

    return pixelcnn_likelihood(data_shape, cfg)


# name -> constructor(data_shape, model_config) -> Likelihood
LIKELIHOODS = {
    "bernoulli": _bernoulli,
    "gaussian": _gaussian,
    "logistic_mixture": _logistic_mixture,  # 8-bit images
    "categorical": _categorical,  # 8-bit images
    "pixelcnn": _pixelcnn,  # PixelVAE decoder; output head from model.pixelcnn_output
}

# name -> constructor(latent_dim, model_config) -> prior module
PRIORS = {
    "normal": lambda latent_dim, cfg: StandardNormalPrior(latent_dim),
    "flow": lambda latent_dim, cfg: _flow_prior(latent_dim, cfg),
    "mixture": lambda latent_dim, cfg: MixturePrior(latent_dim, cfg.components),
    "vamp": lambda latent_dim, cfg: VampPrior(latent_dim, cfg.components),  # needs VampPrior.bind(encoder, data_shape)
}


def _flow_prior(latent_dim, cfg):
    """p(z) = flow(N(0, I)) of ``cfg.prior_flow`` (vaekit.models.flow_vae; imported late, it imports us)."""
    from .models.flow_vae import build_flow_prior

    return build_flow_prior(latent_dim, cfg)


def build_likelihood(data_shape: tuple[int, ...], cfg) -> Likelihood:
    if cfg.likelihood not in LIKELIHOODS:
        raise ConfigError(f"unknown likelihood '{cfg.likelihood}'; known: {', '.join(LIKELIHOODS)}")
    return LIKELIHOODS[cfg.likelihood](tuple(data_shape), cfg)


def build_prior(latent_dim: int, cfg) -> nn.Module:
    if cfg.prior not in PRIORS:
        raise ConfigError(f"unknown prior '{cfg.prior}'; known: {', '.join(PRIORS)}")
    return PRIORS[cfg.prior](latent_dim, cfg)


def bits_per_dim(nll_nats: Tensor | float, num_dims: int) -> Tensor | float:
    """nats per example -> bits per dimension: nll / (D ln 2)."""
    return nll_nats / (num_dims * math.log(2.0))


def image_bits_per_dim(
    nll_nats: Tensor | float, num_dims: int, discrete: bool, levels: int = N_LEVELS
) -> Tensor | float:
    """Bits per dimension of an image model on data with ``levels`` values per sub-pixel.

    The rule: a *discrete* likelihood (Bernoulli, categorical, discretised logistic, PixelCNN;
    ``Likelihood.discrete``) already gives -log of a probability, so bpd = nll / (D ln 2). A
    *continuous* density (Gaussian, flows) on data scaled into [0, 1] gives nats of a density;
    a bin of width 1/levels holds probability ~ p(x)/levels, so the discrete nll is
    nll + D ln(levels) before dividing (an upper bound on the discrete nll when the data were
    dequantised uniformly, x = (k + u)/levels; Theis et al. 2016).

    Args:
        nll_nats: negative log-likelihood per example (nats), a float or a tensor [B].
        num_dims: D, dimensions per example (C*H*W).
        discrete: whether the nll is of a probability mass function.
        levels: values per sub-pixel (256 for 8-bit data, 2 for binary).
    """
    if not discrete:
        nll_nats = nll_nats + num_dims * math.log(levels)
    return bits_per_dim(nll_nats, num_dims)
