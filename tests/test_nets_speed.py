"""Speed switches of the net bodies: compile, channels-last and autocast keep numbers and state-dict keys."""

import pytest
import torch

from vaekit.config import ModelConfig
from vaekit.models.vae import build_vae
from vaekit.nets.conv import ConvDecoder
from vaekit.nets.speed import autocast, channels_last_input, maybe_compile, to_channels_last


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
