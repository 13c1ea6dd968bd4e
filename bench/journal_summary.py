"""Where a long ``vaekit evaluate`` stands, read from its journal: the examples finished so far, the
estimates over them, and the time the rest will take.

``vaekit evaluate RUN -o OUT`` keeps every finished chunk in ``OUT.journal/eval-*.partial.jsonl``
(``vaekit.journal``) until the whole result is written (and after it, with ``--keep-journal``). Chunks are computed in order, so a journal
holds the first n of its N examples, and what it holds is final: a resumed run reads those rows back
unchanged. This script reads a journal (also one still being written, or one carried between
machines to be resumed later) and prints, over the examples it holds:

- the test NLL with its standard error over the examples (the same estimator as ``eval.json``);
- for importance-sampled models, the ELBO, KL and mean effective sample size;
- the seconds per example (median over the chunks, and in all) and what the missing chunks would
  take at that median.

The figures describe the first n examples, not the whole set: say so wherever they are quoted (and
the examples held, where the line on chunks reports a gap).

    python bench/journal_summary.py OUT.journal/eval-3e2f65b588eb.partial.jsonl
    python bench/journal_summary.py OUT.journal      # the folder, when it holds one journal
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from vaekit.errors import VaekitError  # noqa: E402
from vaekit.evaluate import LOG_PX, SAMPLED_COLUMNS, journals_in  # noqa: E402
from vaekit.inference import mean_and_stderr  # noqa: E402
from vaekit.journal import read_journal  # noqa: E402


def journal_path(path: Path) -> Path:
    """``path`` itself, or the one evaluation journal in the folder ``path`` (``OUT.journal/``, as
    ``vaekit evaluate --keep-journal`` leaves it)."""
    if not path.is_dir():
        return path
    found = journals_in(path)
    if len(found) != 1:
        if not found:
            raise VaekitError(f"the folder {path} holds no evaluation journal (eval-*.partial.jsonl)")
        raise VaekitError(
            f"the folder {path} holds {len(found)} evaluation journals ({', '.join(f.name for f in found)}); "
            "name the file (an evaluation kept with --keep-journal names its own in its JSON)"
        )
    return found[0]


def summary(path: Path) -> str:
    """Lines describing the examples the journal at ``path`` (a file, or a folder holding one) holds."""
    path = journal_path(path)
    key, units = read_journal(path)
    if not units:
        raise VaekitError(f"the journal {path} holds no finished chunk yet")
    order = sorted(units)
    rows = torch.cat([units[c][0] for c in order])
    seconds = [units[c][1] for c in order]
    per_example = [units[c][1] / units[c][0].shape[0] for c in order]
    n, total = rows.shape[0], int(key.get("n", rows.shape[0]))
    contiguous = next((i for i, c in enumerate(order) if c != i), len(order))  # chunks 0 .. contiguous - 1
    lines = [
        f"# journal: {path}",
        "# key: "
        + ", ".join(f"{f}={key[f]}" for f in ("n", "k", "seed", "chunk", "amp", "device", "torch") if f in key),
        f"examples held: {n} of {total} ({len(order)} chunk{'s' if len(order) > 1 else ''}"
        + _gap(contiguous, len(order)),
    ]
    nll, nll_se = mean_and_stderr(-rows[:, LOG_PX])
    lines.append(f"NLL over them: {nll:.4f} ± {nll_se:.4f} nats (s.e. over the examples)")
    if rows.shape[1] > len(SAMPLED_COLUMNS) and key.get("k"):
        col = {name: rows[:, i] for i, name in enumerate(SAMPLED_COLUMNS)}
        elbo, elbo_se = mean_and_stderr(col["elbo"])
        lines.append(
            f"ELBO {elbo:.4f} ± {elbo_se:.4f}, KL {col['kl'].mean().item():.4f} nats;"
            f" mean effective sample size {col['ess'].mean().item():.1f} of {key['k']}"
        )
    median = statistics.median(per_example)
    missing = total - n
    lines.append(
        f"seconds per example: median {median:.3f} over the chunks; {sum(seconds) / 3600:.2f} h in all;"
        f" the {missing} missing examples: about {missing * median / 3600:.2f} h at that median"
    )
    return "\n".join(lines)


def _gap(contiguous: int, held: int) -> str:
    """The end of the line on held chunks: whether they are chunks 0 .. held - 1, as an evaluation
    writes them, or have a gap (a journal put together by hand, or cut)."""
    if contiguous == held:
        return ", from the first)"
    if contiguous == 0:
        return "; chunk 0 is missing)"
    return f"; only chunks 0-{contiguous - 1} without a gap)"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "journal",
        type=Path,
        help="an evaluation's journal (OUT.journal/eval-*.partial.jsonl), or the folder OUT.journal/ holding one",
    )
    args = p.parse_args(argv)
    try:
        print(summary(args.journal))
    except VaekitError as e:
        print(f"journal_summary: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
