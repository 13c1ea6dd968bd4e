"""NetSpec: the one record the body builders read (never the ModelConfig)."""

import dataclasses

import pytest

from vaekit.config import ModelConfig
from vaekit.models.vae import net_spec
from vaekit.nets import NetSpec, build_decoder, build_encoder


def test_spec_is_frozen_and_its_defaults_are_the_config_defaults():
    spec = NetSpec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.hidden = (3,)
    assert net_spec(ModelConfig()) == spec
    cfg = ModelConfig(hidden=[7, 5], channels=[4], norm="batch", upsample="nearest", resnet_blocks=1)
    assert net_spec(cfg) == NetSpec(hidden=(7, 5), channels=(4,), norm="batch", upsample="nearest", resnet_blocks=1)


def test_unknown_body_names_are_one_line_config_errors():
    from vaekit.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown encoder 'cnn'"):
        build_encoder("cnn", (1, 8, 8), 4, NetSpec())
    with pytest.raises(ConfigError, match="unknown decoder 'resnet2' \\(did you mean 'resnet'\\?\\)"):
        build_decoder("resnet2", 4, (1, 8, 8), NetSpec())
