"""The likelihood contract: declared attributes per class, their defaults, and bits per dimension."""

import math

import pytest
import torch

from vaekit.distributions import (
    LIKELIHOODS,
    BernoulliLikelihood,
    CategoricalLikelihood,
    Encoder,
    GaussianLikelihood,
    Likelihood,
    LogisticMixtureLikelihood,
    PixelCNNLikelihood,
    bits_per_dim,
    build_likelihood,
    image_bits_per_dim,
)
from vaekit.distributions.base import N_LEVELS


def test_base_declares_the_contract_with_safe_defaults():
    assert (Likelihood.discrete, Likelihood.activation_factor, Likelihood.factorised) == (True, 1, False)
    assert N_LEVELS == 256
    with pytest.raises(NotImplementedError):
        Encoder().base_posterior(torch.zeros(1, 2))


@pytest.mark.parametrize(
    "cls, discrete, factorised",
    [
        (BernoulliLikelihood, True, True),
        (GaussianLikelihood, False, True),
        (LogisticMixtureLikelihood, True, False),
        (CategoricalLikelihood, True, False),
        (PixelCNNLikelihood, True, False),
    ],
)
def test_each_likelihood_declares_its_attributes(cls, discrete, factorised):
    assert issubclass(cls, Likelihood)
    assert (cls.discrete, cls.factorised) == (discrete, factorised)


def test_factorised_means_per_dimension_terms_sum_to_the_log_prob():
    """``factorised``: p(x|z) is an Independent whose base_dist gives the per-dimension terms."""
    for name in LIKELIHOODS:
        kwargs = dict(channels=2, layers=1, cond_channels=1) if name == "pixelcnn" else {}
        lik = build_likelihood(name, (1, 3, 3), **kwargs)
        params = torch.randn(2, *lik.param_shape)
        px = lik(params)
        x = torch.randint(0, 2, (2, 1, 3, 3)).float()
        if lik.factorised:
            terms = px.base_dist.log_prob(x)
            assert terms.shape == (2, 1, 3, 3)
            torch.testing.assert_close(terms.flatten(1).sum(1), px.log_prob(x))
        else:
            assert not isinstance(px, torch.distributions.Independent)


@pytest.mark.parametrize("C, layers, kernel", [(1, 2, 3), (1, 6, 3), (3, 1, 7)])
def test_activation_factor_counts_the_network_over_x(C, layers, kernel):
    """The PixelCNN's factor covers the NCHW pass's per-position maps (all layers' conditioning,
    a layer's stacks, the head) and at least the buffers the channels-last pass keeps."""
    assert BernoulliLikelihood((1, 4, 4)).activation_factor == 1
    F, cond = 6 * C, 3
    pix = PixelCNNLikelihood((C, 8, 8), channels=F, layers=layers, kernel=kernel, cond_channels=cond)
    assert pix.activation_factor >= (cond + 4 * F * layers + 8 * F + C) / C
    B = 5
    with torch.no_grad():
        pix(torch.randn(B, cond, 8, 8)).log_prob(torch.rand(B, C, 8, 8).round())
    kept = sum(t.numel() for t in pix.net._scratch.values() if torch.is_tensor(t))
    assert 0 < kept < pix.activation_factor * B * C * 64 / 2


def test_bits_per_dim():
    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0, abs=1e-9)


def test_image_bits_per_dim_adds_the_bin_width_for_densities_only():
    assert image_bits_per_dim(10 * math.log(2), 10, discrete=True) == pytest.approx(1.0)
    # a density of 1 on [0, 1]^D is the uniform pmf over 256^D values: 8 bits per dimension
    assert image_bits_per_dim(0.0, 10, discrete=False) == pytest.approx(8.0)
    assert image_bits_per_dim(0.0, 10, discrete=False, levels=2) == pytest.approx(1.0)


def test_bits_per_dim_are_defined_for_binary_and_8bit_data_only():
    from vaekit.distributions import BPD_LEVELS, data_bits_per_dim

    assert BPD_LEVELS == (2, 256)
    for levels in BPD_LEVELS:
        for discrete in (True, False):
            assert data_bits_per_dim(3.0, 10, discrete, levels) == pytest.approx(
                image_bits_per_dim(3.0, 10, discrete, levels)
            )
    for levels in (None, 17):  # continuous values; the digits' 17 levels
        assert data_bits_per_dim(-4.0, 10, False, levels) is None
        assert data_bits_per_dim(4.0, 10, True, levels) is None
