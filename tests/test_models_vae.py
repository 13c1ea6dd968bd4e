"""The VAE builder: config to explicit arguments, declared encoder and prior contracts."""

import torch

from vaekit.config import ModelConfig
from vaekit.distributions import LIKELIHOODS, PRIORS, Encoder
from vaekit.flows import FlowDistribution
from vaekit.models.flow_vae import FlowEncoder
from vaekit.models.vae import LIKELIHOOD_ARGS, PRIOR_ARGS, GaussianEncoder, build_vae


def test_the_builder_knows_the_arguments_of_every_registered_part():
    assert set(LIKELIHOOD_ARGS) == set(LIKELIHOODS)
    assert set(PRIOR_ARGS) == set(PRIORS)


def _vae(**fields):
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=[8], latent_dim=2, flow_hidden=8, posterior_flow_context=3, **fields)
    return build_vae(cfg, (6,))


def test_encode_reports_the_gaussian_posterior_or_a_flow_posteriors_base():
    x = torch.rand(4, 6)
    gauss = _vae()
    assert isinstance(gauss.encoder, GaussianEncoder) and isinstance(gauss.encoder, Encoder)
    q = gauss.encoder(x)
    mu, log_var = gauss.encode(x)
    torch.testing.assert_close(mu, q.mean)
    torch.testing.assert_close(log_var, 2 * q.stddev.log())
    flow = _vae(posterior_flow="iaf")
    assert isinstance(flow.encoder, FlowEncoder)
    q = flow.encoder(x)
    assert isinstance(q, FlowDistribution)
    mu, log_var = flow.encode(x)
    torch.testing.assert_close(mu, q.base.mean)
    torch.testing.assert_close(log_var, 2 * q.base.stddev.log())


def test_the_vamp_prior_is_bound_because_it_declares_it_needs_the_encoder():
    vae = _vae(prior="vamp", components=3, posterior_flow="planar")
    assert vae.prior_module.needs_encoder and vae.prior_module.pseudo_inputs.shape == (3, 6)
    base = vae.encoder.base_posterior(vae.prior_module.pseudo_inputs)
    torch.testing.assert_close(vae.prior.means, base.mean)
    assert not _vae(prior="mixture", components=2).prior_module.needs_encoder


def test_bits_per_dim_reads_the_declared_discreteness():
    bern, gauss = _vae(), _vae(likelihood="gaussian")
    assert bern.bits_per_dim(6.0) < gauss.bits_per_dim(6.0)  # the Gaussian adds D log 256
