"""flows.latent: every entry of POSTERIOR_FLOWS and PRIOR_FLOWS builds a transform that inverts with
cancelling log-determinants equal to log|det| of the autograd Jacobian (float64), in FLOW_D and in 3
dimensions, posteriors with and without an encoder context."""

import pytest
import torch

from tests.helpers import FLOW_B, FLOW_CTX, FLOW_D, inverse_test, jacobian_test, perturbed, vec
from vaekit.flows import Transform
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

DIM = 3  # latent dimensions of the registry cases below
# role-name[-context] -> () -> (transform, z, context or None); priors take no context
CASES_3D = {
    **{
        f"posterior-{k}-context": (
            lambda k=k: (
                POSTERIOR_FLOWS[k](DIM, 3, 8, 2, FLOW_CTX),
                torch.randn(FLOW_B, DIM),
                torch.randn(FLOW_B, FLOW_CTX),
            )
        )
        for k in POSTERIOR_FLOWS
    },
    **{
        f"posterior-{k}": (lambda k=k: (POSTERIOR_FLOWS[k](DIM, 3, 8, 2, 0), torch.randn(FLOW_B, DIM), None))
        for k in POSTERIOR_FLOWS
    },
    **{f"prior-{k}": (lambda k=k: (PRIOR_FLOWS[k](DIM, 3, 8, 2), torch.randn(FLOW_B, DIM), None)) for k in PRIOR_FLOWS},
}


test_inverse_of_forward_is_identity_and_logdets_cancel = inverse_test(CASES)
test_logabsdet_matches_autograd_jacobian = jacobian_test(CASES)
test_every_registered_flow_inverts_in_3d = inverse_test(CASES_3D)
test_every_registered_flow_logdet_matches_autograd_jacobian_in_3d = jacobian_test(CASES_3D)


@pytest.mark.parametrize("name", sorted(CASES_3D))
def test_every_registered_flow_builds_in_3d(name):
    t, z, ctx = CASES_3D[name]()
    assert isinstance(t, Transform)
    u, ld = t(z, context=ctx)  # as built: float32, initial parameters
    assert u.shape == z.shape and ld.shape == (FLOW_B,) and torch.isfinite(u).all() and torch.isfinite(ld).all()


@pytest.mark.parametrize("name", sorted(POSTERIOR_FLOWS))
def test_posterior_flows_read_their_context(name):
    """q(z|x) = flow(q0(z|x)) with the encoder's context: another context gives another map."""
    t, z, ctx = perturbed(CASES_3D[f"posterior-{name}-context"]())
    u, ld = t(z, context=ctx)
    u2, ld2 = t(z, context=ctx + 1.0)
    assert not torch.allclose(u, u2) and not torch.allclose(ld, ld2)
