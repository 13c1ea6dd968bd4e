"""The hand-derived step of the dense Gaussian/Bernoulli VAE equals autograd on the model's loss."""

from __future__ import annotations

import pytest
import torch

from vaekit.config import build_config
from vaekit.models import build_model
from vaekit.models.dense_step import dense_vae_step

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
    model = tiny_vae(objective, gradient, k, activation, **extra)
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
        {"stochastic_layers": [3, 2], "layer_hidden": [5], "latent_dim": 5},
        {"encoder": "conv", "decoder": "conv", "channels": [4, 8]},
    ],
)
def test_no_kernel_outside_its_family(overrides):
    cfg = build_config("base", overrides={"hidden": [8], "latent_dim": 4, **overrides})
    shape = (1, 28, 28) if "encoder" in overrides else (1, 4, 5)
    assert dense_vae_step(build_model(cfg, shape)) is None
