"""The `vaekit` command end to end on the 8x8 digits, and its one-line errors."""

import json
import math
import re

import numpy as np
import pytest
from PIL import Image

from vaekit.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    rc = main(
        [
            "train",
            "--preset",
            "dense-digits",
            "--epochs",
            "2",
            "--out",
            str(out),
            "--no-progress",
            "--set",
            "latent_dim=2",
            "--set",
            "tensorboard=false",
        ]
    )
    assert rc == 0
    return out


def test_train_writes_a_complete_run_folder(run):
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()
    assert list((run / "checkpoints").glob("step-*.pt"))


def test_resume_extends_the_run(run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert main(["train", "--resume", str(copy), "--epochs", "3", "--no-progress"]) == 0
    recs = [json.loads(l) for l in (copy / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in recs if "loss" in r]
    assert steps == sorted(set(steps)) and max(steps) == 3 * 24  # 1498 digits, batch 64: 24 steps/epoch
    assert [r["epoch"] for r in recs if "test_nll" in r] == [1, 2, 3]


def test_evaluate_writes_eval_json_with_the_documented_keys(run, capsys):
    assert main(["evaluate", str(run), "--k", "50", "--no-progress"]) == 0
    res = json.loads((run / "eval-test.json").read_text())
    for key in ("nll", "nll_stderr", "elbo", "kl", "rec", "bpd", "active_units", "k", "n", "split", "dataset"):
        assert key in res
    assert res["k"] == 50 and res["split"] == "test" and res["dataset"] == "digits"
    assert res["nll"] <= -res["elbo"] + 3 * res["elbo_stderr"]
    assert "nll" in capsys.readouterr().out


def _continuous_npz(path):
    g = np.random.default_rng(0)
    np.savez(path, x=g.beta(2.0, 5.0, size=(80, 6)).astype(np.float32))  # tabular values in (0, 1)
    return str(path)


def test_a_gaussian_likelihood_never_sees_binarised_data(tmp_path, capsys):
    """The default binarisation meets likelihood=gaussian as "none", recorded in the run's config;
    asking for binarisation with it explicitly is a one-line error."""
    import yaml

    from vaekit.checkpoint import load_model

    data = _continuous_npz(tmp_path / "tab.npz")
    small = ["--set", "hidden=[8]", "--set", "latent_dim=2", "--set", "tensorboard=false", "--set", "eval_k=0"]
    argv = ["train", "--data", data, "--epochs", "1", "--no-progress", "--set", "likelihood=gaussian", *small]
    assert main([*argv, "--out", str(tmp_path / "g")]) == 0
    assert yaml.safe_load((tmp_path / "g" / "config.yaml").read_text())["data"]["binarize"] == "none"
    assert load_model(tmp_path / "g")[1].data.binarize == "none"
    capsys.readouterr()
    for mode in ("dynamic", "static"):
        assert main([*argv, "--set", f"binarize={mode}", "--out", str(tmp_path / mode)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"data.binarize={mode}" in err[0] and "Traceback" not in err[0]
        assert not (tmp_path / mode).exists()
    # a Bernoulli likelihood keeps the configured binarisation
    assert main(["train", "--data", data, "--epochs", "1", "--no-progress", *small, "--out", str(tmp_path / "b")]) == 0
    assert load_model(tmp_path / "b")[1].data.binarize == "dynamic"


@pytest.mark.parametrize(
    "cmd, size",
    [
        (["sample", "-n", "16"], None),
        (["reconstruct", "-n", "8"], None),
        (["interpolate", "--steps", "5", "--slerp"], None),
        (["latent-map", "--grid", "6"], (1100, 500)),
    ],
)
def test_picture_commands_write_pngs(run, tmp_path, cmd, size):
    out = tmp_path / "p.png"
    assert main([cmd[0], str(run), *cmd[1:], "-o", str(out)]) == 0
    img = Image.open(out)
    assert img.format == "PNG"
    if size:
        assert img.size == size


def test_encode_writes_means_and_logvars(run, tmp_path):
    out = tmp_path / "f.npy"
    assert main(["encode", str(run), "-o", str(out), "--logvar"]) == 0
    feats = np.load(out)
    assert feats.shape[1] == 4 and np.isfinite(feats).all()
    assert np.load(tmp_path / "f.labels.npy").shape[0] == feats.shape[0]


def test_presets_lists_every_preset(capsys):
    from vaekit.config import PRESETS

    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--preset", "nosuch"], "unknown preset 'nosuch'"),
        (["train", "--preset", "dense-digits", "--set", "bogus=1"], "unknown config key 'bogus'"),
        (["train", "--preset", "dense-digits", "--data", "nosuchdata"], "nosuchdata"),
        (["evaluate", "/nonexistent/run"], "no run folder or checkpoint at /nonexistent/run"),
        (["train", "--resume", "/nonexistent/run"], "nothing to resume"),
        (["sample"], "the following arguments are required: run"),
        (["evaluate", "RUN", "--k", "0"], "--k must be positive"),
    ],
)
def test_user_errors_are_one_line_with_status_2(argv, fragment, capsys, tmp_path, run):
    argv = [str(run) if a == "RUN" else a for a in argv]
    with pytest.raises(SystemExit) if argv[0] == "sample" else _nullcontext():
        rc = main(argv)
        assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vaekit: error: ") and fragment in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_failed_config_leaves_no_run_folder(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["train", "--preset", "dense-digits", "--set", "lr=-1", "--out", str(out)]) == 2
    assert not out.exists()


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_every_registered_command_has_a_parser_and_a_runner():
    from vaekit.cli import COMMANDS, Command, build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == list(COMMANDS)
    for name, command in COMMANDS.items():
        assert isinstance(command, Command) and callable(command.run) and command.help
        assert sub.choices[name].description == command.help


@pytest.mark.parametrize("verb", ["gap", "complete", "traverse"])
def test_inference_verbs_refuse_a_model_without_latents(verb, tmp_path, capsys):
    import torch

    from vaekit.config import build_config
    from vaekit.train import train

    out = tmp_path / "ae"
    cfg = build_config("dense-digits", overrides={"kind": "autoencoder", "eval_k": 0, "tensorboard": False})
    train(cfg, out, torch.rand(20, 1, 8, 8), progress=False, max_steps=1)
    assert main([verb, str(out), "--data", "digits"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vaekit: error: vaekit {verb} needs a VAE") and "autoencoder" in err


def one_error_line(capsys, rc) -> str:
    """The one ``vaekit: error: ...`` line of a command that exited with status 2."""
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("vaekit: error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "error, fragment",
    [
        (
            PermissionError(13, "Permission denied", "/runs/a/config.yaml"),
            "cannot access /runs/a/config.yaml: Permission denied",
        ),
        (
            OSError(122, "Disk quota exceeded", "/runs/a/metrics.jsonl"),
            "cannot access /runs/a/metrics.jsonl: Disk quota",
        ),
        (OSError(28, "No space left on device", "/runs/a/x"), "disk full while writing /runs/a/x"),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB"), "out of memory"),
        (MemoryError(), "out of memory; use a smaller --batch-size"),
    ],
)
def test_system_errors_end_in_one_line(monkeypatch, capsys, error, fragment):
    import vaekit.cli as cli

    def fail(args):
        raise error

    monkeypatch.setitem(cli.COMMANDS, "presets", cli.COMMANDS["presets"]._replace(run=fail))
    assert fragment in one_error_line(capsys, main(["presets"]))


def test_other_runtime_errors_are_not_mistaken_for_a_lack_of_memory(monkeypatch):
    import vaekit.cli as cli

    def fail(args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setitem(cli.COMMANDS, "presets", cli.COMMANDS["presets"]._replace(run=fail))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        main(["presets"])


@pytest.fixture(scope="module")
def other_shape(tmp_path_factory):
    """A data set of 12x12 images: another shape than the 8x8 digits the run was trained on."""
    path = tmp_path_factory.mktemp("shape") / "big.npy"
    np.save(path, np.random.default_rng(0).random((20, 1, 12, 12)).astype(np.float32))
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "--k", "2", "--no-progress"],
        ["reconstruct"],
        ["encode"],
        ["latent-map"],
        ["interpolate"],
        ["gap", "--k", "2", "--svi-steps", "1"],
        ["complete", "--k", "2"],
    ],
)
def test_data_of_another_shape_names_both_shapes(run, other_shape, tmp_path, capsys, argv):
    suffix = ".npy" if argv[0] == "encode" else ".png"
    rc = main([argv[0], str(run), *argv[1:], "--data", str(other_shape), "-o", str(tmp_path / f"out{suffix}")])
    err = one_error_line(capsys, rc)
    assert f"data {other_shape} has examples of shape (1, 12, 12); the model was trained on (1, 8, 8)" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["latent-map", "RUN", "--points", "0"], "--points must be positive; got 0"),
        (["latent-map", "RUN", "--grid", "-2"], "--grid must be positive; got -2"),
        (["evaluate", "RUN", "--n", "-1"], "--n must be positive; got -1"),
        (["evaluate", "RUN", "--n", "0"], "--n must be positive; got 0"),
        (["evaluate", "RUN", "--batch-size", "0"], "--batch-size must be positive; got 0"),
        (["gap", "RUN", "--n", "0"], "--n must be positive; got 0"),
        (["gap", "RUN", "--svi-samples", "0"], "--svi-samples must be positive; got 0"),
        (["gap", "RUN", "--svi-lr", "nan"], "--svi-lr must be a positive number; got nan"),
        (["reconstruct", "RUN", "-n", "-3"], "-n must be positive; got -3"),
        (["interpolate", "RUN", "--pairs", "0"], "--pairs must be positive; got 0"),
        (["sample", "RUN", "--temperature", "-1"], "--temperature must be a positive number; got -1.0"),
        (["complete", "RUN", "--k", "0"], "--k must be positive; got 0"),
        (["complete", "RUN", "--svi-steps", "-1"], "--svi-steps must be non-negative; got -1"),
    ],
)
def test_counts_must_be_positive(run, tmp_path, capsys, argv, fragment):
    argv = [str(run) if a == "RUN" else a for a in argv]
    err = one_error_line(capsys, main([*argv, "-o", str(tmp_path / "out.png")]))
    assert fragment in err
    assert not list(tmp_path.iterdir())


def test_more_examples_than_the_split_holds_says_how_many_were_used(run, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert main(["evaluate", str(run), "--n", "100000", "--k", "2", "--no-progress", "-o", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["n"] == 299  # the digits' test split
    assert "--n 100000 is more than the 299 test examples; using all 299" in capsys.readouterr().err


def test_evaluate_names_its_file_by_split_and_records_what_it_ran(run, capsys):
    assert main(["evaluate", str(run), "--split", "train", "--n", "7", "--k", "3", "--seed", "5", "--no-progress"]) == 0
    res = json.loads((run / "eval-train.json").read_text())
    assert (res["split"], res["n"], res["k"], res["seed"]) == ("train", 7, 3, 5)
    assert res["step"] == 2 * 24  # the newest checkpoint: 2 epochs of 24 steps
    if (run / "eval-test.json").exists():  # the test split's numbers are never overwritten by another split's
        assert json.loads((run / "eval-test.json").read_text())["split"] == "test"


def test_the_train_split_of_a_dynamically_binarised_run_is_evaluated_and_encoded_binarised(run, tmp_path, monkeypatch):
    import torch

    import vaekit.evaluate
    from vaekit import data
    from vaekit.checkpoint import load_model

    model, cfg, _ = load_model(run)
    train, _ = data.prepare_data(cfg.data)  # grey levels: dynamic binarisation happens per batch
    want = data.binarize_static(train.x, cfg.data.binarize_seed + 1)  # as the model saw it, fixed once
    seen = []
    real = vaekit.evaluate.evaluate
    monkeypatch.setattr(vaekit.evaluate, "evaluate", lambda model, x, **kw: seen.append(x) or real(model, x, **kw))
    argv = ["evaluate", str(run), "--split", "train", "--n", "9", "--k", "2", "--no-progress"]
    assert main([*argv, "-o", str(tmp_path / "e.json")]) == 0
    assert torch.equal(seen[0], want[:9])  # Bernoulli log-likelihoods of 0 / 1 pixels, not of grey levels
    assert main(["encode", str(run), "--split", "train", "-o", str(tmp_path / "f.npy")]) == 0
    with torch.no_grad():
        means = model.encode(want)[0]
    assert np.allclose(np.load(tmp_path / "f.npy"), means.numpy(), atol=1e-6)


def test_evaluate_amp_runs_the_nets_in_bf16_and_records_it(run, tmp_path, capsys, monkeypatch):
    import vaekit.evaluate

    seen = []
    real = vaekit.evaluate.importance_sampled_log_prob
    monkeypatch.setattr(
        vaekit.evaluate, "importance_sampled_log_prob", lambda *a, **kw: seen.append(kw["amp"]) or real(*a, **kw)
    )
    for flag, out in (["--amp"], tmp_path / "bf16.json"), ([], tmp_path / "fp32.json"):
        argv = ["evaluate", str(run), "--n", "3", "--k", "5", "--no-progress", "-o", str(out)]
        assert main(argv + flag) == 0
    assert seen == [True] * 3 + [False] * 3  # one chunk per example, each with the flag it was given
    bf16, fp32 = (json.loads((tmp_path / f).read_text()) for f in ("bf16.json", "fp32.json"))
    assert (bf16["amp"], fp32["amp"]) == (True, False) and math.isfinite(bf16["nll"])
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "Default: the run's train.eval_amp" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("native", [True, False])
def test_evaluate_follows_the_runs_eval_amp_auto_unless_told(run, tmp_path, capsys, monkeypatch, native):
    """A run whose ``train.eval_amp`` is auto is evaluated with bf16 hidden layers where this device has
    bf16 hardware, and says so on stderr; --no-amp and --amp override it; the output records it."""
    import vaekit.nets.speed

    monkeypatch.setattr(vaekit.nets.speed, "native_bf16", lambda device: native)
    auto = tmp_path / "auto"
    train = ["train", "--preset", "dense-digits", "--epochs", "1", "--out", str(auto), "--no-progress"]
    assert main(train + ["--set", "eval_amp=auto", "--set", "eval_k=0", "--set", "tensorboard=false"]) == 0
    assert "eval_amp: auto" in (auto / "config.yaml").read_text()  # decided per evaluation, not at training
    argv = ["evaluate", str(auto), "--n", "2", "--k", "3", "--no-progress", "-o"]
    for flag, want in ([], native), (["--no-amp"], False), (["--amp"], True):
        capsys.readouterr()
        assert main(argv + [str(tmp_path / "e.json")] + flag) == 0
        assert json.loads((tmp_path / "e.json").read_text())["amp"] is want, flag
        note = "hidden layers run in bf16 (the run's train.eval_amp=auto)" in capsys.readouterr().err
        assert note == (want and not flag)
    assert main(["score", str(auto), "--n", "2", "--k", "3", "--no-progress", "-o", str(tmp_path / "s.npy")]) == 0
    assert ("K=3; bf16 hidden layers)" in capsys.readouterr().out) == native  # score follows it too


@pytest.mark.parametrize("native", [True, False])
def test_bf16_asked_for_on_a_cpu_without_bf16_instructions_is_warned_about(tmp_path, capsys, bf16_cpu, native):
    """Emulated bf16 makes a step several times slower than float32, so where the CPU has no bf16
    units (patched) an explicit amp=true, a resume that keeps it, and ``evaluate --amp`` each say so in
    one warning line; the run still trains and evaluates as asked. Where bf16 is native, no warning."""
    bf16_cpu(native)
    out = tmp_path / "r"
    argv = ["train", "--preset", "dense-digits", "--set", "amp=true", "--set", "tensorboard=false", "--set", "eval_k=0"]
    assert main([*argv, "--max-steps", "1", "--out", str(out), "--no-progress"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vaekit: warning:")]
    assert len(warned) == (0 if native else 1) and all("amp=auto trains in float32 here" in w for w in warned)
    assert main(["train", "--resume", str(out), "--max-steps", "2", "--no-progress"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vaekit: warning:")]
    assert len(warned) == (0 if native else 1) and all("which a resume keeps" in w for w in warned)
    for flag, warns in (["--amp"], not native), (["--no-amp"], False):
        assert (
            main(["evaluate", str(out), "--n", "2", "--k", "3", "--no-progress", "-o", str(tmp_path / "e.json"), *flag])
            == 0
        )
        err = capsys.readouterr().err
        assert ("vaekit: warning: bf16 hidden layers asked for" in err) == warns, flag
        assert json.loads((tmp_path / "e.json").read_text())["amp"] is (flag == ["--amp"])


def test_evaluate_killed_and_run_again_resumes_from_its_journal(run, tmp_path, capsys, monkeypatch):
    import vaekit.evaluate

    argv = ["evaluate", str(run), "--n", "6", "--k", "4", "--no-progress"]
    assert main(argv + ["-o", str(tmp_path / "whole.json")]) == 0
    real, calls = vaekit.evaluate.importance_sampled_log_prob, []

    def killed_after_two(*a, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a Ctrl-C would stop it
        calls.append(1)
        return real(*a, **kw)

    out = tmp_path / "resumed" / "eval.json"
    journal = tmp_path / "resumed" / "eval.json.journal"
    with monkeypatch.context() as m:
        m.setattr(vaekit.evaluate, "importance_sampled_log_prob", killed_after_two)
        assert main(argv + ["-o", str(out)]) == 130  # the Ctrl-C exit status
    assert not out.exists() and len(list(journal.glob("eval-*.partial.jsonl"))) == 1
    (unfinished,) = journal.glob("eval-*.partial.jsonl")
    capsys.readouterr()
    other = ["evaluate", str(run), "--n", "3", "--k", "2", "--no-progress", "-o", str(out)]
    assert main(other) == 0  # another evaluation to the same output: it leaves the unfinished one's journal
    assert list(journal.glob("eval-*.partial.jsonl")) == [unfinished]
    assert (
        f"vaekit: note: {journal} holds 1 journal of other evaluations ({unfinished.name}) and none of this one"
        in capsys.readouterr().err
    )
    assert main(argv + ["-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"vaekit: note: resuming from {unfinished}: 2 of 6 examples done" in err
    assert "2 of the 6 examples were read back from the journal of an earlier run" in err
    whole, resumed = (json.loads(p.read_text()) for p in (tmp_path / "whole.json", out))
    assert (resumed["resumed"], whole["resumed"]) == (2, 0)
    for key in ("nll", "nll_stderr", "elbo", "kl", "rec", "active_units"):
        assert resumed[key] == whole[key]
    assert not journal.exists()  # removed once the result is written


def test_evaluate_keep_journal_leaves_one_row_per_example_and_reads_them_all_back(run, tmp_path, capsys, monkeypatch):
    """--keep-journal: the journal outlives the JSON, which names it, beside another evaluation's
    journal that it leaves alone; its rows are the per-example estimates whose mean is the JSON's NLL
    and ELBO, and the same command run again recomputes nothing."""
    import torch

    import vaekit.evaluate
    from vaekit.evaluate import LOG_PX, SAMPLED_COLUMNS
    from vaekit.journal import read_journal

    out = tmp_path / "eval.json"
    argv = ["evaluate", str(run), "--n", "5", "--k", "3", "--batch-size", "2", "--no-progress", "-o", str(out)]
    assert main(["evaluate", str(run), "--n", "2", "--k", "2", "--no-progress", "-o", str(out), "--keep-journal"]) == 0
    (other,) = (tmp_path / "eval.json.journal").glob("eval-*.partial.jsonl")
    capsys.readouterr()
    assert main([*argv, "--keep-journal"]) == 0
    journals = set((tmp_path / "eval.json.journal").glob("eval-*.partial.jsonl"))
    (journal,) = journals - {other}
    assert f"per-example rows kept in {journal}" in capsys.readouterr().err
    assert json.loads(out.read_text())["journal"] == str(journal)
    key, units = read_journal(journal)
    assert key["n"] == 5 and key["k"] == 3
    rows = torch.cat([units[c][0] for c in sorted(units)]).double()
    first = json.loads(out.read_text())
    assert rows.shape[0] == 5 and first["resumed"] == 0
    assert -rows[:, LOG_PX].mean().item() == pytest.approx(first["nll"], rel=1e-6)
    assert rows[:, SAMPLED_COLUMNS.index("elbo")].mean().item() == pytest.approx(first["elbo"], rel=1e-6)
    monkeypatch.setattr(vaekit.evaluate, "importance_sampled_log_prob", lambda *a, **kw: pytest.fail("recomputed"))
    assert main(argv) == 0  # without the flag this time: read back whole, then the journal is dropped
    again = json.loads(out.read_text())
    assert again["resumed"] == 5 and again["nll"] == first["nll"] and again["elbo"] == first["elbo"]
    assert "journal" not in again and set((tmp_path / "eval.json.journal").iterdir()) == {other}


def test_evaluate_keep_journal_under_torchrun_is_refused(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = ["evaluate", str(run), "--n", "2", "--k", "2", "--no-progress", "-o", str(tmp_path / "e.json")]
    assert main([*argv, "--keep-journal"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vaekit: error: --keep-journal: under torchrun") and err.count("\n") == 1


def test_evaluate_and_score_logged_to_a_file_say_where_they_stand(run, tmp_path, capsys, monkeypatch):
    """Where stderr is no terminal (a background run's log) no bar is drawn, and a long evaluation
    writes a progress line per interval instead (every chunk here, at an interval of 0 s);
    --no-progress silences it."""
    import vaekit.cli

    monkeypatch.setattr(vaekit.cli, "LOG_EVERY_S", 0.0)
    for verb, out, desc in (("evaluate", "e.json", "evaluate"), ("score", "s.npy", "score")):
        argv = [verb, str(run), "--n", "6", "--k", "3", "--batch-size", "2", "-o", str(tmp_path / out)]
        assert main(argv) == 0
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith(f"vaekit: {desc}: ")]
        assert [ln.split(" examples,")[0] for ln in lines] == [f"vaekit: {desc}: {n} of 6" for n in range(1, 6)]
        assert all(re.search(r"examples, [0-9.e+-]+ s each, about [0-9.]+ (s|min|h) left$", ln) for ln in lines)
        assert main([*argv, "--no-progress"]) == 0
        assert f"vaekit: {desc}: " not in capsys.readouterr().err


def test_evaluate_refuses_a_folder_as_output_before_evaluating(run, tmp_path, capsys, monkeypatch):
    import vaekit.evaluate

    monkeypatch.setattr(vaekit.evaluate, "importance_sampled_log_prob", lambda *a, **kw: pytest.fail("evaluated"))
    assert main(["evaluate", str(run), "--n", "2", "--k", "2", "--no-progress", "-o", str(tmp_path)]) == 2
    assert f"cannot write {tmp_path}: it is a folder" in capsys.readouterr().err


def test_evaluate_of_an_autoencoder_reports_its_reconstruction(tmp_path, capsys):
    run = tmp_path / "ae"
    argv = ["train", "--preset", "dense-digits", "--model", "autoencoder", "--epochs", "1", "--out", str(run)]
    assert main(argv + ["--max-steps", "2", "--no-progress", "--set", "tensorboard=false"]) == 0
    assert main(["evaluate", str(run), "--n", "5", "--no-progress"]) == 0
    res = json.loads((run / "eval-test.json").read_text())
    assert res["log_prob_kind"] == "none" and res["nll"] is None and res["resumed"] == 0
    assert math.isfinite(res["rec"]) and res["rec"] < 0
    capsys.readouterr()
    assert (
        main(["evaluate", str(run), "--n", "5", "--no-progress", "--keep-journal", "-o", str(tmp_path / "k.json")]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith(f"vaekit: error: --keep-journal: {run} is a model without a density (autoencoder)")
    assert err.count("\n") == 1 and not (tmp_path / "k.json").exists()


def test_evaluate_of_a_checkpoint_writes_beside_its_run(run, capsys):
    from vaekit.checkpoint import list_checkpoints

    ckpt = list_checkpoints(run)[-1]
    assert main(["evaluate", str(ckpt), "--split", "train", "--n", "3", "--k", "2", "--no-progress"]) == 0
    assert json.loads((run / "eval-train.json").read_text())["n"] == 3


@pytest.mark.parametrize(
    "argv, shape",
    [
        (["sample", "-n", "5"], (5, 1, 8, 8)),
        (["reconstruct", "-n", "4"], (4, 1, 8, 8)),
        (["interpolate", "--steps", "3", "--pairs", "2"], (2, 3, 1, 8, 8)),
        (["latent-map", "--grid", "3", "--points", "50"], (9, 1, 8, 8)),
        (["complete", "-n", "2", "--completions", "3", "--k", "5"], (2, 3, 1, 8, 8)),
        (["traverse", "--dims", "2", "--steps", "5"], (2, 5, 1, 8, 8)),
    ],
)
def test_picture_commands_write_the_format_the_suffix_names(run, tmp_path, capsys, argv, shape):
    verb, rest = argv[0], argv[1:]
    for name, fmt in (("p.jpg", "JPEG"), ("p.bmp", "BMP"), ("p.PNG", "PNG")):
        assert main([verb, str(run), *rest, "-o", str(tmp_path / name)]) == 0
        with Image.open(tmp_path / name) as img:
            assert img.format == fmt
    assert main([verb, str(run), *rest, "-o", str(tmp_path / "p.npy")]) == 0
    arr = np.load(tmp_path / "p.npy")
    assert arr.shape == shape and np.isfinite(arr).all()
    capsys.readouterr()
    err = one_error_line(capsys, main([verb, str(run), *rest, "-o", str(tmp_path / "p.xyz")]))
    assert "unknown suffix '.xyz'" in err and ".png" in err and ".npy" in err
    assert not (tmp_path / "p.xyz").exists()


def test_sample_npy_holds_the_raw_samples(run, tmp_path):
    assert main(["sample", str(run), "-n", "6", "--seed", "3", "-o", str(tmp_path / "s.npy")]) == 0
    arr = np.load(tmp_path / "s.npy")
    assert arr.shape == (6, 1, 8, 8) and set(np.unique(arr)) <= {0.0, 1.0}  # Bernoulli draws, not pixels


@pytest.mark.parametrize("verb", ["encode", "cluster"])
def test_array_outputs_must_end_in_npy(run, tmp_path, capsys, verb):
    err = one_error_line(capsys, main([verb, str(run), "-o", str(tmp_path / "f.csv")]))
    assert "must end in .npy" in err
    assert not list(tmp_path.iterdir())


def test_complete_says_a_mask_file_is_missing(run, tmp_path, capsys):
    missing = tmp_path / "nofile.npy"
    err = one_error_line(capsys, main(["complete", str(run), "--mask", str(missing), "-o", str(tmp_path / "c.png")]))
    assert f"mask file {missing} does not exist" in err
    err = one_error_line(capsys, main(["complete", str(run), "--mask", "middle", "-o", str(tmp_path / "c.png")]))
    assert "unknown mask 'middle'" in err


@pytest.mark.parametrize("override", ["beta=-1", "free_bits=-2", "grad_clip=-1"])
def test_train_refuses_negative_weights_and_clips(tmp_path, capsys, override):
    out = tmp_path / "r"
    err = one_error_line(capsys, main(["train", "--preset", "dense-digits", "--set", override, "--out", str(out)]))
    assert f"train.{override.split('=')[0]} must be >= 0" in err
    assert not out.exists()


@pytest.mark.parametrize("text", ["", "# nothing here\n"])
def test_train_refuses_an_empty_config_file(tmp_path, capsys, text):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    err = one_error_line(capsys, main(["train", "--config", str(f), "--out", str(tmp_path / "r")]))
    assert "sets nothing" in err and not (tmp_path / "r").exists()


@pytest.mark.parametrize("verb", ["sample", "encode"])
def test_an_output_that_is_a_folder_is_refused_before_any_work(run, tmp_path, capsys, verb):
    err = one_error_line(capsys, main([verb, str(run), "-o", str(tmp_path)]))
    assert f"cannot write {tmp_path}: it is a folder" in err


def test_train_records_each_command_run_on_the_folder(run, tmp_path):
    import shutil

    first = f"vaekit train --preset dense-digits --epochs 2 --out {run} --no-progress --set latent_dim=2"
    assert (run / "command.txt").read_text().splitlines()[0] == first + " --set tensorboard=false"
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert main(["train", "--resume", str(copy), "--no-progress"]) == 0  # complete already: trains nothing
    assert (copy / "command.txt").read_text().splitlines()[1:] == [f"vaekit train --resume {copy} --no-progress"]
    assert main(["train", "--preset", "dense-digits", "--set", "lr=-1", "--out", str(tmp_path / "never")]) == 2
    assert not (tmp_path / "never").exists()  # a run that never started records nothing


TINY = ["--preset", "dense-digits", "--set", "hidden=[8]", "--set", "latent_dim=2", "--set", "tensorboard=false"]
TINY += ["--set", "eval_k=0", "--max-steps", "2", "--no-progress"]


def _weights(run):
    from vaekit.checkpoint import load_model

    model, cfg, _ = load_model(run)
    return cfg, {k: v.clone() for k, v in model.state_dict().items()}


def test_train_seed_flag_is_train_seed(tmp_path, capsys):
    """``--seed N`` is ``--set seed=N``: the same config and the same weights; another seed, others."""
    import torch

    assert main(["train", *TINY, "--seed", "7", "--out", str(tmp_path / "flag")]) == 0
    assert main(["train", *TINY, "--set", "seed=7", "--out", str(tmp_path / "set")]) == 0
    assert main(["train", *TINY, "--seed", "8", "--out", str(tmp_path / "other")]) == 0
    (cfg_flag, flag), (cfg_set, by_set), (cfg_other, other) = (_weights(tmp_path / r) for r in ("flag", "set", "other"))
    assert cfg_flag.train.seed == cfg_set.train.seed == 7 and cfg_other.train.seed == 8
    assert cfg_flag.to_dict() == cfg_set.to_dict()
    assert all(torch.equal(flag[k], by_set[k]) for k in flag)
    assert not all(torch.equal(flag[k], other[k]) for k in flag)
    # both given: agreeing values are accepted, disagreeing ones refused before any run folder exists
    assert main(["train", *TINY, "--seed", "7", "--set", "train.seed=7", "--out", str(tmp_path / "both")]) == 0
    capsys.readouterr()
    rc = main(["train", *TINY, "--seed", "7", "--set", "seed=3", "--out", str(tmp_path / "clash")])
    err = one_error_line(capsys, rc)
    assert "--seed 7" in err and "seed=3" in err and not (tmp_path / "clash").exists()
    rc = main(["train", "--resume", str(tmp_path / "flag"), "--seed", "8", "--no-progress"])
    assert "--seed 8 differs from the run's 7" in one_error_line(capsys, rc)


def test_every_seed_flag_says_what_it_seeds():
    from vaekit.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for verb, parser in sub.choices.items():
        for action in parser._actions:
            if "--seed" in action.option_strings:
                assert action.help and "seed" in action.help, f"vaekit {verb} --seed has no help"


def test_interpolate_seed_fixes_a_pixelcnn_decoders_draws(tmp_path):
    """A PixelCNN decoder has no closed-form E[x|z]: its pictures are draws, which --seed fixes."""
    run = tmp_path / "pix"
    pix = ["--set", "pixelcnn_layers=1", "--set", "pixelcnn_channels=4", "--set", "pixelcnn_cond=2"]
    argv = ["train", "--preset", "pixelvae-mnist", "--data", "digits", *pix, "--set", "channels=[4,4]"]
    argv += ["--set", "latent_dim=2", "--set", "tensorboard=false", "--set", "eval_k=0", "--max-steps", "1"]
    assert main([*argv, "--no-progress", "--out", str(run)]) == 0
    paths = []
    for i, seed in enumerate((1, 1, 2)):
        paths.append(tmp_path / f"i{i}.npy")
        assert main(["interpolate", str(run), "--pairs", "4", "--seed", str(seed), "-o", str(paths[-1])]) == 0
    first, again, other = (np.load(p) for p in paths)
    assert np.array_equal(first, again) and not np.array_equal(first, other)


class _Terminal:
    """A stderr that says it is a terminal (and keeps what is written to it)."""

    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s
        return len(s)

    def flush(self):
        pass

    def isatty(self):
        return True


@pytest.mark.parametrize("terminal", [False, True])
def test_train_prints_one_evaluation_line_per_epoch_and_no_bar_into_a_log(tmp_path, capsys, monkeypatch, terminal):
    """Where stderr is a log file or a pipe, no progress bar is drawn (each redraw would be one
    more line), and every epoch ends in one line with the test NLL, ELBO and KL at their K."""
    tty = _Terminal()
    if terminal:
        monkeypatch.setattr("sys.stderr", tty)
    small = ["--set", "hidden=[8]", "--set", "latent_dim=2", "--set", "tensorboard=false"]
    small += ["--set", "eval_k=5", "--set", "eval_n=20", "--set", "batch_size=500"]
    argv = ["train", "--preset", "dense-digits", "--epochs", "3", *small, "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    err = tty.text if terminal else capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    epoch_lines = [line for line in lines if line.startswith("epoch ") and "train loss" in line]
    assert len(epoch_lines) == 3, err
    for i, line in enumerate(epoch_lines, 1):
        assert line.startswith(f"epoch {i}/3 step {3 * i}: train loss ")  # 1498 digits, batch 500: 3 steps
        assert "; test NLL " in line and "(K=5), ELBO -" in line and ", KL " in line
        assert line.endswith("nats on 20 examples")
    if terminal:
        assert "it/s" in err  # the bar is drawn on a terminal
    else:
        assert "it/s" not in err and len(lines) <= 3 + 2, err  # the start and done lines, one per epoch


# --- temperature, traversals, pictures for people ----------------------------------------------


def test_sample_at_temperature_zero_is_the_decoder_mean_at_z_zero(run, tmp_path):
    import torch

    from vaekit.checkpoint import load_model

    assert main(["sample", str(run), "-n", "3", "--temperature", "0", "-o", str(tmp_path / "s.npy")]) == 0
    model = load_model(run)[0]
    expected = model.decode_to_x(torch.zeros(3, 2), mean=True).numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), expected)


def test_sample_refuses_what_the_model_cannot_do_in_one_line(tmp_path, capsys):
    import torch

    from vaekit.config import build_config
    from vaekit.train import train

    out = tmp_path / "mix"
    cfg = build_config("dense-digits", overrides={"kind": "mixture", "components": 2, "eval_k": 0, "levels": None})
    cfg.train.tensorboard = False
    train(cfg, out, torch.rand(40, 1, 8, 8), progress=False)  # continuous data (data.levels null)
    err = one_error_line(capsys, main(["sample", str(out), "--temperature", "0.5", "-o", str(tmp_path / "s.png")]))
    assert "temperature=0.5 (--temperature) is not defined for a GaussianMixtureModel" in err
    assert not (tmp_path / "s.png").exists()


def test_traverse_rows_follow_unit_activity_and_the_middle_is_the_posterior_mean(run, tmp_path, capsys):
    import torch

    from vaekit.checkpoint import load_model
    from vaekit.data import prepare_data
    from vaekit.evaluate import unit_activity

    out = tmp_path / "t.npy"
    capsys.readouterr()
    assert main(["traverse", str(run), "--dims", "2", "--steps", "5", "--index", "3", "-o", str(out)]) == 0
    arr = np.load(out)
    model, cfg, _ = load_model(run)
    x = prepare_data(cfg.data)[1].x
    mu = model.encode(x)[0]
    order = torch.argsort(unit_activity(mu), descending=True).tolist()
    rows = capsys.readouterr().err.split("rows ")[1].strip().split(", ")
    assert [r.split(" ")[0] for r in rows] == [f"z_{j + 1}" for j in order]
    assert arr.shape == (2, 5, 1, 8, 8)
    mean_image = model.decode_to_x(mu[3:4])[0].numpy()
    for row in arr:
        np.testing.assert_allclose(row[2], mean_image, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["traverse", "RUN", "--steps", "4"], "--steps must be odd and at least 3"),
        (["traverse", "RUN", "--dims", "0"], "--dims must be positive; got 0"),
        (["traverse", "RUN", "--index", "-1"], "--index must be non-negative; got -1"),
        (["traverse", "RUN", "--index", "299"], "--index 299 is past the 299 test examples (0..298)"),
        (["sample", "RUN", "--temperature", "nan"], "--temperature must be a positive number; got nan"),
    ],
)
def test_traverse_and_temperature_errors_are_one_line(run, tmp_path, capsys, argv, fragment):
    argv = [str(run) if a == "RUN" else a for a in argv]
    err = one_error_line(capsys, main([*argv, "-o", str(tmp_path / "out.png")]))
    assert fragment in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "argv, title",
    [
        (["sample", "-n", "4", "--mean", "--temperature", "0.5"], "4 samples of dense-digits (vae), decoder means"),
        (["reconstruct", "-n", "3"], "3 test images of digits and E[x|z] at the posterior mean of each"),
        (["interpolate", "--steps", "3", "--pairs", "2"], "linear paths between the codes of 2 pairs of test images"),
        (["latent-map", "--grid", "3", "--points", "50"], "2-D latent space: "),
        (["traverse", "--dims", "2", "--steps", "3"], "latent traversal around test example 0"),
    ],
)
def test_pictures_carry_their_titles(run, tmp_path, argv, title):
    out = tmp_path / "p.png"
    assert main([argv[0], str(run), *argv[1:], "-o", str(out)]) == 0
    with Image.open(out) as img:
        assert img.text["Title"].startswith(title), img.text
        assert max(img.size) >= 500  # readable, not a strip of 8-pixel digits
    if argv[0] == "latent-map":
        assert re.search(r": [012] of 2 units active \(50 test points\)$", img.text["Title"]), img.text


# --- vector (tabular) data ---------------------------------------------------------------------
SMALL_TABLE = ["--set", "hidden=[8]", "--set", "latent_dim=2", "--set", "eval_k=0", "--set", "tensorboard=false"]


@pytest.fixture(scope="module")
def wine_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("wine") / "run"
    argv = ["train", "--preset", "dense-wine", "--max-steps", "6", "--out", str(out), "--no-progress", *SMALL_TABLE]
    assert main(argv) == 0
    return out


def test_the_tabular_preset_trains_a_gaussian_on_standardised_unbinarised_features(wine_run):
    import torch
    import yaml

    from vaekit import data
    from vaekit.checkpoint import load_model

    doc = yaml.safe_load((wine_run / "config.yaml").read_text())
    assert doc["model"]["likelihood"] == "gaussian" and doc["data"]["binarize"] == "none"
    assert doc["data"]["standardize"] is True and doc["data"]["levels"] is None  # the resolved values recorded
    train = data.load_dataset("wine", "train").x[:, 0, 0].double()
    assert np.allclose(doc["data"]["feature_mean"], train.mean(0).numpy(), rtol=1e-12)  # the training split's
    assert np.allclose(doc["data"]["feature_std"], train.std(0, correction=0).numpy(), rtol=1e-12)
    model, cfg, state = load_model(wine_run)
    assert state["step"] == 6 and model.data_shape == (1, 1, 13) and not model.data_transform.identity
    seen, _ = data.prepare_data(cfg.data)  # what the model was trained on: zero mean, unit variance per feature
    assert torch.allclose(seen.x[:, 0, 0].double().mean(0), torch.zeros(13, dtype=torch.float64), atol=1e-5)
    assert len(torch.unique(seen.x)) > 1000  # continuous values, never binarised


def test_samples_reconstructions_and_interpolations_come_back_in_data_units(wine_run, tmp_path):
    import csv

    import torch

    from vaekit import data
    from vaekit.checkpoint import load_model

    assert main(["sample", str(wine_run), "-n", "400", "--seed", "3", "-o", str(tmp_path / "s.npy")]) == 0
    model, cfg, _ = load_model(wine_run)
    torch.manual_seed(3)
    want = model.data_transform.invert(model.sample(400))
    got = np.load(tmp_path / "s.npy")
    assert got.shape == (400, 1, 1, 13) and np.allclose(got, want.numpy(), rtol=1e-5, atol=1e-4)
    proline = data.load_dataset("wine", "train").columns.index("proline")
    assert 100 < got[:, 0, 0, proline].mean() < 2000  # the data's units (mean about 750), not standardised ones
    assert main(["reconstruct", str(wine_run), "-n", "5", "-o", str(tmp_path / "r.png")]) == 0
    with open(tmp_path / "r.csv", newline="") as f:  # the table beside the picture
        rows = list(csv.reader(f))
    test = data.load_dataset("wine", "test")
    assert rows[0] == ["example", "row", *test.columns] and len(rows) == 1 + 2 * 5
    originals = np.array([[float(v) for v in r[2:]] for r in rows[1::2]])
    assert np.allclose(originals, test.x[:5, 0, 0].numpy(), rtol=1e-4, atol=1e-4)  # data units, 6 digits
    assert [r[1] for r in rows[1:3]] == ["data", "reconstruction"]
    with Image.open(tmp_path / "r.png") as im:
        assert im.format == "PNG"
    assert main(["interpolate", str(wine_run), "--pairs", "2", "--steps", "4", "-o", str(tmp_path / "i.npy")]) == 0
    paths = np.load(tmp_path / "i.npy")
    assert paths.shape == (2, 4, 1, 1, 13) and 100 < paths[..., proline].mean() < 2000
    assert main(["sample", str(wine_run), "-n", "50", "-o", str(tmp_path / "s.csv")]) == 0
    with open(tmp_path / "s.csv", newline="") as f:
        assert next(csv.reader(f)) == list(test.columns)
    for picture in ("s.png", "i.png"):
        verb = "sample" if picture == "s.png" else "interpolate"
        assert main([verb, str(wine_run), "-o", str(tmp_path / picture)]) == 0


def test_evaluate_adds_the_nll_in_data_units(wine_run, tmp_path, capsys):
    assert main(["evaluate", str(wine_run), "--k", "10", "--no-progress", "-o", str(tmp_path / "e.json")]) == 0
    res = json.loads((tmp_path / "e.json").read_text())
    std = json.loads(json.dumps(__import__("yaml").safe_load((wine_run / "config.yaml").read_text())))["data"]
    log_scale = float(np.log(std["feature_std"]).sum())  # -log p(x) = -log p'(x') + sum_d log std_d
    assert res["standardized"] is True and res["log_scale"] == pytest.approx(log_scale)
    assert res["nll_data_units"] == pytest.approx(res["nll"] + log_scale) and res["bpd"] is None
    assert "own units" in capsys.readouterr().out
    assert main(["score", str(wine_run), "--k", "10", "--no-progress", "-o", str(tmp_path / "s.npy")]) == 0
    scores = np.load(tmp_path / "s.npy")  # per-example log p(x) of the data in their own units
    assert -scores[:, 0].mean() == pytest.approx(res["nll_data_units"], rel=1e-6)  # same K, seed and data
    from vaekit.compare import read_run, table_row

    (wine_run / "eval-test.json").write_text((tmp_path / "e.json").read_text())
    row = table_row(read_run(wine_run, "test", "wine"))
    assert row["NLL ± s.e."].startswith(f"{res['nll_data_units']:.2f}")
    assert row["ELBO"] == f"{res['elbo'] - log_scale:.2f}"


def test_a_gaussian_vae_of_8bit_images_records_that_it_models_their_dequantisation(tmp_path, capsys):
    """``model.dequantize: auto`` resolves from the data's levels and the run records it: 8-bit images
    give a Gaussian VAE of dequantised levels, whose evaluation reports bits/dim; ``true`` on data
    that are not 8-bit, or for a flow, is refused in one line."""
    import yaml

    g = np.random.default_rng(0)
    np.save(tmp_path / "img.npy", g.integers(0, 256, size=(40, 4, 4), dtype=np.uint8))
    np.save(tmp_path / "vec.npy", g.normal(size=(40, 3)).astype(np.float32))
    small = ["--set", "hidden=[8]", "--set", "latent_dim=2", "--set", "tensorboard=false", "--set", "eval_k=0"]
    argv = ["train", "--set", "likelihood=gaussian", "--max-steps", "2", "--no-progress", *small]
    assert main([*argv, "--data", str(tmp_path / "img.npy"), "--out", str(tmp_path / "r")]) == 0
    doc = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert doc["model"]["dequantize"] is True and doc["data"]["levels"] == 256
    out = tmp_path / "e.json"
    assert main(["evaluate", str(tmp_path / "r"), "--k", "5", "--no-progress", "-o", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["bpd"] == pytest.approx(res["nll"] / (16 * math.log(2)))
    np.save(tmp_path / "floats.npy", g.random(size=(6, 4, 4)).astype(np.float32))  # no levels
    capsys.readouterr()
    for verb in (["gap", "--n", "3", "--svi-steps", "1"], ["score", "-o", str(tmp_path / "s.npy")]):
        assert main([verb[0], str(tmp_path / "r"), "--data", str(tmp_path / "floats.npy"), *verb[1:]]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "vaekit: error: the data are not 8-bit levels" in err[-1] and "scores only levels" in err[-1]
    assert main([*argv, "--data", str(tmp_path / "vec.npy"), "--out", str(tmp_path / "v")]) == 0
    assert yaml.safe_load((tmp_path / "v" / "config.yaml").read_text())["model"]["dequantize"] is False
    capsys.readouterr()
    for data, extra, words in (
        ("vec.npy", [], "needs 8-bit data"),
        ("img.npy", ["--set", "kind=flow", "--set", "flow_arch=nice"], "flow_dequantize"),
    ):
        args = [*argv, "--data", str(tmp_path / data), "--set", "dequantize=true", *extra, "--out", str(tmp_path / "x")]
        assert main(args) == 2
        err = [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line]
        assert len(err) == 1 and err[0].startswith("vaekit: error: ") and words in err[0]
        assert not (tmp_path / "x").exists()


def test_a_flow_of_standardised_vectors_neither_dequantises_nor_takes_logits(tmp_path, capsys):
    """A .npy of vectors is standardised (auto); a flow of it then gets flow_dequantize=none and
    flow_preprocess=none, and naming uniform dequantisation is refused in one line."""
    import yaml

    np.save(tmp_path / "vec.npy", np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32))
    argv = ["train", "--model", "flow", "--data", str(tmp_path / "vec.npy"), "--max-steps", "2", "--no-progress"]
    argv += ["--set", "flow_arch=maf", "--set", "flow_hidden=8", "--set", "tensorboard=false", "--set", "eval_k=0"]
    assert main([*argv, "--out", str(tmp_path / "f")]) == 0
    doc = yaml.safe_load((tmp_path / "f" / "config.yaml").read_text())
    assert doc["data"]["standardize"] is True
    assert (doc["model"]["flow_dequantize"], doc["model"]["flow_preprocess"]) == ("none", "none")
    capsys.readouterr()
    assert main([*argv, "--set", "flow_dequantize=uniform", "--out", str(tmp_path / "u")]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line]
    assert len(err) == 1 and "data.standardize moved them" in err[0] and not (tmp_path / "u").exists()


def test_a_csv_trains_with_a_gaussian_and_its_label_column_colours_the_latent_map(tmp_path, capsys, monkeypatch):
    import yaml

    from vaekit import viz

    g = np.random.default_rng(0)
    lines = ["height_cm,weight_kg,species"] + [
        f"{150 + 20 * (i % 2) + g.normal():.3f},{60 + 15 * (i % 2) + g.normal():.3f},{['cat', 'dog'][i % 2]}"
        for i in range(60)
    ]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    argv = [
        "train",
        "--data",
        str(tmp_path / "t.csv"),
        "--max-steps",
        "3",
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
    ]
    assert main([*argv, "--set", "label_column=species", *SMALL_TABLE]) == 0
    assert "holds vectors: likelihood gaussian" in capsys.readouterr().err  # the base preset's Bernoulli replaced
    doc = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert doc["model"]["likelihood"] == "gaussian" and doc["data"]["binarize"] == "none"
    seen = {}
    monkeypatch.setattr(
        viz, "save_latent_scatter", lambda pts, path, labels=None, title=None, **kw: seen.update(l=labels)
    )
    assert main(["latent-map", str(tmp_path / "r"), "-o", str(tmp_path / "m.png")]) == 0
    from vaekit import data

    test = data.load_dataset(str(tmp_path / "t.csv"), "test", label_column="species")
    assert seen["l"].tolist() == test.y.tolist() and set(seen["l"].tolist()) <= {0, 1}  # cat 0, dog 1
    assert doc["data"]["columns"] == ["height_cm", "weight_kg"]  # recorded: later data must name them
    swapped = ["weight_kg,height_cm,species"] + [
        ",".join([r.split(",")[1], r.split(",")[0], r.split(",")[2]]) for r in lines[1:]
    ]
    (tmp_path / "s.csv").write_text("\n".join(swapped) + "\n")
    capsys.readouterr()
    err = one_error_line(capsys, main(["evaluate", str(tmp_path / "r"), "--data", str(tmp_path / "s.csv"), "--k", "2"]))
    assert "has feature 0 named weight_kg; the model was trained on height_cm there" in err
    capsys.readouterr()
    argv_bern = [*argv[:-3], "--out", str(tmp_path / "b"), "--set", "label_column=species"]
    argv_bern += ["--set", "likelihood=bernoulli", "--set", "standardize=true"]
    err = one_error_line(capsys, main(argv_bern))
    assert "data.standardize=true" in err and "binary data" in err


def test_a_flow_or_a_mixture_on_a_table_models_the_standardised_features(tmp_path, capsys):
    import yaml

    base = ["--data", "wine", "--no-progress", "--set", "tensorboard=false"]
    assert main(["train", "--model", "flow", *base, "--max-steps", "2", "--out", str(tmp_path / "f")]) == 0
    model = yaml.safe_load((tmp_path / "f" / "config.yaml").read_text())["model"]
    assert (model["flow_arch"], model["flow_dequantize"], model["flow_preprocess"]) == ("maf", "none", "none")
    nll = json.loads(capsys.readouterr().out)["test_nll"]
    assert math.isfinite(nll)  # a density of continuous vectors: no logit of values outside [0, 1]
    assert main(["train", "--model", "mixture", *base, "--set", "components=3", "--out", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    assert main(["cluster", str(tmp_path / "m"), "-o", str(tmp_path / "c.npy")]) == 0
    assert float(capsys.readouterr().out.split("adjusted Rand ")[1].split(",")[0]) > 0.5  # the cultivars, roughly


def test_a_table_output_is_for_vector_data_only(run, tmp_path, capsys):
    for verb in ("sample", "reconstruct"):
        err = one_error_line(capsys, main([verb, str(run), "-o", str(tmp_path / "t.csv")]))
        assert "a .csv table is written for vector data" in err
    assert not list(tmp_path.iterdir())


def test_cluster_a_features_file_finds_well_separated_clusters(tmp_path, capsys):
    g = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 50)
    feats = np.eye(4)[y] * 8 + g.normal(size=(200, 4))
    feats[:, 1] *= 500  # units differ: the features are standardised before EM
    np.save(tmp_path / "f.npy", feats.astype(np.float32))
    np.save(tmp_path / "f.labels.npy", y)  # as `vaekit encode` writes them
    assert main(["cluster", str(tmp_path / "f.npy"), "-o", str(tmp_path / "c.npy")]) == 0
    out = capsys.readouterr().out
    ari = float(out.split("adjusted Rand ")[1].split(",")[0])
    assert ari > 0.9 and "into 4 components" in out  # K from the labels' classes
    from vaekit.models.mixture import agreement

    assert agreement(y, np.load(tmp_path / "c.npy"))["ari"] == pytest.approx(ari, abs=1e-3)
    assert np.load(tmp_path / "c.soft.npy").shape == (200, 4)
    np.save(tmp_path / "other.npy", (y + 1) % 4)
    argv = ["cluster", str(tmp_path / "f.npy"), "--labels", str(tmp_path / "other.npy"), "--components", "6"]
    assert main([*argv, "--covariance", "diag", "-o", str(tmp_path / "c6.npy")]) == 0
    assert "into 6 components" in capsys.readouterr().out and np.load(tmp_path / "c6.npy").max() < 6


def test_cluster_options_of_a_features_file_are_refused_for_a_run(run, tmp_path, capsys):
    err = one_error_line(capsys, main(["cluster", str(run), "--components", "3", "-o", str(tmp_path / "c.npy")]))
    assert "--components applies to a features file (.npy)" in err
    err = one_error_line(capsys, main(["cluster", str(tmp_path / "none.npy"), "-o", str(tmp_path / "c.npy")]))
    assert "none.npy: file not found" in err
    np.save(tmp_path / "f.npy", np.zeros((5, 2)))
    err = one_error_line(
        capsys, main(["cluster", str(tmp_path / "f.npy"), "--data", "digits", "-o", str(tmp_path / "c.npy")])
    )
    assert "holds 5 feature vectors but the test split of digits" in err


def test_resume_may_move_the_data_folder_to_the_same_data_only(tmp_path, capsys):
    """A run records a fingerprint of its data. ``--resume --data-dir`` continues from another folder
    holding the same data (and later checkpoints record it); other data there, data changed in
    place, or a run without a fingerprint are refused in one line, before any step."""
    import shutil

    import torch

    from tests.test_data import write_idx_pair
    from vaekit import checkpoint as ckpt
    from vaekit.config import build_config
    from vaekit.models import build_model

    def mnist_like(folder, seed):
        write_idx_pair(folder, "train", n=12, seed=seed)
        write_idx_pair(folder, "test", n=5, seed=seed + 100)

    a, b, c, run = tmp_path / "a", tmp_path / "b", tmp_path / "c", tmp_path / "run"
    mnist_like(a, 0)
    sets = ["hidden=[8]", "latent_dim=2", "eval_k=0", "tensorboard=false", "batch_size=4"]
    args = ["train", "--preset", "dense-digits", "--data", "mnist", "--data-dir", str(a), "--epochs", "1"]
    assert main(args + [x for s in sets for x in ("--set", s)] + ["--out", str(run), "--no-progress"]) == 0

    def latest(folder):
        return ckpt.latest_checkpoint(folder, warn=False)[1]

    fingerprint = latest(run)["config"]["data"]["fingerprint"]
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint)

    shutil.copytree(a, b)
    shutil.rmtree(a)  # the run's folder is gone: only --data-dir can continue it
    assert main(["train", "--resume", str(run), "--data-dir", str(b), "--epochs", "2", "--no-progress"]) == 0
    state = latest(run)
    assert state["step"] == 6 and state["config"]["data"]["data_dir"] == str(b)
    assert state["config"]["data"]["fingerprint"] == fingerprint
    capsys.readouterr()

    mnist_like(c, 1)
    for extra in (["--data-dir", str(c)], []):
        if not extra:
            mnist_like(b, 2)  # the data in the recorded folder changed
        assert main(["train", "--resume", str(run), *extra, "--epochs", "3", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "are not the data" in err[0] and fingerprint in err[0]
        assert latest(run)["step"] == 6

    old = tmp_path / "old"  # a run saved before fingerprints
    cfg = build_config("dense-digits", overrides=["hidden=[8]", "latent_dim=2"])
    torch.manual_seed(0)
    ckpt.save_checkpoint(old, ckpt.training_state(0, build_model(cfg, (1, 8, 8)), cfg, (1, 8, 8)))
    assert main(["train", "--resume", str(old), "--data-dir", str(b), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not read from a data folder" in err[0]  # the digits are embedded
    cfg.data.name = "mnist"  # an old run of a folder dataset
    ckpt.save_checkpoint(old, ckpt.training_state(1, build_model(cfg, (1, 8, 8)), cfg, (1, 8, 8)))
    assert main(["train", "--resume", str(old), "--data-dir", str(b), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "records no fingerprint" in err[0]


@pytest.mark.parametrize("native", [True, False])
def test_train_says_when_the_nets_run_in_bf16_and_records_what_amp_auto_resolved_to(tmp_path, capsys, bf16_cpu, native):
    """``--set amp=auto`` is decided on the training machine (its CPU's bf16 units, patched): the start line
    names bf16 exactly where it is on, and config.yaml records the bool, not auto."""
    import yaml

    bf16_cpu(native)
    out = tmp_path / "r"
    argv = ["train", "--preset", "dense-digits", "--set", "amp=auto", "--set", "tensorboard=false"]
    assert main([*argv, "--set", "eval_k=0", "--max-steps", "1", "--out", str(out), "--no-progress"]) == 0
    start = capsys.readouterr().err.splitlines()[0]
    assert start.startswith("vaekit: training dense-digits") and ("nets in bf16 (train.amp)" in start) is native
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["amp"] is native
    hidden = ["--set", "amp_outputs_float32=true", "--set", "eval_k=0", "--max-steps", "1", "--no-progress"]
    assert main([*argv, *hidden, "--out", str(tmp_path / "h")]) == 0
    start = capsys.readouterr().err.splitlines()[0]
    assert ("hidden layers in bf16 (train.amp; output layers float32" in start) is native
    assert "nets in bf16" not in start
