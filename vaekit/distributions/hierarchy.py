"""Stacks of stochastic layers: hierarchical posteriors and priors over z = (z_1, ..., z_L).

Burda, Grosse & Salakhutdinov (2015, Sec. 5) train VAEs and IWAEs with two stochastic layers:

    q(z|x) = q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1})          (bottom-up, inference)
    p(z)   = p(z_L) p(z_{L-1}|z_L) ... p(z_1|z_2)            (top-down, generation)

with every factor a diagonal Gaussian whose mean and log-variance a small net computes from
the layer it is conditioned on, and p(z_L) = N(0, I). The decoder p(x|z) reads z_1 only.

Here both are ``torch.distributions.Distribution`` objects over the *concatenation*
z = (z_1, ..., z_L), event [D_1 + ... + D_L], so the one VAE contract holds unchanged:
``rsample`` draws ancestrally with the reparameterisation of each Gaussian (gradients flow
through every layer), ``log_prob`` is the sum of the layer log-densities, and the ELBO (with a
Monte-Carlo KL, since no closed form is registered), the IWAE bound and the importance sampler
are the same ``log_prob`` arithmetic as for one layer.

- :class:`ChainDistribution`: the distribution of a Markov chain of Gaussian layers, with the
  concatenation order of z either the chain's order (a posterior) or its reverse (a prior).
- :class:`ConditionalGaussian`: a net body h [.., D_in] -> N(mu(h), diag sigma^2(h)) [.., D].
- :class:`HierarchicalEncoder` (an ``Encoder``) and :class:`HierarchicalPrior` (a ``Prior``):
  the modules a VAE holds; the VAE builder wires them from its configuration.

Reference: Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016
(arXiv 1509.00519), Sec. 5 and App. A (the two-stochastic-layer architecture).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from .base import MOMENT_CHUNK, MOMENT_SAMPLES, Encoder, moment_noise
from .gaussian import diagonal_gaussian
from .priors import Prior


class ConditionalGaussian(nn.Module):
    """A Gaussian layer p(v|h) = N(mu(h), diag exp(log_var(h))).

    Args:
        body: a net body h [N, D_in] -> [N, 2 * D_out] = (mu, log sigma^2).
        out_features: D_out.
    """

    def __init__(self, body: nn.Module, out_features: int):
        super().__init__()
        self.body, self.out_features = body, out_features

    def forward(self, h: Tensor) -> Distribution:
        """h [*lead, D_in] -> a diagonal Gaussian with batch [*lead], event [D_out]."""
        lead = h.shape[:-1]
        out = self.body(h.reshape(-1, h.shape[-1])).reshape(*lead, 2 * self.out_features)
        mean, log_var = out.chunk(2, dim=-1)
        return diagonal_gaussian(mean, log_var)


class ChainDistribution(Distribution):
    """A Markov chain of stochastic layers as one distribution over their concatenation.

    The chain is v_1 ~ ``root``, v_{j+1} ~ ``links[j](v_j)``. The event is the concatenation of
    the v_j, in chain order (``reverse=False``: a posterior z = (z_1, z_2, ...) drawn from z_1
    up) or in reverse chain order (``reverse=True``: a prior drawn from the top layer z_L down,
    whose z is still (z_1, ..., z_L)).

    Args:
        root: distribution of the first layer of the chain, batch [*batch], event [d_1].
        links: callables v [*lead, d_j] -> distribution of v_{j+1}, batch [*lead], event [d_{j+1}].
        sizes: (d_1, d_2, ...) in chain order.
        reverse: concatenate in reverse chain order.
    """

    has_rsample = True
    arg_constraints: dict = {}

    def __init__(self, root: Distribution, links: Sequence, sizes: Sequence[int], reverse: bool = False):
        self.root, self.links, self.sizes, self.reverse = root, list(links), [int(s) for s in sizes], reverse
        if len(self.links) != len(self.sizes) - 1:
            raise ValueError(f"a chain of {len(self.sizes)} layers needs {len(self.sizes) - 1} links")
        super().__init__(root.batch_shape, torch.Size([sum(self.sizes)]), validate_args=False)

    def _order(self, parts: list[Tensor]) -> list[Tensor]:
        return parts[::-1] if self.reverse else parts

    def split(self, z: Tensor) -> list[Tensor]:
        """z [..., D] -> the layers [..., d_j] in chain order."""
        return self._order(list(z.split(self._order(self.sizes), dim=-1)))

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        """Ancestral, reparameterised draw: [*sample_shape, *batch, D]."""
        v = self.root.rsample(sample_shape)
        parts = [v]
        for link in self.links:
            v = link(v).rsample()
            parts.append(v)
        return torch.cat(self._order(parts), dim=-1)

    def sample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, z: Tensor) -> Tensor:
        """log root(v_1) + sum_j log link_j(v_{j+1} | v_j): [*lead] for z [*lead, D]."""
        parts = self.split(z)
        out = self.root.log_prob(parts[0])
        for link, v, v_next in zip(self.links, parts[:-1], parts[1:]):
            out = out + link(v).log_prob(v_next)
        return out


class HierarchicalEncoder(Encoder):
    """q(z|x) = q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1}) over z = (z_1, ..., z_L).

    Args:
        body: the first layer's net, x [B, *data_shape] -> [B, 2 * D_1] = (mu, log sigma^2).
        layers: the upper layers q(z_{l+1}|z_l), :class:`ConditionalGaussian` each.
        sizes: (D_1, ..., D_L).
    """

    def __init__(self, body: nn.Module, layers: Sequence[ConditionalGaussian], sizes: Sequence[int]):
        super().__init__()
        self.body, self.layers, self.sizes = body, nn.ModuleList(layers), tuple(int(s) for s in sizes)

    exact_moments = False  # the upper layers are continuous mixtures: Monte-Carlo moments

    def _first(self, x: Tensor) -> Distribution:
        return diagonal_gaussian(*self.variational_params(x))

    def variational_params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """phi(x) = the mean and log-variance [B, D_1] of q(z_1|x); the upper conditionals are shared
        weights, as a flow posterior's are, so per-datapoint SVI optimises the bottom layer."""
        mean, log_var = self.body(x).chunk(2, dim=-1)
        return mean, log_var

    def posterior(self, mean: Tensor, log_var: Tensor) -> Distribution:
        """q(z; phi) = N(z_1; mean, diag exp(log_var)) q(z_2|z_1) ... over the concatenated z."""
        return ChainDistribution(diagonal_gaussian(mean, log_var), list(self.layers), self.sizes)

    def params_from_gaussian(self, mean: Tensor, log_var: Tensor) -> tuple[Tensor, Tensor]:
        """phi from a Gaussian [B, D_1 + ... + D_L] over the whole z: its z_1 block."""
        d1 = self.sizes[0]
        return mean[:, :d1], log_var[:, :d1]

    @torch.no_grad()
    def moments(self, mean: Tensor, log_var: Tensor) -> tuple[Tensor, Tensor]:
        """E_q[z] and log Var_q[z] [B, D_1 + ... + D_L] of q(z; phi).

        z_1's are exact; each upper layer's come from ``MOMENT_SAMPLES`` ancestral draws with the
        fixed noise of ``moment_noise`` (deterministic, the same for an example in any batch), with
        the top layer Rao-Blackwellised: E[z_L] = E[mu_L(z_{L-1})] and
        Var[z_L] = E[sigma_L^2(z_{L-1})] + Var[mu_L(z_{L-1})], summed in float64.
        """
        S, B = MOMENT_SAMPLES, mean.shape[0]
        eps = moment_noise(sum(self.sizes[:-1]), mean)
        step = max(1, MOMENT_CHUNK // max(1, B))
        s1 = [0.0] * len(self.layers)
        s2 = [0.0] * len(self.layers)
        for i in range(0, S, step):
            e = eps[i : i + step]  # [s, D_1 + ... + D_{L-1}]
            z = (mean + (0.5 * log_var).exp() * e[:, None, : self.sizes[0]]).reshape(-1, self.sizes[0])
            offset = self.sizes[0]
            for j, layer in enumerate(self.layers):
                g = layer(z)
                m, v = g.mean.double(), g.variance.double()
                s1[j] = s1[j] + m.view(e.shape[0], B, -1).sum(0)
                s2[j] = s2[j] + (m * m + v).view(e.shape[0], B, -1).sum(0)
                if j + 1 < len(self.layers):  # draw this layer to condition the next
                    d = self.sizes[j + 1]
                    noise = e[:, None, offset : offset + d].expand(-1, B, -1).reshape(-1, d)
                    z, offset = g.mean + g.stddev * noise, offset + d
        means, log_vars = [mean], [log_var]
        for j in range(len(self.layers)):
            m = s1[j] / S
            var = (s2[j] / S - m * m).clamp_min(torch.finfo(mean.dtype).tiny)
            means.append(m.to(mean.dtype))
            log_vars.append(var.log().to(mean.dtype))
        return torch.cat(means, -1), torch.cat(log_vars, -1)

    def base_posterior(self, x: Tensor) -> Distribution:
        """The diagonal Gaussian of the ancestral mean pass, batch [B], event [D_1 + ... + D_L]:
        q(z_1|x) itself, then each q(z_{l+1}|z_l) at z_l = its mean. Not q(z|x) (whose upper layers
        are continuous mixtures), but a deterministic Gaussian summary of it, where a diagonal
        q0(z|x) is needed (the VampPrior's mixture of q0 at its pseudo-inputs). ``VAE.encode``
        and the active-unit statistic use :meth:`moments`, the moments of q(z|x) itself."""
        g = self._first(x)
        means, log_vars = [g.mean], [2 * g.stddev.log()]
        for layer in self.layers:
            g = layer(g.mean)
            means.append(g.mean)
            log_vars.append(2 * g.stddev.log())
        return diagonal_gaussian(torch.cat(means, -1), torch.cat(log_vars, -1))


class HierarchicalPrior(Prior):
    """p(z) = N(z_L; 0, I) p(z_{L-1}|z_L) ... p(z_1|z_2) over z = (z_1, ..., z_L).

    Args:
        layers: the conditionals top-down, p(z_{L-1}|z_L) first and p(z_1|z_2) last,
            :class:`ConditionalGaussian` each.
        sizes: (D_1, ..., D_L), bottom layer first.
    """

    has_temperature = True

    def __init__(self, layers: Sequence[ConditionalGaussian], sizes: Sequence[int]):
        super().__init__()
        self.layers, self.sizes = nn.ModuleList(layers), tuple(int(s) for s in sizes)
        top = self.sizes[-1]
        self.register_buffer("loc", torch.zeros(top))
        self.register_buffer("scale", torch.ones(top))

    def forward(self) -> Distribution:
        root = diagonal_gaussian(self.loc, 2 * self.scale.log())
        return ChainDistribution(root, list(self.layers), self.sizes[::-1], reverse=True)

    def at_temperature(self, temperature: float) -> Distribution:
        """The chain with every layer's standard deviation multiplied by T, as NVAE samples its
        hierarchy (Vahdat & Kautz 2020, Sec. 5): z_L ~ N(0, T^2 I), z_l ~ N(mu_l(z_{l+1}),
        T^2 sigma_l^2(z_{l+1})); T = 0 gives the chain of means."""
        if temperature == 1.0:
            return self()
        root = Independent(Normal(self.loc, self.scale * temperature, validate_args=False), 1, validate_args=False)
        links = [_Tempered(layer, temperature) for layer in self.layers]
        return ChainDistribution(root, links, self.sizes[::-1], reverse=True)


class _Tempered:
    """A :class:`ConditionalGaussian` link with its standard deviation multiplied by ``temperature``."""

    def __init__(self, layer: ConditionalGaussian, temperature: float):
        self.layer, self.temperature = layer, temperature

    def __call__(self, h: Tensor) -> Distribution:
        p = self.layer(h)
        return Independent(Normal(p.mean, p.stddev * self.temperature, validate_args=False), 1, validate_args=False)
