"""MADE, the MADE-flow and IAF: the autoregressive property, checked by gradients; the flows and
their stacks (MAF, IAF) invert with cancelling log-determinants equal to log|det| of the autograd
Jacobian (float64)."""

import pytest
import torch

from tests.helpers import FLOW_B, FLOW_CTX, FLOW_D, autocast_test, inverse_test, jacobian_test, vec
from vaekit.flows import IAF, MADE, MaskedAffineAutoregressive, iaf, maf

D, CTX = 6, 3


def _perturb(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return module


@pytest.mark.parametrize("hidden", [[4], [16, 16], []])
def test_made_output_i_has_zero_gradient_wrt_inputs_from_i_on(hidden):
    made = _perturb(MADE(D, hidden, n_params=2, context_dim=CTX if hidden else 0))
    x = torch.randn(1, D, requires_grad=True)
    ctx = torch.randn(1, CTX) if hidden else None
    out = made(x, ctx)  # [1, 2, D]
    for k in range(2):
        for i in range(D):
            (grad,) = torch.autograd.grad(out[0, k, i], x, retain_graph=True)
            assert torch.all(grad[0, i:] == 0), (k, i, grad)
            if hidden and min(hidden) >= D - 1 and i > 0:
                assert grad[0, :i].abs().sum() > 0  # and it does see x_<i


@pytest.mark.parametrize(
    "layer",
    [lambda: MaskedAffineAutoregressive(D, [16, 16], CTX), lambda: IAF(D, [16, 16], CTX)],
    ids=["made-flow", "iaf"],
)
def test_flow_jacobian_is_lower_triangular_both_ways(layer):
    """y_i depends on x_<=i only, in forward and in inverse (for IAF, the sampling direction)."""
    t = _perturb(layer())
    ctx = torch.randn(1, CTX)
    x = torch.randn(1, D)
    for fn in (t.forward, t.inverse):
        jac = torch.autograd.functional.jacobian(lambda v: fn(v[None], context=ctx)[0][0], x[0])
        assert torch.all(jac.triu(1) == 0)
        assert torch.all(jac.diagonal() != 0)


def test_iaf_is_the_inverse_of_a_made_flow():
    t = _perturb(IAF(D, [16], CTX))
    x, ctx = torch.randn(4, D), torch.randn(4, CTX)
    y, ld = t.inverse(x, context=ctx)  # IAF's sampling pass is the MADE-flow's single forward pass
    y2, ld2 = t.transform(x, context=ctx)
    assert torch.equal(y, y2) and torch.equal(ld, ld2)


def test_context_changes_the_flow():
    t = _perturb(MaskedAffineAutoregressive(D, [16], CTX))
    x = torch.randn(2, D)
    y1, _ = t(x, context=torch.zeros(2, CTX))
    y2, _ = t(x, context=torch.ones(2, CTX))
    assert not torch.allclose(y1, y2)


# name -> () -> (transform, x, context or None), in the shapes of tests.helpers
CASES = {
    "made-flow": lambda: (
        MaskedAffineAutoregressive(FLOW_D, [12, 12], FLOW_CTX),
        vec(),
        torch.randn(FLOW_B, FLOW_CTX),
    ),
    "iaf": lambda: (IAF(FLOW_D, [12], FLOW_CTX), vec(), torch.randn(FLOW_B, FLOW_CTX)),
    "maf": lambda: (maf(FLOW_D, 3, [12]), vec(), None),
    "iaf-stack": lambda: (iaf(FLOW_D, 3, [12], FLOW_CTX), vec(), torch.randn(FLOW_B, FLOW_CTX)),
}


test_inverse_of_forward_is_identity_and_logdets_cancel = inverse_test(CASES)
test_logabsdet_matches_autograd_jacobian = jacobian_test(CASES)
test_bf16_autocast_keeps_the_data_path_and_logdets_float32 = autocast_test(CASES)
