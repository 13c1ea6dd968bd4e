"""bench/journal_summary.py: the estimates over the examples an evaluation's journal holds are those
of the evaluation itself; an unfinished journal gives its first examples and the time the rest
needs; a file that is no journal is one error line (exit 2)."""

import pytest
import torch

from bench.journal_summary import main, summary
from tests.helpers import tiny_vae_and_data
from vaekit.evaluate import evaluate, journal_file
from vaekit.journal import Journal


def test_a_whole_journal_gives_the_evaluations_numbers(tmp_path):
    model, x = tiny_vae_and_data(12)  # 12 chunks of one example: at least SPLIT_MIN_CHUNKS, at most N
    res = evaluate(model, x, k=7, progress=False, journal_dir=tmp_path)
    text = summary(journal_file(tmp_path, model, x, k=7))
    assert "examples held: 12 of 12 (12 chunks, from the first)" in text
    assert f"NLL over them: {res['nll']:.4f} ± {res['nll_stderr']:.4f} nats" in text
    assert f"ELBO {res['elbo']:.4f} ± {res['elbo_stderr']:.4f}, KL {res['kl']:.4f} nats" in text
    assert f"mean effective sample size {res['ess_mean']:.1f} of 7" in text
    assert "the 0 missing examples: about 0.00 h" in text


def test_an_unfinished_journal_describes_its_first_examples(tmp_path):
    key = {"what": "test", "n": 10, "k": 5, "seed": 0, "chunk": 2}
    j = Journal(tmp_path / "a.jsonl", key)
    j.append(0, torch.tensor([[-1.0], [-3.0]]), 7200.0)  # 3,600 s per example
    j.append(1, torch.tensor([[-2.0], [-2.0]]), 3600.0)  # 1,800 s per example
    j.append(3, torch.tensor([[-5.0], [-5.0]]), 3600.0)
    j.close()
    text = summary(tmp_path / "a.jsonl")
    assert "examples held: 6 of 10 (3 chunks; only chunks 0-1 without a gap)" in text
    se = torch.tensor([1.0, 3.0, 2.0, 2.0, 5.0, 5.0]).std().item() / 6**0.5
    assert f"NLL over them: 3.0000 ± {se:.4f} nats" in text
    assert "ELBO" not in text  # one column: an exact log p(x), no sampled statistics
    # the median per example over the chunks (1,800 s, not the mean 2,400), times the 4 missing examples
    assert "median 1800.000 over the chunks; 4.00 h in all; the 4 missing examples: about 2.00 h" in text
    j = Journal(tmp_path / "b.jsonl", key)
    j.append(1, torch.tensor([[-2.0], [-2.0]]), 1.0)
    j.close()
    assert "examples held: 2 of 10 (1 chunk; chunk 0 is missing)" in summary(tmp_path / "b.jsonl")


def test_no_journal_is_one_error_line(tmp_path, capsys):
    (tmp_path / "c.jsonl").write_text("not a journal\n")
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "c.jsonl")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("journal_summary: error: ") and err.count("\n") == 1
    Journal(tmp_path / "empty.jsonl", {"what": "test", "n": 4}).close()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "empty.jsonl")])
    assert "holds no finished chunk yet" in capsys.readouterr().err


def test_a_folder_holding_one_journal_is_read_and_any_other_folder_is_one_error_line(tmp_path, capsys):
    key = {"what": "test", "n": 2, "k": 0, "seed": 0, "chunk": 2}
    folder = tmp_path / "eval.json.journal"
    folder.mkdir()
    with pytest.raises(SystemExit):
        main([str(folder)])
    assert f"the folder {folder} holds no evaluation journal (eval-*.partial.jsonl)" in capsys.readouterr().err
    j = Journal(folder / "eval-aaaa.partial.jsonl", key)
    j.append(0, torch.tensor([[-1.0], [-3.0]]), 2.0)
    j.close()
    assert summary(folder) == summary(folder / "eval-aaaa.partial.jsonl")  # the same lines, the file's name
    assert "examples held: 2 of 2" in summary(folder)
    Journal(folder / "eval-bbbb.partial.jsonl", key).close()
    with pytest.raises(SystemExit) as e:
        main([str(folder)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "holds 2 evaluation journals (eval-aaaa.partial.jsonl, eval-bbbb.partial.jsonl); name the file" in err
    assert err.count("\n") == 1
