"""The streamed decoder log-likelihood (vaekit.inference.streamed) is the distribution's log_prob, computed
block by block in reused buffers; it steps aside wherever it has no kernel."""

import pytest
import torch

from vaekit.config import build_config
from vaekit.inference import importance_sampled_log_prob, streamed
from vaekit.models import build_model
from vaekit.objectives import repeat_examples


def dense_vae(**over):
    sets = {"hidden": [48, 32], "latent_dim": 5}
    sets.update(over)
    return build_model(build_config("dense-mnist", overrides=sets), (1, 6, 6)).eval()


def codes_and_data(n, one_image):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(n, 5, generator=g) * 2
    if one_image:  # the layout of K-sample importance sampling of one example: a stride-0 repeat
        x = repeat_examples(torch.bernoulli(torch.full((1, 1, 6, 6), 0.4), generator=g), n)
        assert x.stride(0) == 0
    else:  # grey levels in [0, 1] are valid Bernoulli-logit inputs too
        x = torch.rand(n, 1, 6, 6, generator=g)
    return z, x


@pytest.mark.parametrize("act", ["relu", "tanh", "elu", "gelu", "leaky_relu", "silu"])
@pytest.mark.parametrize("one_image", [True, False])
def test_streamed_equals_the_distribution_log_prob(act, one_image):
    torch.manual_seed(0)
    model = dense_vae(activation=act)
    z, x = codes_and_data(700, one_image)  # 700 = 2 full blocks of 256 and a partial one
    with torch.no_grad():
        plain = model.decoder(z).log_prob(x)
        fast = streamed.streamed_log_likelihood(model.decoder, z, x)
    assert fast is not None and fast.shape == (700,)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("n,block", [(1, 256), (5, 2), (256, 256), (257, 16)])
def test_block_boundaries_and_a_linear_decoder(n, block):
    torch.manual_seed(0)
    model = dense_vae(hidden=[])  # an empty hidden list: one linear map
    z, x = codes_and_data(n, one_image=False)
    with torch.no_grad():
        torch.testing.assert_close(
            streamed.streamed_log_likelihood(model.decoder, z, x, block=block),
            model.decoder(z).log_prob(x),
            rtol=1e-5,
            atol=1e-4,
        )


def test_extreme_logits_stay_finite_and_exact():
    """softplus(l) = max(l, 0) + log1p(exp(-|l|)) does not overflow for |l| ~ 1e4."""
    torch.manual_seed(0)
    model = dense_vae(hidden=[])
    with torch.no_grad():
        model.decoder.body.net[-1].weight.mul_(1e3)
        z, x = codes_and_data(64, one_image=True)
        fast = streamed.streamed_log_likelihood(model.decoder, z * 10, x)
        plain = model.decoder(z * 10).log_prob(x)
    assert torch.isfinite(fast).all() and fast.abs().max() > 1e3
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-2)


def test_buffers_are_reused_not_reallocated():
    torch.manual_seed(0)
    model = dense_vae()
    z, x = codes_and_data(600, one_image=True)
    ws = streamed._WORKSPACE
    with torch.no_grad():
        streamed.streamed_log_likelihood(model.decoder, z, x)
        before = {k: v.data_ptr() for k, v in ws._buffers.items()}
        streamed.streamed_log_likelihood(model.decoder, z[:300], x[:300])
    assert before and {k: v.data_ptr() for k, v in ws._buffers.items() if k in before} == before


def test_no_kernel_means_none_and_the_plain_path():
    torch.manual_seed(0)
    model = dense_vae()
    z, x = codes_and_data(8, one_image=False)
    # with gradients wanted, the training path keeps autograd through the distribution
    assert streamed.streamed_log_likelihood(model.decoder, z, x) is None
    z.requires_grad_(True)
    model.decoder.log_likelihood(z, x).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    with torch.no_grad():
        gauss = dense_vae(likelihood="gaussian")
        assert streamed.streamed_log_likelihood(gauss.decoder, z, x) is None
        conv = build_model(build_config("conv-mnist", overrides={"latent_dim": 5}), (1, 8, 8)).eval()
        assert streamed.streamed_log_likelihood(conv.decoder, z, torch.rand(8, 1, 8, 8)) is None


def test_importance_sampling_is_unchanged_by_streaming(monkeypatch):
    torch.manual_seed(0)
    model = dense_vae()
    g = torch.Generator().manual_seed(5)
    x = torch.bernoulli(torch.full((6, 1, 6, 6), 0.3), generator=g)
    torch.manual_seed(7)
    fast = importance_sampled_log_prob(model, x, k=600)
    monkeypatch.setattr(streamed, "streamed_log_likelihood", lambda *a, **k: None)
    import vaekit.models.vae as vae_module

    monkeypatch.setattr(vae_module, "streamed_log_likelihood", lambda *a, **k: None)
    torch.manual_seed(7)
    plain = importance_sampled_log_prob(model, x, k=600)
    for key in ("log_px", "elbo", "ess"):
        torch.testing.assert_close(fast[key], plain[key], rtol=1e-5, atol=1e-3)
