"""Conv encoder/decoder bodies: shapes from the data, registry, config errors, training, speed switches."""

import pytest
import torch

from tests.helpers import digits, trains_on_digits
from vaekit.config import ModelConfig, get_preset
from vaekit.errors import ConfigError
from vaekit.models.vae import build_vae
from vaekit.nets import build_decoder, build_encoder
from vaekit.nets.conv import (
    ConvDecoder,
    ConvEncoder,
    autocast,
    channels_last_input,
    maybe_compile,
    stage_sizes,
    to_channels_last,
)

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (2, 7, 9)]


def test_stage_sizes_round_up():
    assert stage_sizes(28, 3) == [28, 14, 7, 4]
    assert stage_sizes(32, 3) == [32, 16, 8, 4]
    assert stage_sizes(8, 3) == [8, 4, 2, 1]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("upsample", ["transpose", "nearest"])
def test_shapes_follow_the_data(shape, upsample):
    cfg = ModelConfig(encoder="conv", decoder="conv", channels=[4, 8, 8], upsample=upsample)
    enc = build_encoder(shape, 10, cfg)
    dec = build_decoder(5, (6,) + shape[1:], cfg)
    assert enc(torch.rand(3, *shape)).shape == (3, 10)
    assert dec(torch.randn(3, 5)).shape == (3, 6) + shape[1:]


@pytest.mark.parametrize("norm", ["none", "batch", "weight"])
def test_norms_and_vae_contract(norm):
    cfg = ModelConfig(encoder="conv", decoder="conv", channels=[4, 8], norm=norm, latent_dim=3)
    model = build_vae(cfg, (1, 28, 28))
    x = (torch.rand(4, 1, 28, 28) > 0.5).float()
    out = model.loss(x)
    assert out["loss"].shape == (4,) and torch.isfinite(out["loss"]).all()
    assert model.sample(2).shape == (2, 1, 28, 28)
    clone = build_vae(cfg, (1, 28, 28))
    clone.load_state_dict(model.state_dict())  # weight norm / batch norm state round-trips


def test_config_errors_are_one_line():
    for bad in (dict(norm="layer"), dict(upsample="bilinear"), dict(channels=[])):
        cfg = ModelConfig(encoder="conv", decoder="conv", **bad)
        with pytest.raises(ConfigError) as e:
            build_vae(cfg, (1, 8, 8))
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError):
        ConvEncoder((64,), 4, [8])


def test_conv_vae_trains_on_digits():
    cfg = ModelConfig(encoder="conv", decoder="conv", channels=[8, 16], latent_dim=4)
    before, after = trains_on_digits(cfg, digits(n=64))
    assert after < 0.95 * before, (before, after)


def test_presets_resolve_to_conv_nets():
    cfg = get_preset("conv-mnist")
    assert (cfg.model.encoder, cfg.model.decoder, cfg.model.likelihood) == ("conv", "conv", "bernoulli")
    assert get_preset("resnet-cifar").model.likelihood == "logistic_mixture"
    assert get_preset("pixelvae-cifar").model.pixelcnn_output == "logistic_mixture"


def test_speed_switches_keep_the_numbers():
    torch.manual_seed(0)
    dec = ConvDecoder(3, (2, 8, 8), [4, 8])
    z = torch.randn(2, 3)
    ref = dec(z)
    assert maybe_compile(dec, False) is dec
    to_channels_last(dec)
    assert torch.allclose(dec(z), ref, atol=1e-5)
    x = channels_last_input(torch.rand(2, 1, 8, 8))
    assert x.is_contiguous(memory_format=torch.channels_last)
    with autocast("cpu"):  # a no-op off CUDA
        assert dec(z).dtype == torch.float32


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch when dynamo loads
def test_maybe_compile_targets_the_net_bodies():
    """The model is driven through loss/log_prob/sample, so the tensor-to-tensor bodies are
    what gets compiled (lazily: nothing is compiled until a body is first called)."""
    cfg = ModelConfig(
        encoder="conv",
        decoder="conv",
        channels=[4],
        likelihood="pixelcnn",
        pixelcnn_layers=1,
        pixelcnn_channels=2,
        pixelcnn_cond=2,
    )
    model = build_vae(cfg, (1, 8, 8))
    keys = list(model.state_dict())
    maybe_compile(model, True)
    compiled = [n for n, m in model.named_modules() if getattr(m, "_compiled_call_impl", None) is not None]
    assert compiled == ["encoder.body", "decoder.body", "decoder.likelihood.net"]
    assert list(model.state_dict()) == keys
