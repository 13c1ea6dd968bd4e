"""Image completion: mask parsing, observed pixels untouched, held-out log-likelihood."""

import math

import numpy as np
import pytest
import torch

from tests.helpers import tiny_digits_vae_args
from vaekit.completion import complete, format_completion_summary, parse_mask
from vaekit.config import build_config
from vaekit.errors import DataError, VaekitError
from vaekit.models.vae import build_vae


@pytest.fixture(scope="module")
def trained():
    """A tiny Bernoulli VAE on 1x4x4 images made of four prototypes (top half decides bottom)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    protos = (torch.rand(4, 1, 4, 4, generator=g) > 0.5).float()
    protos[:, :, :2] = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.float32).view(
        4, 1, 1, 4
    )  # distinct top halves
    x = protos[torch.randint(4, (64,), generator=g)]
    cfg = build_config(overrides={"hidden": [32], "latent_dim": 2})
    vae = build_vae(cfg.model, (1, 4, 4), cfg.train)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    for step in range(300):
        opt.zero_grad()
        vae.loss(x, step)["loss"].mean().backward()
        opt.step()
    return vae.eval(), x


def test_parse_mask_halves_and_random(tmp_path):
    shape = (1, 4, 6)
    top = parse_mask("top", shape)
    assert top.shape == shape and top[:, :2].sum() == 0 and top[:, 2:].min() == 1
    assert parse_mask("bottom", shape)[:, 2:].sum() == 0
    assert parse_mask("left", shape)[:, :, :3].sum() == 0 and parse_mask("right", shape)[:, :, 3:].sum() == 0
    r = parse_mask("random:0.5", (3, 20, 20), seed=1)
    assert r.shape == (3, 20, 20) and torch.equal(r[0], r[2])  # whole pixels go missing
    assert 0.4 < 1 - r.mean().item() < 0.6
    assert torch.equal(parse_mask("random:0.5", (3, 20, 20), seed=1), r)
    torch.manual_seed(1)  # `vaekit complete` seeds its posterior samples with the same --seed
    assert not torch.equal(r[0], (torch.rand(20, 20) >= 0.5).float())  # the mask draws from its own stream
    np.save(tmp_path / "m.npy", np.eye(4, 6))
    f = parse_mask(str(tmp_path / "m.npy"), shape)
    assert f.shape == shape and f.sum() == 24 - 4
    from PIL import Image

    Image.fromarray((np.eye(4, 6) * 255).astype(np.uint8)).save(tmp_path / "m.png")
    assert torch.equal(parse_mask(str(tmp_path / "m.png"), shape), f)
    for bad in ("middle", "random:2", "random:x"):
        with pytest.raises(VaekitError):
            parse_mask(bad, shape)
    with pytest.raises(VaekitError):
        parse_mask("top", (16,))
    with pytest.raises(DataError):
        parse_mask(str(tmp_path / "m.npy"), (1, 5, 5))


@pytest.mark.parametrize("method", ["importance", "svi"])
@pytest.mark.parametrize("spec", ["bottom", "random:0.5"])
def test_completion_leaves_observed_pixels_untouched(trained, method, spec):
    vae, x = trained
    xb = x[:6]
    mask = parse_mask(spec, (1, 4, 4), seed=3)
    res = complete(vae, xb, mask, n_completions=5, method=method, k=100, svi_steps=20, svi_lr=5e-2)
    comp = res["completions"]
    assert comp.shape == (6, 5, 1, 4, 4)
    obs = mask.bool().expand_as(xb)
    for s in range(5):
        assert torch.equal(comp[:, s][obs], xb[obs])  # bit for bit
    # missing pixels are Bernoulli draws
    assert ((comp == 0) | (comp == 1)).all()
    assert res["heldout_log_lik"].shape == (6,) and (res["heldout_log_lik"] <= 1e-6).all()
    assert res["heldout_log_lik_per_completion"].shape == (6, 5)
    assert (res["ess"] >= 1 - 1e-4).all() and (res["ess"] <= 100 + 1e-3).all()
    assert "per held-out pixel" in format_completion_summary(res["summary"])


def test_completion_uses_the_observed_pixels(trained):
    """Given the top half, the bottom half of a prototype is predicted far better than chance,
    and the missing pixels' true values never influence the completions."""
    vae, x = trained
    mask = parse_mask("bottom", (1, 4, 4))
    torch.manual_seed(1)
    res = complete(vae, x[:16], mask, n_completions=4, k=300)
    assert res["summary"]["heldout_log_lik_per_pixel"]["mean"] > math.log(0.5) + 0.3
    x2 = x[:16].clone()
    x2[:, :, 2:] = 1 - x2[:, :, 2:]
    torch.manual_seed(1)
    res2 = complete(vae, x2, mask, n_completions=4, k=300)
    torch.testing.assert_close(res2["completions"][:, :, :, 2:], res["completions"][:, :, :, 2:])
    # the held-out pixels scored are the swapped ones now: worse
    assert res2["heldout_log_lik"].mean() < res["heldout_log_lik"].mean()


def test_completion_bad_input(trained):
    vae, x = trained
    with pytest.raises(VaekitError, match="hides no pixel"):
        complete(vae, x[:2], torch.ones(1, 4, 4))
    with pytest.raises(VaekitError, match="method"):
        complete(vae, x[:2], parse_mask("top", (1, 4, 4)), method="magic")
    with pytest.raises(VaekitError, match="shape"):
        complete(vae, x[:2], torch.ones(3, 3))


def test_cli_complete_writes_png(tmp_path, capsys):
    import json

    from vaekit.cli import main

    run = tmp_path / "vae"
    assert main(tiny_digits_vae_args(run)) == 0
    out = tmp_path / "completion.png"
    assert (
        main(
            [
                "complete",
                str(run),
                "--mask",
                "top",
                "-o",
                str(out),
                "-n",
                "3",
                "--completions",
                "4",
                "--k",
                "50",
                "--json",
                str(tmp_path / "c.json"),
            ]
        )
        == 0
    )
    from PIL import Image

    with Image.open(out) as im:
        assert im.size[0] > im.size[1]  # rows of (masked input, 4 completions, original)
    doc = json.loads((tmp_path / "c.json").read_text())
    assert len(doc["heldout_log_lik"]) == 3 and len(doc["heldout_log_lik_per_completion"][0]) == 4
    assert "held-out" in capsys.readouterr().out
    assert main(["complete", str(run), "--mask", "diagonal", "-o", str(out)]) == 2


def test_parse_mask_says_a_mask_file_does_not_exist(tmp_path):
    for missing in (tmp_path / "nofile.npy", tmp_path / "sub" / "mask"):
        with pytest.raises(DataError) as e:
            parse_mask(str(missing), (1, 4, 6))
        assert str(e.value) == f"mask file {missing} does not exist"
    with pytest.raises(DataError, match="is a folder"):
        parse_mask(str(tmp_path), (1, 4, 6))
    with pytest.raises(VaekitError, match="unknown mask 'middle'"):
        parse_mask("middle", (1, 4, 6))
