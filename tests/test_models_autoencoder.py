"""Deterministic and denoising autoencoders: same nets as the VAE, the model contract."""

import pytest
import torch

from vaekit.config import build_config
from vaekit.errors import ConfigError, VaekitError
from vaekit.models import build_model
from vaekit.models.autoencoder import Autoencoder


def small(preset="ae-mnist", **over):
    cfg = build_config(preset, overrides={"hidden": [16], "latent_dim": 3, **over})
    return build_model(cfg, (1, 4, 4)), cfg


def test_same_nets_as_the_vae():
    ae, cfg = small()
    cfg.model.kind = "vae"
    vae = build_model(cfg, (1, 4, 4))
    shapes = lambda m: {k: v.shape for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(ae.decoder) == shapes(vae.decoder)
    enc_ae, enc_vae = shapes(ae.encoder), shapes(vae.encoder.body)
    assert enc_ae.keys() == enc_vae.keys()
    last = list(enc_ae)[-1]  # only the output layer differs: D codes instead of (mu, log var)
    assert enc_ae[last][0] * 2 == enc_vae[last][0]


def test_training_reduces_reconstruction_loss_and_contract():
    ae, _ = small()
    x = (torch.rand(32, 1, 4, 4) > 0.5).float()
    opt = torch.optim.Adam(ae.parameters(), lr=1e-2)
    first = ae.loss(x)["loss"].mean().item()
    for _ in range(60):
        opt.zero_grad()
        terms = ae.loss(x)
        terms["loss"].mean().backward()
        opt.step()
    assert terms["loss"].shape == (32,) and torch.allclose(terms["loss"], -terms["rec"])
    assert ae.loss(x)["loss"].mean().item() < first
    z, log_var = ae.encode(x)
    assert z.shape == (32, 3) and torch.isinf(log_var).all()
    assert ae.reconstruct(x).shape == x.shape
    assert ae.sample(5).shape == (5, 1, 4, 4) and ae.sample(5, mean=True).shape == (5, 1, 4, 4)
    assert ae.log_prob_kind == "none"
    with pytest.raises(VaekitError, match="no density"):
        ae.log_prob(x)
    ae2, _ = small()
    ae2.load_state_dict(ae.state_dict())
    torch.testing.assert_close(ae2.reconstruct(x), ae.reconstruct(x))


@pytest.mark.parametrize("noise_type", ["gaussian", "mask"])
def test_denoising_corrupts_in_training_only(noise_type):
    dae, _ = small("dae-mnist", ae_noise_type=noise_type, ae_noise=0.5)
    assert isinstance(dae, Autoencoder) and dae.denoising
    x = torch.rand(8, 1, 4, 4)
    xt = dae.corrupt(x)
    assert not torch.equal(xt, x)
    if noise_type == "mask":
        assert ((xt == 0) | (xt == x)).all()
    dae.eval()
    torch.testing.assert_close(dae.loss(x)["loss"], dae.loss(x)["loss"])  # deterministic in eval
    dae.train()
    assert not torch.equal(dae.loss(x)["loss"], dae.loss(x)["loss"])


def test_bad_noise_config():
    with pytest.raises(ConfigError, match="unknown model.ae_noise_type 'salt'; known: "):
        small(ae_noise_type="salt")
    with pytest.raises(ConfigError):
        small(ae_noise=1.5, ae_noise_type="mask")


def test_cli_autoencoder_sample_and_interpolate(tmp_path):
    from vaekit.cli import main

    run = tmp_path / "ae"
    assert (
        main(
            [
                "train",
                "--preset",
                "dae-mnist",
                "--data",
                "digits",
                "--epochs",
                "1",
                "--set",
                "hidden=[16]",
                "--set",
                "latent_dim=2",
                "--set",
                "tensorboard=false",
                "--out",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    for cmd in (
        ["sample", str(run), "-n", "4", "-o", str(tmp_path / "s.png")],
        ["interpolate", str(run), "--steps", "3", "--pairs", "2", "-o", str(tmp_path / "i.png")],
        ["reconstruct", str(run), "-n", "4", "-o", str(tmp_path / "r.png")],
    ):
        assert main(cmd) == 0
        assert (tmp_path / cmd[-1].split("/")[-1]).is_file()


def test_evaluate_reports_the_reconstruction_term_and_no_density():
    from vaekit.evaluate import evaluate, format_table

    model, _ = small()
    x = torch.bernoulli(torch.full((20, 1, 4, 4), 0.3))
    res = evaluate(model, x, progress=False)
    assert res["log_prob_kind"] == "none" and res["nll"] is None and res["bpd"] is None
    torch.testing.assert_close(torch.tensor(res["rec"]), model.loss(x)["rec"].mean().double().float())
    assert "rec" in format_table(res) and "nll" not in format_table(res)


def test_sampling_temperature_scales_the_code_and_zero_decodes_the_origin():
    ae, _ = small()
    torch.testing.assert_close(
        ae.sample(3, temperature=0.0), ae.decode_to_x(torch.zeros(3, 3), mean=True), rtol=0, atol=0
    )
    torch.manual_seed(0)
    warm = ae.sample(3, mean=True, temperature=2.0)
    torch.manual_seed(0)
    z = 2.0 * torch.randn(3, 3)
    torch.testing.assert_close(warm, ae.decode_to_x(z, mean=True))
    with pytest.raises(VaekitError, match="temperature must be a finite number >= 0"):
        ae.sample(3, temperature=float("nan"))
