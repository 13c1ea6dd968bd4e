"""flows.coupling: additive and affine couplings, their masks and conditioners, diagonal scaling, NICE
and the dense RealNVP invert with cancelling log-determinants equal to log|det| of the autograd
Jacobian (float64); soft-clamped log-scales keep wild conditioners finite."""

import copy

import pytest
import torch
from torch import nn

from tests.helpers import (
    FLOW_B,
    FLOW_CTX,
    FLOW_D,
    FLOW_IMG,
    autocast_test,
    img,
    inverse_test,
    jacobian_test,
    vec,
)
from vaekit.flows import AdditiveCoupling, AffineCoupling, DiagonalScaling, dense_realnvp, nice, realnvp
from vaekit.flows.coupling import ConvConditioner, MLPConditioner, alternating_mask, channel_mask, checkerboard_mask
from vaekit.flows.multiscale import glow_step

# name -> () -> (transform, x, context or None)
CASES = {
    "additive-vec": lambda: (
        AdditiveCoupling(alternating_mask(FLOW_D, 0), MLPConditioner(FLOW_D, FLOW_D, 8)),
        vec(),
        None,
    ),
    "affine-vec-context": lambda: (
        AffineCoupling(alternating_mask(FLOW_D, 1), MLPConditioner(FLOW_D, 2 * FLOW_D, 8, 2, FLOW_CTX)),
        vec(),
        torch.randn(FLOW_B, FLOW_CTX),
    ),
    "affine-vec-sigmoid": lambda: (
        AffineCoupling(alternating_mask(FLOW_D, 0), MLPConditioner(FLOW_D, 2 * FLOW_D, 8), "sigmoid"),
        vec(),
        None,
    ),
    "affine-checkerboard": lambda: (
        AffineCoupling(checkerboard_mask(FLOW_IMG, 1), ConvConditioner(2, 4, 8, 1)),
        img(),
        None,
    ),
    "affine-channel": lambda: (
        AffineCoupling(channel_mask(FLOW_IMG, 0), ConvConditioner(2, 4, 8, 0), "sigmoid"),
        img(),
        None,
    ),
    "additive-checkerboard": lambda: (
        AdditiveCoupling(checkerboard_mask(FLOW_IMG, 0), ConvConditioner(2, 2, 8)),
        img(),
        None,
    ),
    "diagonal-scaling": lambda: (DiagonalScaling((FLOW_D,)), vec(), None),
    # composed flows
    "nice": lambda: (nice((1, 4, 4), couplings=4, hidden=8, n_hidden=2), img((1, 4, 4)), None),
    "dense-realnvp": lambda: (dense_realnvp(FLOW_D, 4, 8, context_dim=FLOW_CTX), vec(), torch.randn(FLOW_B, FLOW_CTX)),
}


test_inverse_of_forward_is_identity_and_logdets_cancel = inverse_test(CASES)
test_logabsdet_matches_autograd_jacobian = jacobian_test(CASES)
test_bf16_autocast_keeps_the_data_path_and_logdets_float32 = autocast_test(CASES)


def test_extreme_conditioner_outputs_give_finite_float32_logdets():
    """Log-scales are soft-clamped to (-2, 2): a coupling net gone wild (outputs 1e4 or -1e30)
    still gives finite float32 logdets, summed over 3072 dimensions and 8 layers, and an inverse."""
    for scale, raw in (("tanh", 1e4), ("tanh", -1e30), ("sigmoid", -1e30)):
        t = realnvp((3, 32, 32), levels=2, steps=2, hidden=4, blocks=0, scale=scale)
        couplings = [m for m in t.modules() if isinstance(m, AffineCoupling)]
        for c in couplings:
            with torch.no_grad():
                c.net.net[-1].bias.fill_(raw)
        x = torch.rand(2, 3, 32, 32)
        y, ld = t(x)
        assert torch.isfinite(ld).all() and torch.isfinite(y).all()
        moved = sum(int((1 - c.mask).sum()) for c in couplings)
        assert ld.abs().max() <= 2.0 * moved
        if scale == "tanh" and raw > 0:
            torch.testing.assert_close(ld, torch.full_like(ld, 2.0 * moved), rtol=1e-4, atol=0)


def _wild(net):
    """The conditioner with random (not zero) output weights, so the coupling is not the identity."""
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    return net


# name -> () -> (mask, conditioner, coupling class, x, context or None): masks that split along axis 1
SPLIT_CASES = {
    "affine-channel": lambda: (channel_mask(FLOW_IMG, 1), ConvConditioner(2, 4, 8, 1), AffineCoupling, img(), None),
    "affine-vec-context": lambda: (
        alternating_mask(FLOW_D, 1),
        MLPConditioner(FLOW_D, 2 * FLOW_D, 8, 2, FLOW_CTX),
        AffineCoupling,
        vec(),
        torch.randn(FLOW_B, FLOW_CTX),
    ),
    "additive-vec": lambda: (
        alternating_mask(FLOW_D, 0),
        MLPConditioner(FLOW_D, FLOW_D, 8),
        AdditiveCoupling,
        vec(),
        None,
    ),
    "additive-vec-no-hidden": lambda: (
        alternating_mask(FLOW_D, 1),
        MLPConditioner(FLOW_D, FLOW_D, 8, 0),
        AdditiveCoupling,
        vec(),
        None,
    ),
}


def test_split_coupling_computes_the_masked_coupling_on_the_same_weights():
    """Where the mask splits along axis 1, the coupling reads only the kept part (its net restricted
    to the kept inputs and the changed part's outputs) and gives the masked coupling's outputs and
    log-dets both ways, on the same weights, up to float rounding."""
    for name, make in SPLIT_CASES.items():
        torch.manual_seed(0)
        mask, net, cls, x, ctx = make()
        _wild(net)
        masked, split = cls(mask, copy.deepcopy(net), split=False), cls(mask, net)
        assert split.split and not masked.split, name
        assert sum(p.numel() for p in split.parameters()) < sum(p.numel() for p in masked.parameters()), name
        for direction in ("forward", "inverse"):
            want, got = getattr(masked, direction)(x, ctx), getattr(split, direction)(x, ctx)
            torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5, msg=f"{name} {direction}")
            torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5, msg=f"{name} {direction}")


def test_masked_layout_state_dict_loads_into_the_split_coupling():
    """A checkpoint written with the masked layout (full-width first and last layers) loads into the
    split coupling, sliced, and gives the same numbers; the split layout's own state dict round-trips."""
    for name, make in SPLIT_CASES.items():
        torch.manual_seed(1)
        mask, net, cls, x, ctx = make()
        masked = cls(mask, _wild(net), split=False)
        split = cls(*make()[:2])
        split.load_state_dict(masked.state_dict())
        for a, b in zip(masked(x, ctx), split(x, ctx)):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=name)
        again = cls(*make()[:2])
        again.load_state_dict(split.state_dict())
        torch.testing.assert_close(again(x, ctx)[0], split(x, ctx)[0], msg=name)


def test_checkerboard_and_foreign_nets_stay_masked():
    """A checkerboard does not split along axis 1, and a net that is not a ``Conditioner`` cannot be
    restricted: both keep the masked evaluation."""
    assert not AffineCoupling(checkerboard_mask(FLOW_IMG, 0), ConvConditioner(2, 4, 8)).split
    assert not AdditiveCoupling(alternating_mask(FLOW_D, 0), torch.nn.Linear(FLOW_D, FLOW_D)).split


def test_glow_and_nice_conditioners_read_only_the_kept_half():
    """The builders' channel and alternating couplings split: Glow's coupling net reads C/2 channels
    and writes C (log-scale and shift of the other half), NICE's MLP reads and writes D/2."""
    step = glow_step((4, 2, 2), hidden=8)
    coupling = step.transforms[2]
    assert coupling.split and coupling.net.net[0].in_channels == 2 and coupling.net.net[-1].out_channels == 4
    for c in (
        m for m in nice((1, 4, 4), couplings=2, hidden=8, n_hidden=2).modules() if isinstance(m, AdditiveCoupling)
    ):
        assert c.split and c.net.net[0].in_features == 8 and c.net.net[-1].out_features == 8


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: MLPConditioner(6, 12, 16, 3, context_dim=2), (5, 6)),
        (lambda: ConvConditioner(2, 4, 8, blocks=2), (3, 2, 6, 6)),
        (lambda: ConvConditioner(2, 4, 8, blocks=0), (3, 2, 6, 6)),
    ],
)
def test_conditioners_overwriting_their_products_compute_the_same_values_and_gradients(make, shape):
    """The conditioners' activations overwrite the product before them in place (the skip input of a
    residual block excepted): outputs and every gradient are those of out-of-place activations."""
    torch.manual_seed(0)
    net = make()
    for p in net.parameters():  # the last layer starts at zero: give every layer a gradient to compare
        nn.init.normal_(p, std=0.3)
    plain = copy.deepcopy(net)
    for m in plain.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    assert any(isinstance(m, nn.ReLU) and m.inplace for m in net.modules())
    x = torch.randn(shape)
    ctx = torch.randn(shape[0], 2) if isinstance(net, MLPConditioner) else None
    outs = []
    for module in (net, plain):
        xi = x.clone().requires_grad_(True)
        y = module(xi, ctx)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append((y.detach(), xi.grad, [p.grad for p in module.parameters()]))
    (y, gx, gp), (y0, gx0, gp0) = outs
    torch.testing.assert_close(y, y0, rtol=0, atol=0)
    torch.testing.assert_close(gx, gx0, rtol=0, atol=0)
    for a, b in zip(gp, gp0):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
