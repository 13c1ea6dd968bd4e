"""Stacks of stochastic layers: the hierarchical q(z|x) and p(z) are products of their Gaussian layers."""

import pytest
import torch
from torch.distributions import Independent, Normal

from vaekit.distributions.hierarchy import (
    ChainDistribution,
    ConditionalGaussian,
    HierarchicalEncoder,
    HierarchicalPrior,
)
from vaekit.nets import NetSpec, build_decoder, build_encoder

SPEC = NetSpec(hidden=(7,), activation="tanh")
SIZES = (3, 2)  # D_1, D_2


def gaussian_layer(d_in, d_out):
    return ConditionalGaussian(build_encoder("mlp", (d_in,), 2 * d_out, SPEC), d_out)


def encoder_and_prior():
    torch.manual_seed(0)
    enc = HierarchicalEncoder(build_encoder("mlp", (5,), 2 * SIZES[0], SPEC), [gaussian_layer(3, 2)], SIZES)
    prior = HierarchicalPrior([ConditionalGaussian(build_decoder("mlp", 2, (6,), SPEC), 3)], SIZES)
    return enc, prior


def gaussian_log_density(v, out):
    """log N(v; mean, exp(log_var)) summed over the last axis, from a body output (mean, log_var)."""
    mean, log_var = out.chunk(2, -1)
    return (-0.5 * ((v - mean) ** 2 / log_var.exp() + log_var + torch.log(torch.tensor(2 * torch.pi)))).sum(-1)


def test_posterior_log_prob_is_the_sum_of_its_layers_by_hand():
    enc, _ = encoder_and_prior()
    x = torch.rand(4, 5)
    z = torch.randn(6, 4, 5)  # [k, B, D_1 + D_2]
    z1, z2 = z[..., :3], z[..., 3:]
    by_hand = gaussian_log_density(z1, enc.body(x)) + gaussian_log_density(
        z2, enc.layers[0].body(z1.reshape(-1, 3)).reshape(6, 4, 4)
    )
    q = enc(x)
    assert q.batch_shape == (4,) and q.event_shape == (5,)
    torch.testing.assert_close(q.log_prob(z), by_hand)


def test_prior_log_prob_is_the_top_normal_plus_the_conditional_by_hand():
    _, prior = encoder_and_prior()
    z = torch.randn(6, 4, 5)
    z1, z2 = z[..., :3], z[..., 3:]
    top = Independent(Normal(torch.zeros(2), torch.ones(2)), 1).log_prob(z2)
    cond = gaussian_log_density(z1, prior.layers[0].body(z2.reshape(-1, 2)).reshape(6, 4, 6))
    p = prior()
    assert p.batch_shape == () and p.event_shape == (5,)
    torch.testing.assert_close(p.log_prob(z), top + cond)


def test_ancestral_draws_have_the_right_shapes_and_layer_distributions():
    enc, prior = encoder_and_prior()
    x = torch.rand(4, 5)
    assert enc(x).rsample((7,)).shape == (7, 4, 5)
    assert enc(x).sample().shape == (4, 5)
    z = prior().sample((20000,))
    assert z.shape == (20000, 5)
    # the top layer is N(0, I); the bottom one given it is the conditional's Gaussian
    torch.testing.assert_close(z[:, 3:].mean(0), torch.zeros(2), atol=0.05, rtol=0)
    torch.testing.assert_close(z[:, 3:].std(0), torch.ones(2), atol=0.05, rtol=0)
    eps = (z[:, :3] - prior.layers[0](z[:, 3:]).mean) / prior.layers[0](z[:, 3:]).stddev
    torch.testing.assert_close(eps.std(0), torch.ones(3), atol=0.05, rtol=0)


def test_rsample_is_reparameterised_through_every_layer():
    enc, prior = encoder_and_prior()
    x = torch.rand(4, 5)
    z = enc(x).rsample((3,))
    (z**2).sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    z = prior().rsample((3,))
    (z**2).sum().backward()
    for name, p in prior.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_the_log_density_of_a_draw_matches_its_noise():
    """Ancestral sampling draws from the density log_prob evaluates: for z = (mu1 + s1 e1, mu2(z1) + s2(z1) e2),
    log q(z) = sum_l log N(e_l; 0, I) - sum log s_l."""
    enc, _ = encoder_and_prior()
    x = torch.rand(4, 5)
    q = enc(x)
    torch.manual_seed(3)
    z = q.rsample()
    torch.manual_seed(3)
    q1 = enc._first(x)
    e1 = torch.randn(4, 3)
    z1 = q1.mean + q1.stddev * e1
    q2 = enc.layers[0](z1)
    e2 = torch.randn(4, 2)
    torch.testing.assert_close(z, torch.cat([z1, q2.mean + q2.stddev * e2], -1))
    std_normal = Independent(Normal(torch.zeros(5), torch.ones(5)), 1)
    expected = std_normal.log_prob(torch.cat([e1, e2], -1)) - q1.stddev.log().sum(-1) - q2.stddev.log().sum(-1)
    torch.testing.assert_close(q.log_prob(z), expected)


def test_base_posterior_is_the_ancestral_mean_pass():
    enc, _ = encoder_and_prior()
    x = torch.rand(4, 5)
    g = enc.base_posterior(x)
    q1 = enc._first(x)
    q2 = enc.layers[0](q1.mean)
    torch.testing.assert_close(g.mean, torch.cat([q1.mean, q2.mean], -1))
    torch.testing.assert_close(g.stddev, torch.cat([q1.stddev, q2.stddev], -1))


def test_a_chain_needs_one_link_per_layer_after_the_first():
    root = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
    with pytest.raises(ValueError, match="needs 1 links"):
        ChainDistribution(root, [], (2, 3))


def test_encoder_contract_moments_match_many_draws_and_params_round_trip():
    enc, _ = encoder_and_prior()
    x = torch.rand(3, 5)
    with torch.no_grad():
        phi = enc.variational_params(x)
        q = enc.posterior(*phi)
        assert torch.allclose(q.log_prob(z := q.sample()), enc(x).log_prob(z))  # forward = posterior(phi(x))
        mean, log_var = enc.moments(*phi)
        draws = q.sample((20000,))  # [S, B, D]
    assert not enc.exact_moments
    d1 = phi[0].shape[-1]
    torch.testing.assert_close(mean[:, :d1], phi[0])  # the bottom layer's moments are exact
    torch.testing.assert_close(log_var[:, :d1], phi[1])
    sd = draws.std(0)
    assert ((mean - draws.mean(0)).abs() <= 5 * sd * (1 / 1024 + 1 / 20000) ** 0.5).all()
    assert ((log_var.exp() / draws.var(0)).log().abs() < 0.35).all()
    again = enc.moments(*(p[:1] for p in phi))  # an example's moments do not depend on its batch
    torch.testing.assert_close(again[0], mean[:1])
    m0, lv0 = enc.params_from_gaussian(mean, log_var)
    assert m0.shape == phi[0].shape and torch.equal(m0, mean[:, :d1]) and torch.equal(lv0, log_var[:, :d1])
