"""Flows inside VAEs: flow posteriors (planar, IAF, RealNVP) and flow priors, by config,
served by the same objectives and importance sampler."""

import pytest
import torch
from torch.distributions import kl_divergence

from vaekit.config import ModelConfig
from vaekit.distributions.base import MOMENT_SAMPLES
from vaekit.errors import ConfigError
from vaekit.flows import FlowDistribution
from vaekit.inference import importance_sampled_log_prob
from vaekit.models.vae import build_vae

D_X, D_Z = 12, 3


def binary_data(n=256):
    """Three 12-bit prototypes with 10% of the bits flipped."""
    g = torch.Generator().manual_seed(0)
    protos = (torch.rand(3, D_X, generator=g) < 0.5).float()
    x = protos[torch.randint(0, 3, (n,), generator=g)]
    flips = (torch.rand(n, D_X, generator=g) < 0.1).float()
    return (x + flips) % 2


def vae(**fields):
    small = dict(
        hidden=[32],
        latent_dim=D_Z,
        activation="tanh",
        flow_hidden=16,
        flow_blocks=1,
        posterior_flow_layers=2,
        posterior_flow_context=8,
    )
    return build_vae(ModelConfig(**{**small, **fields}), (D_X,))


@pytest.mark.parametrize("flow", ["planar", "iaf", "realnvp"])
def test_flow_posterior_samples_carry_their_own_log_q(flow):
    model = vae(posterior_flow=flow)
    with torch.no_grad():  # move off the near-identity initialisation
        for p in model.encoder.flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = binary_data(8)
    q = model.encoder(x)
    assert isinstance(q, FlowDistribution) and q.context.shape == (8, 8)
    with pytest.raises(NotImplementedError):  # no analytic KL: the ELBO uses Monte Carlo
        kl_divergence(q, model.prior)
    z, log_q = q.rsample_and_log_prob((5,))
    assert z.shape == (5, 8, D_Z) and log_q.shape == (5, 8)
    # the same density evaluated the other way round (inverting the flow)
    torch.testing.assert_close(q.log_prob(z), log_q, atol=1e-4, rtol=1e-4)
    mu, log_var = model.encode(x)
    assert log_var.shape == (8, D_Z)
    # encode reports the mean of q(z|x) itself, within Monte-Carlo error
    with torch.no_grad():
        draws = q.sample((50_000,))
    tol = 4 * draws.std(0) * (1 / MOMENT_SAMPLES + 1 / draws.shape[0]) ** 0.5
    assert ((mu - draws.mean(0)).abs() < tol).all()


@pytest.mark.parametrize("prior_flow", ["realnvp", "maf", "planar"])
def test_flow_prior_density_and_sampling_agree(prior_flow):
    model = vae(prior="flow", prior_flow=prior_flow)
    with torch.no_grad():
        for p in model.prior_module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    p = model.prior
    assert isinstance(p, FlowDistribution) and model.latent_dim == D_Z
    z, log_p = p.rsample_and_log_prob((4, 6))
    torch.testing.assert_close(p.log_prob(z), log_p, atol=1e-4, rtol=1e-4)
    assert model.sample(5).shape == (5, D_X)


def _train(model, x, steps=150):
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        batch = x[torch.randint(0, len(x), (64,))]
        out = model.loss(batch, step=step)
        opt.zero_grad()
        out["loss"].mean().backward()
        opt.step()
    return out


@pytest.mark.parametrize(
    "fields",
    [
        {"posterior_flow": "planar"},
        {"posterior_flow": "iaf"},
        {"posterior_flow": "realnvp", "prior": "flow", "prior_flow": "maf"},
    ],
    ids=["planar", "iaf", "realnvp+maf-prior"],
)
def test_importance_sampled_log_likelihood_is_at_least_the_elbo(fields):
    x = binary_data()
    model = vae(**fields)
    out = _train(model, x)
    assert all(torch.isfinite(v).all() for v in out.values())
    model.eval()
    xs = x[:128]
    log_px = importance_sampled_log_prob(model, xs, k=200)["log_px"]
    # the ELBO (k = 1) from independent draws, each example 10 times to tame its noise
    elbo = importance_sampled_log_prob(model, xs.repeat(10, 1), k=1)["log_px"]
    assert log_px.mean() >= elbo.mean(), (log_px.mean(), elbo.mean())
    assert torch.isfinite(model.log_prob(x[:4], k=10)).all()


def test_iwae_objective_with_an_iaf_posterior():
    from vaekit.models.vae import VAE

    model = vae(posterior_flow="iaf")
    model = VAE(model.encoder, model.decoder, model.prior_module, (D_X,), objective="iwae", k=5)
    out = model.loss(binary_data(16))
    assert out["loss"].shape == (16,) and torch.isfinite(out["loss"]).all()
    out["loss"].mean().backward()
    assert all(p.grad is not None for p in model.encoder.flow.parameters())


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"posterior_flow": "sylvester"}, "unknown posterior_flow 'sylvester'"),
        ({"posterior_flow": "iaf", "posterior_flow_layers": 0}, "model.posterior_flow_layers must be positive"),
        ({"posterior_flow": "iaf", "flow_blocks": 0}, "model.flow_blocks must be positive for a latent flow"),
        ({"prior": "flow", "flow_hidden": -3}, "model.flow_hidden must be positive for a latent flow"),
        ({"posterior_flow": "iaf", "posterior_flow_context": -1}, "model.posterior_flow_context must be >= 0"),
        ({"prior": "flow", "prior_flow": "iaf"}, "unknown prior_flow 'iaf'"),
    ],
)
def test_bad_flow_vae_config_is_a_one_line_config_error(fields, message):
    with pytest.raises(ConfigError) as err:
        vae(**fields)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_no_posterior_flow_keeps_the_gaussian_encoder():
    from vaekit.models.vae import GaussianEncoder

    assert isinstance(vae().encoder, GaussianEncoder)
    assert isinstance(vae(posterior_flow="none").encoder, GaussianEncoder)
