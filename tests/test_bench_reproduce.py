"""bench/reproduce.py: every Table 1 row resolves to a valid config under the paper's protocol."""

import itertools

import pytest

from bench.reproduce import CELLS, REFERENCES, VARIANTS, parse_row, row_config


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_every_cell_and_allowed_variant_builds_the_papers_protocol(cell):
    layers, objective, k, paper = CELLS[cell]
    for n in range(len(VARIANTS) + 1):
        for variants in itertools.combinations(sorted(VARIANTS), n):
            refused = {"dreg", "stl"} <= set(variants) or ("stl" in variants and objective == "iwae")
            if refused or ("dreg" in variants and objective == "elbo" and k > 1):
                with pytest.raises(SystemExit) as e:
                    parse_row("+".join([cell, *variants]))
                assert e.value.code == 2
                continue
            row = parse_row("+".join([cell, *variants]))
            cfg = row_config(row, 0.1, "cpu", "/nowhere")
            assert (cfg.train.epochs, cfg.train.schedule, cfg.train.batch_size, cfg.train.adam_eps) == (
                330,
                "burda",
                20,
                1e-4,
            )
            assert cfg.model.stochastic_layers == ([] if layers == 1 else [100, 50]) and row.paper == paper
            assert cfg.train.k == k and (cfg.train.objective == objective or "dreg" in variants)
    assert set(REFERENCES) <= {parse_row(r).name for r in REFERENCES}


def test_another_batch_size_is_applied_and_stated_on_the_result_line():
    from bench.reproduce import result_line

    row = parse_row("1l-k1")
    cfg = row_config(row, 0.1, "cpu", "/nowhere", batch_size=100)
    assert cfg.train.batch_size == 100 and cfg.train.epochs == 330 and cfg.train.schedule == "burda"
    res = {"nll": 89.0, "nll_stderr": 0.2, "k": 5000, "n": 10000, "eval_seconds": 60.0}
    assert "[batch 100, not the paper's 20]" in result_line(row, cfg, res, 3600.0, "CPU", "")
    paper = row_config(row, 0.1, "cpu", "/nowhere")
    assert "batch" not in result_line(row, paper, res, 3600.0, "CPU", "").split("|")[0].split("CPU")[1]


def test_a_row_trains_evaluates_and_appends_once_and_a_new_fid_is_appended(tmp_path, monkeypatch, capsys):
    """End to end on 40 training images: the row's line is appended once; running it again reuses
    the run folder's evaluation and appends nothing, unless --fid computes a distance not kept yet."""
    import sys

    import torch

    import bench.reproduce as rp

    pytest.importorskip("scipy")
    try:
        rp.data_dir("mnist")
    except SystemExit:
        pytest.skip("MNIST is not in ../shared/datasets")
    fids = []
    monkeypatch.setattr(rp, "classifier_for", lambda *a, **k: "classifier")
    monkeypatch.setattr(
        rp, "model_fid", lambda model, net, x, n: fids.append(n) or {"fid": 12.5, "n": n, "classifier_accuracy": 0.99}
    )
    results, threads = tmp_path / "results.txt", torch.get_num_threads()
    argv = ["reproduce.py", "1l-k1", "--scale", "0.001", "--n-train", "40", "--n-test", "4", "--k", "3"]
    argv += ["--runs", str(tmp_path / "runs"), "--results", str(results), "--no-progress", "--threads", "1"]
    try:
        for extra in ([], [], ["--fid"], ["--fid"]):
            monkeypatch.setattr(sys, "argv", argv + extra)
            rp.main()
    finally:
        torch.set_num_threads(threads)
    lines = results.read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("row")  # header, the first run, the run with a new FID
    assert "FID" not in lines[1] and "FID 12.50 (n 4" in lines[2] and fids == [4]
    assert "not appended again" in capsys.readouterr().out
    assert (tmp_path / "runs" / "1l-k1" / "fid-n4.json").is_file()
    monkeypatch.setattr(sys, "argv", argv + ["--batch-size", "10"])  # the same folder, another protocol
    try:
        with pytest.raises(SystemExit) as e:
            rp.main()
    finally:
        torch.set_num_threads(threads)
    assert e.value.code == 2
    assert "train.batch_size: 20 vs 10" in capsys.readouterr().err


def test_a_run_folder_from_before_a_config_field_was_added_still_resumes():
    """A row's run folder outlives sessions; a config field added since (at its default) or another
    device or data folder must not make it "another config", while a changed protocol does."""
    from bench.reproduce import _comparable

    cfg = row_config(parse_row("1l-k1"), 0.1, "cpu", "/data/here")
    old = cfg.to_dict()
    old["train"].pop("eval_amp")  # as saved before the field existed
    old["train"]["device"], old["data"]["data_dir"] = "cuda", "/data/elsewhere"
    assert _comparable(old) == _comparable(cfg.to_dict())
    other = row_config(parse_row("1l-k1"), 0.03, "cpu", "/data/here").to_dict()
    assert _comparable(other) != _comparable(cfg.to_dict())
    assert _comparable({"train": "not a config"}) is None


def test_only_the_protocols_last_checkpoint_is_evaluated_and_a_kept_evaluation_of_another_step_is_redone(
    tmp_path, monkeypatch, capsys
):
    import json

    import torch

    import bench.reproduce as rp

    for found in (None, (tmp_path / "step-00000005.pt", {"step": 5})):  # no checkpoint; an older one
        monkeypatch.setattr(rp, "latest_checkpoint", lambda run, found=found: found)
        with pytest.raises(SystemExit) as e:
            rp.final_checkpoint(tmp_path, 6)
        assert e.value.code == 2
        assert f"newest readable checkpoint is at step {found and 5}, not the protocol's last step 6" in (
            capsys.readouterr().err
        )
    monkeypatch.setattr(rp, "latest_checkpoint", lambda run: (tmp_path / "step-00000006.pt", {"step": 6}))
    assert rp.final_checkpoint(tmp_path, 6)[1]["step"] == 6

    loaded = []
    monkeypatch.setattr(rp.vaekit, "load", lambda path, device: loaded.append(path) or "model")
    monkeypatch.setattr(rp, "evaluate", lambda model, x, **kw: {"nll": 1.0, "seconds": 2.0})
    kept = tmp_path / "eval-k3-n4.json"
    ckpt = tmp_path / "step-00000006.pt"
    x = torch.zeros(4, 1)
    kept.write_text(json.dumps({"nll": 9.0, "step": 5}))  # the evaluation of an older model
    res = rp.evaluate_row(tmp_path, ckpt, 6, x, 3, "cpu", False)
    assert (
        res["nll"] == 1.0
        and res["step"] == 6
        and loaded == [ckpt]
        and "not 6: evaluating again" in (capsys.readouterr().out)
    )
    assert json.loads(kept.read_text())["step"] == 6
    res = rp.evaluate_row(tmp_path, ckpt, 6, x, 3, "cpu", False)  # now kept for this step
    assert res["cached"] and loaded == [ckpt]
    kept.write_text(json.dumps({"nll": 7.0}))  # kept before the step was recorded: reused
    assert rp.evaluate_row(tmp_path, ckpt, 6, x, 3, "cpu", False)["nll"] == 7.0 and loaded == [ckpt]
