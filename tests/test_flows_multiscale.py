"""flows.multiscale: squeeze, factor-out and the multi-scale RealNVP and Glow architectures (and the
dense Glow) invert with cancelling log-determinants equal to log|det| of the autograd Jacobian."""

from tests.helpers import FLOW_D, img, inverse_test, jacobian_test, unit_img, vec
from vaekit.flows import AffineCoupling, Compose, FactorOut, Logit, Squeeze, dense_glow, glow, realnvp
from vaekit.flows.coupling import ConvConditioner, channel_mask

# name -> () -> (transform, x, context or None)
CASES = {
    "squeeze": lambda: (Squeeze(), img(), None),
    "factor-out": lambda: (
        FactorOut(AffineCoupling(channel_mask((2, 2, 2), 0), ConvConditioner(2, 4, 8)), 2),
        img((4, 2, 2)),
        None,
    ),
    # composed flows
    "realnvp-multiscale": lambda: (realnvp((1, 4, 4), levels=2, steps=2, hidden=8, blocks=1), img((1, 4, 4)), None),
    "glow-multiscale": lambda: (
        Compose(Logit(0.05), glow((1, 4, 4), levels=2, steps=2, hidden=8)),
        unit_img((1, 4, 4)),
        None,
    ),
    "dense-glow": lambda: (dense_glow(FLOW_D, 3, 8), vec(), None),
}


test_inverse_of_forward_is_identity_and_logdets_cancel = inverse_test(CASES)
test_logabsdet_matches_autograd_jacobian = jacobian_test(CASES)
