"""NetSpec: the one record the body builders read (never the ModelConfig)."""

import dataclasses

import pytest
import torch

from vaekit.config import ModelConfig
from vaekit.models.vae import net_spec
from vaekit.nets import NetSpec, build_decoder, build_encoder
from vaekit.nets.mlp import MLP


def test_spec_is_frozen_and_its_defaults_are_the_config_defaults():
    spec = NetSpec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.hidden = (3,)
    assert net_spec(ModelConfig()) == spec
    cfg = ModelConfig(hidden=[7, 5], channels=[4], norm="batch", upsample="nearest", resnet_blocks=1)
    assert net_spec(cfg) == NetSpec(hidden=(7, 5), channels=(4,), norm="batch", upsample="nearest", resnet_blocks=1)


def test_mlp_builders_read_the_widths_and_activation_of_the_spec():
    spec = NetSpec(hidden=(6, 3), activation="tanh")
    enc = build_encoder("mlp", (1, 2, 2), 4, spec)
    dec = build_decoder("mlp", 4, (1, 2, 2), spec)
    assert isinstance(enc, MLP) and isinstance(dec, MLP)
    widths = [m.out_features for m in enc.net if isinstance(m, torch.nn.Linear)]
    assert widths == [6, 3, 4]
    assert [m.out_features for m in dec.net if isinstance(m, torch.nn.Linear)] == [3, 6, 4]  # mirrored
    assert all(type(m) is not torch.nn.ReLU for m in enc.net)
    assert dec(torch.randn(2, 4)).shape == (2, 1, 2, 2)


def test_unknown_body_names_are_one_line_config_errors():
    from vaekit.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown encoder 'cnn'"):
        build_encoder("cnn", (1, 8, 8), 4, NetSpec())
    with pytest.raises(ConfigError, match="unknown decoder 'resnet2' \\(did you mean 'resnet'\\?\\)"):
        build_decoder("resnet2", 4, (1, 8, 8), NetSpec())
