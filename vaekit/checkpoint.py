"""Run folders and checkpoints: atomic writes, safe loads, newest-good fallback.

A run folder holds ``config.yaml`` (the resolved config, for people), ``metrics.jsonl``,
TensorBoard events, pictures, and ``checkpoints/step-XXXXXXXX.pt``. Each checkpoint is a
plain dict of tensors and primitives: the model's ``state_dict`` (every piece of model
state is a parameter or buffer), the optimiser's, the EMA weights, the step, and the
resolved config, so a run can be resumed or evaluated from a checkpoint alone.

Writes are atomic: the bytes go to a temporary file in the same folder, are flushed and
fsync'ed, then ``os.replace``'d onto the final name, so a run killed at any moment (or a
full disk) leaves either the old or the new checkpoint, never a torn one. Loads use
``torch.load(weights_only=True)``: a checkpoint never executes code.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

import torch

from .config import Config
from .errors import CheckpointError, ConfigError

CKPT_DIR = "checkpoints"
CKPT_RE = re.compile(r"^step-(\d{8,})\.pt$")
KEEP = 3  # checkpoints kept per run (older ones are deleted after a successful write)


def atomic_write(path: str | Path, write_fn) -> None:
    """Call ``write_fn(fileobj)`` on a temp file beside ``path``, fsync, then rename onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"step-{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint files of a run, newest (highest step) first."""
    d = Path(run_dir) / CKPT_DIR
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save_checkpoint(run_dir: str | Path, state: dict, keep: int = KEEP) -> Path:
    """Atomically write ``state`` (must hold ``step``) and prune all but the newest ``keep``."""
    path = checkpoint_path(run_dir, int(state["step"]))
    atomic_write(path, lambda f: torch.save(state, f))
    for old in list_checkpoints(run_dir)[keep:]:
        try:
            old.unlink()
        except FileNotFoundError:
            pass
    return path


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load one checkpoint file safely (no code execution); one-line error if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated/corrupt zip files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"corrupt or truncated checkpoint {path} ({reason[:120]})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state or "step" not in state:
        raise CheckpointError(f"{path} is not a vaekit checkpoint (missing model/config/step)")
    return state


def latest_checkpoint(run_dir: str | Path, map_location="cpu", warn=True) -> tuple[Path, dict] | None:
    """The newest checkpoint of a run that loads; corrupt ones are reported and skipped.

    Returns ``None`` when the run has no checkpoint at all; raises ``CheckpointError``
    when it has some but none is readable.
    """
    paths = list_checkpoints(run_dir)
    if not paths:
        return None
    bad = []
    for p in paths:
        try:
            return p, read_checkpoint(p, map_location)
        except CheckpointError as e:
            bad.append(p)
            if warn:
                print(f"vaekit: warning: {e}; falling back to an older checkpoint", file=sys.stderr)
    raise CheckpointError(f"no readable checkpoint in {Path(run_dir) / CKPT_DIR} "
                          f"({len(bad)} corrupt: {', '.join(p.name for p in bad)})")


def resolve(path: str | Path, map_location="cpu") -> tuple[Path, dict]:
    """A run folder (its newest good checkpoint) or a checkpoint file -> (file, state)."""
    path = Path(path)
    if path.is_file():
        return path, read_checkpoint(path, map_location)
    if not path.is_dir():
        raise CheckpointError(f"no run folder or checkpoint at {path}")
    found = latest_checkpoint(path, map_location)
    if found is None:
        raise CheckpointError(f"run folder {path} has no checkpoint yet (train it first)")
    return found


def config_of(state: dict) -> Config:
    try:
        return Config.from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint config is invalid: {e}") from None


def load_model(path: str | Path, device="cpu", ema: bool = True):
    """Rebuild the model of a run folder or checkpoint file.

    Returns ``(model, config, state)``; the model is in eval mode on ``device`` and uses the
    EMA weights when the run kept them (``ema=False`` for the raw weights).
    """
    from .models import build_model

    _, state = resolve(path, map_location="cpu")
    cfg = config_of(state)
    model = build_model(cfg, tuple(state["data_shape"]))
    weights = state["ema"] if ema and state.get("ema") is not None else state["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not fit the model its config describes "
                              f"({str(e).splitlines()[0][:120]})") from None
    return model.to(device).eval(), cfg, state
