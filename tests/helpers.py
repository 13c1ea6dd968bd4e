"""Helpers shared by several test files (plain functions; fixtures live in conftest.py)."""

import pytest
import torch
from torch.autograd.functional import jacobian

from vaekit.config import ModelConfig
from vaekit.models.vae import build_vae
from vaekit.nets.mlp import ACTIVATIONS, INPLACE


def digits(binary: bool = True, n: int = 128) -> torch.Tensor:
    """scikit-learn's 8x8 digits [n, 1, 8, 8]: binarised at 1/2, or as 8-bit values k/255."""
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().images[:n] / 16).float().unsqueeze(1)
    return (x > 0.5).float() if binary else torch.round(x * 255) / 255


def trains_on_digits(cfg: ModelConfig, x: torch.Tensor, steps: int = 12, lr: float = 1e-2) -> tuple[float, float]:
    """(loss before, loss after) of a few Adam steps; the same posterior noise for both evaluations."""
    torch.manual_seed(0)
    model = build_vae(cfg, tuple(x.shape[1:]))
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def loss_on_all():
        torch.manual_seed(1)
        model.eval()
        with torch.no_grad():
            out = model.loss(x)["loss"].mean().item()
        model.train()
        return out

    before = loss_on_all()
    for step in range(steps):
        half = x.shape[0] // 2
        loss = model.loss(x[(step % 2) * half : (step % 2 + 1) * half])["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, loss_on_all()


# --- flow cases (tests/test_flows_*.py) -------------------------------------------------------
# A case is (transform, x, context or None): a batch of FLOW_B examples, vectors of FLOW_D
# features, contexts of FLOW_CTX features, images of shape FLOW_IMG.
FLOW_B, FLOW_D, FLOW_CTX = 3, 5, 4
FLOW_IMG = (2, 4, 4)


def vec():
    return torch.randn(FLOW_B, FLOW_D)


def img(shape=FLOW_IMG):
    return torch.randn(FLOW_B, *shape)


def unit_img(shape=FLOW_IMG):
    return torch.rand(FLOW_B, *shape) * 0.98 + 0.01


def perturbed(case):
    """The case in float64 with perturbed parameters (zero-initialised layers are the identity)."""
    t, x, ctx = case
    t = t.double()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = x.double()
    ctx = None if ctx is None else ctx.double()
    t(x, context=ctx)  # data-dependent initialisation (ActNorm) happens on this first batch
    return t, x, ctx


def inverse_test(cases):
    """A test, parametrised by the names of ``cases`` (name -> () -> (transform, x, context or None)):
    inverse(forward(x)) == x and the two log-determinants cancel. Bind it to a ``test_`` name."""

    @pytest.mark.parametrize("name", sorted(cases))
    def test_inverse_of_forward_is_identity_and_logdets_cancel(name):
        t, x, ctx = perturbed(cases[name]())
        y, ld = t(x, context=ctx)
        assert ld.shape == (FLOW_B,)
        assert torch.isfinite(y).all() and torch.isfinite(ld).all()
        x_back, ld_inv = t.inverse(y, context=ctx)
        torch.testing.assert_close(x_back, x, atol=1e-8, rtol=1e-8)
        torch.testing.assert_close(ld + ld_inv, torch.zeros_like(ld), atol=1e-8, rtol=0)

    return test_inverse_of_forward_is_identity_and_logdets_cancel


def jacobian_test(cases):
    """A test, parametrised by the names of ``cases`` like :func:`inverse_test`: the log-determinant
    equals log|det| of the autograd Jacobian. Bind it to a ``test_`` name."""

    @pytest.mark.parametrize("name", sorted(cases))
    def test_logabsdet_matches_autograd_jacobian(name):
        t, x, ctx = perturbed(cases[name]())
        _, ld = t(x, context=ctx)
        # one vectorised Jacobian of the whole batch; examples do not interact, so take the diagonal blocks
        jac = jacobian(lambda xb: t(xb, context=ctx)[0].reshape(FLOW_B, -1), x, vectorize=True)
        n = x[0].numel()
        blocks = jac.reshape(FLOW_B, n, FLOW_B, n).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # [B, n, n]
        torch.testing.assert_close(ld, torch.linalg.slogdet(blocks).logabsdet, atol=1e-6, rtol=1e-6)

    return test_logabsdet_matches_autograd_jacobian


def autocast_test(cases):
    """A test, parametrised by the names of ``cases`` like :func:`inverse_test`: under bf16 autocast on
    the CPU the data path and the log-determinants stay float32 (the conditioner nets may compute in
    bf16), so inverse(forward(x)) == x to float32 rounding and the log-determinants cancel. Bind it to a
    ``test_`` name."""

    @pytest.mark.parametrize("name", sorted(cases))
    def test_bf16_autocast_keeps_the_data_path_and_logdets_float32(name):
        t, x, ctx = perturbed(cases[name]())
        t, x, ctx = t.float(), x.float(), None if ctx is None else ctx.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, ld = t(x, context=ctx)
            x_back, ld_inv = t.inverse(y, context=ctx)
        assert {y.dtype, ld.dtype, x_back.dtype, ld_inv.dtype} == {torch.float32}
        torch.testing.assert_close(x_back, x, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ld + ld_inv, torch.zeros_like(ld), atol=1e-4, rtol=0)

    return test_bf16_autocast_keeps_the_data_path_and_logdets_float32


def tiny_digits_vae_args(run) -> list[str]:
    """``vaekit train`` arguments of a tiny dense VAE (16 hidden units, 2 latents, 1 epoch) on the 8x8
    digits into ``run``, without end-of-epoch evaluation or TensorBoard: the run the CLI tests use."""
    sets = ["hidden=[16]", "latent_dim=2", "eval_k=0", "tensorboard=false"]
    return ["train", "--preset", "dense-digits", "--epochs", "1", *[a for s in sets for a in ("--set", s)],
            "--out", str(run), "--no-progress"]  # fmt: skip


def tiny_vae_and_data(n: int = 10):
    """A dense-digits VAE on 1x4x4 images (16 hidden units, 3 latents; weights from seed 0, in eval
    mode) and n fixed binary examples [n, 1, 4, 4]: the smallest model the evaluator's tests need."""
    from vaekit.config import build_config
    from vaekit.models import build_model

    torch.manual_seed(0)
    model = build_model(build_config("dense-digits", overrides={"hidden": [16], "latent_dim": 3}), (1, 4, 4)).eval()
    x = torch.bernoulli(torch.full((n, 1, 4, 4), 0.3), generator=torch.Generator().manual_seed(1))
    return model, x


def assert_in_place_activations_change_nothing(net, x, expect_in_place: bool = True) -> None:
    """``net(x)`` and the gradients of every parameter are the same (float64 tolerances) with the
    net's in-place activations as built and with all of them switched out of place."""
    import copy

    flags = [m for m in net.modules() if isinstance(m, IN_PLACE_ACTIVATIONS)]
    assert any(m.inplace for m in flags) == expect_in_place
    plain = copy.deepcopy(net)
    for m in plain.modules():
        if isinstance(m, IN_PLACE_ACTIVATIONS):
            m.inplace = False
    out, ref = net(x), plain(x)
    out, ref = (out[0], ref[0]) if isinstance(out, tuple) else (out, ref)
    assert torch.allclose(out, ref, atol=1e-12)
    grads = torch.autograd.grad(out.sin().sum(), list(net.parameters()), allow_unused=True)
    ref_grads = torch.autograd.grad(ref.sin().sum(), list(plain.parameters()), allow_unused=True)
    for a, b in zip(grads, ref_grads):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-10))


IN_PLACE_ACTIVATIONS = tuple(ACTIVATIONS[name] for name in INPLACE)
