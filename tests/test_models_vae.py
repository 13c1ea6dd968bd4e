"""The VAE builder: config to explicit arguments, declared encoder and prior contracts."""

import math

import pytest
import torch
from helpers import digits, trains_on_digits

from vaekit.config import ModelConfig
from vaekit.distributions import LIKELIHOODS, PRIORS, Encoder
from vaekit.distributions.base import MOMENT_SAMPLES
from vaekit.distributions.hierarchy import HierarchicalEncoder, HierarchicalPrior
from vaekit.errors import VaekitError
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
    """A Gaussian of dequantised 8-bit data bounds the levels' probability: bits/dim as a Bernoulli's;
    a Gaussian density at the levels has none."""
    bern, deq, gauss = _vae(), _vae(likelihood="gaussian", dequantize=True), _vae(likelihood="gaussian")
    assert not deq.density and deq.decoder.likelihood.discrete
    assert bern.bits_per_dim(6.0) == deq.bits_per_dim(6.0) == pytest.approx(6.0 / (6 * math.log(2)))
    assert gauss.density and gauss.bits_per_dim(6.0) is None


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


# --- sampling temperature ---------------------------------------------------------------------


def test_temperature_zero_gives_the_decoder_mean_at_z_zero():
    vae = _vae()
    at_zero = vae.decode_to_x(torch.zeros(5, 2), mean=True)
    for mean in (False, True):  # T = 0: nothing random, the decoder's mean at the prior's mean
        torch.testing.assert_close(vae.sample(5, mean=mean, temperature=0.0), at_zero, rtol=0, atol=0)
    assert torch.equal(vae.sample_latents(3, 0.0), torch.zeros(3, 2))


def test_temperature_scales_the_spread_of_the_latent_draws():
    """z ~ N(0, T^2 I): the standard deviation of the latent draws is T, their mean 0."""
    vae = _vae()
    n = 40_000
    torch.manual_seed(0)
    for t in (0.3, 1.0, 2.5):
        z = vae.sample_latents(n, t)
        assert z.shape == (n, 2)
        torch.testing.assert_close(z.std(0), torch.full((2,), t), rtol=0.02, atol=0)  # s.e. of a std: 1/sqrt(2n)
        assert (z.mean(0).abs() < 4 * t / n**0.5).all()
    torch.manual_seed(1)
    cold = vae.sample_latents(n, 0.5)
    torch.manual_seed(1)
    warm = vae.sample_latents(n, 2.0)
    torch.testing.assert_close(warm, 4 * cold)  # the same noise, scaled by the ratio of temperatures


def test_temperature_of_stochastic_layers_scales_every_layer():
    """Two stochastic layers (NVAE's tempering): at T = 0 the chain of means z_2 = 0,
    z_1 = mu(z_2); at T the top layer is N(0, T^2 I) and z_1 spreads T sigma_1 around mu_1(z_2)."""
    vae = _two_layer_vae()
    z0 = vae.sample_latents(4, 0.0)
    top = torch.zeros(4, 2)
    mean_1 = vae.prior_module.layers[0](top).mean
    torch.testing.assert_close(z0, torch.cat([mean_1, top], dim=1), rtol=0, atol=0)
    torch.manual_seed(0)
    z = vae.sample_latents(40_000, 0.5)
    torch.testing.assert_close(z[:, 3:].std(0), torch.full((2,), 0.5), rtol=0.02, atol=0)
    cond = vae.prior_module.layers[0](z[:, 3:])
    residual = (z[:, :3] - cond.mean) / cond.stddev
    torch.testing.assert_close(residual.std(0), torch.full((3,), 0.5), rtol=0.02, atol=0)
    torch.testing.assert_close(vae.sample(3, temperature=0.0), vae.decode_to_x(z0[:3], mean=True), rtol=0, atol=0)


def test_a_flow_prior_tempers_its_base_and_mixture_priors_refuse_temperature():
    flow = _vae(prior="flow", prior_flow="realnvp", prior_flow_layers=2, flow_blocks=1)
    z0 = flow.sample_latents(3, 0.0)
    assert torch.equal(z0[0], z0[1]) and torch.equal(z0[1], z0[2])
    base0, _ = flow.prior_module.transform.inverse(torch.zeros(1, 2))
    torch.testing.assert_close(z0[:1], base0)  # the flow of the base's mean
    for prior in ("mixture", "vamp"):
        vae = _vae(prior=prior, components=3)
        assert vae.sample(2, temperature=1.0).shape == (2, 6)
        with pytest.raises(VaekitError) as e:
            vae.sample(2, temperature=0.5)
        msg = str(e.value)
        assert "\n" not in msg and "temperature=0.5 (--temperature)" in msg and "Prior" in msg


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_a_temperature_that_is_not_a_finite_non_negative_number_is_refused(bad):
    with pytest.raises(VaekitError, match="temperature must be a finite number >= 0"):
        _vae().sample(2, temperature=bad)
