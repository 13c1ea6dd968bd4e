"""Flow density models: the model contract, bits/dim with the 8-bit correction, presets,
config errors, state_dict round trips and invertibility after training."""

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from vaekit.config import PRESETS, apply_overrides, build_config, get_preset
from vaekit.errors import ConfigError, VaekitError
from vaekit.flows import ActNorm, Shift
from vaekit.models import build_model
from vaekit.models.flow import FlowModel

FLOW_PRESETS = ["nice-mnist", "realnvp-mnist", "glow-mnist", "realnvp-cifar", "glow-cifar"]
SMALL = {"flow_hidden": 8, "flow_blocks": 1, "flow_steps": 1}


def digits(n=128):
    """scikit-learn's 8x8 digits as 8-bit images k/255 in [0, 1], [n, 1, 8, 8]."""
    x = load_digits().images[:n] / 16.0
    return torch.tensor(np.round(x * 255) / 255, dtype=torch.float32)[:, None]


def tiny(preset, data_shape=(1, 8, 8), **overrides):
    cfg = get_preset(preset)
    apply_overrides(cfg, {**SMALL, **overrides})
    return build_model(cfg, data_shape)


@pytest.mark.parametrize("name", FLOW_PRESETS)
def test_flow_presets_resolve_and_build(name):
    assert name in PRESETS
    cfg = build_config(preset=name)  # validates
    assert cfg.model.kind == "flow" and cfg.data.binarize == "none"
    shape = (3, 32, 32) if "cifar" in name else (1, 28, 28)
    model = tiny(name, shape)
    x = torch.randint(0, 256, (2, *shape)).float() / 255
    out = model.loss(x)
    assert set(out) >= {"loss", "nll", "bpd"}
    assert all(v.shape == (2,) and torch.isfinite(v).all() for v in out.values())
    assert model.sample(2).shape == (2, *shape)


def test_loss_is_nll_and_bpd_includes_the_8bit_correction():
    """With T = identity and a N(0, 1) base, log P(x) = sum log N(y) - D log 256, y = (255 x + u) / 256."""
    model = FlowModel(Shift(0.0), (1, 4, 4))
    x = torch.randint(0, 256, (5, 1, 4, 4)).float() / 255
    torch.manual_seed(1)
    out = model.loss(x)
    torch.manual_seed(1)
    y = (x * 255 + torch.rand_like(x)) / 256
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(y).sum((1, 2, 3)) - 16 * math.log(256)
    torch.testing.assert_close(-out["nll"], expected)
    torch.testing.assert_close(out["loss"], out["nll"])
    torch.testing.assert_close(out["bpd"], out["nll"] / (16 * math.log(2)))
    assert FlowModel.log_prob_kind == "exact"


def test_the_training_bpd_is_the_evaluators_bits_per_dim():
    x = torch.randint(0, 256, (5, 1, 4, 4)).float() / 255
    model = FlowModel(Shift(0.0), (1, 4, 4), dequantize=True)
    out = model.loss(x)
    torch.testing.assert_close(out["bpd"], model.bits_per_dim(out["nll"]))
    torch.testing.assert_close(out["bpd"], out["nll"] / (16 * math.log(2)))
    # a density of undequantised 8-bit data bounds nothing: no bits per dimension, as in evaluate
    model = FlowModel(Shift(0.0), (1, 4, 4), dequantize=False)
    assert "bpd" not in model.loss(x) and model.bits_per_dim(model.loss(x)["nll"]) is None
    model.data_levels = None  # continuous features: none either
    assert "bpd" not in model.loss(x) and model.bits_per_dim(model.loss(x)["nll"]) is None


def test_logit_preprocessing_logdet_is_part_of_the_density():
    """A logit-only model's density integrates to 1 over [0, 1]: with a logistic base it is uniform."""
    model = build_model(
        build_config(
            overrides={"model.kind": "flow", "flow_preprocess": "logit", "flow_base": "logistic", "flow_alpha": 0.05}
        ),
        (1, 8, 8),
    )
    model.transform = model.transform.transforms[0]  # keep the logit alone
    x = digits(8)
    # logistic(logit(p)) dp = dp, and p = alpha + (1 - 2 alpha) y, so p(y) = 1 - 2 alpha exactly
    expected = 64 * (math.log(1 - 2 * 0.05) - math.log(256))
    torch.testing.assert_close(model.log_prob(x), torch.full((8,), expected), rtol=1e-4, atol=1e-4)


def test_samples_are_8bit_images_and_temperature_zero_is_the_mode_image():
    model = tiny("realnvp-mnist", (1, 8, 8))
    s = model.sample(6)
    assert s.shape == (6, 1, 8, 8) and s.min() >= 0 and s.max() <= 1
    torch.testing.assert_close(s * 255, (s * 255).round())
    cold = model.sample(3, temperature=0.0)
    assert torch.equal(cold[0], cold[1]) and torch.equal(cold[1], cold[2])


@pytest.mark.parametrize("preset", ["glow-mnist", "realnvp-mnist"])
def test_briefly_trained_flow_inverts_to_1e4_and_state_dict_round_trips(preset):
    torch.manual_seed(0)
    x = digits(128)
    model = tiny(preset, flow_hidden=16, flow_steps=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for step in range(30):
        batch = x[torch.randint(0, len(x), (32,))]
        loss = model.loss(batch, step=step)["loss"].mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert model.loss(x)["loss"].mean().item() < first
        y = (x * 255 + torch.rand_like(x)) / 256
        z, ld = model.transform(y)
        y_back, ld_back = model.transform.inverse(z)
        assert (y_back - y).abs().max() < 1e-4
        assert (ld + ld_back).abs().max() < 1e-2  # float32 sums of 64 terms each way

    # rebuilt from the config alone, then loaded: same function, ActNorm not re-initialised
    fresh = tiny(preset, flow_hidden=16, flow_steps=2)
    fresh.load_state_dict(model.state_dict())
    actnorms = [m for m in fresh.modules() if isinstance(m, ActNorm)]
    assert all(bool(m.initialized) for m in actnorms)
    torch.manual_seed(5)
    a = model.log_prob(x[:16])
    torch.manual_seed(5)
    b = fresh.log_prob(x[:16])
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"flow_arch": "maflow"}, "unknown model.flow_arch 'maflow'"),
        ({"flow_levels": 4}, "needs height and width divisible by 16; got 28x28"),
        ({"flow_preprocess": "sigmoid"}, "unknown model.flow_preprocess 'sigmoid'"),
        ({"flow_preprocess": "logit", "flow_alpha": 0.5}, "model.flow_alpha must be in (0, 0.5)"),
        ({"flow_base": "cauchy"}, "unknown model.flow_base 'cauchy'"),
        ({"flow_scale": "exp"}, "unknown model.flow_scale 'exp'"),
        ({"flow_steps": 0}, "model.flow_steps must be positive"),
    ],
)
def test_bad_flow_config_is_a_one_line_config_error(overrides, message):
    cfg = get_preset("glow-mnist")
    apply_overrides(cfg, overrides)
    with pytest.raises(ConfigError) as err:
        build_model(cfg, (1, 28, 28))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_log_prob_dequantises_with_the_one_data_function():
    """log P(x) = log p(y) - D log 256 at y = data.dequantize(x) (same noise under the same seed)."""
    from vaekit.data import dequantize

    model = FlowModel(Shift(-0.5), (1, 2, 2))
    x = torch.randint(0, 256, (3, 1, 2, 2)).float() / 255
    torch.manual_seed(4)
    lp = model.log_prob(x)
    torch.manual_seed(4)
    y = dequantize(x)
    expected = model.distribution().log_prob(y) - 4 * math.log(256)
    assert torch.equal(lp, expected)
    assert torch.equal(torch.floor(y * 256), x * 255)  # level k/255 lands in the bin [k, k + 1) / 256


def test_sampling_has_the_uniform_signature_and_refuses_a_mean_in_one_line():
    model = tiny("realnvp-mnist", (1, 8, 8))
    torch.manual_seed(0)
    a = model.sample(2, mean=False, temperature=0.5)
    torch.manual_seed(0)
    torch.testing.assert_close(a, model.sample(2, temperature=0.5))
    with pytest.raises(VaekitError) as e:
        model.sample(2, mean=True)
    assert "\n" not in str(e.value) and "mean=True (--mean)" in str(e.value) and "FlowModel" in str(e.value)
    with pytest.raises(VaekitError, match="temperature must be a finite number >= 0"):
        model.sample(2, temperature=-0.5)
