"""Flows inside VAEs: a flow posterior q(z|x) and a flow prior p(z), selected by config.

Posterior (``model.posterior_flow``: planar | iaf | realnvp). The encoder body outputs
[B, 2D + H]: the mean and log-variance of a diagonal Gaussian q0(z|x) and H context
features h(x) (``model.posterior_flow_context``). q(z|x) is a ``FlowDistribution``:
z_0 ~ q0(z|x), z_K = f_K o ... o f_1(z_0), with

    log q_K(z_K|x) = log q0(z_0|x) - sum_k log |det df_k/dz_{k-1}|

returned together with z_K by ``rsample_and_log_prob``, which is all the ELBO, the IWAE
bound and the importance sampler ask of q; no KL is registered for it, so the ELBO's KL
is the Monte-Carlo estimate log q_K(z_K|x) - log p(z_K). The flow is conditioned on h
(IAF's context, Kingma et al. 2016; amortised planar / RealNVP parameters otherwise);
``posterior_flow_context: 0`` shares one flow across all x. ``VAE.encode`` reports q0's
mean and variance (``.base``).

Prior (``model.prior: flow`` with ``model.prior_flow``: realnvp | maf | planar):
p(z) = flow(N(0, I)), entered in ``vaekit.distributions.PRIORS``; log p(z) is exact, so
the same objectives and importance sampler serve it unchanged.

References:
- Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015.
- Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow", NeurIPS 2016.
- Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for Density Estimation",
  NeurIPS 2017 (MAF; as a VAE prior it is the dual of an IAF posterior, Sec. 3.2).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..distributions import diagonal_gaussian
from ..errors import ConfigError
from ..flows.distribution import FlowDistribution
from ..flows.latent import POSTERIOR_FLOWS, PRIOR_FLOWS, FlowPrior
from ..nets import build_encoder


class FlowEncoder(nn.Module):
    """x -> q(z|x) = flow(N(mu(x), diag sigma^2(x))) conditioned on features h(x)."""

    def __init__(self, body: nn.Module, flow: nn.Module, latent_dim: int, context_dim: int):
        super().__init__()
        self.body, self.flow = body, flow
        self.latent_dim, self.context_dim = latent_dim, context_dim

    def forward(self, x: Tensor) -> FlowDistribution:
        d = self.latent_dim
        out = self.body(x)
        q0 = diagonal_gaussian(out[:, :d], out[:, d : 2 * d])
        return FlowDistribution(q0, self.flow, out[:, 2 * d :] if self.context_dim else None)


def _check_sizes(cfg, layers_key: str) -> None:
    for key in (layers_key, "flow_hidden", "flow_blocks"):  # flow_blocks: hidden layers of MLP / MADE nets
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"model.{key} must be positive for a latent flow; got {getattr(cfg, key)}")


def build_flow_encoder(data_shape: tuple[int, ...], cfg) -> FlowEncoder:
    """The encoder of ``cfg.posterior_flow`` (called by ``build_vae``)."""
    name = cfg.posterior_flow
    if name not in POSTERIOR_FLOWS:
        raise ConfigError(f"unknown posterior_flow '{name}'; known: {', '.join(POSTERIOR_FLOWS)} (or null)")
    _check_sizes(cfg, "posterior_flow_layers")
    ctx = cfg.posterior_flow_context
    if ctx < 0:
        raise ConfigError(f"model.posterior_flow_context must be >= 0; got {ctx}")
    d = cfg.latent_dim
    body = build_encoder(data_shape, 2 * d + ctx, cfg)
    flow = POSTERIOR_FLOWS[name](d, cfg.posterior_flow_layers, cfg.flow_hidden, cfg.flow_blocks, ctx)
    return FlowEncoder(body, flow, d, ctx)


def build_flow_prior(latent_dim: int, cfg) -> FlowPrior:
    """p(z) = flow(N(0, I)) of ``cfg.prior_flow`` (the ``flow`` entry of ``PRIORS``)."""
    if cfg.prior_flow not in PRIOR_FLOWS:
        raise ConfigError(f"unknown prior_flow '{cfg.prior_flow}'; known: {', '.join(PRIOR_FLOWS)}")
    _check_sizes(cfg, "prior_flow_layers")
    flow = PRIOR_FLOWS[cfg.prior_flow](latent_dim, cfg.prior_flow_layers, cfg.flow_hidden, cfg.flow_blocks)
    return FlowPrior(latent_dim, flow)
