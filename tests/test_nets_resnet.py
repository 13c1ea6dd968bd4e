"""ResNet encoder/decoder bodies: residual blocks, shapes from the data, norms, training."""

import pytest
import torch

from tests.helpers import digits, trains_on_digits
from vaekit.config import ModelConfig
from vaekit.errors import ConfigError
from vaekit.models.vae import build_vae
from vaekit.nets import NetSpec, build_decoder, build_encoder
from vaekit.nets.resnet import PreActBlock, ResNetDecoder


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_shapes_follow_the_data(shape):
    spec = NetSpec(channels=(4, 8), resnet_blocks=1, norm="weight")
    enc = build_encoder("resnet", shape, 6, spec)
    dec = build_decoder("resnet", 5, (7,) + shape[1:], spec)
    assert enc(torch.rand(2, *shape)).shape == (2, 6)
    assert dec(torch.randn(2, 5)).shape == (2, 7) + shape[1:]


def test_block_is_identity_plus_branch():
    block = PreActBlock(4, "relu", "none")
    x = torch.randn(2, 4, 5, 5)
    assert torch.allclose(block(x), x + block.branch(x))
    for p in block.branch[-1].parameters():
        p.data.zero_()
    assert torch.equal(block(x), x)  # zero last conv: the identity skip alone


@pytest.mark.parametrize("norm", ["none", "batch", "weight"])
def test_depth_and_width_come_from_the_config(norm):
    spec = NetSpec(channels=(4, 6, 8), resnet_blocks=3, norm=norm, upsample="nearest")
    dec = build_decoder("resnet", 2, (1, 8, 8), spec)
    blocks = [m for m in dec.modules() if isinstance(m, PreActBlock)]
    assert len(blocks) == 9 and sorted(
        {
            b.branch[2].in_channels if norm != "weight" else b.branch[2].parametrizations.weight.original1.shape[1]
            for b in blocks
        }
    ) == [4, 6, 8]
    assert ResNetDecoder(2, (1, 8, 8), [4], blocks=0)(torch.randn(1, 2)).shape == (1, 1, 8, 8)
    with pytest.raises(ConfigError):
        ResNetDecoder(2, (1, 8, 8), [4], blocks=-1)


def test_resnet_vae_trains_on_digits():
    cfg = ModelConfig(
        encoder="resnet",
        decoder="resnet",
        channels=[8, 16],
        resnet_blocks=1,
        norm="weight",
        activation="elu",
        latent_dim=4,
    )
    before, after = trains_on_digits(cfg, digits(n=64))
    assert after < 0.95 * before, (before, after)


def test_resnet_with_batch_norm_evaluates_in_eval_mode():
    cfg = ModelConfig(encoder="resnet", decoder="resnet", channels=[4], resnet_blocks=1, norm="batch", latent_dim=2)
    model = build_vae(cfg, (1, 8, 8))
    x = digits(n=8)
    model.loss(x)["loss"].mean().backward()
    model.eval()
    assert model.log_prob(x, k=4).shape == (8,)
