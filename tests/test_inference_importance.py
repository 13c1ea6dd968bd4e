"""The importance-sampled log p(x) (Burda et al. 2015): above the ELBO, growing with K, independent
of the chunking in distribution, consistent (exact pPCA likelihood), and its helpers."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from vaekit.config import build_config
from vaekit.inference import (
    DEFAULT_ELEMENT_BUDGET,
    chunk_sizes,
    decoder_numel,
    default_chunks_per_pass,
    effective_sample_size,
    importance_sampled_log_prob,
    mean_and_stderr,
    widest_activation,
)
from vaekit.models import build_model
from vaekit.objectives import elbo_terms
from vaekit.precision import OutputLayer


def small_vae(**over):
    sets = {"hidden": [32], "latent_dim": 4}
    sets.update(over)
    cfg = build_config("dense-mnist", overrides=sets)
    return build_model(cfg, (1, 6, 6))


def binary_data(n=64):
    g = torch.Generator().manual_seed(1)
    return torch.bernoulli(torch.rand(n, 1, 6, 6, generator=g) * 0.6 + 0.2, generator=g)


def test_importance_sampled_estimate_is_above_elbo_and_grows_with_k():
    model = small_vae()
    x = binary_data(64)
    means = []
    for k in (1, 10, 100, 1000):
        torch.manual_seed(0)
        means.append(importance_sampled_log_prob(model, x, k=k)["log_px"].mean().item())
    torch.manual_seed(0)
    elbo = elbo_terms(model, x, L=100)["elbo"].mean().item()
    assert means[0] == pytest.approx(elbo, abs=0.5)  # k=1 is a one-sample ELBO
    assert all(b >= a - 0.05 for a, b in zip(means, means[1:])), means
    assert means[-1] > elbo + 0.1


def test_chunking_does_not_change_the_estimate():
    model = small_vae()
    x = binary_data(10)
    torch.manual_seed(3)
    a = importance_sampled_log_prob(model, x, k=64, batch_size=10, sample_chunk=64)["log_px"]
    torch.manual_seed(3)
    b = importance_sampled_log_prob(model, x, k=64, batch_size=10, sample_chunk=64)["log_px"]
    torch.testing.assert_close(a, b)
    torch.manual_seed(3)
    c = importance_sampled_log_prob(model, x, k=64, batch_size=3, sample_chunk=5)["log_px"]
    # different chunking draws different samples: equal in distribution, close in value
    assert (a - c).abs().mean() < 0.5


def test_a_given_batch_size_still_keeps_each_chunk_within_the_budget():
    model = small_vae()
    codes = []
    real = model.decoder.log_likelihood
    model.decoder.log_likelihood = lambda z, x: codes.append(z.shape[0]) or real(z, x)
    importance_sampled_log_prob(model, binary_data(10), k=50, batch_size=5, data_numel=36, element_budget=36 * 20)
    assert max(codes) <= 20 and sum(codes) == 10 * 50  # 5 examples x 4 samples per chunk, all 500 codes


@pytest.mark.parametrize(
    "preset, over",
    [
        ("dense-mnist", {"hidden": [16], "latent_dim": 3}),
        ("dense-mnist", {"hidden": [16], "latent_dim": 3, "posterior_flow": "iaf", "posterior_flow_layers": 2}),
        ("pixelvae-mnist", {"channels": [4, 8], "latent_dim": 3, "pixelcnn_layers": 2, "pixelcnn_channels": 8}),
    ],
)
def test_a_pass_of_several_chunks_draws_the_samples_of_one_pass_per_chunk(preset, over):
    """With G chunks per decoder pass the estimator draws, chunk by chunk, the samples that one pass
    per chunk draws (a Gaussian and a flow posterior), and the decoder sees G chunks of codes at once."""
    model = build_model(build_config(preset, overrides=over), (1, 6, 6)).double().eval()
    x = binary_data(3).double()
    real = model.decoder.log_likelihood
    runs = {}
    for G in (1, 3):
        codes = []
        model.decoder.log_likelihood = lambda z, x: codes.append(z.shape[0]) or real(z, x)
        torch.manual_seed(5)
        out = importance_sampled_log_prob(model, x, k=10, batch_size=3, sample_chunk=4, chunks_per_pass=G)
        runs[G] = (out, codes)
    assert runs[1][1] == [3 * 4, 3 * 4, 3 * 2]  # one pass per chunk of 4, 4 and 2 samples
    assert runs[3][1] == [3 * 10]  # the three chunks in one pass
    for key in ("log_px", "elbo", "ess"):
        torch.testing.assert_close(runs[3][0][key], runs[1][0][key], rtol=1e-12, atol=1e-12)
    torch.manual_seed(5)  # and a pass of G chunks is not one draw of G * 4 samples
    one_draw = importance_sampled_log_prob(model, x, k=10, batch_size=3, sample_chunk=10, chunks_per_pass=1)
    assert not torch.allclose(one_draw["log_px"], runs[1][0]["log_px"])


def test_a_cpu_pass_holds_chunks_per_thread_where_the_likelihood_asks():
    """PixelCNN likelihoods (``chunks_per_thread`` 2) get two chunks per CPU thread in each pass; a
    pointwise likelihood, or any likelihood on a GPU, one chunk per pass."""
    pixel = build_model(
        build_config(
            "pixelvae-mnist",
            overrides={"channels": [4, 8], "latent_dim": 3, "pixelcnn_layers": 2, "pixelcnn_channels": 8},
        ),
        (1, 6, 6),
    ).eval()
    dense = small_vae()
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert default_chunks_per_pass(pixel, "cpu") == 6
        assert default_chunks_per_pass(pixel, torch.device("cuda")) == 1
        assert default_chunks_per_pass(dense, "cpu") == 1
        for model, expected in ((pixel, [2 * 30, 2 * 20]), (dense, [2 * 5] * 10)):
            codes = []
            real = model.decoder.log_likelihood
            model.decoder.log_likelihood = lambda z, x, real=real: codes.append(z.shape[0]) or real(z, x)
            importance_sampled_log_prob(model, binary_data(2), k=50, batch_size=2, sample_chunk=5)
            assert codes == expected  # 2 x 3 chunks of 5 samples per pass for the PixelCNN, 1 otherwise
    finally:
        torch.set_num_threads(saved)


def ppca_vae(Dx=5, Dz=2, sigma=0.5, seed=0, dequantize=False):
    """A linear-Gaussian VAE (empty hidden list) set to a known pPCA model; ``dequantize``: of
    dequantised 8-bit levels (``exact`` stays the density of the continuous model)."""
    torch.manual_seed(seed)
    cfg = build_config(
        "base",
        overrides={
            "hidden": [],
            "latent_dim": Dz,
            "likelihood": "gaussian",
            "variance": "fixed",
            "fixed_std": sigma,
            "data.levels": 256 if dequantize else None,  # None: continuous data, the density itself
        },
    )
    model = build_model(cfg, (Dx,))
    W = torch.randn(Dx, Dz)
    b = torch.randn(Dx)
    dec = model.decoder.body.net[-1]
    with torch.no_grad():
        dec.weight.copy_(W)
        dec.bias.copy_(b)
        # encoder: the exact posterior mean map, the diagonal of the posterior covariance
        S = torch.linalg.inv(torch.eye(Dz) + W.T @ W / sigma**2)
        A = S @ W.T / sigma**2
        enc = model.encoder.body.net[-1]
        enc.weight.zero_()
        enc.bias.zero_()
        enc.weight[:Dz] = A
        enc.bias[:Dz] = -A @ b
        enc.bias[Dz:] = torch.log(torch.diagonal(S)) + 0.3  # deliberately too wide
    exact = MultivariateNormal(b, W @ W.T + sigma**2 * torch.eye(Dx))
    return model, exact


def test_importance_sampling_converges_to_exact_ppca_log_likelihood():
    model, exact = ppca_vae()
    torch.manual_seed(1)
    x = exact.sample((50,))
    truth = exact.log_prob(x)
    errors = {}
    for k in (5, 5000):
        torch.manual_seed(2)
        errors[k] = (importance_sampled_log_prob(model, x, k=k)["log_px"] - truth).abs()
    elbo = elbo_terms(model, x, L=1000)["elbo"]
    gap = (truth - elbo).mean()
    assert gap > 0.05  # the diagonal, too-wide q leaves a real gap
    assert errors[5000].max() < 0.03 and errors[5000].mean() < 0.01, errors[5000]
    assert errors[5000].mean() < errors[5].mean() / 3 < gap
    assert model.log_prob(x, k=5000).shape == (50,)


def test_importance_sampling_of_dequantised_levels_converges_to_their_probability():
    """A 1-D pPCA on dequantised 8-bit levels: drawing a fresh u with every z makes the K-sample
    estimate consistent for log P(k), the exact mass of N(b, w^2 + sigma^2) on the level's bin,
    not only a bound on it (Jensen would leave a gap with one u per example)."""
    model, exact = ppca_vae(Dx=1, Dz=1, sigma=0.01, seed=3, dequantize=True)
    assert not model.density and model.decoder.likelihood.discrete
    std = exact.covariance_matrix[0, 0].sqrt()
    k = torch.round(torch.clamp(exact.mean + std * torch.tensor([-1.0, 0.0, 0.7]), 0, 1) * 255)
    marginal = torch.distributions.Normal(exact.mean[0], std)
    log_P = (marginal.cdf((k + 1) / 256) - marginal.cdf(k / 256)).log()
    torch.manual_seed(0)
    est = importance_sampled_log_prob(model, (k / 255)[:, None], k=20000)["log_px"]
    torch.testing.assert_close(est, log_P.float(), atol=0.02, rtol=0)


def test_chunk_sizes_respect_the_budget():
    for n, k, numel, budget in [(100, 5000, 784, 1 << 22), (3, 10, 36, 360), (50, 4, 36, 36 * 10), (7, 1, 10**6, 100)]:
        b, s = chunk_sizes(n, k, numel, budget)
        assert 1 <= b <= n and 1 <= s <= k
        assert b * s * numel <= max(budget, numel)  # one code always fits, however large
    assert chunk_sizes(100, 5000, 784) == (1, 5000)  # K=5000 on MNIST: one example, all samples
    assert chunk_sizes(50, 4, 36, 36 * 10) == (2, 4)  # 10 codes: 4 samples of 2 examples


def test_decoder_numel_counts_the_likelihood_activation_factor():
    model = small_vae()
    assert decoder_numel(model, (1, 6, 6)) == 36
    model.decoder.likelihood.activation_factor = 5  # a decoder that is a deep net over x (PixelCNN)
    assert decoder_numel(model, (1, 6, 6)) == 180
    x = binary_data(8)
    seen = []
    importance_sampled_log_prob(model, x, k=4, element_budget=180 * 8, progress=seen.append)
    assert seen == [2, 2, 2, 2]  # 8 codes per chunk: 2 examples x 4 samples


def test_effective_sample_size():
    k = 50
    assert effective_sample_size(torch.zeros(k, 3)).tolist() == pytest.approx([k] * 3)
    one = torch.full((k, 1), -1e4)
    one[7] = 0.0
    assert effective_sample_size(one).item() == pytest.approx(1.0)
    log_w = torch.randn(k, 4, dtype=torch.float64)
    w = log_w.exp()
    torch.testing.assert_close(effective_sample_size(log_w), w.sum(0) ** 2 / (w**2).sum(0))
    torch.testing.assert_close(effective_sample_size(log_w.T, dim=1), effective_sample_size(log_w))


def test_one_sample_is_the_elbo_with_unit_ess():
    model = small_vae()
    x = binary_data(6)
    torch.manual_seed(0)
    out = importance_sampled_log_prob(model, x, k=1)
    torch.testing.assert_close(out["log_px"], out["elbo"])
    torch.testing.assert_close(out["ess"], torch.ones(6))
    torch.manual_seed(0)
    many = importance_sampled_log_prob(model, x, k=64, sample_chunk=10)
    assert (many["ess"] >= 1 - 1e-4).all() and (many["ess"] <= 64 + 1e-3).all()
    assert (many["log_px"] >= many["elbo"] - 1e-5).all()  # Jensen on the same samples


def test_mean_and_stderr():
    m, se = mean_and_stderr(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert m == pytest.approx(2.5)
    assert se == pytest.approx(math.sqrt(5 / 3) / 2)  # sample std (n - 1) over sqrt(n)
    m, se = mean_and_stderr(torch.tensor([7.0]))
    assert m == 7.0 and math.isnan(se)
    assert DEFAULT_ELEMENT_BUDGET == 1 << 22


def test_a_float64_model_gets_float64_estimates():
    """The estimator follows the model's dtype: a float64 model is not rounded to float32."""
    model = small_vae().double()
    x = binary_data(6).double()
    torch.manual_seed(0)
    out = importance_sampled_log_prob(model, x, k=20)
    assert all(v.dtype == torch.float64 for v in out.values())
    assert torch.isfinite(out["log_px"]).all() and (out["log_px"] >= out["elbo"]).all()  # Jensen, same draws
    assert importance_sampled_log_prob(small_vae(), binary_data(2), k=3)["log_px"].dtype == torch.float32


def test_decoder_numel_counts_a_conv_decoders_widest_feature_map():
    cfg = build_config("conv-mnist", overrides={"channels": [4, 8]})
    model = build_model(cfg, (1, 28, 28))
    # the decoder's last hidden feature maps: 4 channels of 28 x 28, wider than its 784 logits
    assert widest_activation(model.decoder, model.latent_dim) == 4 * 28 * 28
    assert decoder_numel(model, (1, 28, 28)) == 4 * 28 * 28
    b, s = chunk_sizes(10, 5000, decoder_numel(model, (1, 28, 28)))
    assert (b, s) == (1, DEFAULT_ELEMENT_BUDGET // (4 * 28 * 28))


@pytest.mark.parametrize("amp", [False, True])
def test_amp_runs_the_conv_bodies_in_bf16_and_keeps_the_log_weights_float32(monkeypatch, amp):
    """``amp``: the decoder's convolutions compute in bf16 under autocast, the log-weights the
    estimator folds are float32 and so is every estimate; without it nothing is bf16."""
    import vaekit.inference.importance as importance

    torch.manual_seed(0)
    model = build_model(build_config("conv-mnist", overrides={"channels": [4, 8], "latent_dim": 3}), (1, 6, 6)).eval()
    seen = {"log_w": [], "conv": []}

    def spy(*args, **kwargs):
        log_w = log_importance_weights(*args, **kwargs)
        seen["log_w"].append((log_w.dtype, torch.is_autocast_enabled("cpu")))
        return log_w

    log_importance_weights = importance.log_importance_weights
    monkeypatch.setattr(importance, "log_importance_weights", spy)
    hook = model.decoder.body.features[0].register_forward_hook(lambda m, a, out: seen["conv"].append(out.dtype))
    out = importance_sampled_log_prob(model, binary_data(3), k=10, sample_chunk=4, batch_size=3, amp=amp)
    hook.remove()
    assert seen["log_w"] == [(torch.float32, amp)] * 3  # chunks of 4 + 4 + 2 samples
    assert set(seen["conv"]) == {torch.bfloat16 if amp else torch.float32}
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in out.values())
    assert not torch.is_autocast_enabled("cpu")  # switched off again after the call


@pytest.mark.parametrize(
    "preset, over",
    [
        ("dense-mnist", {"hidden": [32], "latent_dim": 4}),
        ("iwae-2l", {"hidden": [16], "latent_dim": 6, "stochastic_layers": [4, 2], "layer_hidden": [8]}),
        ("dense-mnist", {"hidden": [16], "latent_dim": 3, "posterior_flow": "iaf", "posterior_flow_layers": 2}),
        ("pixelvae-mnist", {"channels": [4, 8], "latent_dim": 3, "pixelcnn_layers": 2, "pixelcnn_channels": 8}),
    ],
)
def test_amp_rounds_the_hidden_decoder_layers_to_bf16_and_keeps_outputs_and_estimate_float32(preset, over):
    """For every decoder kind (the dense one leaves its float32 streamed kernel), amp computes the
    decoder's hidden linear and conv layers in bf16 and its output layers (``OutputLayer``, the
    likelihood's parameters) in float32; the estimates stay float32, finite and close to float32's."""
    torch.manual_seed(0)
    model = build_model(build_config(preset, overrides=over), (1, 6, 6)).eval()
    numel = decoder_numel(model, (1, 6, 6))  # its float32 shape probe runs before the hooks
    layers = [m for m in model.decoder.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    seen = {"hidden": set(), "output": set()}

    def hook(kind):
        return lambda m, a, out: seen[kind].add(out.dtype)

    hooks = [m.register_forward_hook(hook("output" if isinstance(m, OutputLayer) else "hidden")) for m in layers]
    x = binary_data(3)
    runs = {}
    for amp in (False, True):
        seen = {"hidden": set(), "output": set()}
        torch.manual_seed(1)
        runs[amp] = importance_sampled_log_prob(model, x, k=8, amp=amp, data_numel=numel)
        if amp:
            assert seen == {"hidden": {torch.bfloat16}, "output": {torch.float32}}, seen
        else:  # no bf16 anywhere (a dense decoder's streamed kernel calls no module at all)
            assert seen["hidden"] | seen["output"] <= {torch.float32}, seen
    for h in hooks:
        h.remove()
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in runs[True].values())
    # the same draws, rounded nets: close, on an untrained model with a few hundred nats per image
    assert torch.allclose(runs[True]["log_px"], runs[False]["log_px"], rtol=0.02)
    assert not torch.is_autocast_enabled("cpu")
