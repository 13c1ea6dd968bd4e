"""NetBody: every tensor -> tensor body declares itself, and the declaration adds no state."""

import torch

from vaekit.nets import DECODERS, ENCODERS, NetSpec
from vaekit.nets.body import NetBody
from vaekit.nets.pixelcnn import GatedPixelCNN
from vaekit.nets.speed import compile_targets


def test_every_registered_body_is_a_net_body():
    spec = NetSpec(hidden=(4,), channels=(2,), resnet_blocks=1)
    for make in ENCODERS.values():
        body = make((1, 4, 4), 3, spec)
        assert isinstance(body, NetBody) and body(torch.rand(2, 1, 4, 4)).shape == (2, 3)
    for make in DECODERS.values():
        body = make(3, (2, 4, 4), spec)
        assert isinstance(body, NetBody) and body(torch.randn(2, 3)).shape == (2, 2, 4, 4)
    assert issubclass(GatedPixelCNN, NetBody)
    assert compile_targets() == (NetBody,)


def test_the_base_adds_no_parameters_or_state():
    assert not list(NetBody().state_dict()) and not list(NetBody().parameters())
