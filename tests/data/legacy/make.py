"""Writes the frozen checkpoints that tests/test_legacy_checkpoints.py loads.

Run once, with the code of commit 97e98a1 (2026-11-21, before the package layout of
docs/architecture.md): ``python tests/data/legacy/make.py``. Each case trains a tiny model for
a few steps on scikit-learn's 8x8 digits and keeps its newest checkpoint beside a reference
file of outputs (log p(x) with a fixed seed, the posterior mean, the prior's log-density) that
the current code must reproduce from the old file.
"""

import shutil
import tempfile
from pathlib import Path

import torch
from sklearn.datasets import load_digits

from vaekit import checkpoint as ckpt
from vaekit.config import build_config
from vaekit.train import train

HERE = Path(__file__).parent
CASES = {
    "dense-vae": ("dense-digits", {"hidden": [16], "latent_dim": 3}),
    "iaf-vamp": (
        "dense-digits",
        {
            "hidden": [16],
            "latent_dim": 3,
            "posterior_flow": "iaf",
            "posterior_flow_layers": 2,
            "prior": "vamp",
            "components": 4,
        },
    ),
    "mog-prior-gauss": (
        "dense-digits",
        {
            "hidden": [16],
            "latent_dim": 2,
            "prior": "mixture",
            "components": 3,
            "likelihood": "gaussian",
            "variance": "global",
            "binarize": "none",
        },
    ),
    "flow-prior-ema": (
        "dense-digits",
        {"hidden": [16], "latent_dim": 2, "prior": "flow", "prior_flow_layers": 2, "ema": 0.9},
    ),
    "pixelvae": (
        "dense-digits",
        {
            "encoder": "conv",
            "decoder": "conv",
            "channels": [4],
            "latent_dim": 2,
            "likelihood": "pixelcnn",
            "pixelcnn_layers": 2,
            "pixelcnn_channels": 4,
            "pixelcnn_cond": 2,
        },
    ),
    "realnvp": (
        "dense-digits",
        {
            "kind": "flow",
            "flow_arch": "realnvp",
            "flow_levels": 1,
            "flow_steps": 1,
            "flow_hidden": 4,
            "flow_blocks": 1,
            "binarize": "none",
        },
    ),
    "gmm": ("gmm-digits", {"components": 3, "covariance": "diag", "em_max_iter": 5, "em_restarts": 1}),
    "autoencoder": ("dense-digits", {"kind": "autoencoder", "hidden": [16], "latent_dim": 3, "eval_k": 0}),
}


def main():
    x = torch.tensor(load_digits().data[:200], dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    x8 = torch.round(x * 255) / 255
    for name, (preset, sets) in CASES.items():
        cfg = build_config(
            preset, overrides={"epochs": 1, "batch_size": 50, "eval_k": 0, "tensorboard": False, "log_every": 1, **sets}
        )
        with tempfile.TemporaryDirectory() as d:
            run = Path(d) / "run"
            data = x8 if cfg.data.binarize == "none" else (x > 0.5).float()
            train(cfg, run, data, None, progress=False)
            path, state = ckpt.latest_checkpoint(run)
            shutil.copy(path, HERE / f"{name}.pt")
        model, _, _ = ckpt.load_model(HERE / f"{name}.pt")
        probe = data[:4]
        ref = {"x": probe}
        with torch.no_grad():
            torch.manual_seed(0)
            if cfg.model.kind == "autoencoder":
                ref["recon"] = model.reconstruct(probe)
            elif cfg.model.kind in ("flow", "mixture"):
                ref["log_prob"] = model.log_prob(probe)
            else:
                ref["log_prob"] = model.log_prob(probe, k=8)
                torch.manual_seed(0)
                ref["loss"] = model.loss(probe)["loss"]
        torch.save(ref, HERE / f"{name}.ref.pt")
        print(name, {k: v.flatten()[:3].tolist() for k, v in ref.items() if k != "x"})


if __name__ == "__main__":
    main()
