"""Checkpoints: atomic writes, the one training-state dict, run folders, and old files resuming."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from sklearn.datasets import load_digits
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vaekit import checkpoint as ckpt
from vaekit.config import Config, build_config
from vaekit.errors import CheckpointError, ConfigError
from vaekit.models import build_model
from vaekit.train import train

LEGACY = Path(__file__).parent / "data" / "legacy"


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "f.bin"
    ckpt.atomic_write(target, lambda f: f.write(b"old"))

    def failing(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        ckpt.atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temp file left behind


def learner(cfg, seed):
    torch.manual_seed(seed)
    model = build_model(cfg, (1, 8, 8))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    return model, opt, ema


def test_training_state_round_trips_model_optimiser_and_ema(tmp_path):
    cfg = build_config("dense-digits", overrides={"hidden": [8], "latent_dim": 2})
    model, opt, ema = learner(cfg, 0)
    x = torch.bernoulli(torch.rand(6, 1, 8, 8))
    for step in range(3):  # give Adam moments and the EMA a history
        opt.zero_grad()
        model.loss(x, step=step)["loss"].mean().backward()
        opt.step()
        ema.update_parameters(model)
    state = ckpt.training_state(
        3, model, cfg, (1, 8, 8), epoch=1, bad_steps=2, optimizer=opt, ema=ema, shards=2, log_window=None
    )
    path = ckpt.save_checkpoint(tmp_path, state)
    loaded = ckpt.read_checkpoint(path)
    assert loaded["step"] == 3 and loaded["bad_steps"] == 2 and loaded["shards"] == 2 and loaded["ema_n"] == 3
    assert loaded["data_shape"] == [1, 8, 8] and loaded["log_window"] == {"sums": {}, "n": 0}
    assert Config.from_dict(loaded["config"]).to_dict() == cfg.to_dict()

    model2, opt2, ema2 = learner(cfg, 1)  # other initial weights, fresh optimiser and EMA
    ckpt.restore_training_state(loaded, model2, opt2, ema2, tmp_path)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(ema.module.state_dict().values(), ema2.module.state_dict().values()):
        assert torch.equal(a, b)
    assert int(ema2.n_averaged) == 3
    moments = [opt.state[p]["exp_avg"] for p in model.parameters()]
    assert all(torch.equal(m, opt2.state[p]["exp_avg"]) for m, p in zip(moments, model2.parameters()))


def test_a_state_that_does_not_fit_the_model_is_a_one_line_error(tmp_path):
    small = build_config("dense-digits", overrides={"hidden": [8], "latent_dim": 2})
    big = build_config("dense-digits", overrides={"hidden": [16], "latent_dim": 2})
    model, opt, ema = learner(small, 0)
    state = ckpt.training_state(0, model, small, (1, 8, 8), optimizer=opt, ema=ema)
    other, opt2, ema2 = learner(big, 0)
    with pytest.raises(CheckpointError, match="does not fit the model") as e:
        ckpt.restore_training_state(state, other, opt2, ema2, tmp_path / "run")
    assert str(tmp_path / "run") in str(e.value) and "\n" not in str(e.value)


def test_create_run_appears_complete_or_not_at_all(tmp_path, monkeypatch):
    cfg = build_config("dense-digits", overrides={"hidden": [8], "latent_dim": 2})
    model = build_model(cfg, (1, 8, 8))
    state = ckpt.training_state(5, model, cfg, (1, 8, 8))
    ckpt.create_run(tmp_path / "r", cfg, state, '{"step": 1}\n')
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text()) == cfg.to_dict()
    assert [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()] == [{"step": 1}]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "r")] == ["step-00000005.pt"]

    def full(obj, f, *a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(CheckpointError, match="disk full"):
        ckpt.create_run(tmp_path / "out" / "r", cfg, state)
    assert list((tmp_path / "out").iterdir()) == []  # no half-made folder, no temp folder


@pytest.mark.parametrize("name", ["dense-vae", "flow-prior-ema"])
def test_a_legacy_checkpoint_resumes_and_trains_on(tmp_path, name):
    """A checkpoint written by the code before the package layout changed continues its run."""
    old = ckpt.read_checkpoint(LEGACY / f"{name}.pt")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(LEGACY / f"{name}.pt", ckpt.checkpoint_path(run, old["step"]))
    cfg = ckpt.config_of(old)
    cfg.train.epochs = 2  # the old run did one epoch of 4 steps: extend it, as `--resume --epochs 2` does
    x = torch.tensor(load_digits().data[:200], dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    summary = train(cfg, run, (x > 0.5).float(), None, resume=True, progress=False)
    assert summary["step"] == 2 * old["step"] == 8
    new = ckpt.latest_checkpoint(run)[1]
    assert new["step"] == 8 and new["shards"] == 1 and new["data_shape"] == old["data_shape"]
    assert new["model"].keys() == old["model"].keys()
    assert any(not torch.equal(new["model"][k], old["model"][k]) for k in old["model"])  # it trained on
    if old["ema"] is not None:
        assert new["ema_n"] == old["ema_n"] + 4
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 6, 7, 8]  # log_every 1: the resumed steps only


def test_json_text_is_standard_json_with_null_for_non_finite_numbers():
    doc = {"nll": float("nan"), "k": 5, "curve": [1.5, float("inf"), -float("inf")], "nested": {"x": (float("nan"),)}}
    text = ckpt.json_text(doc)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"nll": None, "k": 5, "curve": [1.5, None, None], "nested": {"x": [None]}}


def test_a_failed_write_inside_torchs_zip_writer_is_a_one_line_error(tmp_path, monkeypatch):
    """torch reports a full disk under its zip writer as ``RuntimeError: ... unexpected pos``."""
    cfg = build_config("dense-digits", overrides={"hidden": [8], "latent_dim": 2})
    model = build_model(cfg, (1, 8, 8))
    ckpt.save_checkpoint(tmp_path, ckpt.training_state(1, model, cfg, (1, 8, 8)))
    real_save = torch.save

    class Full:
        def __init__(self, f):
            self.f, self.room = f, 2000

        def write(self, b):
            if len(b) > self.room:
                raise OSError(28, "No space left on device")
            self.room -= len(b)
            return self.f.write(b)

        def flush(self):
            self.f.flush()

    monkeypatch.setattr(ckpt.torch, "save", lambda obj, f: real_save(obj, Full(f)))
    with pytest.raises(CheckpointError) as e:
        ckpt.save_checkpoint(tmp_path, ckpt.training_state(2, model, cfg, (1, 8, 8)))
    assert str(e.value) == (
        f"disk full while writing checkpoint {ckpt.checkpoint_path(tmp_path, 2)}; "
        "the previous checkpoint step-00000001.pt is intact"
    )
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000001.pt"]


def small_run(tmp_path, name, **over):
    """A trained run folder of the 8x8 digits (2 epochs of 4 steps, a checkpoint every 2 steps)."""
    sets = {"hidden": [8], "latent_dim": 2, "epochs": 2, "batch_size": 50, "ckpt_every": 2, "eval_k": 0}
    cfg = build_config("dense-digits", overrides={**sets, "tensorboard": False, **over})
    x = torch.tensor(load_digits().data[:200], dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    train(cfg, tmp_path / name, (x > 0.5).float(), None, progress=False, max_steps=4)
    return tmp_path / name, cfg, (x > 0.5).float()


def test_a_checkpoint_of_another_run_is_refused_and_never_costs_the_run_its_own(tmp_path, capsys):
    from vaekit.cli import main

    run, cfg, x = small_run(tmp_path, "run")
    own = sorted(p.name for p in ckpt.list_checkpoints(run))
    assert own == ["step-00000000.pt", "step-00000002.pt", "step-00000004.pt"]
    other = build_config("dense-mnist", overrides={"hidden": [8], "latent_dim": 2})
    foreign = ckpt.training_state(999, build_model(other, (1, 28, 28)), other, (1, 28, 28))
    ckpt.save_checkpoint(tmp_path / "elsewhere", foreign)
    shutil.copy(ckpt.checkpoint_path(tmp_path / "elsewhere", 999), ckpt.checkpoint_path(run, 999))

    with pytest.raises(CheckpointError) as e:
        ckpt.latest_checkpoint(run)
    msg = str(e.value)
    assert "\n" not in msg and str(ckpt.checkpoint_path(run, 999)) in msg and "is not a checkpoint of the run" in msg
    assert "preset: dense-mnist vs dense-digits" in msg and "data.name: mnist5k vs digits" in msg
    for argv in (
        ["evaluate", str(run), "--k", "2", "--n", "4", "--no-progress"],
        ["sample", str(run), "-n", "4", "-o", str(tmp_path / "s.png")],
        ["train", "--resume", str(run), "--no-progress"],
    ):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("vaekit: error: ") and err.count("\n") == 1 and "is not a checkpoint of the run" in err
    assert not (run / "eval.json").exists() and not (tmp_path / "s.png").exists()
    assert sorted(p.name for p in ckpt.list_checkpoints(run)) == own + ["step-00000999.pt"]  # nothing deleted

    # a foreign file among the run's own: resuming goes on, and the rotation counts only its own
    ckpt.checkpoint_path(run, 999).rename(ckpt.checkpoint_path(run, 3))
    cfg.train.epochs = 3
    train(cfg, run, x, None, progress=False, resume=True)
    assert sorted(p.name for p in ckpt.list_checkpoints(run)) == [
        "step-00000003.pt",  # the foreign one, untouched
        "step-00000008.pt",
        "step-00000010.pt",
        "step-00000012.pt",
    ]


def test_an_edited_config_yaml_is_blamed_not_the_runs_checkpoints(tmp_path, capsys):
    """config.yaml edited after training: the checkpoints agree with each other, so the error names
    config.yaml (not "move the checkpoint out"), nothing is moved, and deleting config.yaml lets the
    run resume, which writes it again from the checkpoints."""
    from vaekit.cli import main

    run, cfg, x = small_run(tmp_path, "run")
    own = sorted(p.name for p in ckpt.list_checkpoints(run))
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("latent_dim: 2", "latent_dim: 3"))
    with pytest.raises(CheckpointError) as e:
        ckpt.latest_checkpoint(run)
    msg = str(e.value)
    assert "config.yaml differs" in msg and "model.latent_dim: 2 vs 3" in msg and "move it out" not in msg
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "edited or replaced" in err
    assert sorted(p.name for p in ckpt.list_checkpoints(run)) == own  # nothing moved
    (run / "config.yaml").unlink()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    assert "latent_dim: 2" in (run / "config.yaml").read_text()


def test_resuming_under_another_config_is_refused(tmp_path):
    run, cfg, x = small_run(tmp_path, "run")
    changed = Config.from_dict(cfg.to_dict())
    changed.train.lr, changed.train.epochs, changed.train.device = 0.5, 5, "cpu"  # epochs, device may change
    with pytest.raises(ConfigError) as e:
        train(changed, run, x, None, progress=False, resume=True)
    assert str(e.value).endswith("(checkpoint vs given): train.lr: 0.001 vs 0.5")
    assert [p.name for p in ckpt.list_checkpoints(run)][0] == "step-00000004.pt"


# --- export folders ------------------------------------------------------------------------------


def test_plain_json_carries_tensors_of_every_dtype_and_shape_exactly():
    state = {
        "a": torch.randn(2, 3),
        "b": torch.tensor([], dtype=torch.float64).reshape(0, 4),
        "c": {"n": torch.tensor(7), "flag": torch.tensor(True), "h": torch.randn(3).to(torch.bfloat16)},
        "d": [1, 2.5, "x", None],
    }
    back = ckpt.from_plain_json(json.loads(ckpt.json_text(ckpt.plain_json(state))))
    pairs = [(back["a"], state["a"]), (back["b"], state["b"])] + [(back["c"][k], state["c"][k]) for k in state["c"]]
    for got, want in pairs:
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)
    assert back["d"] == [1, 2.5, "x", None]


def exported_folder(tmp_path):
    cfg = build_config("dense-digits", overrides=["hidden=[4]", "latent_dim=2"])
    model = build_model(cfg, (1, 8, 8))
    weights, doc = ckpt.export_documents(ckpt.training_state(5, model, cfg, (1, 8, 8)))
    ckpt.write_export_documents(tmp_path / "e", weights, doc)
    return tmp_path / "e", model


def test_resolve_reads_an_export_folder_as_a_checkpoint(tmp_path):
    folder, model = exported_folder(tmp_path)
    assert ckpt.is_export(folder)
    path, state = ckpt.resolve(folder)
    assert path == folder and state["step"] == 5 and state["ema"] is None and state["data_shape"] == [1, 8, 8]
    loaded, cfg, _ = ckpt.load_model(folder)
    assert cfg.model.latent_dim == 2
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    shutil.copytree(folder, tmp_path / "run")  # a run folder holding the same two files stays a run folder
    ckpt.save_checkpoint(tmp_path / "run", ckpt.training_state(9, model, cfg, (1, 8, 8)))
    assert not ckpt.is_export(tmp_path / "run") and ckpt.resolve(tmp_path / "run")[1]["step"] == 9


@pytest.mark.parametrize("damage", ["weights", "config", "format"])
def test_a_damaged_export_folder_is_a_one_line_error(tmp_path, damage):
    folder, _ = exported_folder(tmp_path)
    if damage == "weights":
        data = (folder / ckpt.EXPORT_WEIGHTS).read_bytes()
        (folder / ckpt.EXPORT_WEIGHTS).write_bytes(data[: len(data) // 2])
    elif damage == "config":
        (folder / ckpt.EXPORT_CONFIG).write_text("{not json")
    else:
        (folder / ckpt.EXPORT_CONFIG).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CheckpointError) as e:
        ckpt.load_model(folder)
    assert "\n" not in str(e.value) and str(folder) in str(e.value)


def test_a_runs_standardisation_survives_its_checkpoints_and_vaekit_load(tmp_path):
    """The statistics live in the saved config, not in the weights: vaekit.load (and every verb, which
    loads the same way) gets them back as model.data_transform; older checkpoints load as the identity."""
    import vaekit

    stats = ["standardize=true", "feature_mean=[1.0, -2.0, 30.0]", "feature_std=[0.5, 2.0, 10.0]"]
    small = ["hidden=[8]", "latent_dim=2", "epochs=1", "eval_k=0", "tensorboard=false", *stats]
    cfg = build_config("dense-tabular", overrides=small)
    x = torch.randn(40, 1, 1, 3)
    train(cfg, tmp_path / "r", x, None, progress=False)
    model = vaekit.load(tmp_path / "r")
    t = model.data_transform
    assert t.mean.tolist() == [1.0, -2.0, 30.0] and t.std.tolist() == [0.5, 2.0, 10.0]
    z = torch.randn(4, 1, 1, 3)
    assert torch.allclose(t.invert(z), z * torch.tensor([0.5, 2.0, 10.0]) + torch.tensor([1.0, -2.0, 30.0]))
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["data"]["feature_std"] == [0.5, 2.0, 10.0]
    path, state = ckpt.latest_checkpoint(tmp_path / "r")
    plain = build_model(build_config("dense-tabular", overrides=small[:-3]), (1, 1, 3))
    assert state["model"].keys() == plain.state_dict().keys()  # the weights are the same either way
    assert plain.data_transform.identity
    for key in ("standardize", "feature_mean", "feature_std", "label_column"):  # as an older vaekit saved it
        del state["config"]["data"][key]
    old, cfg_old = ckpt.model_from_state(state)
    assert old.data_transform.identity and old.data_transform.invert(z) is z and cfg_old.data.standardize == "auto"


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_loaded_model_has_the_memory_format_its_run_trained_in(tmp_path, channels_last):
    """`model.channels_last` is a speed switch of the run: the model rebuilt for evaluation or
    sampling stores its conv weights channels-last exactly when training did (so an evaluation at
    the end of training and a later `vaekit evaluate` are one computation to the journal), and
    computes the same numbers to float rounding as the other memory format, which the journal
    tells apart."""
    import copy

    from vaekit.journal import module_digest
    from vaekit.nets import to_channels_last

    cfg = build_config("conv-mnist", overrides={"channels": [4, 8], "latent_dim": 3, "channels_last": channels_last})
    model, _, _ = learner(cfg, 0)
    nchw = copy.deepcopy(model)
    to_channels_last(model, channels_last)  # as the training loop does
    state = ckpt.training_state(1, model, cfg, (1, 8, 8), epoch=0, bad_steps=0, optimizer=None, ema=None)
    loaded, _, _ = ckpt.load_model(ckpt.save_checkpoint(tmp_path, state), ema=False)
    convs = [p for p in loaded.parameters() if p.dim() == 4 and p.shape[1] > 1]  # the two formats differ
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) == channels_last for p in convs)
    assert all(p.is_contiguous() != channels_last for p in convs)
    z = torch.randn(5, 3)
    with torch.no_grad():
        assert torch.allclose(loaded.decoder.body(z), nchw.decoder.body(z), atol=1e-5)
    assert module_digest(loaded) == module_digest(model)
    assert (module_digest(loaded) == module_digest(nchw)) != channels_last


@pytest.mark.parametrize(
    "state",
    [
        {"model": {}, "step": 1},  # no config
        {"model": {}, "config": "dense-mnist", "step": 1, "data_shape": [1, 2, 2]},
        {"model": {}, "config": {}, "step": 1},  # no data_shape
        {"model": {}, "config": {}, "step": 1, "data_shape": ["1", "2"]},
        {"model": [], "config": {}, "step": 1, "data_shape": [1, 2, 2]},
    ],
)
def test_a_file_of_plain_values_but_not_a_checkpoints_structure_is_one_error(tmp_path, state):
    torch.save(state, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="is not a vaekit checkpoint"):
        ckpt.read_checkpoint(tmp_path / "x.pt")
