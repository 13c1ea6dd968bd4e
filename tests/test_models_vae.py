"""The VAE builder: config to explicit arguments, declared encoder and prior contracts."""

import torch

from vaekit.config import ModelConfig
from vaekit.distributions import LIKELIHOODS, PRIORS, Encoder
from vaekit.flows import FlowDistribution
from vaekit.models.flow_vae import MOMENT_SAMPLES, FlowEncoder
from vaekit.models.vae import LIKELIHOOD_ARGS, PRIOR_ARGS, GaussianEncoder, build_vae


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
