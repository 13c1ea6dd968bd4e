"""Checkpoints written before the package layout changed still load and give the same numbers.

The files in tests/data/legacy/ were written by tests/data/legacy/make.py with the code of
commit 97e98a1; each ``NAME.ref.pt`` holds that code's outputs on four examples under a fixed
seed. Loading must rebuild the same model (same config keys, same state-dict names) and the
estimators must reproduce the outputs.
"""

from pathlib import Path

import pytest
import torch

import vaekit

HERE = Path(__file__).parent / "data" / "legacy"
CASES = sorted(p.name[: -len(".ref.pt")] for p in HERE.glob("*.ref.pt"))


def test_every_case_is_present():
    assert {
        "dense-vae",
        "iaf-vamp",
        "mog-prior-gauss",
        "flow-prior-ema",
        "pixelvae",
        "realnvp",
        "gmm",
        "autoencoder",
    } <= set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_old_checkpoint_reproduces_its_outputs(name):
    ref = torch.load(HERE / f"{name}.ref.pt", weights_only=True)
    model = vaekit.load(HERE / f"{name}.pt")
    x = ref["x"]
    with torch.no_grad():
        torch.manual_seed(0)
        if "recon" in ref:
            torch.testing.assert_close(model.reconstruct(x), ref["recon"], rtol=1e-5, atol=1e-5)
        elif "loss" not in ref:
            torch.testing.assert_close(model.log_prob(x), ref["log_prob"], rtol=1e-5, atol=1e-4)
        else:
            torch.testing.assert_close(model.log_prob(x, k=8), ref["log_prob"], rtol=1e-5, atol=1e-4)
            torch.manual_seed(0)
            torch.testing.assert_close(model.loss(x)["loss"], ref["loss"], rtol=1e-5, atol=1e-4)
