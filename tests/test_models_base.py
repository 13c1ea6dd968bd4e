"""models.base: every model declares its contract; the defaults are safe."""

import math

import pytest
import torch

from vaekit.config import build_config
from vaekit.models import MODELS, build_model
from vaekit.models.base import GenerativeModel


def test_every_registered_kind_builds_a_generative_model_with_consistent_flags():
    kinds = {
        "vae": ("dense-digits", {}),
        "flow": ("dense-digits", {"kind": "flow", "flow_arch": "realnvp", "flow_levels": 1, "flow_steps": 1}),
        "mixture": ("gmm-digits", {}),
        "autoencoder": ("dense-digits", {"kind": "autoencoder"}),
    }
    assert set(kinds) == set(MODELS)
    for kind, (preset, sets) in kinds.items():
        model = build_model(build_config(preset, overrides=sets), (1, 8, 8))
        assert isinstance(model, GenerativeModel)
        assert model.log_prob_kind in ("exact", "importance-sampled", "none")
        if model.has_latents:  # encoder, decoder and prior exist
            assert model.has_codes
            assert model.encoder is not None and model.decoder is not None and model.prior is not None
        if model.has_codes:
            assert callable(model.encode) and callable(model.reconstruct)
        assert model.fitted_in_closed_form == (kind == "mixture")


class Bare(GenerativeModel):
    data_shape = (1, 2, 2)


def test_base_defaults_refuse_what_the_model_does_not_offer():
    m = Bare()
    with pytest.raises(NotImplementedError, match="defines no density"):
        m.log_prob(torch.zeros(1, 1, 2, 2))
    with pytest.raises(NotImplementedError, match="gradient steps"):
        m.fit(torch.zeros(1, 1, 2, 2))
    assert not (m.has_latents or m.has_codes or m.fitted_in_closed_form)


def test_default_bits_per_dim_is_nats_over_d_ln2():
    assert Bare().bits_per_dim(4 * math.log(2)) == pytest.approx(1.0)


def test_bits_per_dim_follow_the_declared_density_and_data_levels():
    """Bits of a probability (or of a bound on it) of binary or 8-bit data; none for a density at the
    data's values, nor for data that are neither binary nor 8-bit."""
    m = Bare()
    assert not m.density and m.data_levels == 256 and not m.has_bic
    assert m.bits_per_dim(4 * math.log(256)) == pytest.approx(8.0)  # uniform over 256 levels
    m.data_levels = 2
    assert m.bits_per_dim(4 * math.log(2)) == pytest.approx(1.0)
    m.density = True  # a density's value at a level says nothing of the level's probability
    assert m.bits_per_dim(0.0) is None
    m.density, m.data_levels = False, None
    assert m.bits_per_dim(0.0) is None
    with pytest.raises(NotImplementedError, match="no BIC"):
        m.n_parameters()


def test_build_model_records_the_data_levels_of_the_config():
    """``data_levels`` from the config; densities of 8-bit data (mixtures, Gaussian VAEs) dequantise
    them under ``model.dequantize: auto`` and are no densities then; ``false`` keeps the density."""
    for levels in (256, 2, None):
        cfg = build_config("gmm-digits", overrides={"data.levels": levels})
        model = build_model(cfg, (1, 8, 8))
        assert model.data_levels == levels and model.has_bic
        assert model.dequantize == (levels == 256) and model.density == (levels != 256)
    assert build_model(build_config("gmm-digits", overrides={"dequantize": False}), (1, 8, 8)).density
    gauss = {"likelihood": "gaussian"}
    vae = build_model(build_config("dense-digits", overrides=gauss), (1, 8, 8))
    assert not vae.density and vae.decoder.likelihood.dequantize
    assert build_model(build_config("dense-digits", overrides={**gauss, "data.levels": None}), (1, 8, 8)).density
    assert build_model(build_config("dense-digits", overrides={**gauss, "dequantize": False}), (1, 8, 8)).density
    assert not build_model(build_config("dense-digits"), (1, 8, 8)).density
    flow = {"kind": "flow", "flow_arch": "realnvp", "flow_levels": 1, "flow_steps": 1}
    assert not build_model(build_config("dense-digits", overrides=flow), (1, 8, 8)).density  # dequantised 8-bit
    flow["flow_dequantize"] = "none"
    assert build_model(build_config("dense-digits", overrides=flow), (1, 8, 8)).density


def test_a_bernoulli_model_of_grey_levels_nothing_binarises_has_no_bits_per_dim():
    """Its -log p is a cross-entropy against grey values, not the probability of the data."""
    for binarize, levels, defined in (("dynamic", 256, True), ("none", 256, False), ("none", 2, True)):
        cfg = build_config("dense-digits", overrides={"binarize": binarize, "data.levels": levels})
        model = build_model(cfg, (1, 8, 8))
        assert (model.bits_per_dim(100.0) is not None) == defined, (binarize, levels)
    gauss = build_config("dense-digits", overrides={"binarize": "none", "likelihood": "gaussian", "data.levels": 256})
    assert build_model(gauss, (1, 8, 8)).bits_per_dim(100.0) is not None


def test_dequantize_resolves_per_model_kind_and_data_levels():
    """auto: on for densities the builders dequantise (Gaussian VAEs, mixtures) of 8-bit data only;
    true elsewhere is refused in one line naming what it needs; false stays false."""
    from vaekit.config import ModelConfig
    from vaekit.errors import ConfigError
    from vaekit.models import DEQUANTIZABLE, resolve_dequantize

    assert set(DEQUANTIZABLE) == set(MODELS)
    gauss, bern = ModelConfig(likelihood="gaussian"), ModelConfig()
    mixture, flow = ModelConfig(kind="mixture"), ModelConfig(kind="flow")
    assert [resolve_dequantize(gauss, levels) for levels in (256, 2, None)] == [True, False, False]
    assert resolve_dequantize(mixture, 256) and not resolve_dequantize(bern, 256)
    assert not resolve_dequantize(flow, 256) and not resolve_dequantize(ModelConfig(kind="autoencoder"), 256)
    assert resolve_dequantize(ModelConfig(kind="toy"), 256) is False  # a kind registered elsewhere
    for cfg, levels, words in (
        (ModelConfig(likelihood="gaussian", dequantize=True), None, "are continuous"),
        (ModelConfig(kind="mixture", dequantize=True), 17, "have 17 levels"),
        (ModelConfig(dequantize=True), 256, "likelihood=bernoulli"),
        (ModelConfig(kind="flow", dequantize=True), 256, "flow_dequantize"),
    ):
        with pytest.raises(ConfigError, match=words) as e:
            resolve_dequantize(cfg, levels)
        assert "\n" not in str(e.value)
    assert resolve_dequantize(ModelConfig(likelihood="gaussian", dequantize=False), 256) is False
    # standardised values are no levels: auto is off, and true is refused
    assert resolve_dequantize(gauss, 256, standardized=True) is False
    with pytest.raises(ConfigError, match="standardize"):
        resolve_dequantize(ModelConfig(kind="mixture", dequantize=True), 256, standardized=True)
    stats = {"data.standardize": True, "data.feature_mean": [0.5] * 64, "data.feature_std": [0.2] * 64}
    cfg = build_config("gmm-digits", overrides=stats)
    model = build_model(cfg, (1, 8, 8))
    assert not model.dequantize and model.data_levels is None and model.bits_per_dim(1.0) is None


def test_a_dequantising_model_refuses_data_that_are_not_8bit_levels(tmp_path):
    """Its numbers would describe data it does not model: training and evaluation refuse them in one
    line, before a run folder exists; levels k/255 (as floats or from uint8) pass."""
    from vaekit.completion import complete, parse_mask
    from vaekit.data import on_levels
    from vaekit.errors import DataError
    from vaekit.evaluate import evaluate
    from vaekit.train import train

    levels = torch.randint(0, 256, (30, 1, 4, 4)).float() / 255
    assert on_levels(levels) and on_levels(levels.double()) and on_levels(torch.tensor([[0.0, 1.0]]), 2)
    assert on_levels(torch.empty(0, 3)) and not on_levels(torch.tensor([[float("nan")]]))
    assert not on_levels(levels + 1e-3) and not on_levels(-levels - 1 / 255) and not on_levels(levels * 256 / 255)
    cfg = build_config("dense-digits", overrides={"likelihood": "gaussian", "hidden": [8], "latent_dim": 2})
    cfg.train.tensorboard, cfg.train.eval_k = False, 0
    model = build_model(cfg, (1, 4, 4))
    assert model.dequantize
    with pytest.raises(DataError, match="not 8-bit levels") as e:
        train(cfg, tmp_path / "run", torch.rand(30, 1, 4, 4), progress=False)
    assert "\n" not in str(e.value) and "data.levels=null" in str(e.value) and not (tmp_path / "run").exists()
    with pytest.raises(DataError, match="the data are not 8-bit levels .* it scores only levels"):
        evaluate(model, torch.rand(5, 1, 4, 4), k=2, progress=False)
    with pytest.raises(DataError, match="not 8-bit levels"):
        complete(model, torch.rand(2, 1, 4, 4), parse_mask("left", (1, 4, 4)), k=4)
    assert evaluate(model, levels[:5], k=2, progress=False)["bpd"] is not None


def test_an_auto_dequantize_is_decided_once_and_a_resume_keeps_the_runs_decision():
    """A fresh run resolves auto from its data's levels; a resume given auto takes the checkpoint's
    value (false for a run saved before the field), and run configs compare resolved values."""
    from vaekit.checkpoint import config_differences
    from vaekit.config import Config
    from vaekit.train import _with_auto_resolved

    gauss = build_config("dense-digits", overrides={"likelihood": "gaussian"})
    assert _with_auto_resolved(gauss, None, torch.device("cpu")).model.dequantize is True
    assert gauss.model.dequantize == "auto"  # the caller's config is not changed
    old = gauss.to_dict()
    del old["model"]["dequantize"]  # saved before the field existed: evaluated at the levels
    assert _with_auto_resolved(gauss, {"config": old}, torch.device("cpu")).model.dequantize is False
    bern = build_config("dense-digits")
    old_bern = bern.to_dict()
    del old_bern["model"]["dequantize"]
    assert config_differences(old_bern, bern.to_dict()) == []  # auto resolves to false for a Bernoulli VAE
    assert config_differences(old, gauss.to_dict()) == ["model.dequantize: False vs True"]
    assert Config.from_dict(old).model.dequantize is False
