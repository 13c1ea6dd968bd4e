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
from torch.distributions import Distribution

from .base import Encoder
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

    def _first(self, x: Tensor) -> Distribution:
        mean, log_var = self.body(x).chunk(2, dim=-1)
        return diagonal_gaussian(mean, log_var)

    def forward(self, x: Tensor) -> Distribution:
        return ChainDistribution(self._first(x), list(self.layers), self.sizes)

    def base_posterior(self, x: Tensor) -> Distribution:
        """The diagonal Gaussian of the ancestral mean pass, batch [B], event [D_1 + ... + D_L]:
        q(z_1|x) itself, then each q(z_{l+1}|z_l) at z_l = its mean. Not q(z|x) (whose upper layers
        are continuous mixtures), but a deterministic summary of it: its mean is the code of
        ``VAE.encode`` and of the active-unit statistic per layer."""
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

    def __init__(self, layers: Sequence[ConditionalGaussian], sizes: Sequence[int]):
        super().__init__()
        self.layers, self.sizes = nn.ModuleList(layers), tuple(int(s) for s in sizes)
        top = self.sizes[-1]
        self.register_buffer("loc", torch.zeros(top))
        self.register_buffer("scale", torch.ones(top))

    def forward(self) -> Distribution:
        root = diagonal_gaussian(self.loc, 2 * self.scale.log())
        return ChainDistribution(root, list(self.layers), self.sizes[::-1], reverse=True)
