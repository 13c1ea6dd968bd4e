"""The variational objectives obey their mathematics (Kingma & Welling 2014; Burda et al. 2015)."""

import math

import torch
from torch.distributions import Independent, Normal, kl_divergence

from vaekit.config import build_config
from vaekit.distributions import diagonal_gaussian
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


def test_importance_terms_use_the_decoder_log_likelihood(monkeypatch):
    from vaekit.objectives import importance_terms, log_importance_weights

    model = small_vae()
    x = binary_data(5)
    calls = []
    log_likelihood = model.decoder.log_likelihood

    def spy(z, xr):
        calls.append((tuple(z.shape), tuple(xr.shape)))
        return log_likelihood(z, xr)

    monkeypatch.setattr(model.decoder, "log_likelihood", spy)
    torch.manual_seed(0)
    log_px, log_pz, log_q = importance_terms(model, x, 7)
    assert calls == [((35, 4), (35, 1, 6, 6))]  # all k * B codes at once
    assert log_px.shape == log_pz.shape == log_q.shape == (7, 5)
    torch.manual_seed(0)
    z = model.encoder(x).rsample((7,))
    with torch.no_grad():
        plain = model.decoder(z.reshape(35, 4)).log_prob(x.repeat(7, 1, 1, 1)).view(7, 5)
    torch.testing.assert_close(log_px, plain, rtol=1e-5, atol=1e-4)
    torch.manual_seed(0)
    torch.testing.assert_close(log_importance_weights(model, x, 7), log_px + log_pz - log_q)
