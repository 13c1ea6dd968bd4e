"""Conv encoder/decoder bodies: shapes from the data, registry, config errors, training, speed switches."""

import pytest
import torch

from tests.helpers import digits, trains_on_digits
from vaekit.config import ModelConfig, get_preset
from vaekit.errors import ConfigError
from vaekit.models.vae import build_vae
from vaekit.nets import NetSpec, build_decoder, build_encoder
from vaekit.nets.conv import ConvEncoder, stage_sizes

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (2, 7, 9)]


def test_stage_sizes_round_up():
    assert stage_sizes(28, 3) == [28, 14, 7, 4]
    assert stage_sizes(32, 3) == [32, 16, 8, 4]
    assert stage_sizes(8, 3) == [8, 4, 2, 1]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("upsample", ["transpose", "nearest"])
def test_shapes_follow_the_data(shape, upsample):
    spec = NetSpec(channels=(4, 8, 8), upsample=upsample)
    enc = build_encoder("conv", shape, 10, spec)
    dec = build_decoder("conv", 5, (6,) + shape[1:], spec)
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
