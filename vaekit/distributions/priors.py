"""Priors p(z) over the latent codes of a VAE, and the registry of them.

A prior is a :class:`Prior`: an ``nn.Module`` whose ``forward()`` returns p(z) with event
shape ``[latent_dim]``; its parameters or buffers move with ``.to(device)``. What the VAE
builder needs to know of it is declared (``needs_encoder``), not probed.

- ``normal``: N(0, I).
- ``mixture``: a learnable mixture of diagonal Gaussians (the KL term becomes Monte Carlo).
- ``vamp``: the VampPrior (Tomczak & Welling 2018), the mixture of the encoder's posteriors
  at learned pseudo-inputs.
- ``flow``: p(z) = flow(N(0, I)) with a flow of ``vaekit.flows.latent.PRIOR_FLOWS`` (e.g. MAF,
  Papamakarios et al. 2017, the dual of an IAF posterior); log p(z) is exact.

References: Tomczak & Welling, "VAE with a VampPrior", AISTATS 2018; Papamakarios,
Pavlakou & Murray, "Masked Autoregressive Flow for Density Estimation", NeurIPS 2017;
Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015.

Temperature (``Prior.at_temperature``): the normal prior's scale, a flow prior's base scale and
each Gaussian layer of a hierarchical prior are multiplied by T (Kingma & Dhariwal, "Glow",
NeurIPS 2018, Sec. 5; Vahdat & Kautz, "NVAE", NeurIPS 2020, Sec. 5); mixture priors have no
single spread to scale and declare none.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from ..checks import lookup
from ..errors import ConfigError
from ..flows.distribution import FlowDistribution
from ..flows.latent import PRIOR_FLOWS
from .base import LOG_STD_MIN, Encoder
from .mixture import MixtureOfGaussians


class Prior(nn.Module):
    """Base of priors: ``forward()`` -> p(z), a distribution with event shape [latent_dim].

    Declared attributes:

    - ``needs_encoder``: p(z) is defined through the VAE's encoder (the VampPrior); the
      builder calls :meth:`bind` with the encoder and the data shape once, before loading
      a state dict.
    - ``has_temperature``: :meth:`at_temperature` gives p(z) with its spread scaled by T
      (priors whose noise is one Gaussian to scale); mixtures have no single spread and do not.
    """

    needs_encoder: bool = False
    has_temperature: bool = False

    def forward(self) -> Distribution:  # pragma: no cover - interface
        raise NotImplementedError

    def bind(self, encoder: Encoder, data_shape: tuple[int, ...]) -> Prior:
        """Attach the encoder (priors with ``needs_encoder``); other priors need nothing."""
        return self

    def at_temperature(self, temperature: float) -> Distribution:
        """p(z) at temperature T >= 0 (``has_temperature``); T = 1 is ``self()``."""
        raise NotImplementedError(f"{type(self).__name__} has no temperature")

    @torch.no_grad()
    def marginal_std(self, n: int = 10000) -> Tensor:
        """Per-dimension standard deviation [latent_dim] of p(z): a Monte-Carlo estimate from ``n``
        draws of the caller's random stream, unless the prior knows it in closed form."""
        return self().sample((n,)).std(0)


class StandardNormalPrior(Prior):
    """p(z) = N(0, I) over ``latent_dim`` dimensions (buffers, so it follows ``.to``)."""

    has_temperature = True

    def __init__(self, latent_dim: int):
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> Distribution:
        return Independent(Normal(self.loc, self.scale, validate_args=False), 1, validate_args=False)

    def at_temperature(self, temperature: float) -> Distribution:
        """N(0, T^2 I), as NVAE samples (Vahdat & Kautz 2020); T = 0 puts every draw at 0."""
        return Independent(Normal(self.loc, self.scale * temperature, validate_args=False), 1, validate_args=False)

    def marginal_std(self, n: int = 10000) -> Tensor:
        """The scale itself (ones)."""
        return self.scale.clone()


class MixturePrior(Prior):
    """p(z) = sum_k pi_k N(z; mu_k, diag(sigma_k^2)) with learnable weights, means and variances.

    The density is :class:`~vaekit.distributions.mixture.MixtureOfGaussians`, the same code as
    the EM mixture model; the KL term of the ELBO is then Monte-Carlo (no closed form).
    """

    def __init__(self, latent_dim: int, n_components: int):
        super().__init__()
        if n_components < 1:
            raise ConfigError(f"mixture prior needs at least one component; got {n_components}")
        self.logits = nn.Parameter(torch.zeros(n_components))
        self.means = nn.Parameter(torch.randn(n_components, latent_dim))
        self.log_std = nn.Parameter(torch.zeros(n_components, latent_dim))

    def forward(self) -> Distribution:
        log_std = self.log_std.clamp(min=LOG_STD_MIN)
        return MixtureOfGaussians(self.logits, self.means, (-log_std).exp(), "diag")


class VampPrior(Prior):
    """p(z) = (1/K) sum_k q0(z | u_k): the encoder's diagonal-Gaussian posterior at K learned
    pseudo-inputs u_k (Tomczak & Welling, "VAE with a VampPrior", AISTATS 2018).

    Needs the VAE's encoder and the data shape (``needs_encoder``): ``bind(encoder, data_shape)``
    creates the pseudo-inputs (call it once, when the VAE is built, before loading a state
    dict). The encoder is referenced, not registered, so its weights are stored once. The
    density is :class:`~vaekit.distributions.mixture.MixtureOfGaussians` over the Gaussians
    ``encoder.base_posterior(u_k)`` (for a flow posterior: its base q0).
    """

    needs_encoder = True

    def __init__(
        self,
        latent_dim: int,
        n_pseudo_inputs: int,
        encoder: Encoder | None = None,
        data_shape: tuple[int, ...] | None = None,
    ):
        super().__init__()
        if n_pseudo_inputs < 1:
            raise ConfigError(f"VampPrior needs at least one pseudo-input; got {n_pseudo_inputs}")
        self.latent_dim, self.n_pseudo_inputs = latent_dim, n_pseudo_inputs
        self._encoder: list[Encoder] = []  # a plain list: not a submodule
        self.pseudo_inputs = None
        if encoder is not None and data_shape is not None:
            self.bind(encoder, data_shape)

    def bind(self, encoder: Encoder, data_shape: tuple[int, ...]) -> VampPrior:
        self._encoder[:] = [encoder]
        if self.pseudo_inputs is None or tuple(self.pseudo_inputs.shape[1:]) != tuple(data_shape):
            self.pseudo_inputs = nn.Parameter(0.5 + 0.05 * torch.randn(self.n_pseudo_inputs, *data_shape))
        return self

    def forward(self) -> Distribution:
        if not self._encoder:
            raise ConfigError("the VampPrior is not bound to an encoder (VampPrior.bind(encoder, data_shape))")
        base = self._encoder[0].base_posterior(self.pseudo_inputs)
        mean, std = base.mean, base.stddev
        if mean.shape[-1] != self.latent_dim:
            raise ConfigError(f"VampPrior: encoder gives {mean.shape[-1]} latents, prior has {self.latent_dim}")
        logits = torch.zeros(mean.shape[0], dtype=mean.dtype, device=mean.device)
        return MixtureOfGaussians(logits, mean, 1.0 / std, "diag")


class FlowPrior(Prior):
    """p(z) = flow(N(0, I)): ``transform`` maps z [B, latent_dim] to the base noise (z -> u)."""

    has_temperature = True

    def __init__(self, latent_dim: int, transform: nn.Module):
        super().__init__()
        self.transform = transform
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> FlowDistribution:
        base = Independent(Normal(self.loc, self.scale, validate_args=False), 1, validate_args=False)
        return FlowDistribution(base, self.transform)

    def at_temperature(self, temperature: float) -> FlowDistribution:
        """The flow of N(0, T^2 I): the base noise is tempered, as Glow samples (Kingma & Dhariwal
        2018, Sec. 5); T = 0 maps the base's mean u = 0 through the flow."""
        base = Independent(Normal(self.loc, self.scale * temperature, validate_args=False), 1, validate_args=False)
        return FlowDistribution(base, self.transform)


def check_latent_flow_sizes(sizes: dict[str, int]) -> None:
    """One-line ConfigError for the first size that is not positive; ``sizes``: config key -> value."""
    for key, value in sizes.items():
        if value <= 0:
            raise ConfigError(f"model.{key} must be positive for a latent flow; got {value}")


def flow_prior(latent_dim: int, flow: str = "realnvp", layers: int = 4, hidden: int = 64, blocks: int = 2) -> FlowPrior:
    """p(z) = flow(N(0, I)) with the latent flow ``flow`` of ``PRIOR_FLOWS``.

    Args:
        latent_dim: D.
        flow: realnvp | maf | planar.
        layers: flow layers; hidden: units of the conditioner nets; blocks: their hidden layers.
    """
    make = lookup(PRIOR_FLOWS, flow, "prior_flow")
    check_latent_flow_sizes({"prior_flow_layers": layers, "flow_hidden": hidden, "flow_blocks": blocks})
    return FlowPrior(latent_dim, make(latent_dim, layers, hidden, blocks))


# name -> constructor(latent_dim, **keyword arguments) -> Prior
PRIORS = {
    "normal": StandardNormalPrior,  # ()
    "flow": flow_prior,  # (flow, layers, hidden, blocks)
    "mixture": MixturePrior,  # (n_components)
    "vamp": VampPrior,  # (n_pseudo_inputs); needs_encoder: bind(encoder, data_shape)
}


def build_prior(name: str, latent_dim: int, **kwargs) -> Prior:
    """The prior ``name`` over ``latent_dim`` dimensions; ``kwargs`` are its constructor's."""
    return lookup(PRIORS, name, "prior")(latent_dim, **kwargs)
