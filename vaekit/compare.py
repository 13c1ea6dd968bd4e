"""Several trained runs side by side: their evaluations in one table, their training curves in one picture.

A run's figures come from files it already holds, nothing is recomputed:

- ``eval-SPLIT.json`` (written by ``vaekit evaluate``; ``eval.json`` of an older vaekit is read
  when it records that split): the test NLL -log p(x) in nats per example with its standard
  error over examples, importance-sampled with K samples from q(z|x) for VAEs (Burda et al.
  2015) or exact for flows and mixtures, the one-sample ELBO and KL(q(z|x) || p(z)) in nats,
  bits per dimension, and the active units (Burda et al. 2015, Sec. 5.2: latent dimensions u with
  Cov_x E_q[z_u|x] > 0.01) out of the latent dimensions; for a run that standardised its features
  the NLL and ELBO are shown in the data's own units (the file's ``log_scale``, sum_d log std_d,
  added to the NLL and taken from the ELBO; ``vaekit evaluate`` prints the NLL so);
- ``metrics.jsonl`` (written by the training loop): the training loss per example at each log
  line, the end-of-epoch test NLL (``test_nll``, with its own K; for a standardised run in data
  units: ``test_nll_data_units``, or ``test_nll`` plus the config's sum log std where an older
  vaekit logged only that), and the wall-clock ``seconds``
  of each log window, whose sum is the training time. EM fits log the mean training
  log-likelihood per iteration instead, drawn as its negative.

A missing or unreadable file is a note on that run (:attr:`RunRecord.notes`), never an error;
a path that is not a run folder at all is a one-line :class:`~vaekit.errors.VaekitError`.
Export folders (``vaekit export``) count as runs: they hold the eval files of their run.

References:
    Burda, Grosse & Salakhutdinov, "Importance weighted autoencoders", ICLR 2016 (the
        importance-sampled NLL, active units).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checkpoint import CKPT_DIR, EXPORT_CONFIG, is_export, read_run_config
from .data import Standardization
from .errors import VaekitError
from .viz import picture_format, prepare_output, write_image

MISSING = "—"  # a table cell with no value
LEGACY_EVAL_FILE = "eval.json"  # what `vaekit evaluate` wrote before it named files by split


def eval_file(split: str) -> str:
    """The file ``vaekit evaluate --split SPLIT`` writes into a run folder."""
    return f"eval-{split}.json"


@dataclass
class RunRecord:
    """What one run folder says about itself.

    Attributes:
        path: the folder as given; ``name`` its label in tables and legends.
        config: its resolved config (``config.yaml``, or an export's ``config.json``), or None.
        evaluation: the ``eval-SPLIT.json`` document, or None.
        train: training records [(step, loss per example in nats)], in log order.
        tests: end-of-epoch test records [(step, test NLL in nats, K)].
        seconds: cumulative wall-clock seconds at each training record (None: not logged).
        notes: one line per file that was missing or unreadable.
    """

    path: Path
    name: str
    config: dict | None = None
    evaluation: dict | None = None
    train: list[tuple[int, float]] = field(default_factory=list)
    tests: list[tuple[int, float, int | None]] = field(default_factory=list)
    seconds: list[float] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def wall_clock(self) -> float | None:
        """Training time in seconds: the sum of the log windows' wall-clock ``seconds``."""
        return self.seconds[-1] if self.seconds else None

    @property
    def steps(self) -> int | None:
        """The step of the evaluated checkpoint, else the last step logged, else None."""
        if self.evaluation is not None and isinstance(self.evaluation.get("step"), int):
            return self.evaluation["step"]
        steps = [s for s, _ in self.train] + [s for s, _, _ in self.tests]
        return max(steps) if steps else None


def is_run(path: Path) -> bool:
    """A run folder (``config.yaml``, ``metrics.jsonl`` or ``checkpoints/``) or an export folder."""
    return path.is_dir() and (
        (path / "config.yaml").is_file()
        or (path / "metrics.jsonl").is_file()
        or (path / CKPT_DIR).is_dir()
        or is_export(path)
    )


def check_runs(paths: list[str | os.PathLike]) -> list[Path]:
    """The paths as run folders; a one-line error for the first that is not one (before any work)."""
    out = []
    for p in map(Path, paths):
        if not p.exists():
            raise VaekitError(f"no run folder at {p}")
        if not is_run(p):
            raise VaekitError(f"{p} is not a run folder (it holds no config.yaml, metrics.jsonl or checkpoints/)")
        out.append(p)
    return out


def _read_json(path: Path) -> tuple[dict | None, str | None]:
    """(document, None), or (None, why it could not be read)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"unreadable ({type(e).__name__})"
    return (doc, None) if isinstance(doc, dict) else (None, "not a JSON object")


def read_evaluation(run: Path, split: str) -> tuple[dict | None, str | None]:
    """The run's evaluation of ``split``: ``eval-SPLIT.json``, else an older ``eval.json`` recording
    that split (one without a ``split`` field was of the test split); (None, a note) when absent."""
    doc, why = _read_json(run / eval_file(split))
    if doc is not None:
        return doc, None
    if why == "missing":
        legacy, _ = _read_json(run / LEGACY_EVAL_FILE)
        if legacy is not None and legacy.get("split", "test") == split:
            return legacy, None
        return None, f"no {eval_file(split)} (run `vaekit evaluate {run} --split {split}`)"
    return None, f"{eval_file(split)} is {why}"


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def read_metrics(record: RunRecord) -> None:
    """Fill ``record``'s curves from its ``metrics.jsonl`` (torn or foreign lines are skipped)."""
    path = record.path / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        record.notes.append("no readable metrics.jsonl: no curves, no wall-clock")
        return
    seconds, timed = [], True
    shift = _log_scale(record.config)  # a standardised run's test NLL in data units, for lines logged without it
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill
        step = rec.get("step") if isinstance(rec, dict) else None
        if not isinstance(step, int):
            continue
        if _number(rec.get("loss")) is not None:
            record.train.append((step, float(rec["loss"])))
            timed = timed and _number(rec.get("seconds")) is not None
            seconds.append(_number(rec.get("seconds")) or 0.0)
        elif _number(rec.get("train_mean_log_likelihood")) is not None:  # EM: one line per iteration
            record.train.append((step, -float(rec["train_mean_log_likelihood"])))
            timed = False
        test = _number(rec.get("test_nll_data_units"))
        if test is None and _number(rec.get("test_nll")) is not None:
            test = float(rec["test_nll"]) + shift
        if test is not None:
            record.tests.append((step, test, rec.get("test_k")))
    if not record.train and not record.tests:
        record.notes.append("metrics.jsonl holds no training records")
    if record.train and timed:
        record.seconds = np.cumsum(seconds).tolist()
    elif record.train:
        record.notes.append("metrics.jsonl records no wall-clock time (an EM fit, or a run of an older vaekit)")


def read_run(path: Path, split: str = "test", name: str | None = None) -> RunRecord:
    """Everything :func:`table_rows` and :func:`save_curves` show of the run folder ``path``."""
    record = RunRecord(path, name or str(path))
    if is_export(path):
        doc, _ = _read_json(path / EXPORT_CONFIG)
        record.config = doc.get("config") if doc is not None and isinstance(doc.get("config"), dict) else None
    else:
        record.config = read_run_config(path)
        if record.config is None:
            record.notes.append("no readable config.yaml")
    record.evaluation, note = read_evaluation(path, split)
    if note:
        record.notes.append(note)
    if is_export(path) and not (path / "metrics.jsonl").is_file():
        record.notes.append("an exported model: no training curves")
    else:
        read_metrics(record)
    return record


# --- the table ----------------------------------------------------------------------------------

COLUMNS = ("run", "preset", "data", "NLL ± s.e.", "ELBO", "KL", "bits/dim", "active units", "K", "steps", "wall-clock")


def format_seconds(s: float | None) -> str:
    """A duration for people: 42 s, 3.5 min, 2.1 h."""
    if s is None:
        return MISSING
    if s < 120:
        return f"{s:.0f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _fixed(v, digits: int) -> str:
    v = _number(v)
    return MISSING if v is None else f"{v:.{digits}f}"


def _log_scale(config: dict | None) -> float:
    """``Standardization.log_scale`` (sum_d log std_d) of the standardisation a run's config records,
    as its model applies it (``data.standardization_of``); 0 for none or for unreadable statistics."""
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict):
        return 0.0
    try:
        shift = Standardization.from_lists(data.get("feature_mean"), data.get("feature_std")).log_scale
    except (TypeError, ValueError, RuntimeError):  # a hand-edited config.yaml: no shift rather than an error
        return 0.0
    return shift if math.isfinite(shift) else 0.0


def table_row(record: RunRecord) -> dict[str, str]:
    """One row of the comparison table (``COLUMNS`` -> cell text); nats to two decimals, bits/dim to four."""
    cfg, ev = record.config or {}, record.evaluation or {}
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    nll, se = _number(ev.get("nll")), _number(ev.get("nll_stderr"))
    elbo = _number(ev.get("elbo"))
    shift = _number(ev.get("log_scale")) if ev.get("standardized") else None
    if shift is not None:  # a standardised run: its bounds in the data's own units, as evaluate prints them
        nll = None if nll is None else nll + shift
        elbo = None if elbo is None else elbo - shift
    units = ev.get("active_units")
    if isinstance(units, int) and isinstance(ev.get("latent_dim"), int):
        units = f"{units} / {ev['latent_dim']}"
    k = ev.get("k")
    if k is None and ev.get("log_prob_kind") == "exact":
        k = "exact"
    return {
        "run": record.name,
        "preset": str(cfg.get("preset", MISSING)),
        "data": str(data.get("name", MISSING)),
        "NLL ± s.e.": MISSING if nll is None else f"{nll:.2f}" + (f" ± {se:.2f}" if se is not None else ""),
        "ELBO": _fixed(elbo, 2),
        "KL": _fixed(ev.get("kl"), 2),
        "bits/dim": _fixed(ev.get("bpd"), 4),
        "active units": MISSING if units is None else str(units),
        "K": MISSING if k is None else str(k),
        "steps": MISSING if record.steps is None else str(record.steps),
        "wall-clock": format_seconds(record.wall_clock),
    }


def format_text(rows: list[dict[str, str]]) -> str:
    """The rows as a fixed-width text table with a header line."""
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS).rstrip()]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS).rstrip() for r in rows]
    return "\n".join(lines)


def format_markdown(rows: list[dict[str, str]], split: str = "test") -> str:
    """The rows as a GitHub-flavoured markdown table, with a line saying what the numbers are."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r[c].replace("|", "\\|") for c in COLUMNS) + " |" for r in rows]
    lines.append("")
    lines.append(
        f"NLL, ELBO and KL in nats per {split} example; NLL importance-sampled with K samples "
        "(exact for flows and mixtures), ± one standard error over examples; wall-clock: training time."
    )
    return "\n".join(lines) + "\n"


# --- the curves ---------------------------------------------------------------------------------


def _time_unit(seconds: float) -> tuple[float, str]:
    return (1.0, "s") if seconds < 600 else (60.0, "min") if seconds < 36000 else (3600.0, "h")


def _y_limits(values: list[float]) -> tuple[float, float] | None:
    """Limits that hold ``values`` (the curves less each run's first tenth of training, whose large
    early losses would squash the rest), with a margin."""
    if not values:
        return None
    lo, hi = float(np.min(values)), float(np.max(values))
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    return lo - pad, hi + pad


def _draw_run(by_step, by_time, r: RunRecord, colour, scale: float) -> list[float]:
    """One run's curves on both panels; returns the values the y-limits should hold."""
    steps, loss = [s for s, _ in r.train], [v for _, v in r.train]
    test_steps, test_nll = [s for s, _, _ in r.tests], [v for _, v, _ in r.tests]
    line = dict(color=colour, lw=1.2, marker="." if len(steps) < 30 else None)
    dots = dict(color=colour, ls="--", lw=0.8, marker="o", ms=4)
    if r.train:
        by_step.plot(steps, loss, label=f"{r.name}: training loss", **line)
    if r.tests:
        by_step.plot(test_steps, test_nll, label=f"{r.name}: test NLL", **dots)
    if r.seconds:
        t = np.asarray(r.seconds) / scale
        by_time.plot(t, loss, label=r.name, **line)
        if r.tests:  # an evaluation's time: the cumulative time at its step (the run starts at 0 s)
            by_time.plot(np.interp(test_steps, [0, *steps], [0.0, *t]), test_nll, **dots)
    return loss[len(loss) // 10 :] + test_nll


def save_curves(records: list[RunRecord], path: str | os.PathLike, dpi: int = 100) -> Path:
    """One picture, two panels: each run's training loss (nats per example; solid) and its end-of-epoch
    test NLL (dots) against the step (left) and against the wall-clock training time (right, runs
    that logged it). Written in the format ``path``'s suffix names (``vaekit.viz.PICTURE_FORMATS``)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    picture_format(path)
    fig = Figure(figsize=(12.0, 4.8), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    by_step, by_time = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    colours = colormaps["tab10"]
    timed = [r.wall_clock for r in records if r.wall_clock]
    scale, unit = _time_unit(max(timed) if timed else 0.0)
    shown = []
    for i, r in enumerate(records):
        shown += _draw_run(by_step, by_time, r, colours(i % 10), scale)
    limits = _y_limits(shown)
    for ax, xlabel in ((by_step, "step"), (by_time, f"wall-clock training time ({unit})")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("nats per example")
        ax.grid(alpha=0.3)
        if limits is not None:
            ax.set_ylim(*limits)
    by_step.set_title("training loss (lines) and test NLL (dots) by step")
    by_time.set_title("by wall-clock time")
    if any(r.train or r.tests for r in records):
        by_step.legend(fontsize=8)
    else:
        by_step.text(0.5, 0.5, "no training records", ha="center", va="center", transform=by_step.transAxes)
    if not timed:
        by_time.text(
            0.5, 0.5, "no run logged its wall-clock time", ha="center", va="center", transform=by_time.transAxes
        )
    fig.tight_layout()
    canvas.draw()
    return write_image(np.asarray(canvas.buffer_rgba())[..., :3], prepare_output(path))
