"""bench/eval_pair.py: the paired log p(x) difference of two evaluations read from their journals,
an unfinished one included; journals of other samples are refused in one line (exit 2)."""

import pytest
import torch

from bench.eval_pair import main, paired
from tests.helpers import tiny_vae_and_data
from vaekit.evaluate import journal_file, per_example_log_prob
from vaekit.journal import Journal


def test_the_paired_difference_of_two_precisions_matches_the_evaluations(tmp_path, capsys):
    """fp32 and bf16 evaluations of one model on the same chunks: the script's means and paired
    difference are those of the per-example values the evaluations return."""
    model, x = tiny_vae_and_data(12)
    runs = {}
    for amp in (False, True):
        folder = tmp_path / f"amp{amp}"
        runs[amp] = per_example_log_prob(model, x, k=7, progress=False, amp=amp, journal_dir=folder)
        assert journal_file(folder, model, x, k=7, amp=amp).is_file()
    a, b = (journal_file(tmp_path / f"amp{amp}", model, x, k=7, amp=amp) for amp in (False, True))
    text = paired(a, b)
    d = runs[True] - runs[False]
    assert f"examples in both: {x.shape[0]} " in text
    assert f"A {-runs[False].mean().item():.4f}, B {-runs[True].mean().item():.4f} nats" in text
    se = d.std().item() / d.numel() ** 0.5
    assert f"{d.mean().item():+.5f} ± {se:.5f}" in text
    assert "differ: amp: False -> bf16 hidden layers" in text
    assert paired(tmp_path / "ampFalse", tmp_path / "ampTrue") == text  # each folder holds its journal alone


def _journal(path, seed, units):
    key = {"what": "test", "data": "d", "n": 4, "k": 5, "seed": seed, "chunk": 2}
    j = Journal(path, key)
    for c, rows in units.items():
        j.append(c, rows, 0.1)
    j.close()


def test_only_the_chunks_both_hold_are_compared(tmp_path):
    _journal(tmp_path / "a.jsonl", 0, {0: torch.tensor([[-1.0, 9.0], [-2.0, 9.0]]), 1: torch.tensor([[-3.0, 9.0]])})
    _journal(tmp_path / "b.jsonl", 0, {0: torch.tensor([[-1.5, 9.0], [-2.5, 9.0]])})  # unfinished
    text = paired(tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    assert "examples in both: 2 (1 chunks; A holds 2, B 1)" in text
    assert "NLL over them: A 1.5000, B 2.0000 nats" in text
    assert "-0.50000 ± 0.00000" in text


def test_journals_of_other_samples_are_one_error_line(tmp_path, capsys):
    _journal(tmp_path / "a.jsonl", 0, {0: torch.tensor([[-1.0]])})
    _journal(tmp_path / "b.jsonl", 1, {0: torch.tensor([[-1.0]])})
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "eval_pair: error: the journals do not share their samples: they differ in seed"
    (tmp_path / "c.jsonl").write_text("not a journal\n")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "a.jsonl"), str(tmp_path / "c.jsonl")])
    assert capsys.readouterr().err.startswith("eval_pair: error: ")
