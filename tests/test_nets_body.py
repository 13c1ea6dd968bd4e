"""NetBody: every tensor -> tensor body declares itself, and the declaration adds no state."""

import torch

from vaekit.models import COMPILED_MODULES
from vaekit.nets import DECODERS, ENCODERS, NetSpec, autocast
from vaekit.nets.body import NetBody
from vaekit.nets.pixelcnn import GatedPixelCNN
from vaekit.precision import OutputLayer, OutputLinear


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


def _output_layers(body):
    return [m for m in body.modules() if isinstance(m, OutputLayer)]


def test_every_body_ends_in_exactly_one_output_layer_with_the_keys_of_the_layer_it_extends():
    """The layer whose outputs parameterise a likelihood or posterior is declared, once per body, and
    the declaration changes no ``state_dict`` key (old checkpoints keep loading)."""
    spec = NetSpec(hidden=(4,), channels=(2,), resnet_blocks=1)
    bodies = [make((1, 4, 4), 3, spec) for make in ENCODERS.values()]
    bodies += [make(3, (2, 4, 4), spec) for make in DECODERS.values()]
    bodies.append(GatedPixelCNN(1, 2, 4, 2, 3, 2))
    for body in bodies:
        assert len(_output_layers(body)) == 1, type(body).__name__
    assert list(OutputLinear(3, 2).state_dict()) == list(torch.nn.Linear(3, 2).state_dict())


def test_autocast_with_outputs_float32_rounds_the_hidden_layers_only():
    """``nets.autocast(..., outputs_float32=True)`` (the evaluators'): hidden layers in bf16, every
    body's output layer in float32; training's autocast leaves the output layers in bf16."""
    spec = NetSpec(hidden=(8,), channels=(4,), resnet_blocks=1)
    bodies = [(make((1, 4, 4), 3, spec), torch.rand(2, 1, 4, 4)) for make in ENCODERS.values()]
    bodies += [(make(3, (2, 4, 4), spec), torch.randn(2, 3)) for make in DECODERS.values()]
    bodies.append((GatedPixelCNN(1, 2, 4, 2, 3, 2), torch.rand(2, 1, 4, 4)))
    for body, x in bodies:
        name = type(body).__name__
        (head,) = _output_layers(body)
        dtypes = {"hidden": [], "head": []}
        for m in body.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                kind = "head" if m is head else "hidden"
                m.register_forward_hook(lambda m, i, out, kind=kind: dtypes[kind].append(out.dtype))
        with autocast("cpu", True, outputs_float32=True):  # with autograd: the PixelCNN's module-by-module pass
            body(x)
        assert dtypes["head"] == [torch.float32] and torch.bfloat16 in dtypes["hidden"], name
        dtypes = {"hidden": [], "head": []}
        with autocast("cpu", True):
            body(x)
        assert dtypes["head"] == [torch.bfloat16], name
