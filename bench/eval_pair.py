"""Two evaluations of the same examples with the same importance samples, compared example by
example: the paired difference of their log p(x), read from the journals that ``vaekit evaluate``
keeps while it runs (``OUTPUT.journal/eval-*.partial.jsonl``).

Two ``vaekit.evaluate`` journals of one data set with the same K, seed and chunk size draw the same
noise for each chunk (``seeding.derive_seed(seed, EVAL_CHUNK, chunk)``) on one kind of device, so
what differs between their rows is what their keys say differs: the precision (``--amp``), the code
or the weights. The difference of the means over the examples both hold, with its standard error
over those examples, is far tighter than the two NLLs' own standard errors. Unfinished journals are
read as they stand.

    python bench/eval_pair.py A.partial.jsonl B.partial.jsonl
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.journal_summary import journal_path  # noqa: E402
from vaekit.errors import VaekitError  # noqa: E402
from vaekit.evaluate import LOG_PX  # noqa: E402
from vaekit.journal import read_journal  # noqa: E402

SAME = ("data", "n", "k", "seed", "chunk", "device")  # must agree for the samples to be the same


def paired(a: Path, b: Path) -> str:
    """Lines describing log p_B(x) - log p_A(x) over the chunks both journals hold."""
    a, b = journal_path(a), journal_path(b)
    (key_a, units_a), (key_b, units_b) = read_journal(a), read_journal(b)
    clash = [f for f in SAME if key_a.get(f) != key_b.get(f)]
    if clash:
        raise VaekitError(f"the journals do not share their samples: they differ in {', '.join(clash)}")
    common = sorted(set(units_a) & set(units_b))
    if not common:
        raise VaekitError("the journals hold no chunk in common yet")
    la = torch.cat([units_a[c][0][:, LOG_PX] for c in common])
    lb = torch.cat([units_b[c][0][:, LOG_PX] for c in common])
    d = lb - la
    n = d.numel()
    se = d.std().item() / math.sqrt(n) if n > 1 else float("nan")
    differs = sorted(f for f in set(key_a) | set(key_b) if key_a.get(f) != key_b.get(f))
    return "\n".join(
        [
            f"# A: {a}\n# B: {b}",
            f"# same: {', '.join(f'{f}={key_a.get(f)}' for f in SAME if f != 'data')}, data {str(key_a.get('data'))[:12]}",
            "# differ: " + "; ".join(f"{f}: {key_a.get(f)} -> {key_b.get(f)}" for f in differs),
            f"examples in both: {n} ({len(common)} chunks; A holds {len(units_a)}, B {len(units_b)})",
            f"NLL over them: A {-la.mean().item():.4f}, B {-lb.mean().item():.4f} nats",
            f"paired log p_B - log p_A: {d.mean().item():+.5f} ± {se:.5f} nats (s.e. over examples), "
            f"largest |.| on one example {d.abs().max().item():.4f}",
        ]
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path, help="the first evaluation's journal, or the OUT.journal/ folder holding it alone")
    p.add_argument("b", type=Path, help="the second evaluation's journal, or the folder holding it alone")
    args = p.parse_args(argv)
    try:
        print(paired(args.a, args.b))
    except VaekitError as e:
        print(f"eval_pair: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
