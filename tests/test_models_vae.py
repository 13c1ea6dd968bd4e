"""The VAE builder: config to explicit arguments, declared encoder and prior contracts."""

import pytest
import torch
from helpers import digits, trains_on_digits

from vaekit.config import ModelConfig
from vaekit.distributions import LIKELIHOODS, PRIORS, Encoder
from vaekit.distributions.base import MOMENT_SAMPLES
from vaekit.distributions.hierarchy import HierarchicalEncoder, HierarchicalPrior
from vaekit.flows import FlowDistribution
from vaekit.inference import importance_sampled_log_prob
from vaekit.models.flow_vae import FlowEncoder
from vaekit.models.vae import BIAS_INIT_EPS, LIKELIHOOD_ARGS, PRIOR_ARGS, GaussianEncoder, build_vae
from vaekit.objectives import elbo_terms


def test_the_builder_knows_the_arguments_of_every_registered_part():
    assert set(LIKELIHOOD_ARGS) == set(LIKELIHOODS)
    assert set(PRIOR_ARGS) == set(PRIORS)


def _vae(**fields):
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=[8], latent_dim=2, flow_hidden=8, posterior_flow_context=3, **fields)
    return build_vae(cfg, (6,))


def test_encode_reports_the_posteriors_own_moments():
    """encode(x) is E_q[z|x] and log Var_q[z|x] of q(z|x) itself: the closed form of a Gaussian
    encoder, a Monte-Carlo estimate for a flow posterior (not its base q0)."""
    x = torch.rand(4, 6)
    gauss = _vae()
    assert isinstance(gauss.encoder, GaussianEncoder) and isinstance(gauss.encoder, Encoder)
    assert gauss.encoder.exact_moments
    q = gauss.encoder(x)
    mu, log_var = gauss.encode(x)
    torch.testing.assert_close(mu, q.mean, rtol=0, atol=0)
    torch.testing.assert_close(log_var, 2 * q.stddev.log(), rtol=0, atol=0)
    flow = _vae(posterior_flow="iaf")
    assert isinstance(flow.encoder, FlowEncoder) and not flow.encoder.exact_moments
    with torch.no_grad():  # move off the near-identity initialisation
        for p in flow.encoder.flow.parameters():
            p.add_(0.5 * torch.randn_like(p))
        q = flow.encoder(x)
        assert isinstance(q, FlowDistribution)
        mu, log_var = flow.encode(x)
        z = q.sample((200_000,))
    sd = z.std(0)
    # Monte-Carlo error of encode's MOMENT_SAMPLES draws, and of the reference's
    tol = 4 * sd * (1 / MOMENT_SAMPLES + 1 / z.shape[0]) ** 0.5
    assert ((mu - z.mean(0)).abs() < tol).all(), (mu, z.mean(0))
    assert ((log_var.exp() / z.var(0)).log().abs() < 4 * (2 / MOMENT_SAMPLES) ** 0.5 * 1.5).all()
    assert ((q.base.mean - z.mean(0)).abs() > tol).any()  # the base q0 is not the posterior


def test_flow_posterior_moments_are_deterministic_per_example_and_leave_the_rng_alone():
    flow = _vae(posterior_flow="iaf")
    x = torch.rand(5, 6)
    torch.manual_seed(3)
    state = torch.random.get_rng_state()
    with torch.no_grad():
        a, b = flow.encode(x), flow.encode(x)
        one = flow.encode(x[2:3])
    assert torch.equal(state, torch.random.get_rng_state())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    torch.testing.assert_close(one[0], a[0][2:3])  # the same whatever batch the example is in
    torch.testing.assert_close(one[1], a[1][2:3])


def test_the_vamp_prior_is_bound_because_it_declares_it_needs_the_encoder():
    vae = _vae(prior="vamp", components=3, posterior_flow="planar")
    assert vae.prior_module.needs_encoder and vae.prior_module.pseudo_inputs.shape == (3, 6)
    base = vae.encoder.base_posterior(vae.prior_module.pseudo_inputs)
    torch.testing.assert_close(vae.prior.means, base.mean)
    assert not _vae(prior="mixture", components=2).prior_module.needs_encoder


def test_bits_per_dim_reads_the_declared_discreteness():
    bern, gauss = _vae(), _vae(likelihood="gaussian")
    assert bern.bits_per_dim(6.0) < gauss.bits_per_dim(6.0)  # the Gaussian adds D log 256


def test_which_models_see_binarised_data():
    """binary_data: VAEs and autoencoders with a Bernoulli likelihood (or a Bernoulli PixelCNN);
    never Gaussian or 8-bit likelihoods, flows or mixtures."""
    from vaekit.models import BINARY_DATA, MODELS, binary_data

    assert set(BINARY_DATA) == set(MODELS)
    for kind in ("vae", "autoencoder"):
        assert binary_data(ModelConfig(kind=kind, likelihood="bernoulli"))
        assert binary_data(ModelConfig(kind=kind, likelihood="pixelcnn", pixelcnn_output="bernoulli"))
        for lik in ("gaussian", "logistic_mixture", "categorical"):
            assert not binary_data(ModelConfig(kind=kind, likelihood=lik))
        assert not binary_data(ModelConfig(kind=kind, likelihood="pixelcnn", pixelcnn_output="categorical"))
    assert not binary_data(ModelConfig(kind="flow")) and not binary_data(ModelConfig(kind="mixture"))


def _two_layer_vae(**fields):
    torch.manual_seed(0)
    cfg = ModelConfig(
        hidden=[16], activation="tanh", latent_dim=5, stochastic_layers=[3, 2], layer_hidden=[8], **fields
    )
    return build_vae(cfg, (1, 6, 6))


def _binary(n):
    g = torch.Generator().manual_seed(1)
    return torch.bernoulli(torch.rand(n, 1, 6, 6, generator=g) * 0.6 + 0.2, generator=g)


def test_one_stochastic_layer_is_the_plain_vae():
    vae = _vae()
    assert vae.latent_layers == (2,) and vae.decoder.reads is None
    assert isinstance(vae.encoder, GaussianEncoder)
    torch.manual_seed(0)
    same = build_vae(ModelConfig(hidden=[8], latent_dim=2, stochastic_layers=[2]), (6,))
    assert isinstance(same.encoder, GaussianEncoder) and same.decoder.reads is None
    assert same.state_dict().keys() == vae.state_dict().keys()


def test_two_stochastic_layers_fit_the_one_vae_contract():
    vae = _two_layer_vae()
    x = _binary(4)
    assert isinstance(vae.encoder, HierarchicalEncoder) and isinstance(vae.prior_module, HierarchicalPrior)
    assert vae.latent_layers == (3, 2) and vae.latent_dim == 5
    q = vae.encoder(x)
    assert q.batch_shape == (4,) and q.event_shape == (5,)
    z = q.rsample((7,))
    assert vae.prior.log_prob(z).shape == (7, 4)
    # the decoder reads z_1 only
    z2_moved = torch.cat([z[0, :, :3], z[0, :, 3:] + 5.0], -1)
    torch.testing.assert_close(vae.decoder(z[0]).log_prob(x), vae.decoder(z2_moved).log_prob(x))
    with torch.no_grad():  # the streamed kernel on the sliced codes gives the same numbers
        torch.testing.assert_close(vae.decoder.log_likelihood(z[0], x), vae.decoder(z[0]).log_prob(x))
    mu, log_var = vae.encode(x)
    assert mu.shape == log_var.shape == (4, 5)
    assert vae.sample(3).shape == (3, 1, 6, 6) and vae.reconstruct(x).shape == x.shape
    out = vae.loss(x)
    assert set(out) >= {"loss", "elbo", "rec", "kl"} and out["loss"].shape == (4,)


def test_two_layer_importance_sampling_is_above_the_elbo_and_grows_with_k():
    vae = _two_layer_vae()
    x = _binary(64)
    means = []
    for k in (1, 10, 100, 1000):
        torch.manual_seed(0)
        means.append(importance_sampled_log_prob(vae, x, k=k)["log_px"].mean().item())
    torch.manual_seed(0)
    elbo = elbo_terms(vae, x, L=100)["elbo"].mean().item()
    assert means[0] == pytest.approx(elbo, abs=0.5)  # k=1 is a one-sample ELBO
    assert all(b >= a - 0.05 for a, b in zip(means, means[1:])), means
    assert means[-1] > elbo + 0.1


def test_a_two_layer_vae_learns():
    cfg = ModelConfig(hidden=[32], activation="tanh", latent_dim=6, stochastic_layers=[4, 2], layer_hidden=[8])
    before, after = trains_on_digits(cfg, digits(), steps=30)
    assert after < before - 3, (before, after)


@pytest.mark.parametrize("layers", [[], [3, 2]])
def test_data_mean_bias_init_makes_the_decoder_predict_the_clamped_mean(layers):
    cfg = dict(hidden=[16], latent_dim=5, stochastic_layers=layers, decoder_bias_init="data_mean")
    vae = build_vae(ModelConfig(**cfg), (1, 6, 6))
    mean = torch.rand(1, 6, 6)
    mean[0, 0, :3] = torch.tensor([0.0, 1.0, 1e-6])  # clamped away from 0 and 1
    vae.init_from_data(mean)
    bias = vae.decoder.body.net[-1].bias
    torch.testing.assert_close(torch.sigmoid(bias), mean.clamp(BIAS_INIT_EPS, 1 - BIAS_INIT_EPS).flatten())
    zero = build_vae(ModelConfig(**{**cfg, "decoder_bias_init": "zero"}), (1, 6, 6))
    before = zero.decoder.body.net[-1].bias.clone()
    zero.init_from_data(mean)
    torch.testing.assert_close(zero.decoder.body.net[-1].bias, before)
