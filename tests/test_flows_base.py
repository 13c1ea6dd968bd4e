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


def test_log_scale_is_bounded_and_an_unknown_kind_is_refused_by_the_registry_lookup():
    """log_scale's kinds stay within [-SOFT_CLAMP, SOFT_CLAMP] for any input, 'tanh' is 0 at 0, and an
    unknown kind is refused like every registry name, also when a coupling or MADE layer is built."""
    import pytest

    from vaekit.errors import ConfigError
    from vaekit.flows.autoregressive import MaskedAffineAutoregressive
    from vaekit.flows.base import LOG_SCALES, SOFT_CLAMP, log_scale

    raw = torch.tensor([-float("inf"), -1e6, -3.0, 0.0, 3.0, 1e6, float("inf")])
    for kind in LOG_SCALES:
        out = log_scale(raw, kind)
        assert torch.isfinite(out).all() and (out.abs() <= SOFT_CLAMP).all(), kind  # tanh rounds to 1
    assert log_scale(torch.zeros(3), "tanh").eq(0).all()
    with pytest.raises(
        ConfigError, match=r"unknown flow scale 'tanhh' \(did you mean 'tanh'\?\); known: tanh, sigmoid"
    ):
        log_scale(raw, "tanhh")
    mask = alternating_mask(FLOW_D, 0)
    with pytest.raises(ConfigError, match="unknown flow scale 'exp'"):
        AffineCoupling(mask, MLPConditioner(FLOW_D, 2 * FLOW_D, 8), scale="exp")
    with pytest.raises(ConfigError, match="unknown flow scale 'exp'"):
        MaskedAffineAutoregressive(FLOW_D, [8], scale="exp")
