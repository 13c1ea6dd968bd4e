"""The variational objectives obey their mathematics (Kingma & Welling 2014; Burda et al. 2015)."""

import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from vaekit.config import build_config
from vaekit.distributions import diagonal_gaussian
from vaekit.inference import importance_sampled_log_prob
from vaekit.models import build_model
from vaekit.objectives import elbo_terms, free_bits_kl, iwae_bound, kl_weight, vae_loss


def small_vae(**over):
    sets = {"hidden": [32], "latent_dim": 4}
    sets.update(over)
    cfg = build_config("dense-mnist", overrides=sets)
    return build_model(cfg, (1, 6, 6))


def binary_data(n=64):
    g = torch.Generator().manual_seed(1)
    return torch.bernoulli(torch.rand(n, 1, 6, 6, generator=g) * 0.6 + 0.2, generator=g)


def test_analytic_kl_equals_monte_carlo_kl():
    mu, log_var = torch.randn(3, 5), torch.randn(3, 5)
    q = diagonal_gaussian(mu, log_var)
    p = Independent(Normal(torch.zeros(5), torch.ones(5)), 1)
    analytic = kl_divergence(q, p)
    z = q.sample((200_000,))
    mc = (q.log_prob(z) - p.log_prob(z)).mean(0)
    closed_form = 0.5 * (mu.pow(2) + log_var.exp() - 1 - log_var).sum(-1)
    torch.testing.assert_close(analytic, closed_form)
    torch.testing.assert_close(mc, analytic, atol=0.03 * analytic.abs().max().item() + 0.02, rtol=0)


def test_elbo_terms_are_consistent_and_L_samples_average():
    model = small_vae()
    x = binary_data(8)
    t = elbo_terms(model, x, L=7)
    assert t["rec"].shape == t["kl"].shape == t["elbo"].shape == (8,)
    torch.testing.assert_close(t["elbo"], t["rec"] - t["kl"])
    assert (t["kl"] >= 0).all()
    assert (t["rec"] <= 0).all()  # Bernoulli log-probabilities of binary data


def test_iwae_bound_of_one_sample_is_the_log_weight():
    log_w = torch.randn(1, 5)
    torch.testing.assert_close(iwae_bound(log_w), log_w[0])
    log_w = torch.tensor([[0.0], [math.log(3.0)]])
    torch.testing.assert_close(iwae_bound(log_w), torch.tensor([math.log(2.0)]))


def test_importance_sampled_estimate_is_above_elbo_and_grows_with_k():
    model = small_vae()
    x = binary_data(64)
    means = []
    for k in (1, 10, 100, 1000):
        torch.manual_seed(0)
        means.append(importance_sampled_log_prob(model, x, k=k)["log_px"].mean().item())
    torch.manual_seed(0)
    elbo = elbo_terms(model, x, L=100)["elbo"].mean().item()
    assert means[0] == pytest.approx(elbo, abs=0.5)  # k=1 is a one-sample ELBO
    assert all(b >= a - 0.05 for a, b in zip(means, means[1:])), means
    assert means[-1] > elbo + 0.1


def test_chunking_does_not_change_the_estimate():
    model = small_vae()
    x = binary_data(10)
    torch.manual_seed(3)
    a = importance_sampled_log_prob(model, x, k=64, batch_size=10, sample_chunk=64)["log_px"]
    torch.manual_seed(3)
    b = importance_sampled_log_prob(model, x, k=64, batch_size=10, sample_chunk=64)["log_px"]
    torch.testing.assert_close(a, b)
    torch.manual_seed(3)
    c = importance_sampled_log_prob(model, x, k=64, batch_size=3, sample_chunk=5)["log_px"]
    # different chunking draws different samples: equal in distribution, close in value
    assert (a - c).abs().mean() < 0.5


def test_iwae_objective_reports_terms_and_bound_dominates_elbo():
    model = small_vae()
    x = binary_data(32)
    out = vae_loss(model, x, objective="iwae", k=50)
    assert set(out) >= {"loss", "iwae", "elbo", "rec", "kl"}
    assert (out["iwae"] >= out["elbo"] - 1e-4).all()  # Jensen on the same draws
    torch.testing.assert_close(out["loss"], -out["iwae"])


def test_kl_warmup_and_beta():
    assert kl_weight(0, 1.0, 100) == 0.0
    assert kl_weight(50, 1.0, 100) == 0.5
    assert kl_weight(500, 2.0, 100) == 2.0
    assert kl_weight(0, 0.5, 0) == 0.5
    model = small_vae()
    x = binary_data(16)
    torch.manual_seed(0)
    full = vae_loss(model, x)
    torch.manual_seed(0)
    warm = vae_loss(model, x, warmup_steps=10, step=0)
    torch.testing.assert_close(warm["loss"], -full["rec"])  # no KL at the start of warm-up
    torch.testing.assert_close(warm["elbo"], full["elbo"])  # the reported ELBO stays honest


def test_free_bits_floors_small_dimensions_only():
    kl_dims = torch.tensor([[0.01, 2.0], [0.03, 4.0]], requires_grad=True)
    kl = kl_dims.sum(-1)
    out = free_bits_kl(kl, kl_dims, free_bits=0.5)
    torch.testing.assert_close(out, torch.tensor([2.5, 4.5]))
    out.sum().backward()
    torch.testing.assert_close(kl_dims.grad, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))


def ppca_vae(Dx=5, Dz=2, sigma=0.5, seed=0):
    """A linear-Gaussian VAE (empty hidden list) set to a known pPCA model."""
    torch.manual_seed(seed)
    cfg = build_config(
        "base",
        overrides={"hidden": [], "latent_dim": Dz, "likelihood": "gaussian", "variance": "fixed", "fixed_std": sigma},
    )
    model = build_model(cfg, (Dx,))
    W = torch.randn(Dx, Dz)
    b = torch.randn(Dx)
    dec = model.decoder.body.net[-1]
    with torch.no_grad():
        dec.weight.copy_(W)
        dec.bias.copy_(b)
        # encoder: the exact posterior mean map, the diagonal of the posterior covariance
        S = torch.linalg.inv(torch.eye(Dz) + W.T @ W / sigma**2)
        A = S @ W.T / sigma**2
        enc = model.encoder.body.net[-1]
        enc.weight.zero_()
        enc.bias.zero_()
        enc.weight[:Dz] = A
        enc.bias[:Dz] = -A @ b
        enc.bias[Dz:] = torch.log(torch.diagonal(S)) + 0.3  # deliberately too wide
    exact = MultivariateNormal(b, W @ W.T + sigma**2 * torch.eye(Dx))
    return model, exact


def test_importance_sampling_converges_to_exact_ppca_log_likelihood():
    model, exact = ppca_vae()
    torch.manual_seed(1)
    x = exact.sample((50,))
    truth = exact.log_prob(x)
    errors = {}
    for k in (5, 5000):
        torch.manual_seed(2)
        errors[k] = (importance_sampled_log_prob(model, x, k=k)["log_px"] - truth).abs()
    elbo = elbo_terms(model, x, L=1000)["elbo"]
    gap = (truth - elbo).mean()
    assert gap > 0.05  # the diagonal, too-wide q leaves a real gap
    assert errors[5000].max() < 0.03 and errors[5000].mean() < 0.01, errors[5000]
    assert errors[5000].mean() < errors[5].mean() / 3 < gap
    assert model.log_prob(x, k=5000).shape == (50,)
