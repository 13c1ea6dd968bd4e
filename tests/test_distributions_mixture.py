"""The mixture-of-Gaussians density shared by the EM model and the VAE priors."""

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, MultivariateNormal, Normal

from vaekit.distributions.mixture import (
    MixtureOfGaussians,
    component_log_prob,
    mixture_log_prob,
    precision_cholesky,
)
from vaekit.errors import ConfigError, VaekitError


def test_distribution_equals_torch_mixture_same_family():
    torch.manual_seed(2)
    logits, means, log_std = torch.randn(4), torch.randn(4, 3), 0.3 * torch.randn(4, 3)
    ours = MixtureOfGaussians(logits, means, (-log_std).exp(), "diag")
    ref = MixtureSameFamily(Categorical(logits=logits), Independent(Normal(means, log_std.exp()), 1))
    z = torch.randn(5, 7, 3)
    torch.testing.assert_close(ours.log_prob(z), ref.log_prob(z))
    assert ours.sample((2, 6)).shape == (2, 6, 3)


def test_full_covariance_equals_torch_multivariate_normal_mixture():
    torch.manual_seed(0)
    K, D = 3, 4
    a = torch.randn(K, D, D, dtype=torch.float64)
    cov = a @ a.mT + 0.5 * torch.eye(D, dtype=torch.float64)
    means, logits = torch.randn(K, D, dtype=torch.float64), torch.randn(K, dtype=torch.float64)
    ours = MixtureOfGaussians(logits, means, precision_cholesky(cov, "full"), "full")
    ref = MixtureSameFamily(Categorical(logits=logits), MultivariateNormal(means, covariance_matrix=cov))
    x = torch.randn(6, D, dtype=torch.float64)
    torch.testing.assert_close(ours.log_prob(x), ref.log_prob(x))
    torch.testing.assert_close(ours.responsibilities(x).sum(-1), torch.ones(6, dtype=torch.float64))


def test_spherical_is_diag_with_equal_scales():
    torch.manual_seed(1)
    x, means = torch.randn(5, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    prec = torch.tensor([0.5, 2.0], dtype=torch.float64)
    sph = component_log_prob(x, means, prec, "spherical")
    diag = component_log_prob(x, means, prec[:, None].expand(2, 3), "diag")
    torch.testing.assert_close(sph, diag)
    log_w = torch.log(torch.tensor([0.25, 0.75], dtype=torch.float64))
    torch.testing.assert_close(mixture_log_prob(x, log_w, means, prec, "spherical"), torch.logsumexp(sph + log_w, -1))
    # one component, unit variance: log N(0; 0, I) = -D/2 log 2 pi
    lp = component_log_prob(torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1), "spherical")
    assert lp.item() == pytest.approx(-1.5 * math.log(2 * math.pi))


def test_bad_covariances_are_one_line_errors():
    with pytest.raises(ConfigError, match="covariance type 'tied'"):
        MixtureOfGaussians(torch.zeros(2), torch.zeros(2, 3), torch.ones(2, 3), "tied")
    with pytest.raises(VaekitError, match="not positive"):
        precision_cholesky(torch.tensor([[1.0, -1.0]]), "diag")


@pytest.mark.parametrize("covariance_type, n", [("diag", 4096), ("spherical", 64)])
def test_component_densities_keep_float32_products_under_bf16_autocast(covariance_type, n):
    """|x|^2 - 2 mu.x + |mu|^2 cancels: under bf16 autocast (mixed-precision training of a mixture or Vamp
    prior) the densities are still the float32 ones, also where they are computed as matrix products."""
    K, D = 32, 16
    x, means = 3 + torch.randn(n, D), 3 + torch.randn(K, D)
    prec = torch.rand(K, D) + 0.5 if covariance_type == "diag" else torch.rand(K) + 0.5
    ref = component_log_prob(x, means, prec, covariance_type)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = component_log_prob(x, means, prec, covariance_type)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-3)
