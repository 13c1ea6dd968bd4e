"""Likelihoods and priors: proper distributions with one log-probability per example."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal

from vaekit.config import ModelConfig
from vaekit.distributions import (
    BernoulliLikelihood,
    GaussianLikelihood,
    StandardNormalPrior,
    bits_per_dim,
    build_likelihood,
)


def test_bernoulli_log_prob_matches_torch_and_sums_over_pixels():
    logits = torch.randn(4, 1, 3, 3) * 5
    x = torch.bernoulli(torch.rand(4, 1, 3, 3))
    ours = BernoulliLikelihood((1, 3, 3))(logits).log_prob(x)
    ref = Independent(Bernoulli(logits=logits), 3).log_prob(x)
    assert ours.shape == (4,)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-6)
    # normalised: the 2^9 binary images of one example sum to probability one
    grid = torch.tensor([[(i >> b) & 1 for b in range(9)] for i in range(512)], dtype=torch.float32)
    lp = BernoulliLikelihood((9,))(logits[:1].reshape(1, 9).expand(512, 9)).log_prob(grid)
    assert torch.logsumexp(lp, 0).item() == pytest.approx(0.0, abs=1e-5)


def test_gaussian_variances():
    cfg = ModelConfig(likelihood="gaussian", variance="pixel")
    lik = build_likelihood((2, 3, 3), cfg)
    assert lik.param_shape == (4, 3, 3)
    params = torch.randn(5, 4, 3, 3)
    x = torch.randn(5, 2, 3, 3)
    mean, log_std = params.chunk(2, dim=1)
    ref = Normal(mean, log_std.exp()).log_prob(x).sum((1, 2, 3))
    torch.testing.assert_close(lik(params).log_prob(x), ref)
    glob = GaussianLikelihood((3,), variance="global")
    assert [n for n, _ in glob.named_parameters()] == ["log_std"]
    fixed = GaussianLikelihood((3,), variance="fixed", fixed_std=0.5)
    assert not list(fixed.parameters())
    lp = fixed(torch.zeros(1, 3)).log_prob(torch.zeros(1, 3))
    assert lp.item() == pytest.approx(-3 * (math.log(0.5) + 0.5 * math.log(2 * math.pi)), abs=1e-5)


def test_prior_is_standard_normal_and_moves_with_module():
    prior = StandardNormalPrior(4)
    p = prior()
    assert p.event_shape == (4,) and p.batch_shape == ()
    assert p.log_prob(torch.zeros(4)).item() == pytest.approx(-2 * math.log(2 * math.pi), abs=1e-5)
    assert set(dict(prior.named_buffers())) == {"loc", "scale"}


def test_bits_per_dim():
    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0, abs=1e-9)
