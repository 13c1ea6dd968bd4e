"""The training loop: learns, resumes exactly, survives bad steps and bad checkpoints."""

import json
import math

import pytest
import torch
from sklearn.datasets import load_digits

import vaekit
from vaekit import checkpoint as ckpt
from vaekit.config import build_config, burda_stage_epochs
from vaekit.errors import CheckpointError, ConfigError, VaekitError
from vaekit.models import VAE, build_model
from vaekit.models.base import GenerativeModel
from vaekit.train import (
    LogWindow,
    ShardedData,
    TrainingDiverged,
    adam_step,
    batch_preparer,
    build_learner,
    burda_learning_rate,
    epoch_permutation,
    learning_rate,
    seed_device,
    shard_seed,
    train,
    train_step,
)


def digits():
    x = torch.tensor(load_digits().data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    return x[:1500], x[1500:]


def binarize(x, g):
    return torch.bernoulli(x, generator=g)


def cfg_for(**over):
    sets = {
        "epochs": 3,
        "batch_size": 50,
        "log_every": 5,
        "ckpt_every": 10,
        "eval_k": 20,
        "eval_n": 50,
        "tensorboard": False,
    }
    sets.update(over)
    return build_config("dense-digits", overrides=sets)


def read_metrics(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def test_short_training_lowers_the_loss(tmp_path):
    tr, te = digits()
    summary = train(cfg_for(epochs=4), tmp_path / "r", tr, te, transform=binarize, progress=False)
    recs = [r for r in read_metrics(tmp_path / "r") if "loss" in r]
    assert summary["step"] == 4 * 30
    assert recs[-1]["loss"] < recs[0]["loss"] - 5
    tests = [r for r in read_metrics(tmp_path / "r") if "test_nll" in r]
    assert len(tests) == 4 and tests[-1]["test_nll"] < tests[0]["test_nll"]
    assert tests[-1]["test_nll"] <= -tests[-1]["test_elbo"] + 1.0  # IS bound above the ELBO (noisy)


def state_of(run):
    return ckpt.latest_checkpoint(run)[1]


def test_resume_after_kill_continues_the_same_run(tmp_path):
    tr, te = digits()
    cfg = cfg_for(ema=0.9)
    train(cfg, tmp_path / "full", tr, te, transform=binarize, progress=False)
    # "killed" after step 25: the newest checkpoint is step 20, steps 21-25 are lost
    train(cfg, tmp_path / "cut", tr, te, transform=binarize, progress=False, max_steps=25)
    newest = ckpt.list_checkpoints(tmp_path / "cut")[0]
    assert newest.name == "step-00000025.pt"
    newest.unlink()
    train(cfg, tmp_path / "cut", tr, te, transform=binarize, progress=False, resume=True)
    a, b = state_of(tmp_path / "full"), state_of(tmp_path / "cut")
    assert a["step"] == b["step"] == 90
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=1e-6)
    for key in a["ema"]:
        torch.testing.assert_close(a["ema"][key], b["ema"][key], rtol=0, atol=1e-6)
    steps = [r["step"] for r in read_metrics(tmp_path / "cut") if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 90  # no duplicated or missing log steps
    assert steps == [r["step"] for r in read_metrics(tmp_path / "full") if "loss" in r]


def test_refuses_to_overwrite_and_to_resume_nothing(tmp_path):
    tr, te = digits()
    train(cfg_for(epochs=1), tmp_path / "r", tr, te, progress=False)
    with pytest.raises(VaekitError, match="already holds a run"):
        train(cfg_for(epochs=1), tmp_path / "r", tr, te, progress=False)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(cfg_for(epochs=1), tmp_path / "empty", tr, te, progress=False, resume=True)


def test_corrupt_newest_checkpoint_falls_back_to_older_one(tmp_path, capsys):
    tr, te = digits()
    train(cfg_for(epochs=1), tmp_path / "r", tr, te, progress=False)
    paths = ckpt.list_checkpoints(tmp_path / "r")
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) // 2])  # truncated
    path, state = ckpt.latest_checkpoint(tmp_path / "r")
    assert path == paths[1]
    assert "corrupt or truncated checkpoint" in capsys.readouterr().err
    with pytest.raises(CheckpointError) as e:
        ckpt.read_checkpoint(paths[0])
    assert str(paths[0]) in str(e.value) and "\n" not in str(e.value)
    for p in paths[1:]:
        p.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        ckpt.latest_checkpoint(tmp_path / "r", warn=False)


def test_checkpoint_round_trip_through_vaekit_load(tmp_path):
    tr, te = digits()
    train(cfg_for(epochs=1), tmp_path / "r", tr, te, progress=False)
    model = vaekit.load(tmp_path / "r")
    state = state_of(tmp_path / "r")
    assert state["config"]["preset"] == "dense-digits"
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state["model"][k])
    assert model.sample(5).shape == (5, 1, 8, 8)


def test_nan_steps_are_skipped_then_the_run_stops_naming_the_term(tmp_path):
    tr, te = digits()
    bad = tr.clone()
    bad[::2] = float("nan")  # every other example NaN: some batches clean, most poisoned
    with pytest.raises(TrainingDiverged, match="rec") as e:
        train(cfg_for(epochs=2, max_bad_steps=5, batch_size=10), tmp_path / "r", bad, te, progress=False)
    assert "\n" not in str(e.value)


def test_schedule_and_permutation_are_pure_functions():
    assert learning_rate(0, 100, 1.0, "constant", 10) == pytest.approx(0.1)
    assert learning_rate(10, 100, 1.0, "cosine", 10) == pytest.approx(1.0)
    assert learning_rate(100, 100, 1.0, "cosine", 10) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(55, 100, 1.0, "linear", 10) == pytest.approx(0.5)
    p1, p2 = epoch_permutation(50, 0, 3, "cpu"), epoch_permutation(50, 0, 3, "cpu")
    assert torch.equal(p1, p2) and not torch.equal(p1, epoch_permutation(50, 0, 4, "cpu"))
    assert sorted(p1.tolist()) == list(range(50))


def test_channels_last_training_matches_the_default_layout(tmp_path):
    """NHWC is a memory layout, not a model change: the same steps give the same weights."""
    tr, te = digits()
    over = dict(encoder="conv", decoder="conv", channels=[8, 16], hidden=[32], eval_k=0)
    train(cfg_for(**over), tmp_path / "a", tr, te, transform=binarize, progress=False, max_steps=5)
    train(
        cfg_for(**over, channels_last=True),  # amp left off: it is bf16 on the CPU too, not a layout
        tmp_path / "b",
        tr,
        te,
        transform=binarize,
        progress=False,
        max_steps=5,
    )
    a, b = state_of(tmp_path / "a")["model"], state_of(tmp_path / "b")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k].contiguous(), rtol=1e-4, atol=1e-5)


def one_step_setup(**over):
    cfg = cfg_for(hidden=[16], latent_dim=2, **over)
    torch.manual_seed(0)
    model = build_model(cfg, (1, 8, 8))
    return cfg, model, build_learner(model, cfg.train, torch.device("cpu"))


def test_train_step_applies_a_finite_step_and_updates_the_ema():
    cfg, model, learner = one_step_setup(ema=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.bernoulli(torch.rand(2, 10, 1, 8, 8))
    prepare = batch_preparer(None, False, torch.device("cpu"))
    res = train_step(learner, [(0, x[0]), (1, x[1])], 20, step=0, lr=1e-2, tc=cfg.train, prepare=prepare)
    assert res.ok and res.bad_terms == [] and res.grad_norm > 0
    assert learner.opt.param_groups[0]["lr"] == 1e-2
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert int(learner.ema.n_averaged) == 1
    # the logged terms are the per-example sums over the global batch of 20, divided by 20,
    # with each shard's noise seeded by its own seed
    with torch.no_grad():
        model.load_state_dict(before)
        total = 0.0
        for s, xb in ((0, x[0]), (1, x[1])):
            seed_device(shard_seed(cfg.train.seed, 0, s), torch.device("cpu"))
            total += float(model.loss(xb, step=0)["loss"].sum())
    assert res.sums["loss"] == pytest.approx(total / 20, rel=1e-5)


def test_train_step_skips_a_non_finite_step_naming_the_term():
    cfg, model, learner = one_step_setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.bernoulli(torch.rand(10, 1, 8, 8))
    x[3] = float("nan")
    prepare = batch_preparer(None, False, torch.device("cpu"))
    res = train_step(learner, [(0, x)], 10, step=0, lr=1e-2, tc=cfg.train, prepare=prepare)
    assert not res.ok and "rec" in res.bad_terms and res.grad_norm != res.grad_norm  # NaN
    for k, v in model.state_dict().items():
        assert torch.equal(before[k], v)
    assert all(p.grad is None for p in model.parameters())


def test_sharded_data_deals_every_example_once_per_epoch():
    x = torch.arange(23.0).view(23, 1)
    data = ShardedData(x, shards=3, batch_size=6, seed=1, device=torch.device("cpu"))
    assert data.steps_per_epoch == 4
    seen, batch_sizes = [], []
    for step in range(4, 8):  # the second epoch
        batches, global_batch = data.batches(step)
        assert [s for s, _ in batches] == [0, 1, 2]  # one process holds every shard
        assert global_batch == sum(xb.shape[0] for _, xb in batches)
        for s, xb in batches:
            assert all(int(v) % 3 == s for v in xb.flatten())  # shard s is examples s, s+3, ...
            seen += xb.flatten().tolist()
        batch_sizes.append(global_batch)
    assert sorted(seen) == list(range(23)) and max(batch_sizes) - min(batch_sizes) <= 3
    assert not torch.equal(data.batches(0)[0][0][1], data.batches(4)[0][0][1])  # a new order per epoch
    with pytest.raises(VaekitError, match="too small for 3 data shards"):
        ShardedData(x[:5], shards=3, batch_size=1, seed=1, device=torch.device("cpu"))


def test_the_metrics_log_reports_a_full_disk_once_and_drops_lines_that_are_not_records(tmp_path):
    import errno

    from vaekit.train import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n[1, 2]\n7\n{"step": 9}\n')
    log = MetricsLog(path, resume_step=5)  # resumed at step 5: only step 1's record stays
    assert path.read_text() == '{"step": 1, "loss": 2.0}\n'

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        flush = write

        def close(self):  # flushing the buffered remainder fails the same way
            raise OSError(errno.ENOSPC, "No space left on device")

    real, log.f = log.f, FullDisk()
    with pytest.raises(VaekitError, match="disk full"):
        log.write({"step": 6})
    log.close()  # no second, less specific error
    real.close()
    log.f, log.failed = FullDisk(), False
    with pytest.raises(OSError):  # a close that fails on its own is not hidden
        log.close()


def test_log_window_carries_its_sums_across_a_resume():
    window = LogWindow({"sums": {"loss": 6.0}, "n": 2})  # two steps logged before the checkpoint
    window.add({"loss": 3.0, "kl": 1.0}, global_batch=10)
    rec = window.flush()
    assert rec["loss"] == pytest.approx(3.0) and rec["kl"] == pytest.approx(1 / 3) and rec["examples_per_s"] > 0
    assert window.n == 0 and window.sums == {}


def test_log_records_carry_the_wall_clock_seconds_of_their_window(tmp_path):
    tr, te = digits()
    train(cfg_for(epochs=1, log_every=10), tmp_path / "r", tr, te, transform=binarize, progress=False)
    recs = [r for r in read_metrics(tmp_path / "r") if "loss" in r]
    assert [r["step"] for r in recs] == [10, 20, 30]
    assert all(r["seconds"] > 0 for r in recs)  # their sum is the run's training time (vaekit compare)


def test_a_batch_transform_and_the_model_noise_draw_from_independent_streams():
    # Under one seed torch.rand and torch.randn read the same Mersenne-Twister words: the step's
    # Gaussian noise would be the Box-Muller transform of the uniforms that binarised its batch.
    drawn = []

    def transform(x, gen):
        drawn.append(torch.rand(64, generator=gen))  # what a dynamic binarisation reads
        return x

    prepare = batch_preparer(transform, False, torch.device("cpu"))
    prepare(torch.zeros(2, 3), 12345)
    noise = torch.empty(32).normal_()  # the model's noise after the same prepare
    prepare(torch.zeros(2, 3), 12345)
    assert torch.equal(drawn[0], drawn[1]) and torch.equal(torch.empty(32).normal_(), noise)  # replayed
    u = drawn[0]
    box_muller = torch.sqrt(-2 * torch.log1p(-u[:8])) * torch.cos(2 * math.pi * u[8:16])
    assert not torch.allclose(noise[:8], box_muller, atol=1e-3)
    torch.manual_seed(12345)
    assert torch.allclose(torch.empty(32).normal_(), noise)  # the model's stream is the step's seed itself
    same_seed = torch.Generator().manual_seed(12345)
    assert not torch.equal(torch.rand(64, generator=same_seed), u)


def test_seed_device_seeds_the_generator_of_the_device_named_not_the_current_one(monkeypatch):
    gens = (torch.Generator(), torch.Generator())  # stand-ins for two GPUs' generators
    before = gens[0].get_state()
    monkeypatch.setattr(torch.cuda, "default_generators", gens)
    monkeypatch.setattr(torch.cuda, "init", lambda: None)  # no GPU here
    seed_device(5, torch.device("cuda", 1))
    assert torch.equal(gens[1].get_state(), torch.Generator().manual_seed(5).get_state())
    assert torch.equal(gens[0].get_state(), before)


def test_the_epoch_evaluation_of_a_standardised_run_also_logs_the_nll_in_data_units():
    from vaekit.train import _epoch_eval

    sets = {"feature_mean": [0.0] * 13, "feature_std": [2.0] * 13, "eval_k": 3, "hidden": [8], "latent_dim": 2}
    cfg = build_config("dense-wine", overrides=sets)
    model = build_model(cfg, (1, 1, 13))
    assert not model.data_transform.identity
    rec = _epoch_eval(model, torch.randn(6, 1, 1, 13), cfg.train, 0, 1, None, None)
    assert rec["test_nll_data_units"] == pytest.approx(
        rec["test_nll"] + 13 * math.log(2.0)
    )  # -log p = -log p' + sum log std


def test_seeds_are_pure_functions_of_step_and_shard():
    assert shard_seed(7, 3, 1) == shard_seed(7, 3, 1)
    seeds = {shard_seed(7, t, s) for t in range(50) for s in range(4)} | {shard_seed(8, 0, 0)}
    assert len(seeds) == 201 and all(0 <= v < 2**63 for v in seeds)


def test_a_run_folder_that_another_process_trains_is_not_resumed(tmp_path):
    import fcntl

    from vaekit.errors import CheckpointError

    tr, te = digits()
    train(cfg_for(epochs=1, eval_k=0), tmp_path / "r", tr[:100], te, progress=False)  # 2 steps
    with open(tmp_path / "r" / ckpt.RUN_LOCK, "a+b") as held:  # as another resuming process holds it
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(CheckpointError, match="is being trained by another process"):
            train(cfg_for(epochs=2, eval_k=0), tmp_path / "r", tr[:100], te, progress=False, resume=True)
    summary = train(cfg_for(epochs=2, eval_k=0), tmp_path / "r", tr[:100], te, progress=False, resume=True)
    assert summary["step"] == 4  # released: the same command resumes


def test_a_new_run_is_locked_while_it_trains(tmp_path, monkeypatch):
    import fcntl

    refused, real = [], ckpt.save_checkpoint

    def save_and_probe(run_dir, state):  # another process trying the folder while this one trains
        if str(run_dir) != str(tmp_path / "r"):  # the step-0 checkpoint, written before the folder appears
            return real(run_dir, state)
        with open(tmp_path / "r" / ckpt.RUN_LOCK, "a+b") as other:
            try:
                fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                refused.append(False)
            except BlockingIOError:
                refused.append(True)
        return real(run_dir, state)

    monkeypatch.setattr(ckpt, "save_checkpoint", save_and_probe)
    tr, te = digits()
    train(cfg_for(epochs=1, eval_k=0), tmp_path / "r", tr[:100], te, progress=False)
    assert refused and all(refused)


def test_resuming_to_fewer_epochs_than_trained_is_an_error_and_to_as_many_a_note(tmp_path, capsys):
    tr, te = digits()
    train(cfg_for(epochs=2, eval_k=0), tmp_path / "r", tr[:200], te, progress=False)  # 4 steps per epoch
    config_yaml = (tmp_path / "r" / "config.yaml").read_text()
    with pytest.raises(ConfigError) as e:
        train(cfg_for(epochs=1, eval_k=0), tmp_path / "r", tr[:200], te, progress=False, resume=True)
    assert str(e.value) == (
        f"{tmp_path / 'r'} has already trained 8 steps (2 epochs of 4 steps); train.epochs=1 (--epochs) ends "
        "at step 4, before that: give --epochs 3 or more to extend the run, or leave it as it is"
    )
    assert (tmp_path / "r" / "config.yaml").read_text() == config_yaml  # untouched
    capsys.readouterr()
    summary = train(cfg_for(epochs=2, eval_k=0), tmp_path / "r", tr[:200], te, progress=False, resume=True)
    assert summary["step"] == 8
    assert (
        f"vaekit: note: nothing to train: {tmp_path / 'r'} is at step 8 and it is complete (2 epochs); "
        "extend it with --epochs 3 or more" in capsys.readouterr().err
    )


def test_a_huge_learning_rate_stops_the_run_and_the_log_stays_standard_json(tmp_path, capsys):
    """lr=1e6: every step after the first is non-finite and skipped (fewer than max_bad_steps), and
    the end-of-epoch evaluation of the blown-up weights is NaN: the run stops there, unsaved."""
    import numpy as np

    from vaekit.cli import main

    tr, _ = digits()
    np.save(tmp_path / "d.npy", tr[:400].numpy())
    argv = ["train", "--preset", "dense-digits", "--data", str(tmp_path / "d.npy"), "--out", str(tmp_path / "r")]
    sets = ["lr=1e6", "batch_size=50", "log_every=2", "eval_k=5", "eval_n=20", "tensorboard=false"]
    assert main(argv + [a for s in sets for a in ("--set", s)] + ["--epochs", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("vaekit: error: the end-of-epoch test_nll is nan at step 8: training")
    assert "Traceback" not in err
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "r")] == ["step-00000000.pt"]

    def strict(token):
        raise AssertionError(f"non-standard JSON token {token}")

    recs = [json.loads(l, parse_constant=strict) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["test_nll"] is None and recs[-1]["step"] == 8
    assert any(r.get("loss", 0) is None for r in recs)


class BufferGoesNaN(GenerativeModel):
    """A toy model whose loss stays finite while a running statistic (a buffer, as batch norm's)
    turns NaN at step 3."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.register_buffer("running", torch.zeros(1))

    def loss(self, x, step=0):
        if step == 3:
            self.running.fill_(float("nan"))
        return {"loss": (x.flatten(1).mean(1) * self.w - 1) ** 2}


def test_non_finite_weights_stop_the_run_and_are_never_saved(tmp_path, monkeypatch):
    from vaekit import models

    monkeypatch.setitem(models.MODELS, "toy", lambda mc, shape, tc: BufferGoesNaN())
    cfg = cfg_for(kind="toy", epochs=2, batch_size=10, log_every=3, ckpt_every=2, eval_k=0)
    with pytest.raises(TrainingDiverged) as e:
        train(cfg, tmp_path / "r", torch.rand(40, 1, 4, 4), progress=False)
    assert str(e.value) == (
        "the weights became NaN/inf between step 3 and step 4: training diverged (try a lower train.lr than "
        "0.001, or train.grad_clip); the checkpoint of step 2 holds finite weights"
    )
    saved = [ckpt.read_checkpoint(p) for p in ckpt.list_checkpoints(tmp_path / "r")]
    assert [s["step"] for s in saved] == [2, 0]
    assert all(torch.isfinite(v).all() for s in saved for v in s["model"].values())


def test_burda_schedule_changes_rate_at_the_stage_boundaries():
    """lr = 1e-3 * 10^(-i/7) for 3^i epochs, i = 0..7 (Burda et al. 2015, Sec. 5)."""
    starts = [0, 1, 4, 13, 40, 121, 364, 1093]  # first epoch of each stage: sum of 3^j, j < i
    for i, start in enumerate(starts):
        assert burda_learning_rate(start, 1e-3) == pytest.approx(1e-3 * 10 ** (-i / 7))
        if start > 0:
            assert burda_learning_rate(start - 1, 1e-3) == pytest.approx(1e-3 * 10 ** (-(i - 1) / 7))
    assert burda_learning_rate(3279, 1e-3) == pytest.approx(1e-4)  # the last epoch: 10^-1 of the start
    assert burda_learning_rate(5000, 1e-3) == pytest.approx(1e-4)  # past the end: the last stage's rate
    # through learning_rate: the stage follows the step's epoch
    spe = 3000
    assert learning_rate(4 * spe - 1, 0, 1e-3, "burda", 0, spe) == pytest.approx(1e-3 * 10 ** (-1 / 7))
    assert learning_rate(4 * spe, 0, 1e-3, "burda", 0, spe) == pytest.approx(1e-3 * 10 ** (-2 / 7))
    # scaled: stages of max(1, round(3^i * s)) epochs
    assert burda_stage_epochs(0.1) == [1, 1, 1, 3, 8, 24, 73, 219]
    assert burda_learning_rate(6, 1e-3, 0.1) == pytest.approx(1e-3 * 10 ** (-4 / 7))  # epochs 6..13: stage 4
    assert learning_rate(3 * spe, 0, 1e-3, "burda", 0, spe, 0.1) == pytest.approx(1e-3 * 10 ** (-3 / 7))


def test_burda_protocol_totals():
    assert burda_stage_epochs() == [3**i for i in range(8)] and sum(burda_stage_epochs()) == 3280
    assert sum(burda_stage_epochs(0.5)) == sum(max(1, math.floor(3**i / 2 + 0.5)) for i in range(8)) == 1644
    assert burda_stage_epochs(0.001) == [1] * 7 + [2]  # every stage keeps an epoch
    assert sum(burda_stage_epochs(1e-9)) == 8


def test_the_optimiser_takes_adam_eps():
    cfg = cfg_for(adam_eps=1e-4)
    model = build_model(cfg, (1, 8, 8))
    assert build_learner(model, cfg.train, torch.device("cpu")).opt.param_groups[0]["eps"] == 1e-4


def test_data_mean_bias_init_runs_once_for_a_fresh_run_and_never_on_resume(tmp_path, monkeypatch):
    tr, te = digits()
    cfg = cfg_for(epochs=1, decoder_bias_init="data_mean", eval_k=0)
    train(cfg, tmp_path / "r", tr, te, progress=False, max_steps=0)
    bias = state_of(tmp_path / "r")["model"]["decoder.body.net.3.bias"]
    torch.testing.assert_close(torch.sigmoid(bias), tr.mean(0).clamp(1e-3, 1 - 1e-3).flatten())
    calls = []
    monkeypatch.setattr(VAE, "init_from_data", lambda self, mean_x: calls.append(mean_x))
    train(cfg, tmp_path / "r", tr, te, progress=False, resume=True, max_steps=5)
    assert calls == []
    train(cfg, tmp_path / "fresh", tr, te, progress=False, max_steps=0)
    assert len(calls) == 1 and calls[0].shape == (1, 8, 8)


def test_epoch_line_says_what_was_measured():
    from vaekit.train import epoch_line

    rec = {"test_nll": 90.123, "test_elbo": -95.5, "test_kl": 20.0, "test_k": 100, "test_n": 500}
    line = epoch_line(2, 20, 72, [150.0, 152.4], rec, "importance-sampled")
    assert line == (
        "epoch 2/20 step 72: train loss 151.20; test NLL 90.12 (K=100), ELBO -95.50, KL 20.00 nats on 500 examples"
    )
    flow = {**rec, "test_elbo": None, "test_kl": None}
    assert epoch_line(1, 3, 10, [1.0], flow, "exact").endswith("test NLL 90.12 (exact) nats on 500 examples")
    assert epoch_line(1, 3, 10, [], None, "none") == "epoch 1/3 step 10: train loss n/a (no finite step)"
    assert "\n" not in line


def test_train_ends_every_epoch_with_one_line_on_stderr(tmp_path, capsys):
    tr, te = digits()
    cfg = cfg_for(epochs=2, batch_size=500, eval_k=3, eval_n=10)
    train(cfg, tmp_path / "quiet", tr, te, progress=False)
    assert "epoch" not in capsys.readouterr().err  # no bar, no lines: a library call stays quiet
    train(cfg, tmp_path / "r", tr, te, progress=False, epoch_lines=True)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("epoch ")]
    assert [l.split(":")[0] for l in lines] == ["epoch 1/2 step 3", "epoch 2/2 step 6"], err
    assert all("(K=3)" in l and l.endswith("nats on 10 examples") for l in lines)
    nll = [r["test_nll"] for r in read_metrics(tmp_path / "r") if "test_nll" in r]
    assert [f"test NLL {v:.2f} (K=3)" in l for v, l in zip(nll, lines)] == [True, True]  # the logged numbers


def test_adam_step_is_the_optimiser_step():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opts = [torch.optim.AdamW(ps, lr=1e-2, eps=1e-4, weight_decay=0.1, fused=True) for ps in (params, twins)]
    for _ in range(4):
        grads = [torch.randn_like(p) for p in params]
        for ps in (params, twins):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
        opts[0].step()
        adam_step(opts[1])  # the first call initialises the state through opt.step()
    for a, b in zip(params, twins):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    for a, b in zip(params, twins):
        sa, sb = opts[0].state[a], opts[1].state[b]
        assert float(sa["step"]) == float(sb["step"]) == 4
        torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"], rtol=0, atol=1e-7)


TWO_LAYERS = {"stochastic_layers": [6, 3], "latent_dim": 9, "layer_hidden": [8]}


@pytest.mark.parametrize(
    "objective, gradient, k, layers",
    [
        ("elbo", "reparam", 1, {}),
        ("iwae", "dreg", 3, {}),
        ("elbo", "reparam", 1, TWO_LAYERS),
        ("iwae", "reparam", 3, TWO_LAYERS),
    ],
)
def test_hand_derived_training_gives_the_autograd_run(tmp_path, objective, gradient, k, layers):
    xtr, xte = digits()
    runs = {}
    for fused in (True, False):
        over = dict(fused=fused, objective=objective, gradient=gradient, k=k, activation="tanh", ema=0.9, **layers)
        cfg = cfg_for(epochs=1, **over)
        learner = build_learner(build_model(cfg, (1, 8, 8)), cfg.train, torch.device("cpu"))
        assert (learner.fused is not None) == fused
        out = train(cfg, tmp_path / f"run-{fused}", xtr[:500], xte, transform=binarize, progress=False)
        runs[fused] = (out, ckpt.latest_checkpoint(tmp_path / f"run-{fused}")[1])
    (a, ca), (b, cb) = runs[True], runs[False]
    assert a["step"] == b["step"] == 10
    assert a["test_nll"] == pytest.approx(b["test_nll"], abs=1e-3)
    for name, w in ca["model"].items():
        torch.testing.assert_close(w, cb["model"][name], rtol=1e-4, atol=1e-5, msg=name)


def test_a_binarised_run_refuses_data_outside_the_unit_interval(tmp_path):
    xtr, _ = digits()
    with pytest.raises(VaekitError, match=r"needs training data in \[0, 1\]; found 0\.\.16"):
        train(cfg_for(), tmp_path / "run", xtr * 16, None, transform=binarize, progress=False)
    assert not (tmp_path / "run").exists()


def test_the_hand_derived_path_clips_and_resumes_exactly(tmp_path):
    xtr, _ = digits()
    cfg = cfg_for(epochs=2, grad_clip=5.0, activation="tanh", eval_k=0)
    full = train(cfg, tmp_path / "full", xtr[:500], None, transform=binarize, progress=False)
    train(cfg, tmp_path / "cut", xtr[:500], None, transform=binarize, progress=False, max_steps=13)
    cut = train(cfg, tmp_path / "cut", xtr[:500], None, transform=binarize, progress=False, resume=True)
    assert full["step"] == cut["step"] == 20
    a, b = (ckpt.latest_checkpoint(tmp_path / r)[1] for r in ("full", "cut"))
    for name, w in a["model"].items():
        torch.testing.assert_close(b["model"][name], w, rtol=0, atol=0, msg=name)
    steps = [float(s["step"]) for s in b["optimizer"]["state"].values()]
    assert steps == [20.0] * len(steps)  # the shared step counter went through the checkpoint


@pytest.mark.parametrize("eval_amp", [False, True])
def test_the_end_of_epoch_evaluation_runs_under_bf16_only_when_eval_amp_says_so(tmp_path, monkeypatch, eval_amp):
    """... and metrics.jsonl records the precision it ran in, since auto resolves per device."""
    import vaekit.train

    seen = []
    real = vaekit.train.evaluate
    monkeypatch.setattr(vaekit.train, "evaluate", lambda *a, **kw: seen.append(kw["amp"]) or real(*a, **kw))
    tr, te = digits()
    train(
        cfg_for(epochs=1, batch_size=500, eval_k=3, eval_n=10, eval_amp=eval_amp),
        tmp_path / "r",
        tr,
        te,
        progress=False,
    )
    assert seen == [eval_amp]
    (rec,) = [r for r in read_metrics(tmp_path / "r") if "test_nll" in r]
    assert rec["test_precision"] == ("bf16 hidden layers" if eval_amp else "float32")
    assert build_config("dense-digits").train.eval_amp is False  # off unless asked for


@pytest.mark.parametrize("outputs_float32", [False, True])
def test_amp_outputs_float32_keeps_the_output_layers_float32_in_training(tmp_path, monkeypatch, outputs_float32):
    """train.amp rounds every layer of the nets to bf16; with train.amp_outputs_float32 the output
    layers (here the encoder's posterior parameters and the decoder's logits) compute in float32 from
    their input cast up, forward and backward, so their weights' gradients come from float32 products."""
    import vaekit.precision

    seen = []
    real = vaekit.precision.OutputLayer.__call__

    def spy(self, x, *a, **kw):
        out = real(self, x, *a, **kw)
        if torch.is_grad_enabled() and torch.is_autocast_enabled("cpu"):  # training steps, not the evaluation
            seen.append(out.dtype)
        return out

    monkeypatch.setattr(vaekit.precision.OutputLayer, "__call__", spy)
    tr, te = digits()
    train(
        cfg_for(epochs=1, amp=True, amp_outputs_float32=outputs_float32, eval_k=0),
        tmp_path / "r",
        tr[:200],
        None,
        progress=False,
        max_steps=2,
    )
    assert len(seen) == 2 * 2  # two output layers per step (encoder, decoder), two steps
    assert set(seen) == {torch.float32 if outputs_float32 else torch.bfloat16}
    saved = state_of(tmp_path / "r")["config"]["train"]
    assert saved["amp"] is True and saved["amp_outputs_float32"] is outputs_float32  # a resume trains the same way
    assert build_config("dense-digits").train.amp_outputs_float32 is False


def test_flush_subnormal_moments_zeroes_exactly_the_subnormal_float32_moments():
    """Entries of exp_avg / exp_avg_sq below 2**-126 in magnitude become 0; zeros, normal numbers
    (the smallest normal included), a float64 state and the step counter are left as they were."""
    from vaekit.train import flush_subnormal_moments

    tiny = torch.finfo(torch.float32).tiny
    p = torch.nn.Parameter(torch.zeros(6))
    opt = torch.optim.AdamW([p], fused=True)
    m = torch.tensor([1e-40, -1e-40, tiny, -tiny, 0.0, 0.5])
    v = torch.tensor([1e-45, 0.0, 2e-38, 1e-39, 3.0, tiny / 2])
    q = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt.add_param_group({"params": [q]})
    opt.state[p] = {"step": torch.tensor(7.0), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
    opt.state[q] = {"step": torch.tensor(7.0), "exp_avg": torch.tensor([1e-40, 1.0], dtype=torch.float64)}
    flush_subnormal_moments(opt)
    assert opt.state[p]["exp_avg"].tolist() == [0.0, 0.0, tiny, -tiny, 0.0, 0.5]
    assert opt.state[p]["exp_avg_sq"].tolist() == [0.0, 0.0, v[2].item(), 0.0, 3.0, 0.0]
    assert opt.state[q]["exp_avg"].tolist() == [1e-40, 1.0] and opt.state[p]["step"].item() == 7.0


def test_flushing_subnormal_moments_changes_no_weight_of_an_adamw_step():
    """The update a subnormal moment makes is far under a weight's last bit: AdamW steps from a state
    full of subnormal moments give bit-identical weights with and without the flush."""
    from vaekit.train import adam_step, flush_subnormal_moments

    g = torch.Generator().manual_seed(0)
    runs = []
    for flush in (False, True):
        p = torch.nn.Parameter(torch.randn(1000, generator=torch.Generator().manual_seed(1)))
        opt = torch.optim.AdamW([p], lr=1e-3, fused=True)
        p.grad = torch.randn(1000, generator=g.manual_seed(2))
        adam_step(opt)  # creates the state
        st = opt.state[p]
        dead = torch.arange(1000) % 2 == 0  # half the weights: a gradient that stays zero
        st["exp_avg"][dead] = 3e-39
        st["exp_avg_sq"][dead] = 2e-39
        for _ in range(5):
            p.grad = torch.randn(1000, generator=g) * ~dead
            if flush:
                flush_subnormal_moments(opt)
            adam_step(opt)
        runs.append(p.detach().clone())
    assert torch.equal(runs[0], runs[1])


def test_training_flushes_subnormal_moments_every_few_steps_by_step_number(monkeypatch):
    """train_step flushes after the steps numbered k * MOMENT_FLUSH_EVERY - 1 (counted from 0), so that a
    resumed run flushes at the same steps as an uninterrupted one."""
    import vaekit.train

    calls = []
    monkeypatch.setattr(vaekit.train, "flush_subnormal_moments", lambda opt: calls.append(opt))
    tr, _ = digits()
    cfg = cfg_for()
    model = build_model(cfg, (1, 8, 8))
    learner = build_learner(model, cfg.train, torch.device("cpu"))
    prepare = batch_preparer(binarize, False, torch.device("cpu"))
    every = vaekit.train.MOMENT_FLUSH_EVERY
    flushed = []
    for step in (0, every - 2, every - 1, every, 2 * every - 1):
        n = len(calls)
        train_step(learner, [(0, tr[:50])], 50, step, 1e-3, cfg.train, prepare)
        flushed += [step] * (len(calls) - n)
    assert flushed == [every - 1, 2 * every - 1] and all(o is learner.opt for o in calls)
