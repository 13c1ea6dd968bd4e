"""The variational objectives obey their mathematics (Kingma & Welling 2014; Burda et al. 2015)."""

import math

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from vaekit.config import build_config
from vaekit.distributions import diagonal_gaussian
from vaekit.errors import ConfigError
from vaekit.models import build_model
from vaekit.objectives import (
    GRADIENTS,
    check_gradient,
    elbo_terms,
    free_bits_kl,
    iwae_bound,
    kl_weight,
    stopped_log_prob,
    vae_loss,
)


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


# --- gradient estimators: STL (Roeder et al. 2017) and DReG (Tucker et al. 2018) ---------------


def tiny_vae(layers=()):
    torch.manual_seed(0)
    sets = {"hidden": [8], "activation": "tanh", "latent_dim": sum(layers) or 2, "stochastic_layers": list(layers)}
    return build_model(build_config("base", overrides={**sets, "layer_hidden": [6]}), (6,))


def gradient_draws(model, x, groups, seed, copies=1, **objective):
    """Gradients of the loss summed over ``x`` [B, ...], averaged over ``copies`` independent draws
    of the noise (x repeated ``copies`` times in one batch), for ``groups`` independent groups:
    {"encoder" | "model": [groups, P]}, the model being the decoder and the prior."""
    model.objective.update(objective)
    enc = list(model.encoder.parameters())
    params = enc + list(model.decoder.parameters()) + list(model.prior_module.parameters())
    xr = x.repeat(copies, *([1] * (x.dim() - 1)))
    rows = []
    for i in range(groups):
        torch.manual_seed(seed + i)
        grads = torch.autograd.grad(model.loss(xr)["loss"].sum() / copies, params)
        rows.append(torch.cat([g.flatten() for g in grads]).double())
    table = torch.stack(rows)
    n_enc = sum(p.numel() for p in enc)
    return {"encoder": table[:, :n_enc], "model": table[:, n_enc:]}


def assert_same_mean(a, b):
    """The per-parameter means of two sets of independent draws [n, P] agree within 5.5 standard
    errors (estimated from the draws themselves)."""
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    diff = (a.mean(0) - b.mean(0)).abs()
    assert (diff <= 5.5 * se + 1e-6).all(), (diff / se).max()


def sum_of_variances(draws):
    return draws.var(0).sum().item()


@pytest.mark.parametrize("layers", [(), (2, 2)])
@pytest.mark.parametrize("gradient, objective, k", [("stl", "elbo", 1), ("dreg", "iwae", 5)])
def test_stl_and_dreg_are_unbiased_for_the_reparameterised_gradient(layers, gradient, objective, k):
    model = tiny_vae(layers)
    x = torch.bernoulli(torch.full((3, 6), 0.4), generator=torch.Generator().manual_seed(2))
    ref = gradient_draws(model, x, 50, seed=0, copies=20, objective=objective, k=k, gradient="reparam")
    est = gradient_draws(model, x, 50, seed=10_000, copies=20, objective=objective, k=k, gradient=gradient)
    for group in ("encoder", "model"):
        assert_same_mean(est[group], ref[group])
    # the values reported are those of the same bound
    model.objective.update(objective=objective, k=k, gradient=gradient)
    torch.manual_seed(0)
    out = model.loss(x)
    torch.testing.assert_close(-out["loss"], out["iwae"] if objective == "iwae" else out["elbo"])


def linear_gaussian_at_the_optimum(Dx=5, Dz=2, sigma=0.5):
    """A linear-Gaussian VAE whose encoder is the exact posterior: W has orthogonal columns, so the
    posterior covariance (I + W^T W / sigma^2)^-1 is diagonal and a diagonal Gaussian q is exact."""
    torch.manual_seed(0)
    overrides = {"hidden": [], "latent_dim": Dz, "likelihood": "gaussian", "variance": "fixed", "fixed_std": sigma}
    overrides["data.levels"] = None  # continuous data: the density itself, not dequantised levels
    model = build_model(build_config("base", overrides=overrides), (Dx,))
    W = torch.linalg.qr(torch.randn(Dx, Dz))[0] * torch.tensor([1.5, 0.7])
    b = torch.randn(Dx)
    S = torch.linalg.inv(torch.eye(Dz) + W.T @ W / sigma**2)
    A = S @ W.T / sigma**2
    with torch.no_grad():
        model.decoder.body.net[-1].weight.copy_(W)
        model.decoder.body.net[-1].bias.copy_(b)
        enc = model.encoder.body.net[-1]
        enc.weight.zero_()
        enc.weight[:Dz] = A
        enc.bias[:Dz] = -A @ b
        enc.bias[Dz:] = torch.log(torch.diagonal(S))
    x = b + torch.randn(4, Dz) @ W.T + sigma * torch.randn(4, Dx)
    return model, x


def test_stl_gradient_vanishes_where_q_is_the_exact_posterior():
    """log p(x, z) - log q(z|x) = log p(x) for every z when q is exact: STL's encoder gradient is 0
    for every draw (Roeder et al. 2017, Sec. 3), while the reparameterised one still varies."""
    model, x = linear_gaussian_at_the_optimum()
    stl = gradient_draws(model, x, 20, seed=0, objective="elbo", k=1, gradient="stl")["encoder"]
    ref = gradient_draws(model, x, 20, seed=0, objective="elbo", k=1, gradient="reparam")["encoder"]
    assert stl.abs().max() < 1e-4
    assert sum_of_variances(ref) > 0.1
    assert sum_of_variances(stl) < 1e-6 * sum_of_variances(ref)


def test_dreg_lowers_the_encoder_gradient_variance_of_iwae_at_k_50():
    """Tucker et al. 2018 (and Rainforth et al. 2018): the IWAE encoder gradient's noise grows
    relative to its signal with k; DReG removes the score-function terms behind it."""
    model = tiny_vae()
    x = torch.bernoulli(torch.full((3, 6), 0.4), generator=torch.Generator().manual_seed(2))
    ref = gradient_draws(model, x, 100, seed=0, objective="iwae", k=50, gradient="reparam")
    dreg = gradient_draws(model, x, 100, seed=0, objective="iwae", k=50, gradient="dreg")
    assert sum_of_variances(dreg["encoder"]) < 0.5 * sum_of_variances(ref["encoder"])
    # the generative model's gradient is the IWAE one: the same draws give the same numbers
    torch.testing.assert_close(dreg["model"], ref["model"], rtol=1e-4, atol=1e-5)


def test_an_estimator_of_another_objective_is_refused_in_one_line():
    model = tiny_vae()
    x = torch.ones(2, 6)
    for gradient, objective in (("dreg", "elbo"), ("stl", "iwae"), ("score", "elbo")):
        model.objective.update(objective=objective, gradient=gradient)
        with pytest.raises(ConfigError) as e:
            model.loss(x)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("layers", [(), (2, 2)])
def test_stopped_log_prob_keeps_the_value_and_the_path_to_z_but_not_the_parameters(layers):
    model = tiny_vae(layers)
    x = torch.rand(3, 6)
    q = model.encoder(x)
    z = q.sample((4,)).requires_grad_(True)
    stopped = stopped_log_prob(model, x, q, z)
    torch.testing.assert_close(stopped, q.log_prob(z))
    params = list(model.encoder.parameters())
    grads = torch.autograd.grad(stopped.sum(), [z] + params, allow_unused=True)
    assert all(g is None for g in grads[1:])
    torch.testing.assert_close(grads[0], torch.autograd.grad(q.log_prob(z).sum(), z)[0])


def test_check_gradient_names_the_estimator_and_its_objective():
    for name, objective in GRADIENTS.items():  # each estimator is accepted for the bound it estimates
        for bound in ("elbo", "iwae"):
            if objective in (None, bound):
                check_gradient(name, bound)
    with pytest.raises(ConfigError, match=r"unknown train.gradient 'drg' \(did you mean 'dreg'\?\); known: reparam"):
        check_gradient("drg", "iwae")
    with pytest.raises(ConfigError, match="gradient=dreg estimates the iwae gradient; objective is elbo"):
        check_gradient("dreg", "elbo")
    with pytest.raises(ConfigError, match="gradient=stl estimates the elbo gradient; objective is iwae"):
        check_gradient("stl", "iwae")
