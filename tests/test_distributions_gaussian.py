"""The diagonal Gaussian and the sampling helpers of the objectives."""

import math

import pytest
import torch

from vaekit.distributions import diagonal_gaussian, distribution_mean, rsample_and_log_prob
from vaekit.flows import FlowDistribution
from vaekit.flows.latent import PRIOR_FLOWS


def test_diagonal_gaussian_moments_and_density():
    mean, log_var = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.0, math.log(4.0)]])
    q = diagonal_gaussian(mean, log_var)
    assert q.batch_shape == (1,) and q.event_shape == (2,)
    torch.testing.assert_close(q.stddev, torch.tensor([[1.0, 2.0]]))
    expected = -math.log(2 * math.pi) - math.log(2.0)  # log N(mean; mean, diag(1, 4))
    assert q.log_prob(mean).item() == pytest.approx(expected, abs=1e-6)


def test_rsample_and_log_prob_of_a_plain_distribution_is_rsample_then_log_prob():
    q = diagonal_gaussian(torch.zeros(3, 2), torch.zeros(3, 2))
    torch.manual_seed(0)
    z, lp = rsample_and_log_prob(q, (4,))
    torch.manual_seed(0)
    z2 = q.rsample((4,))
    assert torch.equal(z, z2) and torch.equal(lp, q.log_prob(z2))


def test_rsample_and_log_prob_of_a_flow_uses_its_one_pass():
    torch.manual_seed(0)
    base = diagonal_gaussian(torch.zeros(2), torch.zeros(2))
    p = FlowDistribution(base, PRIOR_FLOWS["realnvp"](2, 2, 8, 1))
    torch.manual_seed(1)
    z, lp = rsample_and_log_prob(p, (5,))
    torch.manual_seed(1)
    z2, lp2 = p.rsample_and_log_prob((5,))
    assert torch.equal(z, z2) and torch.equal(lp, lp2)
    torch.testing.assert_close(lp, p.log_prob(z), atol=1e-5, rtol=1e-5)  # the same density either way


def test_distribution_mean_falls_back_to_a_sample():
    q = diagonal_gaussian(torch.ones(2, 3), torch.zeros(2, 3))
    assert torch.equal(distribution_mean(q), torch.ones(2, 3))

    class NoMean(torch.distributions.Distribution):
        arg_constraints: dict = {}

        @property
        def mean(self):
            raise NotImplementedError

        def sample(self, sample_shape=()):
            return torch.full((2,), 7.0)

    assert torch.equal(distribution_mean(NoMean(validate_args=False)), torch.full((2,), 7.0))


def test_diagonal_gaussian_of_bf16_parameters_is_float32():
    """A posterior whose parameters came out of bf16 autocast draws and scores in float32."""
    mean, log_var = torch.randn(3, 2).bfloat16(), torch.randn(3, 2).bfloat16()
    q = diagonal_gaussian(mean, log_var)
    z = q.rsample()
    assert z.dtype == q.log_prob(z).dtype == torch.float32
    torch.testing.assert_close(q.log_prob(z), diagonal_gaussian(mean.float(), log_var.float()).log_prob(z))
