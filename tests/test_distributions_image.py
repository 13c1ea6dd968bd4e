"""8-bit image likelihoods: normalisation, brute-force agreement, edge cases, bits/dim rule."""

import math

import numpy as np
import pytest
import torch

from vaekit.config import ModelConfig
from vaekit.distributions import (
    Categorical256,
    CategoricalLikelihood,
    DiscretizedLogisticMixture,
    LogisticMixtureLikelihood,
    build_likelihood,
    discretized_logistic_log_prob,
    distribution_mean,
    image_bits_per_dim,
    levels_of,
)
from vaekit.errors import ConfigError

LEVELS = torch.arange(256, dtype=torch.float64) / 255


def _random_mixture(B, M, C, H, W, coupled, dtype=torch.float64):
    logits = torch.randn(B, M, H, W, dtype=dtype) if coupled else torch.randn(B, M, C, H, W, dtype=dtype)
    means = 1.5 * torch.randn(B, M, C, H, W, dtype=dtype)  # some outside [-1, 1]: edge bins matter
    log_scales = torch.empty(B, M, C, H, W, dtype=dtype).uniform_(-6, 1)
    coeffs = torch.tanh(torch.randn(B, M, C * (C - 1) // 2, H, W, dtype=dtype)) if coupled and C > 1 else None
    return logits, means, log_scales, coeffs


def test_grey_mixture_sums_to_one_over_256_values():
    for trial in range(5):
        logits, means, log_s, _ = _random_mixture(1, 4, 1, 1, 1, coupled=True)
        d = DiscretizedLogisticMixture(
            logits.expand(256, -1, -1, -1), means.expand(256, -1, -1, -1, -1), log_s.expand(256, -1, -1, -1, -1)
        )
        p = d.log_prob(LEVELS.view(256, 1, 1, 1)).exp()
        assert p.sum().item() == pytest.approx(1.0, abs=1e-10)
        assert (p > 0).all()


def test_coupled_two_channel_mixture_sums_to_one_and_sampler_matches():
    """The joint over all 256^2 values of a coupled 2-channel pixel sums to 1; samples match it.

    (Three channels would mean 256^3 terms; the 3-channel coupling is checked against the
    brute-force formula below, whose normalisation follows channel by channel.)
    """
    logits, means, log_s, coeffs = _random_mixture(1, 3, 2, 1, 1, coupled=True)
    log_s = log_s.clamp(min=-3)  # broad enough for a Monte-Carlo check below
    x = torch.cartesian_prod(LEVELS, LEVELS)  # [65536, 2]
    n = x.shape[0]
    exp = lambda t: t.expand(n, *t.shape[1:])  # noqa: E731
    p = DiscretizedLogisticMixture(exp(logits), exp(means), exp(log_s), exp(coeffs)).log_prob(x.view(n, 2, 1, 1)).exp()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-9)
    s = DiscretizedLogisticMixture(logits, means, log_s, coeffs).sample((3000,)).view(3000, 2)
    assert torch.equal(levels_of(s).double() / 255, s)  # on the k/255 grid
    for f in (lambda v: v[:, 0], lambda v: v[:, 1], lambda v: v[:, 0] * v[:, 1]):
        exact = (p * f(x)).sum().item()
        assert abs(f(s).mean().item() - exact) < 0.035  # ~4 standard errors of a [0,1] mean at n=3000


def _sigmoid(t):
    return 1 / (1 + math.exp(-t)) if t > -700 else 0.0


def _bin_prob(k, mu, s):
    """Brute force: probability of level k under a logistic(mu, s) on [-1, 1], edges included.

    In the right tail the difference of upper-tail probabilities is taken (no cancellation).
    """
    y = 2 * k / 255 - 1
    a = math.inf if k == 255 else (y + 1 / 255 - mu) / s
    b = -math.inf if k == 0 else (y - 1 / 255 - mu) / s
    if b > 0:
        return _sigmoid(-b) - (0.0 if a == math.inf else _sigmoid(-a))
    return (1.0 if a == math.inf else _sigmoid(a)) - (0.0 if b == -math.inf else _sigmoid(b))


def test_coupled_logistic_agrees_with_brute_force():
    B, M, C, H, W = 2, 3, 3, 2, 2
    logits, means, log_s, coeffs = _random_mixture(B, M, C, H, W, coupled=True)
    log_s = log_s.clamp(min=-4)  # brute force in plain doubles without the stable form
    x = torch.randint(0, 256, (B, C, H, W)).double() / 255
    x[0, :, 0, 0] = torch.tensor([0.0, 1.0, 0.0])  # both edges
    got = DiscretizedLogisticMixture(logits, means, log_s, coeffs).log_prob(x)
    for b in range(B):
        total = 0.0
        for i in range(H):
            for j in range(W):
                k = [round(x[b, c, i, j].item() * 255) for c in range(C)]
                y = [2 * kc / 255 - 1 for kc in k]
                w = torch.softmax(logits[b, :, i, j], 0)
                p = 0.0
                for m in range(M):
                    a = coeffs[b, m, :, i, j].tolist()  # pairs (1,0), (2,0), (2,1)
                    mus = [
                        means[b, m, 0, i, j].item(),
                        means[b, m, 1, i, j].item() + a[0] * y[0],
                        means[b, m, 2, i, j].item() + a[1] * y[0] + a[2] * y[1],
                    ]
                    pm = w[m].item()
                    for c in range(C):
                        pm *= _bin_prob(k[c], mus[c], math.exp(log_s[b, m, c, i, j].item()))
                    p += pm
                total += math.log(p)
        assert got[b].item() == pytest.approx(total, rel=1e-9, abs=1e-9)


def test_independent_logistic_agrees_with_brute_force_and_mean_is_exact():
    B, M, C, H, W = 2, 2, 3, 2, 1
    logits, means, log_s, _ = _random_mixture(B, M, C, H, W, coupled=False)
    log_s = log_s.clamp(min=-4)
    x = torch.randint(0, 256, (B, C, H, W)).double() / 255
    d = DiscretizedLogisticMixture(logits, means, log_s)
    got = d.log_prob(x)
    mean = d.mean
    for b in range(B):
        total = 0.0
        for c in range(C):
            for i in range(H):
                w = torch.softmax(logits[b, :, c, i, 0], 0)
                pmf = [
                    sum(
                        w[m].item() * _bin_prob(k, means[b, m, c, i, 0].item(), math.exp(log_s[b, m, c, i, 0].item()))
                        for m in range(M)
                    )
                    for k in range(256)
                ]
                total += math.log(pmf[round(x[b, c, i, 0].item() * 255)])
                assert sum(pmf) == pytest.approx(1.0, abs=1e-9)
                assert mean[b, c, i, 0].item() == pytest.approx(sum(k / 255 * q for k, q in enumerate(pmf)), abs=1e-9)
        assert got[b].item() == pytest.approx(total, rel=1e-9)


def test_edge_bins_take_the_tails():
    mu, log_s = torch.tensor(0.3), torch.tensor(-1.0)
    s = math.exp(-1.0)
    p0 = discretized_logistic_log_prob(torch.tensor(0), mu, log_s).exp().item()
    p255 = discretized_logistic_log_prob(torch.tensor(255), mu, log_s).exp().item()
    assert p0 == pytest.approx(_sigmoid((-1 + 1 / 255 - 0.3) / s), rel=1e-5)
    assert p255 == pytest.approx(1 - _sigmoid((1 - 1 / 255 - 0.3) / s), rel=1e-5)
    # a component far beyond the range puts (almost) all its mass on the edge bin
    far = discretized_logistic_log_prob(torch.tensor([0, 255]), torch.tensor(5.0), torch.tensor(-3.0)).exp()
    assert far[1].item() == pytest.approx(1.0, abs=1e-6) and far[0].item() < 1e-30


def test_extreme_parameters_stay_finite_with_finite_gradients():
    means = torch.tensor([-30.0, 0.0, 30.0, 0.999]).view(1, 4, 1, 1, 1).requires_grad_()
    log_s = torch.tensor([-20.0, -20.0, 5.0, -7.0]).view(1, 4, 1, 1, 1).requires_grad_()
    logits = torch.zeros(1, 4, 1, 1, 1)
    for k in (0, 1, 128, 254, 255):
        x = torch.full((1, 1, 1, 1), k / 255)
        lp = DiscretizedLogisticMixture(logits, means, log_s).log_prob(x)
        g_mu, g_s = torch.autograd.grad(lp.sum(), (means, log_s))
        assert torch.isfinite(lp).all() and torch.isfinite(g_mu).all() and torch.isfinite(g_s).all()


def test_coupled_colour_mean_is_not_closed_form_and_falls_back_to_a_sample():
    logits, means, log_s, coeffs = _random_mixture(2, 3, 3, 4, 4, coupled=True, dtype=torch.float32)
    d = DiscretizedLogisticMixture(logits, means, log_s, coeffs)
    with pytest.raises(NotImplementedError):
        d.mean
    x = distribution_mean(d)
    assert x.shape == (2, 3, 4, 4) and torch.equal(levels_of(x).float() / 255, x)


def test_categorical_agrees_with_brute_force():
    B, C, H, W = 2, 3, 2, 2
    logits = torch.randn(B, 256, C, H, W, dtype=torch.float64)
    x = torch.randint(0, 256, (B, C, H, W)).double() / 255
    d = Categorical256(logits)
    got = d.log_prob(x)
    for b in range(B):
        total = 0.0
        for c in range(C):
            for i in range(H):
                for j in range(W):
                    row = logits[b, :, c, i, j].tolist()
                    k = round(x[b, c, i, j].item() * 255)
                    total += row[k] - math.log(sum(math.exp(v) for v in row))
        assert got[b].item() == pytest.approx(total, rel=1e-10)
    mean = (torch.softmax(logits, 1) * LEVELS.view(1, 256, 1, 1, 1)).sum(1)
    assert torch.allclose(d.mean, mean)
    s = d.sample()
    assert s.shape == (B, C, H, W) and torch.equal(levels_of(s).double() / 255, s)


def test_likelihood_modules_shapes_and_registry():
    assert build_likelihood("logistic_mixture", (3, 32, 32), n_mix=10).param_shape == (100, 32, 32)
    assert build_likelihood("logistic_mixture", (1, 28, 28), n_mix=10).param_shape == (30, 28, 28)
    assert build_likelihood("categorical", (3, 8, 8)).param_shape == (768, 8, 8)
    for lik in (LogisticMixtureLikelihood((3, 5, 4), 2), CategoricalLikelihood((3, 5, 4))):
        params = torch.randn(6, *lik.param_shape, dtype=torch.bfloat16)
        d = lik(params)
        x = torch.randint(0, 256, (6, 3, 5, 4)).float() / 255
        lp = d.log_prob(x)
        assert lp.shape == (6,) and lp.dtype == torch.float32 and d.batch_shape == (6,)
        assert d.event_shape == (3, 5, 4) and d.sample().shape == (6, 3, 5, 4)
        assert lik.discrete
    with pytest.raises(ConfigError):
        build_likelihood("logistic_mixture", (784,))
    with pytest.raises(ConfigError):
        build_likelihood("logistic_mixture", (1, 8, 8), n_mix=0)


def test_bits_per_dim_rule():
    D = 3 * 32 * 32
    # a uniform pmf over 256 levels is 8 bits/dim; so is the uniform density on [0, 1]^D
    assert image_bits_per_dim(D * math.log(256), D, discrete=True) == pytest.approx(8.0)
    assert image_bits_per_dim(0.0, D, discrete=False) == pytest.approx(8.0)
    assert image_bits_per_dim(D * math.log(2), D, discrete=True, levels=2) == pytest.approx(1.0)
    nll = torch.tensor([0.0, -D * math.log(2)])  # densities above 1 give negative nats
    assert torch.allclose(image_bits_per_dim(nll, D, discrete=False), torch.tensor([8.0, 7.0], dtype=nll.dtype))
    # the correction is what binning does: a smooth Gaussian density on [0,1] vs its pmf on 256 bins
    mu, sigma = 0.4, 0.08
    edges = torch.arange(257, dtype=torch.float64) / 256
    cdf = torch.distributions.Normal(mu, sigma).cdf(edges)
    pmf = cdf[1:] - cdf[:-1]
    centres = (torch.arange(256, dtype=torch.float64) + 0.5) / 256
    dens = torch.distributions.Normal(mu, sigma).log_prob(centres).exp()
    keep = pmf > 1e-12
    # expected nll under the pmf: discrete nats vs corrected density nats agree closely
    discrete = -(pmf[keep] * pmf[keep].log()).sum() / pmf[keep].sum()
    density = -(pmf[keep] * dens[keep].log()).sum() / pmf[keep].sum()
    assert image_bits_per_dim(density.item(), 1, discrete=False) == pytest.approx(
        image_bits_per_dim(discrete.item(), 1, discrete=True), abs=1e-3
    )


def test_every_8bit_likelihood_trains_on_digits():
    """conv VAE with logistic mixture and categorical likelihoods lowers its loss on 8-bit digits."""
    from sklearn.datasets import load_digits

    from vaekit.models.vae import build_vae

    x = torch.from_numpy(np.round(load_digits().images / 16 * 255) / 255).float().unsqueeze(1)[:128]
    for lik in ("logistic_mixture", "categorical"):
        torch.manual_seed(0)
        cfg = ModelConfig(encoder="conv", decoder="conv", channels=[8, 16], latent_dim=4, likelihood=lik, n_mix=2)
        model = build_vae(cfg, (1, 8, 8))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)

        def loss_on_all():
            torch.manual_seed(1)  # the same posterior noise before and after
            with torch.no_grad():
                return model.loss(x)["loss"].mean().item()

        before = loss_on_all()
        for step in range(15):
            loss = model.loss(x[(step % 2) * 64 : (step % 2 + 1) * 64])["loss"].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        after = loss_on_all()
        assert after < before - 5, (lik, before, after)
