"""flows.planar: planar layers and stacks, with and without context, invert with cancelling
log-determinants equal to log|det| of the autograd Jacobian; u_hat keeps every layer invertible."""

import torch

from tests.helpers import FLOW_B, FLOW_CTX, FLOW_D, autocast_test, inverse_test, jacobian_test, vec
from vaekit.flows import Planar, planar_flow

# name -> () -> (transform, x, context or None)
CASES = {
    "planar": lambda: (Planar(FLOW_D), vec(), None),
    "planar-context": lambda: (Planar(FLOW_D, FLOW_CTX), vec(), torch.randn(FLOW_B, FLOW_CTX)),
    "planar-stack": lambda: (planar_flow(FLOW_D, 4, FLOW_CTX), vec(), torch.randn(FLOW_B, FLOW_CTX)),
}


test_inverse_of_forward_is_identity_and_logdets_cancel = inverse_test(CASES)
test_logabsdet_matches_autograd_jacobian = jacobian_test(CASES)
test_bf16_autocast_keeps_the_data_path_and_logdets_float32 = autocast_test(CASES)


def test_planar_respects_invertibility_constraint():
    """w^T u_hat >= -1 whatever u and w are, so 1 + u_hat^T w h' > 0 and log|det| is finite."""
    layer = Planar(4)
    with torch.no_grad():
        layer.params[:4] = torch.tensor([-5.0, 3.0, 0.0, 1.0])  # u pointing against w
        layer.params[4:8] = torch.tensor([2.0, -1.0, 0.5, 0.0])
    u_hat, w, _ = layer._params(1, None)
    assert (w * u_hat).sum() >= -1
    z = torch.randn(100, 4)
    y, ld = layer(z)
    assert torch.isfinite(ld).all()
    torch.testing.assert_close(layer.inverse(y)[0], z, atol=1e-4, rtol=1e-4)
