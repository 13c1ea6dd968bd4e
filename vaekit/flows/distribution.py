"""A distribution defined by a flow: x = T^-1(u), u ~ base (change of variables).

    log p(x) = log p_base(T(x)) + log |det dT/dx|

``T`` follows the flow contract in its normalising direction (x -> u); samples come
from ``T.inverse``, and the log-density of a sample drawn that way costs nothing extra:
log p(x) = log p_base(u) - log |det dT^-1/du|. That is ``rsample_and_log_prob``, which
``vaekit.distributions.rsample_and_log_prob`` (and so the ELBO, the IWAE bound and the
importance sampler) calls for flow posteriors; an IAF posterior never inverts its flow.

The same class serves the three uses of flows in vaekit: the base density of a flow
model, a posterior q(z|x) = flow(q0(z|x)) with an encoder context, and a prior
p(z) = flow(N(0, I)). It is a ``torch.distributions.Distribution`` with no KL
registered, so ``kl_divergence`` raises and the objectives fall back to Monte Carlo.
Leading sample and batch axes are flattened into one batch axis for the transform,
and the context [*batch_shape, H] is broadcast over the sample axes.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution

from .base import Transform


class FlowDistribution(Distribution):
    """p(x) = base(T(x)) |det dT/dx|; ``base`` is the distribution of u (e.g. q0(z|x) or N(0, I))."""

    has_rsample = True
    arg_constraints: dict = {}

    def __init__(self, base: Distribution, transform: Transform, context: Tensor | None = None):
        self.base, self.transform, self.context = base, transform, context
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    def _run(self, fn, v: Tensor) -> tuple[Tensor, Tensor]:
        """Apply ``fn`` (transform direction) to v [*lead, *event] flattened to [N, *event]."""
        n_event = len(self.event_shape)
        lead = v.shape[: v.dim() - n_event]
        ctx = None
        if self.context is not None:
            ctx = self.context.expand(*lead, self.context.shape[-1]).reshape(-1, self.context.shape[-1])
        out, logabsdet = fn(v.reshape(-1, *self.event_shape), context=ctx)
        return out.reshape(v.shape), logabsdet.reshape(lead)

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        """x = T^-1(u), u ~ base, with log p(x) = log base(u) - log |det dT^-1/du|, one pass."""
        u = self.base.rsample(sample_shape)
        x, logabsdet = self._run(self.transform.inverse, u)
        return x, self.base.log_prob(u) - logabsdet

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        return self.rsample_and_log_prob(sample_shape)[0]

    def sample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) through the normalising direction (sequential for IAF, root-finding for planar)."""
        u, logabsdet = self._run(self.transform, x)
        return self.base.log_prob(u) + logabsdet
