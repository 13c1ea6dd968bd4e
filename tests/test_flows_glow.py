"""flows.glow: ActNorm (data-dependent initialisation, kept in its state) and the invertible 1x1
convolution invert with cancelling log-determinants equal to log|det| of the autograd Jacobian."""

import math

import pytest
import torch

from tests.helpers import FLOW_D, autocast_test, img, inverse_test, jacobian_test, vec
from vaekit.flows import ActNorm, InvConv1x1

# name -> () -> (transform, x, context or None)
CASES = {
    "actnorm-vec": lambda: (ActNorm(FLOW_D), vec() * 3 + 1, None),
    "actnorm-img": lambda: (ActNorm(2), img() * 3 + 1, None),
    "invconv-vec": lambda: (InvConv1x1(FLOW_D), vec(), None),
    "invconv-img": lambda: (InvConv1x1(2), img(), None),
}


test_inverse_of_forward_is_identity_and_logdets_cancel = inverse_test(CASES)
test_logabsdet_matches_autograd_jacobian = jacobian_test(CASES)
test_bf16_autocast_keeps_the_data_path_and_logdets_float32 = autocast_test(CASES)


def test_actnorm_initialises_from_first_batch_only():
    layer = ActNorm(3)
    assert not layer.initialized
    x = torch.randn(64, 3, 5, 5) * torch.tensor([0.5, 2.0, 4.0])[None, :, None, None] + 3.0
    y, _ = layer(x)
    assert layer.initialized
    flat = y.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(1), torch.ones(3), atol=1e-4, rtol=0)
    bias = layer.bias.detach().clone()
    layer(torch.randn(64, 3, 5, 5))  # a second batch must not re-initialise
    assert torch.equal(layer.bias, bias)


def test_actnorm_channels_without_spread_in_the_first_batch_start_at_unit_scale():
    for x in (torch.randn(1, 3), torch.tensor([[1.0, 2.0], [1.0, 5.0]])):  # one value per channel; a constant one
        layer = ActNorm(x.shape[1])
        y, logdet = layer(x)
        assert torch.isfinite(y).all() and torch.isfinite(logdet).all()
        if x.shape[0] == 1:
            assert torch.equal(layer.log_scale, torch.zeros(3))
        else:
            assert layer.log_scale[0] == 0  # the constant channel
            assert layer.log_scale[1].item() == pytest.approx(-0.5 * math.log(4.5), abs=1e-5)  # 1 / std of 2, 5


def test_actnorm_state_survives_state_dict_round_trip():
    layer = ActNorm(3)
    x = torch.randn(32, 3) * 5 + 2
    y, ld = layer(x)
    state = layer.state_dict()
    assert "initialized" in state and bool(state["initialized"])
    fresh = ActNorm(3)
    fresh.load_state_dict(state)
    assert fresh.initialized
    y2, ld2 = fresh(torch.randn(32, 3) * 100)  # no data-dependent init: the loaded params stay
    torch.testing.assert_close(fresh.bias, layer.bias)
    y3, ld3 = fresh(x)
    torch.testing.assert_close(y3, y)
    torch.testing.assert_close(ld3, ld)


def test_invconv_weight_is_its_inverses_inverse():
    layer = InvConv1x1(6)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    torch.testing.assert_close(layer.weight() @ layer.inverse_weight(), torch.eye(6), atol=1e-5, rtol=0)
    assert torch.isclose(torch.linalg.slogdet(layer.weight()).logabsdet, layer.log_s.sum(), atol=1e-5)
