"""Every flow layer and composed flow: inverse(forward(x)) == x, the two log-determinants
cancel, and the log-determinant equals log|det| of the autograd Jacobian (float64)."""

import pytest
import torch
from torch.autograd.functional import jacobian

from vaekit.flows import (
    IAF,
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    Compose,
    DiagonalScaling,
    FactorOut,
    InvConv1x1,
    Inverse,
    Logit,
    MaskedAffineAutoregressive,
    Planar,
    Reshape,
    Reverse,
    Shift,
    Squeeze,
    dense_glow,
    dense_realnvp,
    glow,
    iaf,
    maf,
    nice,
    planar_flow,
    realnvp,
)
from vaekit.flows.coupling import ConvConditioner, MLPConditioner, alternating_mask, channel_mask, checkerboard_mask
from vaekit.flows.latent import POSTERIOR_FLOWS, PRIOR_FLOWS

B, D, CTX = 3, 5, 4
IMG = (2, 4, 4)


def vec():
    return torch.randn(B, D)


def img(shape=IMG):
    return torch.randn(B, *shape)


def unit_img(shape=IMG):
    return torch.rand(B, *shape) * 0.98 + 0.01


# name -> () -> (transform, x, context or None)
CASES = {
    "additive-vec": lambda: (AdditiveCoupling(alternating_mask(D, 0), MLPConditioner(D, D, 8)), vec(), None),
    "affine-vec-context": lambda: (
        AffineCoupling(alternating_mask(D, 1), MLPConditioner(D, 2 * D, 8, 2, CTX)),
        vec(),
        torch.randn(B, CTX),
    ),
    "affine-vec-sigmoid": lambda: (
        AffineCoupling(alternating_mask(D, 0), MLPConditioner(D, 2 * D, 8), "sigmoid"),
        vec(),
        None,
    ),
    "affine-checkerboard": lambda: (
        AffineCoupling(checkerboard_mask(IMG, 1), ConvConditioner(2, 4, 8, 1)),
        img(),
        None,
    ),
    "affine-channel": lambda: (
        AffineCoupling(channel_mask(IMG, 0), ConvConditioner(2, 4, 8, 0), "sigmoid"),
        img(),
        None,
    ),
    "additive-checkerboard": lambda: (
        AdditiveCoupling(checkerboard_mask(IMG, 0), ConvConditioner(2, 2, 8)),
        img(),
        None,
    ),
    "diagonal-scaling": lambda: (DiagonalScaling((D,)), vec(), None),
    "actnorm-vec": lambda: (ActNorm(D), vec() * 3 + 1, None),
    "actnorm-img": lambda: (ActNorm(2), img() * 3 + 1, None),
    "invconv-vec": lambda: (InvConv1x1(D), vec(), None),
    "invconv-img": lambda: (InvConv1x1(2), img(), None),
    "planar": lambda: (Planar(D), vec(), None),
    "planar-context": lambda: (Planar(D, CTX), vec(), torch.randn(B, CTX)),
    "made-flow": lambda: (MaskedAffineAutoregressive(D, [12, 12], CTX), vec(), torch.randn(B, CTX)),
    "iaf": lambda: (IAF(D, [12], CTX), vec(), torch.randn(B, CTX)),
    "reverse": lambda: (Reverse(), img(), None),
    "reshape": lambda: (Reshape(IMG, (32,)), img(), None),
    "shift": lambda: (Shift(-0.5), img(), None),
    "logit": lambda: (Logit(0.05), unit_img(), None),
    "squeeze": lambda: (Squeeze(), img(), None),
    "factor-out": lambda: (
        FactorOut(AffineCoupling(channel_mask((2, 2, 2), 0), ConvConditioner(2, 4, 8)), 2),
        img((4, 2, 2)),
        None,
    ),
    "inverse-planar": lambda: (Inverse(Planar(D)), vec(), None),
    # composed flows
    "nice": lambda: (nice((1, 4, 4), couplings=4, hidden=8, n_hidden=2), img((1, 4, 4)), None),
    "realnvp-multiscale": lambda: (realnvp((1, 4, 4), levels=2, steps=2, hidden=8, blocks=1), img((1, 4, 4)), None),
    "glow-multiscale": lambda: (
        Compose(Logit(0.05), glow((1, 4, 4), levels=2, steps=2, hidden=8)),
        unit_img((1, 4, 4)),
        None,
    ),
    "dense-realnvp": lambda: (dense_realnvp(D, 4, 8, context_dim=CTX), vec(), torch.randn(B, CTX)),
    "dense-glow": lambda: (dense_glow(D, 3, 8), vec(), None),
    "maf": lambda: (maf(D, 3, [12]), vec(), None),
    "iaf-stack": lambda: (iaf(D, 3, [12], CTX), vec(), torch.randn(B, CTX)),
    "planar-stack": lambda: (planar_flow(D, 4, CTX), vec(), torch.randn(B, CTX)),
    **{
        f"posterior-{k}": (lambda k=k: (POSTERIOR_FLOWS[k](D, 3, 8, 2, CTX), vec(), torch.randn(B, CTX)))
        for k in POSTERIOR_FLOWS
    },
    **{f"prior-{k}": (lambda k=k: (PRIOR_FLOWS[k](D, 3, 8, 2), vec(), None)) for k in PRIOR_FLOWS},
}


def make(name):
    """The case in float64 with perturbed parameters (zero-initialised layers are the identity)."""
    t, x, ctx = CASES[name]()
    t = t.double()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = x.double()
    ctx = None if ctx is None else ctx.double()
    t(x, context=ctx)  # data-dependent initialisation (ActNorm) happens on this first batch
    return t, x, ctx


@pytest.mark.parametrize("name", sorted(CASES))
def test_inverse_of_forward_is_identity_and_logdets_cancel(name):
    t, x, ctx = make(name)
    y, ld = t(x, context=ctx)
    assert ld.shape == (B,)
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()
    x_back, ld_inv = t.inverse(y, context=ctx)
    torch.testing.assert_close(x_back, x, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(ld + ld_inv, torch.zeros_like(ld), atol=1e-8, rtol=0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_logabsdet_matches_autograd_jacobian(name):
    t, x, ctx = make(name)
    _, ld = t(x, context=ctx)
    # one vectorised Jacobian of the whole batch; examples do not interact, so take the diagonal blocks
    jac = jacobian(lambda xb: t(xb, context=ctx)[0].reshape(B, -1), x, vectorize=True)
    n = x[0].numel()
    blocks = jac.reshape(B, n, B, n).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # [B, n, n]
    torch.testing.assert_close(ld, torch.linalg.slogdet(blocks).logabsdet, atol=1e-6, rtol=1e-6)


def test_inverse_object_swaps_directions():
    t, x, _ = make("affine-vec-sigmoid")
    inv = Inverse(t)
    y, ld = t(x)
    y2, ld2 = inv.inverse(x)
    torch.testing.assert_close(y2, y)
    torch.testing.assert_close(ld2, ld)
    assert torch.allclose(inv(y)[0], x)


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
