"""Bernoulli and Gaussian likelihoods, and the likelihood registry."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal

from vaekit.distributions import BernoulliLikelihood, GaussianLikelihood, build_likelihood


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
    lik = build_likelihood("gaussian", (2, 3, 3), variance="pixel")
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


def test_registry_takes_explicit_keyword_arguments():
    from vaekit.distributions import LIKELIHOODS
    from vaekit.errors import ConfigError

    assert set(LIKELIHOODS) == {"bernoulli", "gaussian", "logistic_mixture", "categorical", "pixelcnn"}
    fixed = build_likelihood("gaussian", (3,), variance="fixed", fixed_std=2.0)
    assert fixed.log_std.item() == pytest.approx(math.log(2.0))
    with pytest.raises(TypeError):
        build_likelihood("bernoulli", (3,), variance="fixed")  # not an argument of the Bernoulli likelihood
    with pytest.raises(ConfigError, match="unknown likelihood 'bernouli' \\(did you mean 'bernoulli'\\?\\)"):
        build_likelihood("bernouli", (3,))
    with pytest.raises(ConfigError, match="unknown model.variance 'learned'"):
        GaussianLikelihood((3,), variance="learned")


def test_binary_is_declared_by_each_likelihood_and_answerable_before_building():
    """Only likelihoods over x in {0, 1} are ``binary`` (their data are binarised); the PixelCNN's
    follows its output head."""
    from vaekit.distributions import LIKELIHOODS

    expected = {"bernoulli": True, "gaussian": False, "logistic_mixture": False, "categorical": False}
    for name, binary in expected.items():
        assert LIKELIHOODS[name].binary_for() is binary
        assert build_likelihood(name, (1, 4, 4)).binary is binary
    for head, binary in (("bernoulli", True), ("logistic_mixture", False), ("categorical", False)):
        assert LIKELIHOODS["pixelcnn"].binary_for(output=head) is binary
        lik = build_likelihood("pixelcnn", (1, 4, 4), output=head, channels=4, layers=1, cond_channels=2)
        assert lik.binary is binary


@pytest.mark.parametrize(
    "make", [lambda: BernoulliLikelihood((1, 2, 2)), lambda: GaussianLikelihood((1, 2, 2), "pixel")]
)
def test_likelihoods_of_bf16_decoder_outputs_are_float32(make):
    """Parameters that came out of a bf16-autocast decoder give float32 log-probabilities: those of the
    same values in float32."""
    lik = make()
    params = torch.randn(3, *lik.param_shape).bfloat16()
    x = torch.randint(0, 2, (3, 1, 2, 2)).float()
    out = lik(params).log_prob(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, lik(params.float()).log_prob(x))


@pytest.mark.parametrize("std", [0.2, 1e-3])
def test_a_dequantised_gaussian_bounds_the_probability_of_each_level(std):
    """log N(y) - log 256 at y = (255 k/255 + u) / 256 is, in expectation over u, at most log P(k), the
    Gaussian's mass on the bin [k, k + 1) / 256 (Jensen), for a wide Gaussian and for one narrower
    than a bin, where the density at the level itself exceeds any probability."""
    lik = GaussianLikelihood((3,), variance="fixed", fixed_std=std, dequantize=True)
    assert lik.discrete and not GaussianLikelihood((3,), variance="fixed").discrete
    k = torch.tensor([0.0, 100.0, 255.0])
    mean = (k + 0.5) / 256  # each Gaussian centred in its level's bin
    p = lik(mean[None].double())
    torch.manual_seed(0)
    draws = torch.stack([p.base_dist.log_prob(k[None] / 255) for _ in range(4000)])[:, 0]  # [4000, 3]
    normal = Normal(mean.double(), std)
    exact = (normal.cdf((k + 1) / 256) - normal.cdf(k / 256)).log()  # log P(k) per dimension
    assert (draws.mean(0) <= exact + 4 * draws.std(0) / math.sqrt(4000)).all()
    assert not torch.equal(p.log_prob(k[None] / 255), p.log_prob(k[None] / 255))  # a fresh u per call
    if std < 1 / 256:  # the density at the level exceeds 1 per bin width: no probability
        assert (normal.log_prob(k / 255) - math.log(256) > 0).any() and (exact <= 0).all()
    else:  # a smooth density: the bound is tight
        assert (exact - draws.mean(0)).abs().max() < 1e-3


def test_a_dequantised_gaussian_samples_levels_and_its_mean_maps_bin_centres_to_their_levels():
    """Draws land on the levels k/255 of their bins; a Gaussian centred on bin k has mean k/255."""
    lik = GaussianLikelihood((4,), variance="fixed", fixed_std=0.05, dequantize=True)
    k = torch.tensor([0.0, 17.0, 128.0, 255.0])
    p = lik(((k + 0.5) / 256)[None])
    torch.testing.assert_close(p.mean, k[None] / 255)
    draws = p.sample((50,))
    assert draws.shape == (50, 1, 4) and torch.equal(torch.round(draws * 255) / 255, draws)
    assert draws.min() >= 0 and draws.max() <= 1
