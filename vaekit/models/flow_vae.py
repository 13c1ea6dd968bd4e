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
``posterior_flow_context: 0`` shares one flow across all x. The variational parameters of
q(z|x) are phi(x) = (mu, log sigma^2, h): per-datapoint inference (SVI, the gap split)
optimises them per example with the flow's shared weights as trained, so q* stays in the
encoder's own family. ``VAE.encode`` reports E_q[z|x] and Var_q[z|x], which have no closed
form: Monte Carlo with ``MOMENT_SAMPLES`` draws of fixed noise (``FlowEncoder.moments``). The
VampPrior uses q0 (``FlowEncoder.base_posterior``).

Prior (``model.prior: flow`` with ``model.prior_flow``: realnvp | maf | planar):
p(z) = flow(N(0, I)), built by ``vaekit.distributions.priors.flow_prior`` (the ``flow`` entry
of ``PRIORS``); log p(z) is exact, so the same objectives and importance sampler serve it
unchanged.

References:
- Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015.
- Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow", NeurIPS 2016.
- Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for Density Estimation",
  NeurIPS 2017 (MAF; as a VAE prior it is the dual of an IAF posterior, Sec. 3.2).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ..checks import lookup
from ..distributions import Encoder, diagonal_gaussian
from ..distributions.base import MOMENT_CHUNK, MOMENT_SAMPLES, moment_noise
from ..distributions.priors import check_latent_flow_sizes
from ..errors import ConfigError
from ..flows.distribution import FlowDistribution
from ..flows.latent import POSTERIOR_FLOWS
from ..nets import NetSpec, build_encoder

# Monte-Carlo moments of a flow posterior: S draws give E_q[z|x] to about sd(z)/sqrt(S) = 3% of
# the posterior's standard deviation


class FlowEncoder(Encoder):
    """x -> q(z|x) = flow(N(mu(x), diag sigma^2(x))) conditioned on features h(x).

    Args:
        body: x [B, *data_shape] -> [B, 2 * latent_dim + context_dim] = (mu, log sigma^2, h).
        flow: transform over [B, latent_dim] in the normalising direction (z -> u).
        latent_dim: D.
        context_dim: H, features conditioning the flow (0: one flow for all x).
    """

    exact_moments = False  # E_q[z] and Var_q[z] of a flow have no closed form: Monte Carlo

    def __init__(self, body: nn.Module, flow: nn.Module, latent_dim: int, context_dim: int):
        super().__init__()
        self.body, self.flow = body, flow
        self.latent_dim, self.context_dim = latent_dim, context_dim

    def variational_params(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """phi(x) = (mu [B, D], log sigma^2 [B, D], h [B, H]) (h is [B, 0] without context)."""
        d = self.latent_dim
        out = self.body(x)
        return out[:, :d], out[:, d : 2 * d], out[:, 2 * d :]

    def posterior(self, mean: Tensor, log_var: Tensor, context: Tensor) -> FlowDistribution:
        """q(z; phi) = flow_h(N(mean, diag exp(log_var))), the flow's weights shared by all phi."""
        return FlowDistribution(diagonal_gaussian(mean, log_var), self.flow, context if self.context_dim else None)

    def params_from_gaussian(self, mean: Tensor, log_var: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Base N(mean, diag exp(log_var)) and context h = 0 (the flow at h = 0 still acts on it)."""
        return mean, log_var, mean.new_zeros(mean.shape[0], self.context_dim)

    def moments(self, mean: Tensor, log_var: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Monte-Carlo E_q[z] and log Var_q[z] [B, D] of q(z; phi) from ``MOMENT_SAMPLES`` draws.

        The base noise eps [S, D] is ``distributions.moment_noise``: fixed and shared by all examples,
        so the estimate is deterministic, the same on every device up to rounding, and the same for an
        example in any batch. Sums are taken in float64 about the base mean.
        """
        S, (B, D) = MOMENT_SAMPLES, mean.shape
        eps = moment_noise(D, mean)
        std = (0.5 * log_var).exp()
        ctx = context if self.context_dim else None
        s1 = s2 = 0.0
        step = max(1, MOMENT_CHUNK // max(1, B))
        for i in range(0, S, step):
            e = eps[i : i + step]
            u = (mean + std * e[:, None]).reshape(-1, D)  # [s*B, D], sample-major
            c = None if ctx is None else ctx.expand(e.shape[0], *ctx.shape).reshape(-1, ctx.shape[-1])
            z = self.flow.inverse(u, context=c)[0].view(e.shape[0], B, D)
            zc = (z - mean).double()
            s1, s2 = s1 + zc.sum(0), s2 + (zc * zc).sum(0)
        m = s1 / S
        var = (s2 - S * m * m) / (S - 1)
        return (mean.double() + m).to(mean.dtype), var.clamp_min(torch.finfo(mean.dtype).tiny).log().to(mean.dtype)

    def base_posterior(self, x: Tensor) -> Distribution:
        """q0(z|x), the diagonal Gaussian the flow starts from (``forward(x).base``)."""
        mean, log_var, _ = self.variational_params(x)
        return diagonal_gaussian(mean, log_var)


def build_flow_encoder(
    data_shape: tuple[int, ...],
    latent_dim: int,
    encoder: str,
    spec: NetSpec,
    flow: str = "iaf",
    layers: int = 4,
    hidden: int = 64,
    blocks: int = 2,
    context: int = 32,
) -> FlowEncoder:
    """The flow posterior q(z|x) (called by ``build_vae`` when ``model.posterior_flow`` is set).

    Args:
        data_shape: shape of one example.
        latent_dim: D.
        encoder, spec: the encoder body (``vaekit.nets.ENCODERS`` name) and its sizes.
        flow: planar | iaf | realnvp (``vaekit.flows.latent.POSTERIOR_FLOWS``).
        layers: flow layers; hidden: units of its conditioner nets; blocks: their hidden layers.
        context: H, encoder features conditioning the flow (0: one flow for all x).
    """
    make = lookup(POSTERIOR_FLOWS, flow, "posterior_flow")
    check_latent_flow_sizes({"posterior_flow_layers": layers, "flow_hidden": hidden, "flow_blocks": blocks})
    if context < 0:
        raise ConfigError(f"model.posterior_flow_context must be >= 0; got {context}")
    body = build_encoder(encoder, data_shape, 2 * latent_dim + context, spec)
    return FlowEncoder(body, make(latent_dim, layers, hidden, blocks, context), latent_dim, context)
