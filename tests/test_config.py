"""Typed configs: presets inherit, overrides are type-checked, mistakes get one-line errors."""

import pytest

from vaekit.config import PRESETS, REMOVED_KEYS, Config, build_config, get_preset, parse_set, preset_chain
from vaekit.errors import ConfigError


def test_presets_inherit_and_round_trip():
    cfg = get_preset("dense-mnist-2d")
    assert cfg.model.latent_dim == 2 and cfg.model.likelihood == "bernoulli"
    assert cfg.train.batch_size == 128  # from dense-mnist
    again = Config.from_dict(cfg.to_dict())
    assert again == cfg


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_resolves_and_validates(name):
    build_config(name)


def test_overrides_by_bare_or_dotted_key():
    cfg = build_config("iwae-1l", overrides=["objective=iwae", "k=50", "train.lr=3e-4", "hidden=[100]"])
    assert (cfg.train.objective, cfg.train.k, cfg.train.lr, cfg.model.hidden) == ("iwae", 50, 3e-4, [100])


def test_yaml_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: dense-mnist\nmodel: {latent_dim: 3}\nk: 5\n")
    cfg = build_config(config_file=str(f))
    assert cfg.model.latent_dim == 3 and cfg.train.k == 5 and cfg.preset == "dense-mnist"


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"preset": "dense-mnst"}, "unknown preset 'dense-mnst' (did you mean 'dense-mnist'?)"),
        ({"overrides": ["latnt_dim=3"]}, "unknown config key 'latnt_dim'"),
        ({"overrides": ["latent_dim=abc"]}, "wants an integer"),
        ({"overrides": ["latent_dim=0"]}, "must be positive"),
        ({"overrides": ["objective=wake-sleep"]}, "unknown train.objective 'wake-sleep'; known: elbo, iwae"),
        ({"overrides": ["hidden=5"]}, "wants a list"),
        ({"overrides": ["noequals"]}, "--set wants key=value"),
        ({"overrides": ["tensorboard=maybe"]}, "wants true or false"),
    ],
)
def test_bad_config_gives_one_line_error(kwargs, fragment):
    with pytest.raises(ConfigError) as e:
        build_config(**kwargs)
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        build_config(config_file=str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(config_file=str(bad))
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        build_config(config_file=str(notmap))


def test_parse_set_reads_yaml_values():
    assert parse_set(["a=1", "b=[1, 2]", "c=true", "d=cosine"]) == {"a": 1, "b": [1, 2], "c": True, "d": "cosine"}


def test_old_checkpoint_config_with_removed_key_at_its_default_loads():
    saved = get_preset("dense-mnist").to_dict()
    saved["data"]["valid_size"] = 0  # what every checkpoint written before its removal holds
    assert Config.from_dict(saved) == get_preset("dense-mnist")


def test_removed_key_with_another_value_is_refused():
    saved = Config().to_dict()
    saved["data"]["valid_size"] = 1000
    with pytest.raises(ConfigError) as e:
        Config.from_dict(saved)
    assert "data.valid_size" in str(e.value) and "removed" in str(e.value) and "1000" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("override", ["valid_size=0", "data.valid_size=100"])
def test_removed_key_is_unknown_to_overrides(override):
    with pytest.raises(ConfigError, match="unknown config key"):
        build_config("base", overrides=[override])
    assert "valid_size" not in Config().to_dict()["data"] and "data.valid_size" in REMOVED_KEYS


def test_a_saved_config_without_an_added_key_reads_the_value_it_had_in_effect():
    """model.dequantize came later: a saved config without it was evaluated at the levels (false);
    one that has it, and a fresh config, keep theirs."""
    old = Config().to_dict()
    del old["model"]["dequantize"]
    assert Config.from_dict(old).model.dequantize is False
    assert Config().model.dequantize == "auto" and Config.from_dict(Config().to_dict()).model.dequantize == "auto"
    with pytest.raises(ConfigError, match="model.dequantize must be auto, true or false"):
        build_config("base", overrides={"dequantize": "yes"})


def test_preset_chain_runs_from_base_and_names_unknown_presets():
    assert preset_chain("dae-mnist") == ["base", "dense-mnist", "ae-mnist", "dae-mnist"]
    with pytest.raises(ConfigError) as e:
        preset_chain("nope")
    assert "unknown preset 'nope'" in str(e.value) and "base" in str(e.value)


@pytest.mark.parametrize(
    "override", ["ckpt_every=0", "log_every=0", "eval_n=0", "max_bad_steps=0", "ckpt_every=-5", "eval_k=-1"]
)
def test_step_counts_must_be_positive(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"train.{key} must be"):
        build_config("dense-digits", overrides=[override])
    assert build_config("dense-digits", overrides=["eval_k=0"]).train.eval_k == 0  # 0: no evaluation


def test_a_zero_checkpoint_interval_is_refused_before_any_run_folder_exists(tmp_path, capsys):
    from vaekit.cli import main

    assert main(["train", "--preset", "dense-digits", "--set", "ckpt_every=0", "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err == "vaekit: error: train.ckpt_every must be positive; got 0\n"
    assert not (tmp_path / "r").exists()


def test_named_keys_are_what_the_user_set_not_what_a_preset_supplies(tmp_path):
    from vaekit.config import named_keys

    assert named_keys("", None) == set()
    assert named_keys(None, ["k=5", "data.binarize=none", "model.kind=vae"]) == {
        "train.k",
        "data.binarize",
        "model.kind",
    }
    f = tmp_path / "c.yaml"
    f.write_text("preset: dense-frey\nbinarize: static\nmodel: {latent_dim: 3}\n")
    assert named_keys(str(f), {"lr": 0.1}) == {"data.binarize", "model.latent_dim", "train.lr"}
    assert "data.binarize" not in named_keys(None, ["likelihood=gaussian"])  # dense-frey's own is not named


def test_burda_schedule_derives_the_epochs_and_records_the_scale(tmp_path):
    cfg = build_config("iwae-1l", overrides=["schedule=burda", "adam_eps=1e-4"])
    assert (cfg.train.epochs, cfg.train.schedule_scale, cfg.train.adam_eps) == (3280, 1.0, 1e-4)
    cfg = build_config("iwae-2l", overrides=["schedule=burda", "schedule_scale=0.1"])
    assert cfg.train.epochs == 330 and Config.from_dict(cfg.to_dict()) == cfg
    assert build_config("iwae-1l", overrides={"schedule": "burda", "epochs": 3280}).train.epochs == 3280
    f = tmp_path / "c.yaml"
    f.write_text("preset: iwae-1l\ntrain: {schedule: burda, schedule_scale: 0.01}\n")
    assert build_config(config_file=str(f)).train.epochs == 36  # stages 1, 1, 1, 1, 1, 2, 7, 22
    # epochs given explicitly are checked, never silently replaced
    for overrides in (
        ["schedule=burda", "epochs=100"],
        ["schedule=burda", "train.epochs=3"],
        {"train": {"epochs": 7, "schedule": "burda"}},
    ):
        with pytest.raises(ConfigError, match="train.epochs must be 3280 with schedule=burda") as e:
            build_config("iwae-1l", overrides=overrides)
        assert "\n" not in str(e.value)
    f.write_text("preset: iwae-1l\nepochs: 5\nschedule: burda\n")
    with pytest.raises(ConfigError, match="train.epochs must be 3280"):
        build_config(config_file=str(f))


def test_the_two_layer_preset_is_burdas_net():
    cfg = get_preset("iwae-2l")
    assert preset_chain("iwae-2l") == ["base", "iwae-1l", "iwae-2l"]
    m = cfg.model
    assert (m.stochastic_layers, m.latent_dim, m.layer_hidden, m.hidden, m.activation) == (
        [100, 50],
        150,
        [100, 100],
        [200, 200],
        "tanh",
    )


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["gradient=dreg"], "train.gradient=dreg needs objective=iwae"),
        (["gradient=stl", "objective=iwae"], "train.gradient=stl needs objective=elbo"),
        (["gradient=stl", "posterior_flow=iaf"], "no posterior_flow"),
        (["gradient=sf"], "unknown train.gradient 'sf'; known: reparam, stl, dreg"),
        (["objective=iwae", "beta=0.5"], "train.beta=0.5 weights the ELBO's KL term, which objective=iwae does not"),
        (["objective=iwae", "warmup_steps=10"], "train.warmup_steps=10 weights the ELBO's KL term"),
        (["objective=iwae", "free_bits=0.5"], "train.free_bits=0.5 weights the ELBO's KL term"),
        (["free_bits=0.5", "gradient=stl"], "train.free_bits floors each latent dimension's analytic KL"),
        (["free_bits=0.5", "prior=vamp"], "a Gaussian q(z|x) (no posterior_flow), prior=normal"),
        (["free_bits=0.5", "posterior_flow=iaf"], "train.free_bits floors each latent dimension's analytic KL"),
        (["free_bits=0.5", "stochastic_layers=[4, 2]", "latent_dim=6"], "and one stochastic layer"),
        (["kind=flow", "flow_arch=maf", "flow_blocks=0"], "model.flow_blocks must be >= 1 for flow_arch=maf"),
        (["decoder_bias_init=data_mean", "likelihood=gaussian"], "needs a VAE with likelihood=bernoulli"),
        (["decoder_bias_init=data_mean", "kind=autoencoder"], "needs a VAE with likelihood=bernoulli"),
        (["decoder_bias_init=mean"], "unknown model.decoder_bias_init 'mean'"),
        (["stochastic_layers=[10, 5]"], "model.latent_dim must be the sum of model.stochastic_layers [10, 5] = 15"),
        (["stochastic_layers=[10, 0]", "latent_dim=10"], "must be positive"),
        (["stochastic_layers=[10, 5]", "latent_dim=15", "prior=mixture"], "need kind=vae, prior=normal"),
        (["stochastic_layers=[10, 5]", "latent_dim=15", "posterior_flow=iaf"], "need kind=vae, prior=normal"),
        (["schedule_scale=0"], "train.schedule_scale must be in (0, 1]"),
        (["schedule_scale=1.5", "schedule=burda"], "train.schedule_scale must be in (0, 1]"),
        (["adam_eps=0"], "train.adam_eps must be positive"),
        (["amp=sometimes"], "train.amp must be auto, true or false; got 'sometimes'"),
        (["eval_amp=sometimes"], "train.eval_amp must be auto, true or false; got 'sometimes'"),
        (["eval_amp=1"], "train.eval_amp must be auto, true or false; got '1'"),
        (["dequantize=1"], "model.dequantize must be auto, true or false; got '1'"),
    ],
)
def test_the_new_fields_refuse_what_cannot_be_built_in_one_line(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        build_config("iwae-1l", overrides=overrides)
    assert fragment in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("beta=-1", "train.beta must be >= 0; got -1.0"),
        ("free_bits=-2", "train.free_bits must be >= 0; got -2.0"),
        ("grad_clip=-1", "train.grad_clip must be >= 0; got -1.0"),
        ("warmup_steps=-5", "train.warmup_steps must be >= 0; got -5"),
        ("lr_warmup_steps=-1", "train.lr_warmup_steps must be >= 0; got -1"),
        ("weight_decay=-0.1", "train.weight_decay must be >= 0; got -0.1"),
        ("eval_k=-1", "train.eval_k must be >= 0; got -1"),
        ("eval_n=0", "train.eval_n must be positive; got 0"),
        ("max_bad_steps=-3", "train.max_bad_steps must be positive; got -3"),
        ("fixed_std=0", "model.fixed_std must be positive; got 0.0"),
        ("channels=[32, -1]", "model.channels entries must be positive; got [32, -1]"),
        ("components=0", "model.components must be positive; got 0"),
        ("reg_covar=-1e-6", "model.reg_covar must be >= 0"),
        ("em_max_iter=0", "model.em_max_iter must be positive; got 0"),
        ("em_chunk=-1", "model.em_chunk must be >= 0; got -1"),
        ("ae_noise=-0.3", "model.ae_noise must be >= 0; got -0.3"),
        ("flow_alpha=-0.1", "model.flow_alpha must be positive; got -0.1"),
        ("posterior_flow_context=-1", "model.posterior_flow_context must be >= 0; got -1"),
    ],
)
def test_negative_values_that_mean_nothing_are_refused(override, fragment):
    with pytest.raises(ConfigError) as e:
        build_config("dense-digits", overrides=[override])
    assert fragment in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("override", ["beta=0", "free_bits=0", "grad_clip=0", "weight_decay=0", "eval_k=0"])
def test_zero_stays_the_off_value(override):
    build_config("dense-digits", overrides=[override])


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n   # and another\n", "{}\n"])
def test_an_empty_config_file_is_refused(tmp_path, text):
    f = tmp_path / "empty.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        build_config(config_file=str(f))
    assert "sets nothing" in str(e.value) and str(f) in str(e.value) and "\n" not in str(e.value)


def test_a_config_file_with_only_a_preset_is_enough(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("preset: dense-digits\n")
    assert build_config(config_file=str(f)) == get_preset("dense-digits")


def test_the_tabular_presets_model_standardised_continuous_features():
    cfg = get_preset("dense-wine")
    assert preset_chain("dense-wine") == ["base", "dense-tabular", "dense-wine"]
    assert (cfg.data.name, cfg.data.binarize, cfg.data.standardize) == ("wine", "none", "auto")
    assert (cfg.model.likelihood, cfg.model.variance) == ("gaussian", "pixel")  # a learned variance per feature
    assert cfg.data.feature_mean is None and cfg.data.label_column is None  # recorded by `vaekit train`


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["standardize=maybe"], "data.standardize must be auto, true or false; got 'maybe'"),
        (["feature_mean=[0, 1]"], "data.feature_mean and data.feature_std must be given together"),
        (["feature_mean=[0, 1]", "feature_std=[1]"], "as lists of one length"),
        (["feature_mean=[0]", "feature_std=[0]"], "data.feature_std finite and positive"),
        (["feature_mean=[.nan]", "feature_std=[1]"], "data.feature_mean must be finite"),
        (["label_column=[1]"], "data.label_column' wants a string"),
    ],
)
def test_standardisation_fields_refuse_what_cannot_be_applied(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        build_config("dense-tabular", overrides=overrides)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_standardize_reads_yaml_booleans_and_a_config_without_the_new_fields_loads():
    assert build_config("base", overrides=["standardize=true"]).data.standardize is True
    assert build_config("base", overrides=["data.standardize=false"]).data.standardize is False
    cfg = build_config("base", overrides=["feature_mean=[1.5, -2]", "feature_std=[0.25, 3]", "label_column=kind"])
    again = Config.from_dict(cfg.to_dict())
    assert again == cfg and again.data.feature_std == [0.25, 3.0]
    old = cfg.to_dict()
    for key in ("label_column", "standardize", "feature_mean", "feature_std"):  # a checkpoint of an older vaekit
        del old["data"][key]
    loaded = Config.from_dict(old)
    assert loaded.data.standardize == "auto" and loaded.data.feature_mean is None and loaded.data.feature_std is None


def test_reading_a_config_parses_each_sections_type_hints_once(monkeypatch):
    """Every checkpoint write reads several configs field by field; the annotations are parsed once."""
    import typing

    from vaekit import config

    config._type_hints.cache_clear()
    calls, real = [], typing.get_type_hints
    monkeypatch.setattr(typing, "get_type_hints", lambda cls, *a, **k: calls.append(cls) or real(cls, *a, **k))
    d = build_config("dense-wine").to_dict()
    for _ in range(5):
        assert Config.from_dict(d).to_dict() == d
    assert sorted(c.__name__ for c in calls) == ["DataConfig", "ModelConfig", "TrainConfig"]


def test_settings_older_runs_were_trained_with_are_refused_for_new_runs_only():
    from vaekit.config import Config, validate

    one_layer = build_config(overrides=["free_bits=0.5", "stochastic_layers=[20]", "latent_dim=20"])
    assert one_layer.train.free_bits == 0.5  # one Gaussian layer has a per-dimension KL
    for sets in (
        {"train": {"objective": "iwae", "k": 5, "beta": 0.5}},
        {"train": {"free_bits": 0.5, "gradient": "stl"}},
        {"model": {"kind": "flow", "flow_arch": "maf", "flow_blocks": 0}},
    ):
        cfg = Config.from_dict(sets)  # as a checkpoint written before the rule holds it
        with pytest.raises(ConfigError):
            validate(cfg)
        validate(cfg, new_run=False)  # a resumed run goes on as it was trained


def test_only_the_conv_and_nice_presets_train_in_bf16_where_the_device_has_bf16_units():
    """train.amp=auto in conv-mnist (its full 10-epoch protocol measured no NLL loss in bf16) and in
    nice-mnist with its output layers float32 (every layer in bf16 cost it NLL, the hidden layers alone
    did not); the presets built on conv-mnist whose bf16 quality is unmeasured set it off; auto is
    accepted from the command line."""
    assert get_preset("conv-mnist").train.amp == "auto" and not get_preset("conv-mnist").train.amp_outputs_float32
    assert get_preset("nice-mnist").train.amp == "auto" and get_preset("nice-mnist").train.amp_outputs_float32
    assert get_preset("resnet-mnist").train.amp is False and get_preset("pixelvae-mnist").train.amp is False
    assert [n for n in PRESETS if get_preset(n).train.amp is not False] == ["conv-mnist", "nice-mnist"]
    assert build_config("dense-mnist", overrides=["amp=auto"]).train.amp == "auto"


def test_only_the_mnist_image_vaes_evaluate_with_bf16_hidden_layers_where_the_device_has_bf16_units():
    """train.eval_amp=auto in conv-mnist, resnet-mnist and pixelvae-mnist, whose estimates moved by less
    than 0.01 nats (two standard errors included) with their hidden layers in bf16, paired on MNIST test
    images (README; the PixelCNN rounds only its vertical convolutions' and horizontal products'
    operands there); every other preset keeps float32."""
    auto = ["conv-mnist", "resnet-mnist", "pixelvae-mnist"]
    assert all(get_preset(n).train.eval_amp == "auto" for n in auto)
    assert get_preset("resnet-mnist").train.amp is False and get_preset("pixelvae-mnist").train.amp is False
    assert [n for n in PRESETS if get_preset(n).train.eval_amp is not False] == auto
