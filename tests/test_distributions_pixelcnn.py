"""The PixelCNN likelihood: exact normalisation, the fast sampling loop against the parallel pass,
the distribution contract, PixelVAE shapes, config errors and training."""

import itertools
import math

import pytest
import torch

from vaekit.config import ModelConfig, get_preset
from vaekit.distributions import PixelCNNLikelihood, distribution_mean
from vaekit.errors import ConfigError
from vaekit.models.vae import build_vae


@pytest.mark.parametrize(
    "output,C,H,W", [("bernoulli", 1, 2, 2), ("categorical", 2, 1, 1), ("logistic_mixture", 2, 1, 1)]
)
def test_pixelcnn_likelihood_sums_to_one(output, C, H, W):
    """Summing p(x|z) over every possible image gives 1: the masks make a valid autoregressive model."""
    torch.manual_seed(0)
    lik = PixelCNNLikelihood((C, H, W), output, channels=2 * C, layers=2, kernel=3, cond_channels=2, n_mix=2)
    values = torch.tensor([0.0, 1.0]) if output == "bernoulli" else torch.arange(256) / 255
    images = torch.cartesian_prod(*[values] * (C * H * W)).view(-1, C, H, W)
    cond = torch.randn(1, 2, H, W).expand(images.shape[0], -1, -1, -1)
    with torch.no_grad():
        total = torch.logsumexp(lik(cond).log_prob(images).double(), 0).exp().item()
    assert total == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    "output,C,kernel,layers",
    [("bernoulli", 1, 3, 3), ("logistic_mixture", 3, 5, 2), ("categorical", 1, 3, 1), ("bernoulli", 1, 3, 8)],
)
def test_cropped_sampling_pass_equals_the_parallel_pass(output, C, kernel, layers):
    torch.manual_seed(0)
    lik = PixelCNNLikelihood((C, 9, 6), output, channels=3 * C, layers=layers, kernel=kernel, cond_channels=2, n_mix=2)
    net = lik.net
    x, cond = torch.rand(2, C, 9, 6), torch.randn(2, 2, 9, 6)
    with torch.no_grad():
        full = net(x, cond)
        terms, weights = net._cond_terms(cond), net._sampling_weights()
        for i in range(9):
            links = net._row_links(x, terms, i)
            for j in range(6):
                assert torch.allclose(net._pixel_params(x, links, weights, i, j), full[..., i, j], atol=1e-5)


def _naive_sample(lik, cond):
    """The textbook loop: a full parallel pass for every sub-pixel."""
    C, H, W = lik.data_shape
    x = torch.zeros(cond.shape[0], C, H, W)
    with torch.no_grad():
        for i, j, c in itertools.product(range(H), range(W), range(C)):
            x[:, c, i, j] = lik.sample_pixel(lik.net(x, cond)[..., i : i + 1, j : j + 1])[:, c, 0, 0]
    return x


@pytest.mark.parametrize("output,shape", [("bernoulli", (1, 5, 4)), ("logistic_mixture", (3, 3, 3))])
def test_sampler_draws_what_the_naive_loop_draws(output, shape):
    torch.manual_seed(0)
    lik = PixelCNNLikelihood(shape, output, channels=6, layers=3, kernel=3, cond_channels=2, n_mix=2)
    cond = torch.randn(3, 2, *shape[1:])
    torch.manual_seed(1)
    fast = lik(cond).sample()
    torch.manual_seed(1)
    assert torch.equal(fast, _naive_sample(lik, cond))


def test_distribution_contract():
    lik = PixelCNNLikelihood((1, 8, 8), "bernoulli", channels=4, layers=2, kernel=3, cond_channels=3)
    assert lik.param_shape == (3, 8, 8) and lik.discrete and lik.activation_factor > 1
    d = lik(torch.randn(5, 3, 8, 8))
    assert d.batch_shape == (5,) and d.event_shape == (1, 8, 8)
    x = (torch.rand(5, 1, 8, 8) > 0.5).float()
    assert d.log_prob(x).shape == (5,)
    assert d.sample().shape == (5, 1, 8, 8) and d.sample((2,)).shape == (2, 5, 1, 8, 8)
    with pytest.raises(NotImplementedError):
        d.mean
    s = distribution_mean(d)  # falls back to a sample
    assert s.shape == (5, 1, 8, 8) and set(s.unique().tolist()) <= {0.0, 1.0}
    assert torch.get_num_threads() == 1  # the sampler restored the (module's) thread count


@pytest.mark.parametrize(
    "shape,output",
    [
        ((1, 8, 8), "bernoulli"),
        ((1, 28, 28), "bernoulli"),
        ((3, 32, 32), "logistic_mixture"),
        ((3, 32, 32), "categorical"),
    ],
)
def test_pixelvae_shapes(shape, output):
    cfg = ModelConfig(
        encoder="conv",
        decoder="conv",
        channels=[4, 8],
        latent_dim=3,
        likelihood="pixelcnn",
        pixelcnn_output=output,
        pixelcnn_layers=2,
        pixelcnn_channels=6,
        pixelcnn_cond=4,
        n_mix=2,
    )
    model = build_vae(cfg, shape)
    x = torch.randint(0, 256, (2, *shape)).float() / 255
    if output == "bernoulli":
        x = (x > 0.5).float()
    out = model.loss(x)
    assert out["loss"].shape == (2,) and torch.isfinite(out["loss"]).all()
    if shape[1] == 8:
        assert model.sample(2).shape == (2, *shape)


def test_config_errors():
    bad = [
        dict(pixelcnn_channels=8),
        dict(pixelcnn_kernel=4),
        dict(pixelcnn_layers=0),
        dict(pixelcnn_output="gaussian"),
        dict(pixelcnn_cond=0),
    ]
    for b in bad:
        cfg = ModelConfig(encoder="conv", decoder="conv", likelihood="pixelcnn", **b)
        with pytest.raises(ConfigError):
            build_vae(cfg, (3, 8, 8))
    with pytest.raises(ConfigError):
        build_vae(ModelConfig(likelihood="pixelcnn"), (64,))


def test_pixelvae_trains_on_digits():
    from sklearn.datasets import load_digits

    x = (torch.from_numpy(load_digits().images[:64] / 16).float().unsqueeze(1) > 0.5).float()
    torch.manual_seed(0)
    cfg = ModelConfig(
        encoder="conv",
        decoder="conv",
        channels=[8, 16],
        latent_dim=4,
        likelihood="pixelcnn",
        pixelcnn_layers=2,
        pixelcnn_channels=8,
        pixelcnn_cond=4,
    )
    model = build_vae(cfg, (1, 8, 8))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_on_all():
        torch.manual_seed(1)
        with torch.no_grad():
            return model.loss(x)["loss"].mean().item()

    before = loss_on_all()
    for step in range(12):
        loss = model.loss(x[(step % 2) * 32 : (step % 2 + 1) * 32])["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = loss_on_all()
    assert after < 0.95 * before, (before, after)


def test_preset_pixelvae_mnist_is_a_bernoulli_pixelcnn():
    cfg = get_preset("pixelvae-mnist").model
    assert (cfg.likelihood, cfg.pixelcnn_output) == ("pixelcnn", "bernoulli")
    model = build_vae(cfg, (1, 28, 28))
    assert model.decoder.likelihood.param_shape == (cfg.pixelcnn_cond, 28, 28)
    assert math.isfinite(model.loss((torch.rand(2, 1, 28, 28) > 0.5).float())["loss"].sum().item())
