"""PixelCNN: masks by gradients (mask A, mask B, the gated stacks), no blind spot, exact
normalisation, the fast sampling loop against the parallel pass, PixelVAE training."""

import itertools
import math

import pytest
import torch

from vaekit.config import ModelConfig, get_preset
from vaekit.distributions import distribution_mean
from vaekit.errors import ConfigError
from vaekit.models.vae import build_vae
from vaekit.nets.pixelcnn import GatedPixelCNN, MaskedConv2d, PixelCNNLikelihood


def _input_grad(f, x: torch.Tensor, c: int, i: int, j: int) -> torch.Tensor:
    """d (sum of f(x)[:, :, c, i, j]) / dx, [C, H, W], for one example; f returns [1, n, C, H, W]."""
    x = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(f(x)[:, :, c, i, j].sum(), x)
    return g[0].abs()


def _allowed(C: int, H: int, W: int, c: int, i: int, j: int, strict: bool) -> torch.Tensor:
    """Inputs sub-pixel (c, i, j) may see: earlier pixels; at (i, j) channels < c (or <= c if not strict)."""
    ok = torch.zeros(C, H, W, dtype=torch.bool)
    for cc, ii, jj in itertools.product(range(C), range(H), range(W)):
        ok[cc, ii, jj] = (ii, jj) < (i, j) or ((ii, jj) == (i, j) and (cc < c if strict else cc <= c))
    return ok


@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_masked_conv_gradients(C, mask_type):
    torch.manual_seed(0)
    conv = MaskedConv2d(C, 2 * C, 5, mask_type, data_channels=C)
    H = W = 5
    x = torch.rand(1, C, H, W)
    f = lambda t: conv(t).view(1, 2, C, H, W)  # noqa: E731 - output channel k*C + c is in group c
    for c, i, j in itertools.product(range(C), range(H), range(W)):
        g = _input_grad(f, x, c, i, j)
        ok = _allowed(C, H, W, c, i, j, strict=mask_type == "A")
        assert (g[~ok] == 0).all(), (c, i, j)
        # the 5x5 kernel reaches 2 rows up and 2 columns either side: all of those are seen
        near = ok.clone()
        for ii, jj in itertools.product(range(H), range(W)):
            if abs(ii - i) > 2 or abs(jj - j) > 2 or ii > i:
                near[:, ii, jj] = False
        assert (g[near] > 0).all(), (c, i, j)


@pytest.mark.parametrize("C,size,layers", [(1, 5, 5), (3, 4, 4)])
def test_gated_stack_is_causal_without_blind_spot(C, size, layers):
    """Output at (c, i, j) has zero gradient w.r.t. every input at or after it in raster/colour
    order, and a nonzero one w.r.t. every input before it (no blind spot: up-right included)."""
    torch.manual_seed(0)
    net = GatedPixelCNN(C, n_out=2, channels=2 * C, layers=layers, kernel=3, cond_channels=2)
    H = W = size
    x = torch.rand(1, C, H, W)
    cond = torch.randn(1, 2, H, W)
    stacks = lambda t: net.features(t, cond).view(1, 2, C, H, W)  # noqa: E731 - feature k*C + c: colour c
    for c, i, j in itertools.product(range(C), range(H), range(W)):
        ok = _allowed(C, H, W, c, i, j, strict=True)
        g = _input_grad(stacks, x, c, i, j)  # the gated stacks (no ReLU head to hide gradients)
        assert (g[~ok] == 0).all(), (c, i, j)
        assert (g[ok] > 0).all(), (c, i, j)
        g = _input_grad(lambda t: net(t, cond), x, c, i, j)  # the whole network, head included
        assert (g[~ok] == 0).all(), (c, i, j)


def test_conditioning_reaches_every_output():
    torch.manual_seed(0)
    net = GatedPixelCNN(1, 1, channels=4, layers=2, kernel=3, cond_channels=3)
    cond = torch.randn(1, 3, 4, 4, requires_grad=True)
    out = net(torch.rand(1, 1, 4, 4), cond)
    (g,) = torch.autograd.grad(out[0, 0, 0, 3, 3], cond)
    assert g[0, :, 3, 3].abs().sum() > 0


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
