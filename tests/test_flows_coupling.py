"""flows.coupling: additive and affine couplings, their masks and conditioners, diagonal scaling, NICE
and the dense RealNVP invert with cancelling log-determinants equal to log|det| of the autograd
Jacobian (float64); soft-clamped log-scales keep wild conditioners finite."""

import torch

from tests.helpers import FLOW_B, FLOW_CTX, FLOW_D, FLOW_IMG, autocast_test, img, inverse_test, jacobian_test, vec
from vaekit.flows import AdditiveCoupling, AffineCoupling, DiagonalScaling, dense_realnvp, nice, realnvp
from vaekit.flows.coupling import ConvConditioner, MLPConditioner, alternating_mask, channel_mask, checkerboard_mask

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
