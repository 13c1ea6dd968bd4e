"""Flow density models: exact log p(x) of images or vectors (NICE, RealNVP, Glow, MAF).

A flow model is (base density, transform): log p(y) = log p_base(T(y)) + log |det dT/dy|
with T = body o preprocessing, both part of one ``Compose``, so the logit's
log-determinant is in every number reported.

8-bit data and bits per dimension. Images are [B, C, H, W] in [0, 1] holding k/255,
k in {0..255}. Training and evaluation dequantise with uniform noise,

    y = (255 x + u) / 256,   u ~ U[0, 1)^D,

which spreads each of the 256 levels of a dimension over a bin of width 1/256. For the
discrete model P(x) = integral over the bin of p(y) dy, Jensen's inequality gives

    log P(x) >= E_u[log p(y)] - D log 256,

so ``log_prob`` returns the single-sample estimate log p(y) - D log 256 of that bound (in
nats per example; exact as a density, stochastic through u), and

    bits/dim = -log P(x) / (D ln 2).

With ``dequantize='none'`` the data are continuous (2-D toys, tabular data, latent codes)
and log p(x) is the density itself.

Preprocessing: ``logit`` maps y to logit(alpha + (1 - 2 alpha) y) (RealNVP), ``unit``
centres y at 0 (y - 1/2, Glow), ``none`` leaves it. Sampling draws u from the base
density with its scale multiplied by ``temperature`` (Kingma & Dhariwal 2018, Sec. 5),
runs T^-1, and for 8-bit data quantises back to k/255.

References:
- Dinh, Krueger & Bengio, "NICE", 2014; Dinh, Sohl-Dickstein & Bengio, "Real NVP", ICLR 2017.
- Kingma & Dhariwal, "Glow", NeurIPS 2018.
- Theis, van den Oord & Bethge, "A note on the evaluation of generative models", ICLR 2016
  (dequantisation and the bound on the discrete log-likelihood).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal, constraints

from ..checks import image_shape, lookup
from ..data import dequantize as uniform_dequantize
from ..data import levels_of
from ..distributions import N_LEVELS
from ..errors import ConfigError
from ..flows.autoregressive import maf
from ..flows.base import LOG_SCALES, Compose, Logit, Reshape, Shift
from ..flows.coupling import dense_realnvp, nice
from ..flows.distribution import FlowDistribution
from ..flows.multiscale import dense_glow, glow, realnvp
from .base import GenerativeModel, check_temperature, refuse_sample_option


class Logistic(Distribution):
    """Logistic(0, scale) per element, log p = -softplus(z/s) - softplus(-z/s) - log s.

    NICE's base density. Written out because torch's composition of ``Uniform`` and
    ``SigmoidTransform`` returns -inf once sigmoid(z) rounds to 1 (|z| > ~17 in float32).
    """

    arg_constraints = {"scale": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(self, scale: Tensor):
        self.scale = scale
        super().__init__(scale.shape, validate_args=False)

    def log_prob(self, z: Tensor) -> Tensor:
        z = z / self.scale
        return -F.softplus(z) - F.softplus(-z) - self.scale.log()

    def rsample(self, sample_shape=()):
        shape = self._extended_shape(sample_shape)
        eps = torch.finfo(self.scale.dtype).eps
        u = torch.rand(shape, device=self.scale.device, dtype=self.scale.dtype).clamp(eps, 1 - eps)
        return self.scale * (u.log() - torch.log1p(-u))


class FlowModel(GenerativeModel):
    """The model contract for flows: ``loss`` (nll, bpd), exact ``log_prob``, ``sample(n, temperature)``.

    Args:
        transform: data -> base noise (preprocessing included), [B, *data_shape] both ways.
        data_shape: shape of one example.
        base: 'normal' or 'logistic' base density over data_shape.
        dequantize: True for 8-bit data in [0, 1] (see the module docstring).
    """

    log_prob_kind = "exact"

    def __init__(
        self, transform: nn.Module, data_shape: tuple[int, ...], base: str = "normal", dequantize: bool = True
    ):
        super().__init__()
        lookup(BASES, base, "flow base")
        self.transform = transform
        self.data_shape = tuple(data_shape)
        self.base_name = base
        self.dequantize = dequantize
        self.register_buffer("base_scale", torch.ones(self.data_shape))

    @property
    def density(self) -> bool:
        """Without dequantisation log_prob is a density on continuous data; with it, a bound on
        the log-probability of the 8-bit levels."""
        return not self.dequantize

    @property
    def num_dims(self) -> int:
        return math.prod(self.data_shape)

    def distribution(self, temperature: float = 1.0) -> FlowDistribution:
        """p(y) as a ``FlowDistribution`` (continuous data space, before quantisation)."""
        base = lookup(BASES, self.base_name, "flow base")(self.base_scale * temperature)
        return FlowDistribution(Independent(base, len(self.data_shape), validate_args=False), self.transform)

    def log_prob(self, x: Tensor, **kw) -> Tensor:
        """log P(x) [B] in nats: with 8-bit data the dequantised bound log p(y) - D log 256."""
        if not self.dequantize:
            return self.distribution().log_prob(x)
        y = uniform_dequantize(x, levels=N_LEVELS)
        return self.distribution().log_prob(y) - self.num_dims * math.log(N_LEVELS)

    def loss(self, x: Tensor, step: int = 0) -> dict[str, Tensor]:
        """Per-example ``loss`` = ``nll`` (nats) and ``bpd``, the bits per dimension ``evaluate`` reports
        (``bits_per_dim``; absent where bits per dimension are undefined: continuous features, or
        a density of undequantised 8-bit data, which bounds nothing)."""
        nll = -self.log_prob(x)
        bpd = self.bits_per_dim(nll)
        return {"loss": nll, "nll": nll} | ({} if bpd is None else {"bpd": bpd})

    @torch.no_grad()
    def sample(self, n: int, mean: bool = False, temperature: float = 1.0) -> Tensor:
        """[n, *data_shape]; 8-bit data come back quantised to k/255 in [0, 1]. ``temperature`` T >= 0
        scales the base density; ``mean=True`` is refused (a flow has no p(x|z) to average)."""
        if mean:
            refuse_sample_option(self, "mean=True", "a flow maps its noise to x directly, with no p(x|z) to average")
        y = self.distribution(check_temperature(temperature)).sample((n,))
        if not self.dequantize:
            return y
        return levels_of(y, levels=N_LEVELS)


BASES = {
    "normal": lambda scale: Normal(torch.zeros_like(scale), scale, validate_args=False),
    "logistic": Logistic,
}


def _check_divisible(data_shape, factor, arch, levels):
    _, h, w = data_shape
    if h % factor or w % factor:
        raise ConfigError(
            f"flow_arch={arch} with flow_levels={levels} needs height and width divisible by {factor}; got {h}x{w}"
        )


# Every architecture constructor takes the same explicit arguments and uses those it needs:
# (data_shape, levels, steps, hidden, blocks, scale) -> Transform (data -> noise).
def _nice(shape, levels, steps, hidden, blocks, scale):
    return nice(shape, steps, hidden, blocks)


def _realnvp(shape, levels, steps, hidden, blocks, scale):
    if len(shape) == 1:
        return dense_realnvp(shape[0], steps, hidden, blocks, scale=scale)
    _check_divisible(
        image_shape(shape, "flow_arch=realnvp on data that are not vectors [D]"), 2 ** (levels - 1), "realnvp", levels
    )
    return realnvp(shape, levels, steps, hidden, blocks, scale)


def _glow(shape, levels, steps, hidden, blocks, scale):
    if len(shape) == 1:
        return dense_glow(shape[0], steps, hidden, scale)
    _check_divisible(image_shape(shape, "flow_arch=glow on data that are not vectors [D]"), 2**levels, "glow", levels)
    return glow(shape, levels, steps, hidden, scale)


def _maf(shape, levels, steps, hidden, blocks, scale):
    d = math.prod(shape)
    return Compose(
        Reshape(shape, (d,)),
        maf(d, steps, [hidden] * blocks, scale=scale),
        Reshape((d,), shape),
    )


# name -> constructor(data_shape, levels, steps, hidden, blocks, scale) -> Transform (data -> noise)
ARCHS = {
    "nice": _nice,
    "realnvp": _realnvp,
    "glow": _glow,
    "maf": _maf,
}

# name -> constructor(alpha) -> preprocessing Transform or None
PREPROCESS = {
    "logit": lambda alpha: Logit(alpha),
    "unit": lambda alpha: Shift(-0.5),
    "none": lambda alpha: None,
}

DEQUANTIZE = {"uniform": True, "none": False}


def _check_flow_config(cfg) -> None:
    """One-line ConfigErrors for the flow fields of a ``ModelConfig``."""
    for key, value, table in (
        ("flow_arch", cfg.flow_arch, ARCHS),
        ("flow_preprocess", cfg.flow_preprocess, PREPROCESS),
        ("flow_dequantize", cfg.flow_dequantize, DEQUANTIZE),
        ("flow_base", cfg.flow_base, BASES),
        ("flow_scale", cfg.flow_scale, LOG_SCALES),
    ):
        lookup(table, value, f"model.{key}")
    for key, value in (
        ("flow_levels", cfg.flow_levels),
        ("flow_steps", cfg.flow_steps),
        ("flow_hidden", cfg.flow_hidden),
    ):
        if value <= 0:
            raise ConfigError(f"model.{key} must be positive; got {value}")
    if cfg.flow_blocks < 0:  # maf needs >= 1 in a new run (config._check_new_run)
        raise ConfigError(f"model.flow_blocks must be >= 0; got {cfg.flow_blocks}")
    if cfg.flow_preprocess == "logit" and not 0.0 < cfg.flow_alpha < 0.5:
        raise ConfigError(f"model.flow_alpha must be in (0, 0.5); got {cfg.flow_alpha}")


def build_flow_model(cfg, data_shape: tuple[int, ...], train_cfg=None) -> FlowModel:
    """The flow density model of a ``ModelConfig`` (``model.kind: flow``); its dequantisation is
    ``cfg.flow_dequantize``."""
    data_shape = tuple(data_shape)
    _check_flow_config(cfg)
    pre = PREPROCESS[cfg.flow_preprocess](cfg.flow_alpha)
    body = ARCHS[cfg.flow_arch](
        data_shape, cfg.flow_levels, cfg.flow_steps, cfg.flow_hidden, cfg.flow_blocks, cfg.flow_scale
    )
    transform = Compose(pre, body) if pre is not None else body
    return FlowModel(transform, data_shape, base=cfg.flow_base, dequantize=DEQUANTIZE[cfg.flow_dequantize])
