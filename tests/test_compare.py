"""`vaekit compare`: the table holds each run's eval json figures, the markdown the same rows, the
curves picture is written, and what a run lacks is a note on that run, never a crash."""

import json
import shutil

import pytest
from PIL import Image

from vaekit.cli import main
from vaekit.compare import MISSING, check_runs, format_seconds, read_run, table_row
from vaekit.errors import VaekitError

QUIET = ["--no-progress", "--set", "tensorboard=false", "--set", "eval_n=20", "--set", "epochs=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny VAEs on the 8x8 digits, logged every 2 (3) steps, each evaluated on 30 test examples."""
    root = tmp_path_factory.mktemp("compare")
    out = []
    for name, dim, every in (("a", 2, 2), ("b", 3, 3)):
        run = root / name
        sets = ["hidden=[8]", f"latent_dim={dim}", f"log_every={every}"]
        argv = ["train", "--preset", "dense-digits", "--out", str(run), "--max-steps", "6", *QUIET]
        assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
        assert main(["evaluate", str(run), "--k", "5", "--n", "30", "--no-progress"]) == 0
        out.append(run)
    return out


def logged_seconds(run):
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["seconds"] for r in recs if "loss" in r]


def expected_cells(run, split="test"):
    """The row of ``run`` as the eval json and metrics.jsonl give it, formatted as documented."""
    ev = json.loads((run / f"eval-{split}.json").read_text())
    return [
        str(run),
        "dense-digits",
        "digits",
        f"{ev['nll']:.2f} ± {ev['nll_stderr']:.2f}",
        f"{ev['elbo']:.2f}",
        f"{ev['kl']:.2f}",
        f"{ev['bpd']:.4f}",
        f"{ev['active_units']} / {ev['latent_dim']}",
        str(ev["k"]),
        str(ev["step"]),
        format_seconds(sum(logged_seconds(run))),
    ]


def test_table_and_markdown_hold_each_runs_eval_json(runs, tmp_path, capsys):
    md = tmp_path / "table.md"
    capsys.readouterr()
    assert main(["compare", *map(str, runs), "--markdown", str(md)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["run", "preset", "data"]
    lines = md.read_text().splitlines()
    for i, run in enumerate(runs):
        cells = expected_cells(run)
        assert out[1 + i].split("  ")[0] == str(run)
        assert [c.strip() for c in out[1 + i].split("  ") if c.strip()] == cells
        assert lines[2 + i] == "| " + " | ".join(cells) + " |"
    assert lines[0].startswith("| run | preset | data | NLL ± s.e. |") and lines[1].startswith("|---|")
    assert expected_cells(runs[0])[8] == "5" and expected_cells(runs[0])[9] == "6"  # K and steps as run


def test_wall_clock_is_the_sum_of_the_logged_windows(runs):
    for run in runs:
        seconds = logged_seconds(run)
        assert len(seconds) == {"a": 3, "b": 2}[run.name] and all(s > 0 for s in seconds)
        record = read_run(run)
        assert record.wall_clock == pytest.approx(sum(seconds))
        assert [s for s, _ in record.train] == ([2, 4, 6] if run.name == "a" else [3, 6])
        assert record.notes == []


def test_curves_picture_is_written(runs, tmp_path, capsys):
    png = tmp_path / "curves.png"
    assert main(["compare", *map(str, runs), "-o", str(png)]) == 0
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (1200, 480)
    assert f"wrote {png}" in capsys.readouterr().err


def test_split_picks_the_eval_file(runs, tmp_path, capsys):
    a = tmp_path / "a"
    shutil.copytree(runs[0], a)
    assert main(["evaluate", str(a), "--split", "train", "--k", "3", "--n", "20", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["compare", str(a), str(runs[1]), "--split", "train"]) == 0
    captured = capsys.readouterr()
    rows = captured.out.splitlines()[1:]
    assert [c.strip() for c in rows[0].split("  ") if c.strip()] == expected_cells(a, "train")
    assert f"vaekit: note: {runs[1]}: no eval-train.json" in captured.err
    assert rows[1].split()[3] == MISSING


def test_missing_eval_and_metrics_are_notes_not_errors(runs, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(runs[0], bare)
    (bare / "eval-test.json").unlink()
    (bare / "metrics.jsonl").unlink()
    png, md = tmp_path / "c.png", tmp_path / "t.md"
    capsys.readouterr()
    assert main(["compare", str(bare), str(runs[1]), "-o", str(png), "--markdown", str(md)]) == 0
    captured = capsys.readouterr()
    assert f"vaekit: note: {bare}: no eval-test.json" in captured.err
    assert f"vaekit: note: {bare}: no readable metrics.jsonl" in captured.err
    row = table_row(read_run(bare))
    assert row["NLL ± s.e."] == row["K"] == row["wall-clock"] == MISSING
    assert row["preset"] == "dense-digits"  # from config.yaml
    assert row["steps"] == MISSING
    assert png.is_file() and md.is_file()


def test_older_runs_without_wall_clock_or_with_eval_json(tmp_path, runs):
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(runs[0] / "config.yaml", old / "config.yaml")
    lines = [{"step": 2, "epoch": 1, "loss": 50.0}, {"step": 4, "epoch": 1, "loss": 45.0}]
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"step": 6, "lo'  # a line torn by a kill
    (old / "metrics.jsonl").write_text(text)
    ev = json.loads((runs[0] / "eval-test.json").read_text())
    del ev["split"]  # an eval.json from before files were named by split
    (old / "eval.json").write_text(json.dumps(ev))
    record = read_run(old)
    assert record.train == [(2, 50.0), (4, 45.0)] and record.wall_clock is None
    assert any("no wall-clock" in n for n in record.notes)
    row = table_row(record)
    assert row["NLL ± s.e."] == f"{ev['nll']:.2f} ± {ev['nll_stderr']:.2f}" and row["wall-clock"] == MISSING


def test_a_standardised_runs_test_curve_is_in_data_units_also_from_older_logs(tmp_path):
    import math

    import yaml

    run = tmp_path / "std"
    run.mkdir()
    data = {"standardize": True, "feature_mean": [0.0, 0.0], "feature_std": [2.0, 2.0]}
    (run / "config.yaml").write_text(yaml.safe_dump({"data": data, "model": {}, "train": {}}))
    lines = [
        {"step": 1, "loss": 5.0, "seconds": 1.0},
        {"step": 1, "test_nll": 3.0},  # logged by an older vaekit: standardised units only
        {"step": 2, "test_nll": 2.5, "test_nll_data_units": 2.5 + 2 * math.log(2.0)},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    record = read_run(run)
    assert [round(v, 6) for _, v, _ in record.tests] == [
        round(3.0 + 2 * math.log(2.0), 6),
        round(2.5 + 2 * math.log(2.0), 6),
    ]


def test_em_fits_are_drawn_by_their_negative_log_likelihood(tmp_path):
    em = tmp_path / "em"
    em.mkdir()
    lines = [{"step": i, "train_mean_log_likelihood": -10.0 / i} for i in (1, 2)]
    (em / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (em / "eval-test.json").write_text(json.dumps({"nll": 3.0, "nll_stderr": 0.1, "k": None, "log_prob_kind": "exact"}))
    record = read_run(em)
    assert record.train == [(1, 10.0), (2, 5.0)]
    assert table_row(record)["K"] == "exact"


@pytest.mark.parametrize("what", ["empty", "file", "missing"])
def test_a_path_that_is_not_a_run_is_one_error_line(runs, tmp_path, capsys, what):
    path = {"empty": tmp_path / "empty", "file": tmp_path / "notes.txt", "missing": tmp_path / "no" / "run"}[what]
    if what == "empty":
        path.mkdir()
    elif what == "file":
        path.write_text("not a run\n")
    png = tmp_path / "c.png"
    capsys.readouterr()
    assert main(["compare", str(runs[0]), str(path), "-o", str(png)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vaekit: error: ") and str(path) in err[0]
    assert not png.exists()
    with pytest.raises(VaekitError):
        check_runs([path])


def test_format_seconds():
    assert [format_seconds(s) for s in (None, 4.4, 119, 150, 7300)] == [MISSING, "4 s", "119 s", "2.5 min", "2.0 h"]


def test_an_export_folder_is_a_run_for_compare(runs, tmp_path):
    out = tmp_path / "exported"
    assert main(["export", str(runs[0]), "-o", str(out)]) == 0
    record = read_run(out)
    assert table_row(record)["NLL ± s.e."] == expected_cells(runs[0])[3]
    assert record.config["preset"] == "dense-digits"
