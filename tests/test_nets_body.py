"""NetBody: every tensor -> tensor body declares itself, and the declaration adds no state."""

import torch

from vaekit.models import COMPILED_MODULES
from vaekit.nets import DECODERS, ENCODERS, NetSpec
from vaekit.nets.body import NetBody
from vaekit.nets.pixelcnn import GatedPixelCNN


def test_every_registered_body_is_a_net_body():
    spec = NetSpec(hidden=(4,), channels=(2,), resnet_blocks=1)
    for make in ENCODERS.values():
        body = make((1, 4, 4), 3, spec)
        assert isinstance(body, NetBody) and body(torch.rand(2, 1, 4, 4)).shape == (2, 3)
    for make in DECODERS.values():
        body = make(3, (2, 4, 4), spec)
        assert isinstance(body, NetBody) and body(torch.randn(2, 3)).shape == (2, 2, 4, 4)
    assert issubclass(GatedPixelCNN, NetBody)
    assert NetBody in COMPILED_MODULES


def test_the_base_adds_no_parameters_or_state():
    assert not list(NetBody().state_dict()) and not list(NetBody().parameters())


def test_bodies_compute_in_bf16_under_autocast_and_return_float32():
    """Under bf16 autocast a body's layers run in bf16, but what it returns (likelihood parameters, posterior
    parameters) is float32, close to the float32 body's output."""
    spec = NetSpec(hidden=(8,), channels=(4,), resnet_blocks=1)
    bodies = [(make((1, 4, 4), 3, spec), torch.rand(2, 1, 4, 4)) for make in ENCODERS.values()]
    bodies += [(make(3, (2, 4, 4), spec), torch.randn(2, 3)) for make in DECODERS.values()]
    bodies.append((GatedPixelCNN(1, 2, 4, 2, 3, 2), torch.rand(2, 1, 4, 4)))
    for body, x in bodies:
        inner = []
        for m in body.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.register_forward_hook(lambda m, i, out: inner.append(out.dtype))
        ref = body(x)
        inner.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = body(x)
        assert torch.bfloat16 in inner, type(body).__name__
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref, rtol=0.05, atol=0.05)
