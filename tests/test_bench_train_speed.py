"""bench/train_speed.py --burda runs end to end (a few steps: nothing is timed or compared here)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("layers", ["1", "2"])
def test_burda_comparison_runs_and_names_every_side(layers):
    if not (ROOT.parent / "shared" / "datasets" / "mnist").is_dir() and "VAEKIT_DATA" not in os.environ:
        pytest.skip("MNIST is not in ../shared/datasets")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "bench" / "train_speed.py"), "--burda", "--steps", "10", "--rounds", "1"]
    cmd += ["--batch", "20", "--threads", "1", "--layers", layers]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    for side in ("bare eager loop", "vaekit train, hand-derived gradient", "vaekit train, autograd (fused=false)"):
        assert side in out.stdout
    assert "ratio vaekit (hand-derived) / bare loop" in out.stdout and "batch 20" in out.stdout
    assert f"iwae-{layers}l" in out.stdout


def test_the_bare_two_layer_loop_is_the_models_elbo():
    """The bare loop's loss is iwae-2l's own ELBO: the same nets (weights copied) and the same noise give
    the same number, so the comparison times the same computation."""
    import torch

    sys.path.insert(0, str(ROOT))
    from bench.train_speed import _mlp, two_layer_neg_elbo
    from vaekit.config import build_config
    from vaekit.models import build_model

    torch.manual_seed(0)
    model = build_model(build_config("iwae-2l"), (1, 28, 28))
    x = torch.bernoulli(torch.full((5, 1, 28, 28), 0.3))
    torch.manual_seed(1)
    ours = model.loss(x, step=10**9)["elbo"]
    nets = [_mlp(784, 200, 200), _mlp(100, 100, 100), _mlp(50, 100, 200), _mlp(100, 200, 784)]
    bodies = [model.encoder.body, model.encoder.layers[0].body, model.prior_module.layers[0].body, model.decoder.body]
    for bare, body in zip(nets, bodies):
        linear = [[m for m in net.modules() if isinstance(m, torch.nn.Linear)] for net in (bare, body)]
        for a, b in zip(*linear, strict=True):
            a.load_state_dict(b.state_dict())
    torch.manual_seed(1)
    theirs = -two_layer_neg_elbo(*nets)(x.view(5, 784))
    assert torch.allclose(ours, theirs, atol=1e-3), (ours, theirs)
