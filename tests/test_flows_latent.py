"""flows.latent: every entry of POSTERIOR_FLOWS and PRIOR_FLOWS builds a transform that inverts with
cancelling log-determinants equal to log|det| of the autograd Jacobian (float64)."""

import torch

from tests.helpers import FLOW_B, FLOW_CTX, FLOW_D, inverse_test, jacobian_test, vec
from vaekit.flows.latent import POSTERIOR_FLOWS, PRIOR_FLOWS

# name -> () -> (transform, x, context or None)
CASES = {
    **{
        f"posterior-{k}": (
            lambda k=k: (POSTERIOR_FLOWS[k](FLOW_D, 3, 8, 2, FLOW_CTX), vec(), torch.randn(FLOW_B, FLOW_CTX))
        )
        for k in POSTERIOR_FLOWS
    },
    **{f"prior-{k}": (lambda k=k: (PRIOR_FLOWS[k](FLOW_D, 3, 8, 2), vec(), None)) for k in PRIOR_FLOWS},
}

test_inverse_of_forward_is_identity_and_logdets_cancel = inverse_test(CASES)
test_logabsdet_matches_autograd_jacobian = jacobian_test(CASES)
