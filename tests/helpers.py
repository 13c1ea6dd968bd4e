"""Helpers shared by several test files (plain functions; fixtures live in conftest.py)."""

import torch

from vaekit.config import ModelConfig
from vaekit.models.vae import build_vae


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
