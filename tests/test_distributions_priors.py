"""Priors p(z): declared attributes, the registry, the flow prior and the VampPrior over base posteriors."""

import math

import pytest
import torch

from vaekit.distributions import (
    PRIORS,
    FlowPrior,
    MixturePrior,
    Prior,
    StandardNormalPrior,
    VampPrior,
    build_prior,
    diagonal_gaussian,
    flow_prior,
)
from vaekit.distributions.base import Encoder
from vaekit.errors import ConfigError


def test_prior_is_standard_normal_and_moves_with_module():
    prior = StandardNormalPrior(4)
    p = prior()
    assert p.event_shape == (4,) and p.batch_shape == ()
    assert p.log_prob(torch.zeros(4)).item() == pytest.approx(-2 * math.log(2 * math.pi), abs=1e-5)
    assert set(dict(prior.named_buffers())) == {"loc", "scale"}


def test_registry_and_declared_attributes():
    assert set(PRIORS) == {"normal", "flow", "mixture", "vamp"}
    built = {
        "normal": build_prior("normal", 3),
        "flow": build_prior("flow", 3, flow="maf", layers=2, hidden=8, blocks=1),
        "mixture": build_prior("mixture", 3, n_components=2),
        "vamp": build_prior("vamp", 3, n_pseudo_inputs=2),
    }
    for name, prior in built.items():
        assert isinstance(prior, Prior)
        assert prior.needs_encoder == (name == "vamp")
    assert isinstance(built["flow"], FlowPrior) and isinstance(built["mixture"], MixturePrior)
    with pytest.raises(ConfigError, match="unknown prior 'vampp' \\(did you mean 'vamp'\\?\\)"):
        build_prior("vampp", 3)


def test_flow_prior_is_the_change_of_variables_and_keeps_its_state_names():
    torch.manual_seed(0)
    prior = flow_prior(2, "realnvp", layers=2, hidden=8, blocks=1)
    assert {"loc", "scale"} <= set(prior.state_dict()) and any(k.startswith("transform.") for k in prior.state_dict())
    z = torch.randn(5, 2)
    u, logdet = prior.transform(z)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(u).sum(-1) + logdet
    torch.testing.assert_close(prior().log_prob(z), expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(flow="iaf"), "unknown prior_flow 'iaf'"),
        (dict(layers=0), "model.prior_flow_layers must be positive for a latent flow"),
        (dict(hidden=-3), "model.flow_hidden must be positive for a latent flow"),
    ],
)
def test_flow_prior_errors(kwargs, message):
    with pytest.raises(ConfigError) as e:
        flow_prior(2, **kwargs)
    assert message in str(e.value)


class _FlowLikeEncoder(Encoder):
    """An encoder whose q(z|x) is not Gaussian; its base posterior is N(x[:, :2], diag exp(x[:, 2:]))."""

    def forward(self, x):
        raise AssertionError("the VampPrior must use base_posterior, not q(z|x)")

    def base_posterior(self, x):
        return diagonal_gaussian(x[:, :2], x[:, 2:])


def test_vamp_prior_mixes_the_base_posteriors_at_the_pseudo_inputs():
    torch.manual_seed(0)
    prior = VampPrior(2, 3)
    with pytest.raises(ConfigError, match="not bound"):
        prior()
    assert prior.bind(_FlowLikeEncoder(), (4,)) is prior
    u = prior.pseudo_inputs.detach()
    z = torch.randn(7, 2)
    comps = torch.stack([diagonal_gaussian(u[k, :2], u[k, 2:]).log_prob(z) for k in range(3)], -1)
    torch.testing.assert_close(prior().log_prob(z), torch.logsumexp(comps, -1) - math.log(3))
    assert list(prior.state_dict()) == ["pseudo_inputs"]  # the encoder is referenced, not stored


def test_mixture_prior_components():
    with pytest.raises(ConfigError):
        MixturePrior(2, 0)
    p = MixturePrior(2, 4)()
    assert p.event_shape == (2,) and p.log_prob(torch.zeros(3, 2)).shape == (3,)


def test_base_prior_bind_is_a_no_op():
    prior = StandardNormalPrior(2)
    assert prior.bind(_FlowLikeEncoder(), (4,)) is prior
    assert not prior.needs_encoder


def test_temperature_is_declared_by_the_priors_with_one_spread_to_scale():
    built = {
        "normal": build_prior("normal", 3),
        "flow": build_prior("flow", 3, flow="maf", layers=2, hidden=8, blocks=1),
        "mixture": build_prior("mixture", 3, n_components=2),
        "vamp": build_prior("vamp", 3, n_pseudo_inputs=2),
    }
    assert {name: p.has_temperature for name, p in built.items()} == {
        "normal": True,
        "flow": True,
        "mixture": False,
        "vamp": False,
    }
    cold = built["normal"].at_temperature(0.25)
    torch.testing.assert_close(cold.base_dist.scale, torch.full((3,), 0.25))
    assert cold.log_prob(torch.zeros(3)).item() == pytest.approx(-1.5 * math.log(2 * math.pi * 0.25**2), abs=1e-5)
    with pytest.raises(NotImplementedError):
        built["mixture"].at_temperature(0.5)


def test_marginal_std_is_exact_for_the_normal_prior_and_monte_carlo_otherwise():
    torch.testing.assert_close(StandardNormalPrior(4).marginal_std(), torch.ones(4), rtol=0, atol=0)
    torch.manual_seed(0)
    prior = MixturePrior(2, n_components=3)
    with torch.no_grad():
        prior.log_std.copy_(torch.tensor([[0.0, -1.0], [0.5, 0.0], [-0.5, 0.2]]))
    w = prior.logits.softmax(0)[:, None]
    mu, var = prior.means.detach(), prior.log_std.detach().exp() ** 2
    exact = ((w * (var + mu**2)).sum(0) - (w * mu).sum(0) ** 2).sqrt()  # law of total variance
    torch.manual_seed(1)
    torch.testing.assert_close(prior.marginal_std(200_000), exact, rtol=0.01, atol=0)
