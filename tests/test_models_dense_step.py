"""The hand-derived step of the dense Gaussian/Bernoulli VAE equals autograd on the model's loss."""

from __future__ import annotations

import pytest
import torch

from vaekit.config import build_config
from vaekit.models import build_model
from vaekit.models.dense_step import DenseTwoLayerStep, dense_vae_step

CASES = [
    ("elbo", "reparam", 1, "tanh", {}),
    ("elbo", "reparam", 3, "relu", {}),
    ("elbo", "reparam", 2, "tanh", {"beta": 0.5, "warmup_steps": 10}),
    ("elbo", "stl", 1, "tanh", {}),
    ("elbo", "stl", 4, "relu", {"warmup_steps": 10}),
    ("iwae", "reparam", 1, "tanh", {}),
    ("iwae", "reparam", 5, "tanh", {}),
    ("iwae", "dreg", 5, "tanh", {}),
    ("iwae", "dreg", 3, "relu", {}),
]


def tiny_vae(objective="elbo", gradient="reparam", k=1, activation="tanh", hidden=(12, 9), **extra):
    overrides = {
        "hidden": list(hidden),
        "activation": activation,
        "latent_dim": 4,
        "likelihood": "bernoulli",
        "objective": objective,
        "gradient": gradient,
        "k": k,
        **extra,
    }
    torch.manual_seed(0)
    cfg = build_config("base", overrides=overrides)
    model = build_model(cfg, (1, 4, 5))
    with torch.no_grad():  # a decoder that is not at its initial symmetric point
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def autograd_terms(model, x, step, scale):
    model.zero_grad(set_to_none=True)
    out = model.loss(x, step=step)
    (out["loss"].sum() * scale).backward()
    return {k: v.detach() for k, v in out.items()}, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("objective, gradient, k, activation, extra", CASES)
def test_fused_step_equals_autograd(objective, gradient, k, activation, extra):
    check_against_autograd(tiny_vae(objective, gradient, k, activation, **extra))


def check_against_autograd(model, every_weight_moves=False):
    """The kernel's terms and ``p.grad`` equal autograd's on ``model.loss`` for the same noise."""
    x = torch.bernoulli(torch.rand(6, 1, 4, 5, generator=torch.Generator().manual_seed(1)))
    step, scale = 3, 1 / 6
    torch.manual_seed(7)
    want_terms, want_grads = autograd_terms(model, x, step, scale)
    fused = dense_vae_step(model)
    assert fused is not None
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # the same noise eps
    got_terms = fused(x, step, scale)
    assert set(got_terms) == set(want_terms)
    for name, want in want_terms.items():
        torch.testing.assert_close(got_terms[name], want, rtol=1e-5, atol=1e-4, msg=name)
    for name, p in model.named_parameters():
        if every_weight_moves:  # every net is on a path of the loss: a zero would test nothing
            assert want_grads[name].abs().sum() > 0, name
        torch.testing.assert_close(p.grad, want_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_fused_step_grads_reach_every_weight():
    model = tiny_vae()
    fused = dense_vae_step(model)
    fused(torch.bernoulli(torch.full((5, 1, 4, 5), 0.4)), 0, 0.2)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    want = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    torch.testing.assert_close(fused.grad_norm(), want)
    model.zero_grad(set_to_none=True)  # as after a skipped step: the next call writes the gradients again
    fused(torch.bernoulli(torch.full((5, 1, 4, 5), 0.4)), 0, 0.2)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize(
    "overrides",
    [
        {"free_bits": 0.5},
        {"activation": "elu"},
        {"likelihood": "gaussian"},
        {"prior": "mixture"},
        {"stochastic_layers": [3, 2], "layer_hidden": [5], "latent_dim": 5, "gradient": "stl"},
        {"encoder": "conv", "decoder": "conv", "channels": [4, 8]},
    ],
)
def test_no_kernel_outside_its_family(overrides):
    cfg = build_config("base", overrides={"hidden": [8], "latent_dim": 4, **overrides})
    shape = (1, 28, 28) if "encoder" in overrides else (1, 4, 5)
    assert dense_vae_step(build_model(cfg, shape)) is None


# Burda et al.'s two stochastic layers: z_1 [3], z_2 [2], q(z_2|z_1) and p(z_1|z_2) MLPs of width 5
TWO_LAYERS = {"stochastic_layers": [3, 2], "layer_hidden": [5], "latent_dim": 5}
CASES_2L = [
    ("elbo", "reparam", 1, "tanh", {}),
    ("elbo", "reparam", 3, "tanh", {}),
    ("elbo", "reparam", 2, "relu", {"beta": 0.5, "warmup_steps": 10}),
    ("iwae", "reparam", 1, "tanh", {}),
    ("iwae", "reparam", 3, "tanh", {}),
    ("iwae", "reparam", 4, "relu", {}),
]


@pytest.mark.parametrize("objective, gradient, k, activation, extra", CASES_2L)
def test_two_layer_fused_step_equals_autograd(objective, gradient, k, activation, extra):
    """Every path of z_1 (decoder, q(z_2|z_1)'s net, p(z_1|z_2)'s density) and of z_2 (p(z_1|z_2)'s
    net, both densities) is in the hand-derived gradient: every weight's gradient equals autograd's,
    with eps_1 and eps_2 drawn in the order of the chain's ``rsample``."""
    model = tiny_vae(objective, gradient, k, activation, **TWO_LAYERS, **extra)
    assert type(dense_vae_step(model)) is DenseTwoLayerStep
    check_against_autograd(model, every_weight_moves=True)


@pytest.mark.parametrize(
    "overrides",
    [
        {"gradient": "stl"},
        {"objective": "iwae", "gradient": "dreg", "k": 3},
        {"likelihood": "gaussian"},
        {"activation": "elu"},
    ],
)
def test_no_two_layer_kernel_outside_its_cases(overrides):
    cfg = build_config("base", overrides={"hidden": [8], **TWO_LAYERS, **overrides})
    assert dense_vae_step(build_model(cfg, (1, 4, 5))) is None


def test_two_layer_kernel_needs_a_standard_normal_top():
    model = tiny_vae(**TWO_LAYERS)
    model.prior_module.scale.fill_(2.0)  # p(z_2) = N(0, 4 I): not what the kernel computes
    assert dense_vae_step(model) is None


def test_two_layer_grads_share_one_buffer():
    """All four nets' gradients are views of the kernel's flat buffer: its norm is the global norm."""
    model = tiny_vae("iwae", k=2, **TWO_LAYERS)
    fused = dense_vae_step(model)
    assert {id(p) for p in fused.params} == {id(p) for p in model.parameters()}
    fused(torch.bernoulli(torch.full((5, 1, 4, 5), 0.4)), 0, 0.2)
    want = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    torch.testing.assert_close(fused.grad_norm(), want)
