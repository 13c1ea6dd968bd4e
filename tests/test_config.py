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
        ({"overrides": ["objective=wake-sleep"]}, "train.objective must be one of"),
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


def test_preset_chain_runs_from_base_and_names_unknown_presets():
    assert preset_chain("dae-mnist") == ["base", "dense-mnist", "ae-mnist", "dae-mnist"]
    with pytest.raises(ConfigError) as e:
        preset_chain("nope")
    assert "unknown preset 'nope'" in str(e.value) and "base" in str(e.value)


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
