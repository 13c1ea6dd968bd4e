"""bench/ood.py: the three models it trains resolve to valid configs of the kinds it names."""

import argparse

from bench.ood import model_configs
from vaekit.config import build_config, validate


def test_every_model_resolves_to_a_valid_config_of_its_kind():
    args = argparse.Namespace(device="cpu", seed=0, epochs=2, flow_hidden=16, flow_blocks=1, em_iter=3)
    kinds = {}
    for name, (preset, overrides, binary) in model_configs(args).items():
        cfg = build_config(preset, overrides={**overrides, "data.name": "mnist"})
        validate(cfg)
        kinds[name] = cfg.model.kind
        assert cfg.train.epochs == 2 and cfg.train.eval_k == 0
        assert binary == (cfg.data.binarize == "dynamic") and cfg.data.levels == (2 if binary else 256)
    assert kinds == {"vae": "vae", "flow": "flow", "mixture": "mixture"}
