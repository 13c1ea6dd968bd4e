"""flows.base: the fixed maps (Reverse, Reshape, Shift, Logit) and the Inverse object invert with
cancelling log-determinants equal to log|det| of the autograd Jacobian (float64)."""

import torch

from tests.helpers import FLOW_D, FLOW_IMG, autocast_test, img, inverse_test, jacobian_test, perturbed, unit_img, vec
from vaekit.flows import AffineCoupling, Inverse, Logit, Planar, Reshape, Reverse, Shift
from vaekit.flows.coupling import MLPConditioner, alternating_mask

# name -> () -> (transform, x, context or None)
CASES = {
    "reverse": lambda: (Reverse(), img(), None),
    "reshape": lambda: (Reshape(FLOW_IMG, (32,)), img(), None),
    "shift": lambda: (Shift(-0.5), img(), None),
    "logit": lambda: (Logit(0.05), unit_img(), None),
    "inverse-planar": lambda: (Inverse(Planar(FLOW_D)), vec(), None),
}


test_inverse_of_forward_is_identity_and_logdets_cancel = inverse_test(CASES)
test_logabsdet_matches_autograd_jacobian = jacobian_test(CASES)
test_bf16_autocast_keeps_the_data_path_and_logdets_float32 = autocast_test(CASES)


def test_inverse_object_swaps_directions():
    t, x, _ = perturbed(
        (AffineCoupling(alternating_mask(FLOW_D, 0), MLPConditioner(FLOW_D, 2 * FLOW_D, 8), "sigmoid"), vec(), None)
    )
    inv = Inverse(t)
    y, ld = t(x)
    y2, ld2 = inv.inverse(x)
    torch.testing.assert_close(y2, y)
    torch.testing.assert_close(ld2, ld)
    assert torch.allclose(inv(y)[0], x)
