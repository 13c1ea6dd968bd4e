"""flows.distribution: FlowDistribution is the change of variables x = T^-1(u), u ~ base.

log p(x) = log p_base(u) - sum_k log|det dT_k^-1/du|, returned with each sample, equals log_prob(x)
through the normalising direction; batch, event and sample axes keep their torch meaning."""

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from tests.helpers import FLOW_B, FLOW_CTX, perturbed
from vaekit.flows import Compose, DiagonalScaling, FlowDistribution, Shift, dense_realnvp
from vaekit.flows.latent import POSTERIOR_FLOWS, PRIOR_FLOWS

DIM = 3  # event size of every distribution here


def gaussian(*batch: int) -> Independent:
    """A diagonal Gaussian base, batch [*batch], event [DIM], float64, random means and scales."""
    loc = torch.randn(*batch, DIM, dtype=torch.float64)
    return Independent(Normal(loc, torch.rand(*batch, DIM, dtype=torch.float64) + 0.5), 1)


def posterior(name: str) -> tuple[FlowDistribution, torch.Tensor]:
    """q(z|x) = flow(q0(z|x)) of POSTERIOR_FLOWS[name] over FLOW_B examples, and its context [B, CTX]."""
    case = (POSTERIOR_FLOWS[name](DIM, 3, 8, 2, FLOW_CTX), torch.randn(FLOW_B, DIM), torch.randn(FLOW_B, FLOW_CTX))
    t, _, ctx = perturbed(case)
    return FlowDistribution(gaussian(FLOW_B), t, ctx), ctx


def test_rsample_and_log_prob_is_the_base_density_minus_the_summed_logdets():
    t, _, ctx = perturbed(
        (dense_realnvp(DIM, 3, 8, context_dim=FLOW_CTX), torch.randn(FLOW_B, DIM), torch.randn(FLOW_B, FLOW_CTX))
    )
    base = gaussian(FLOW_B)
    torch.manual_seed(5)
    z, log_q = FlowDistribution(base, t, ctx).rsample_and_log_prob((2,))
    torch.manual_seed(5)
    u = base.rsample((2,))  # the same base draw [2, B, DIM]
    v, c, total = u.reshape(-1, DIM), ctx.expand(2, FLOW_B, FLOW_CTX).reshape(-1, FLOW_CTX), 0.0
    for layer in reversed(t.transforms):  # sampling runs each layer's inverse, the last layer first
        v, logabsdet = layer.inverse(v, context=c)
        total = total + logabsdet
    torch.testing.assert_close(z, v.reshape(2, FLOW_B, DIM))
    torch.testing.assert_close(log_q, base.log_prob(u) - total.reshape(2, FLOW_B))


def test_an_affine_flow_gives_the_gaussian_density():
    """T(x) = x e^s + c maps N(-c e^-s, e^-2s) to N(0, I): the flow's density is that Gaussian's."""
    scaling = DiagonalScaling((DIM,)).double()
    with torch.no_grad():
        scaling.log_scale.copy_(torch.tensor([0.2, -0.5, 1.0]))
    s = scaling.log_scale.detach()
    standard = Independent(Normal(torch.zeros(DIM, dtype=torch.float64), torch.ones(DIM, dtype=torch.float64)), 1)
    p = FlowDistribution(standard, Compose(scaling, Shift(0.7)))
    exact = Independent(Normal(-0.7 * (-s).exp(), (-s).exp()), 1)
    x = 3 * torch.randn(10, DIM, dtype=torch.float64)
    torch.testing.assert_close(p.log_prob(x), exact.log_prob(x))
    z, log_q = p.rsample_and_log_prob((10,))
    torch.testing.assert_close(log_q, exact.log_prob(z))


@pytest.mark.parametrize("name", sorted(POSTERIOR_FLOWS))
def test_log_prob_of_a_posterior_sample_is_the_value_returned_with_it(name):
    q, _ = posterior(name)
    z, log_q = q.rsample_and_log_prob((4,))
    torch.testing.assert_close(q.log_prob(z), log_q, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("name", sorted(PRIOR_FLOWS))
def test_log_prob_of_a_prior_sample_is_the_value_returned_with_it(name):
    t, _, _ = perturbed((PRIOR_FLOWS[name](DIM, 3, 8, 2), torch.randn(FLOW_B, DIM), None))
    p = FlowDistribution(gaussian(), t)
    z, log_p = p.rsample_and_log_prob((4, 2))
    torch.testing.assert_close(p.log_prob(z), log_p, atol=1e-8, rtol=1e-8)


def test_batch_event_and_sample_shapes():
    q, ctx = posterior("iaf")
    assert q.batch_shape == (FLOW_B,) and q.event_shape == (DIM,)
    assert q.sample().shape == (FLOW_B, DIM) and q.log_prob(q.sample()).shape == (FLOW_B,)
    z, log_q = q.rsample_and_log_prob((5, 2))
    assert z.shape == (5, 2, FLOW_B, DIM) and log_q.shape == (5, 2, FLOW_B)
    assert q.rsample((7,)).shape == (7, FLOW_B, DIM) and q.log_prob(z).shape == (5, 2, FLOW_B)
    # the context of example b conditions every sample of example b
    torch.manual_seed(3)
    z = q.rsample((6,))
    torch.manual_seed(3)
    u = q.base.rsample((6,))
    for b in range(FLOW_B):
        alone, _ = q.transform.inverse(u[:, b], context=ctx[b].expand(6, FLOW_CTX))
        torch.testing.assert_close(z[:, b], alone)


def test_rsample_is_reparameterised_and_sample_is_not():
    loc = torch.zeros(FLOW_B, DIM, dtype=torch.float64, requires_grad=True)
    t, _, _ = perturbed((PRIOR_FLOWS["realnvp"](DIM, 2, 8, 1), torch.randn(FLOW_B, DIM), None))
    q = FlowDistribution(Independent(Normal(loc, torch.ones_like(loc)), 1), t)
    assert q.has_rsample
    (grad,) = torch.autograd.grad(q.rsample((2,)).sum(), loc)
    assert grad.abs().sum() > 0
    assert not q.sample((2,)).requires_grad


def test_no_closed_form_kl_is_registered():
    """The objectives fall back to a Monte-Carlo KL for flow posteriors and priors."""
    q, _ = posterior("realnvp")
    with pytest.raises(NotImplementedError):
        kl_divergence(q, gaussian(FLOW_B))
