"""Run folders and checkpoints: atomic writes, safe loads, newest-good fallback.

A run folder holds ``config.yaml`` (the resolved config, for people), ``metrics.jsonl``,
TensorBoard events, pictures, and ``checkpoints/step-XXXXXXXX.pt``. Each checkpoint is a
plain dict of tensors and primitives: the model's ``state_dict`` (every piece of model
state is a parameter or buffer), the optimiser's, the EMA weights, the step, and the
resolved config (:func:`training_state` builds it), so a run can be resumed
(:func:`restore_training_state`) or evaluated from a checkpoint alone. A new run folder is made
by :func:`create_run`. An export folder (``model.safetensors`` and ``config.json``, written by
``vaekit export``) is read by :func:`read_export` and taken wherever a run folder is.

Writes are atomic: the bytes go to a temporary file in the same folder, are flushed and
fsync'ed, then ``os.replace``'d onto the final name, so a run killed at any moment (or a
full disk) leaves either the old or the new checkpoint, never a torn one; a failed write
(disk full, quota, I/O error) is a one-line :class:`CheckpointError` naming the file and the
previous checkpoint, which is left intact. Temp files left by a killed writer are removed
when the run resumes (:func:`remove_stale_temp_files`). A new run folder appears in one
``rename`` once its first checkpoint is written (:func:`create_run_dir`), so a run that fails
before that leaves no half-made folder.

Loads verify every member's CRC-32 (``zipfile``: ``torch.load`` itself does not, so a flipped
bit in a tensor would load silently) and then use ``torch.load(weights_only=True)``: a
checkpoint never executes code. A corrupt or truncated file is a one-line error naming it, and
so is a file that holds pickled Python objects besides tensors (refused for safety, not
corrupt); :func:`latest_checkpoint` then falls back to the newest good one.

A checkpoint belongs to a run when its config is the run's ``config.yaml`` up to the fields a
resume may change (``RESUMABLE``: the epochs, the device and the data folder, whose data the
training command checks against the run's ``data.fingerprint``). :func:`latest_checkpoint` refuses
one that does not (a file of another run dropped into the folder), and the rotation that keeps
the newest ``KEEP`` checkpoints counts and deletes only the run's own.

Every JSON file or line vaekit writes is standard JSON (:func:`json_text`): a NaN or an
infinity becomes ``null``.

Test hook: with the environment variable ``VAEKIT_TEST_SLOW_CKPT=SECONDS`` every checkpoint
write stops half-way for that long after printing ``vaekit-test: writing <path>`` to stderr,
so that the fault tests can SIGKILL a process in the middle of a write.
"""

from __future__ import annotations

import errno
import glob
import io
import json
import math
import os
import pickle
import re
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.optim.swa_utils import AveragedModel

from . import __version__, distributed
from .config import Config
from .errors import CheckpointError, ConfigError, one_line
from .models import build_model, dequantize_of
from .nets import to_channels_last

try:  # POSIX advisory locks; elsewhere a run folder is not locked
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

CKPT_DIR = "checkpoints"
RUN_LOCK = ".lock"  # in a run folder: held (flock) by the process that trains it (run_lock)
CKPT_RE = re.compile(r"^step-(\d{8,})\.pt$")
KEEP = 3  # checkpoints kept per run (older ones are deleted after a successful write)
# what `--resume` may change in a run's config; data_dir only where the data found there have the
# run's data.fingerprint (checked by `vaekit train`)
RESUMABLE = (("train", "epochs"), ("train", "device"), ("data", "data_dir"))


def _finite_or_none(obj):
    """``obj`` with every non-finite float (NaN, +-inf) replaced by None, in nested dicts and lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def json_text(obj, **kwargs) -> str:
    """``json.dumps(obj, **kwargs)`` as standard JSON: NaN and infinities become ``null`` (Python's
    default writes the non-standard tokens ``NaN`` and ``Infinity``, which strict readers refuse)."""
    return json.dumps(_finite_or_none(obj), allow_nan=False, **kwargs)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import, before any threads exist


def atomic_write(path: str | Path, write_fn) -> None:
    """Call ``write_fn(fileobj)`` on a temp file beside ``path``, fsync, then rename onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
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


TEMP_RE = re.compile(r"^\..+\.tmp$")  # the names atomic_write gives its temp files


def remove_stale_temp_files(run_dir: str | Path) -> list[Path]:
    """Delete temp files of writes that a killed process never finished; returns them."""
    removed = []
    for d in (Path(run_dir), Path(run_dir) / CKPT_DIR):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if TEMP_RE.match(p.name) and p.is_file():
                try:
                    p.unlink()
                    removed.append(p)
                except FileNotFoundError:
                    pass
    return removed


def create_run_dir(run_dir: str | Path, populate) -> None:
    """Make ``run_dir`` appear complete or not at all: ``populate(folder)`` fills a temp folder
    beside it, which is then renamed onto ``run_dir`` (which must be absent or empty).

    When ``run_dir`` already exists and holds other files (but no run), ``populate`` writes
    into it directly: the folder is the user's, not ours to replace.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"cannot create the run folder {run_dir}: a file of that name exists")
    try:
        if run_dir.is_dir() and any(run_dir.iterdir()):
            populate(run_dir)
            return
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.parent.glob(f".{glob.escape(run_dir.name)}.*.tmp"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", suffix=".tmp", dir=run_dir.parent))
    except OSError as e:
        raise CheckpointError(f"cannot create the run folder {run_dir} ({e.strerror or e})") from None
    try:
        populate(tmp)
        os.chmod(tmp, 0o777 & ~_UMASK)
        if run_dir.is_dir():
            run_dir.rmdir()  # empty; rename cannot replace a directory on every platform
        os.rename(tmp, run_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            what = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            raise CheckpointError(f"cannot create the run folder {run_dir} ({what})") from None
        raise


def read_run_config(run_dir: str | Path) -> dict | None:
    """The run folder's ``config.yaml`` as a dict, or None where it is absent or unreadable."""
    try:
        doc = yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return doc if isinstance(doc, dict) else None


def run_identity(config: dict) -> dict | None:
    """What makes a config one run's: the resolved config (old keys dropped, new ones at their
    defaults, ``model.dequantize: auto`` resolved as ``build_model`` resolves it) less the
    ``RESUMABLE`` fields; None when it is not a valid config."""
    try:
        cfg = Config.from_dict(config)
        cfg.model.dequantize = dequantize_of(cfg)
        d = cfg.to_dict()
    except (ConfigError, TypeError, AttributeError, ValueError):
        return None
    for section, name in RESUMABLE:
        d[section].pop(name, None)
    return d


def config_differences(a: dict, b: dict, limit: int = 3) -> list[str]:
    """Up to ``limit`` of the fields (``section.field: A vs B``) in which the run configs differ."""
    ia, ib = run_identity(a), run_identity(b)
    if ia is None or ib is None:
        return ["the config itself (not a valid vaekit config)"] if ia != ib else []
    out = [f"preset: {ia['preset']} vs {ib['preset']}"] if ia.get("preset") != ib.get("preset") else []
    for section in ("data", "model", "train"):
        for k, v in ia[section].items():
            if ib[section].get(k) != v:
                out.append(f"{section}.{k}: {v} vs {ib[section].get(k)}")
    return out[:limit] + ([f"and {len(out) - limit} more"] if len(out) > limit else [])


def check_belongs(path: Path, state: dict, run_dir: str | Path) -> None:
    """Refuse the checkpoint ``path`` (loaded as ``state``) when its config is not the one of the run
    folder ``run_dir`` (its ``config.yaml``, up to ``RESUMABLE``); a folder without a readable, valid
    ``config.yaml`` accepts any."""
    run_cfg = read_run_config(run_dir)
    if run_cfg is None or run_identity(run_cfg) is None:
        return
    diff = config_differences(state["config"], run_cfg)
    if diff:
        raise CheckpointError(
            f"{path} is not a checkpoint of the run {run_dir}: its config differs from "
            f"{Path(run_dir) / 'config.yaml'} ({'; '.join(diff)}); move it out of {Path(run_dir) / CKPT_DIR}"
        )


def _blame_edited_config(run_dir: str | Path, path: Path, state: dict, others: list[Path]) -> None:
    """When ``path`` (refused by :func:`check_belongs`) has the same config as another checkpoint of
    the folder, the checkpoints agree and ``config.yaml`` is what changed: raise the error that says
    so, instead of advising to move the run's own checkpoints away. Returns when no other readable
    checkpoint shares its config (a stray file of another run)."""
    for q in others:
        try:
            other = read_checkpoint(q, "cpu")
        except CheckpointError:
            continue
        if not config_differences(state["config"], other["config"]):
            diff = config_differences(state["config"], read_run_config(run_dir) or {})
            yaml = Path(run_dir) / "config.yaml"
            raise CheckpointError(
                f"{yaml} differs from the config the run's checkpoints were trained under (checkpoints vs "
                f"config.yaml: {'; '.join(diff)}): it was edited or replaced after training; restore it, or "
                f"delete it (resuming writes it again from the checkpoints)"
            )


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on the run folder ``run_dir`` while a process trains it (a new
    run from its first checkpoint on, a resumed one before it touches a file there).

    Two processes training one run would each delete the other's checkpoint temp files and one
    would append to a ``metrics.jsonl`` the other had replaced; the second is refused instead.
    A folder where the lock file cannot be made or locked (read-only, a filesystem without locks)
    is not locked: what follows reports its own errors."""
    try:
        f = open(Path(run_dir) / RUN_LOCK, "a+b")  # noqa: SIM115 - held open for the whole run
    except OSError:
        yield
        return
    try:
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CheckpointError(
                    f"{run_dir} is being trained by another process (it holds {Path(run_dir) / RUN_LOCK}); "
                    "let it finish, or stop it first"
                ) from None
            except OSError:
                pass
        yield
    finally:
        f.close()


def requested_epochs(run_dir: str | Path) -> int | None:
    """``train.epochs`` of the run folder's ``config.yaml`` (the last ``--epochs`` asked), or None."""
    train = (read_run_config(run_dir) or {}).get("train")
    epochs = train.get("epochs") if isinstance(train, dict) else None
    return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None


def write_config(run_dir: str | Path, cfg: Config) -> None:
    """``run_dir/config.yaml``: the resolved config, for people (the checkpoints hold their own copy)."""
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode()
    atomic_write(Path(run_dir) / "config.yaml", lambda f: f.write(text))


def create_run(run_dir: str | Path, cfg: Config, state: dict, metrics: str = "") -> None:
    """A new run folder holding ``config.yaml``, ``metrics.jsonl`` (the lines ``metrics``) and the
    checkpoint ``state``, appearing in one rename (:func:`create_run_dir`)."""

    def populate(folder: Path) -> None:
        write_config(folder, cfg)
        atomic_write(folder / "metrics.jsonl", lambda f: f.write(metrics.encode()))
        save_checkpoint(folder, state)

    create_run_dir(run_dir, populate)


def training_state(
    step: int,
    model: nn.Module,
    cfg: Config,
    data_shape: tuple[int, ...],
    *,
    epoch: int = 1,
    bad_steps: int = 0,
    bad_streak: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    ema: AveragedModel | None = None,
    shards: int = 1,
    world_size: int = 1,
    log_window: dict | None = None,
) -> dict:
    """The dict every checkpoint holds, for gradient training and closed-form fits alike.

    Args:
        step: optimisation steps done (EM: iterations); names the file.
        model, optimizer, ema: saved as their ``state_dict``; the EMA also as its count ``ema_n``.
        cfg: the resolved config, from which :func:`model_from_state` rebuilds the model.
        data_shape: the shape of one example, e.g. [C, H, W].
        epoch: the epoch ``step`` falls in (informational).
        bad_steps: non-finite steps skipped so far; bad_streak: how many of them came last, in a row
            (a resumed run counts on towards ``train.max_bad_steps``).
        shards: the run's data shards; world_size: the processes that wrote it (informational).
        log_window: ``{"sums": {term: global sum}, "n": steps}`` of the steps since the last log
            line, so that a resumed run logs the same means.
    """
    return {
        "step": int(step),
        "epoch": int(epoch),
        "bad_steps": int(bad_steps),
        "bad_streak": int(bad_streak),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "ema": ema.module.state_dict() if ema is not None else None,
        "ema_n": int(ema.n_averaged) if ema is not None else 0,
        "config": cfg.to_dict(),
        "data_shape": list(data_shape),
        "shards": int(shards),
        "world_size": int(world_size),
        "log_window": log_window if log_window is not None else {"sums": {}, "n": 0},
        "vaekit_version": __version__,
    }


def restore_training_state(
    state: dict,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: AveragedModel | None,
    where: str | Path,
) -> None:
    """Load a :func:`training_state` (or an older checkpoint's) into ``model``, ``optimizer`` and ``ema``.

    A run saved without EMA resumes with the EMA starting from the current weights. Raises a
    one-line :class:`CheckpointError` naming ``where`` when the state does not fit the model.
    """
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.module.load_state_dict(state["ema"])
            ema.n_averaged.fill_(int(state.get("ema_n", 1)))
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        why = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"the checkpoint of {where} does not fit the model its config describes ({why})"
        ) from None


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"step-{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint files of a run, newest (highest step) first."""
    d = Path(run_dir) / CKPT_DIR
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def _torch_save(state: dict, f) -> None:
    """``torch.save``, with the ``OSError`` of a failed write (disk full, quota, I/O) raised as itself.

    torch's zip writer turns the file's ``OSError`` into ``RuntimeError: ... unexpected pos``,
    with the ``OSError`` as its context.
    """
    try:
        torch.save(state, f)
    except RuntimeError as e:
        cause = e.__cause__ or e.__context__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        if "unexpected pos" in str(e) or "write failed" in str(e):
            raise OSError(errno.EIO, f"write failed ({one_line(e)})") from None
        raise


def _write_state(state: dict, path: Path):
    slow = os.environ.get("VAEKIT_TEST_SLOW_CKPT")
    if not slow:
        return lambda f: _torch_save(state, f)

    def write_slowly(f):  # test hook: stop half-way through the bytes
        buf = io.BytesIO()
        _torch_save(state, buf)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        print(f"vaekit-test: writing {path}", file=sys.stderr, flush=True)
        time.sleep(float(slow))
        f.write(data[len(data) // 2 :])

    return write_slowly


def _config_of_file(path: Path) -> dict | None:
    """The config saved in the checkpoint file ``path`` (tensors memory-mapped where the file allows,
    not read), or None."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # unreadable, refused or not a zip: not counted as any run's
            return None
    return state.get("config") if isinstance(state, dict) and isinstance(state.get("config"), dict) else None


def save_checkpoint(run_dir: str | Path, state: dict, keep: int = KEEP) -> Path:
    """Atomically write ``state`` (must hold ``step``) and prune all but the newest ``keep`` of the
    run's own checkpoints (those whose config is ``state``'s up to ``RESUMABLE``; other files in
    the folder are neither counted nor deleted).

    A failed write raises a one-line ``CheckpointError`` and leaves the previous checkpoint
    (and no temp file) behind.
    """
    path = checkpoint_path(run_dir, int(state["step"]))
    try:
        atomic_write(path, _write_state(state, path))
    except OSError as e:
        prev = [p for p in list_checkpoints(run_dir) if p != path]
        kept = f"; the previous checkpoint {prev[0].name} is intact" if prev else ""
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            what = "disk full" if e.errno == errno.ENOSPC else "disk quota exceeded"
            raise CheckpointError(f"{what} while writing checkpoint {path}{kept}") from None
        raise CheckpointError(f"cannot write checkpoint {path} ({e.strerror or e}){kept}") from None
    mine, own = run_identity(state["config"]), []
    for p in list_checkpoints(run_dir):
        theirs = _config_of_file(p) if p != path and mine is not None else None
        if p == path or (theirs is not None and run_identity(theirs) == mine):
            own.append(p)
    for old in own[keep:]:
        try:
            old.unlink()
        except FileNotFoundError:
            pass
    return path


def _clip(text: str, n: int = 160) -> str:
    """``text`` cut to at most ``n`` characters at a word boundary, marked with an ellipsis."""
    if len(text) <= n:
        return text
    cut = text[: n - 3]
    return (cut[: cut.rfind(" ")] if " " in cut else cut) + "..."


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def _refused_pickle(e: BaseException) -> str | None:
    """The Python object a ``weights_only`` load refused to build (e.g. ``posix.system``), or None
    when ``e`` is another failure."""
    if not isinstance(e, pickle.UnpicklingError):
        return None
    m = _GLOBAL_RE.search(str(e))
    return m.group(1) if m else None


def _crc_problem(f) -> str | None:
    """Why the zip archive in ``f`` is damaged (bad CRC, truncated, not a zip), or None."""
    try:
        with zipfile.ZipFile(f) as z:
            bad = z.testzip()
    except Exception as e:  # BadZipFile, EOFError, "encrypted" RuntimeError, unknown compression...
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"CRC mismatch in {bad}" if bad is not None else None


def load_checkpoint_bytes(data: bytes | str | Path, name: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint from its bytes (or its file): CRC check, then ``torch.load(weights_only=True)``."""
    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    problem = _crc_problem(src)
    if problem is None:
        if isinstance(src, io.BytesIO):
            src.seek(0)
        try:
            state = torch.load(src, map_location=map_location, weights_only=True)
        except Exception as e:  # torch raises many types for corrupt files and refused pickles
            refused = _refused_pickle(e)
            if refused is not None:
                raise CheckpointError(
                    f"{name} is not a plain-tensor checkpoint: it holds the Python object {refused}, which "
                    "loading would have to run; refused for safety (vaekit loads only tensors and plain "
                    "values, torch.load(weights_only=True))"
                ) from None
            problem = one_line(e)
    if problem is not None:
        raise CheckpointError(f"corrupt or truncated checkpoint {name} ({_clip(problem)})")
    if not isinstance(state, dict) or "model" not in state or "config" not in state or "step" not in state:
        raise CheckpointError(f"{name} is not a vaekit checkpoint (missing model/config/step)")
    shape = state.get("data_shape")
    plain = (
        isinstance(state["model"], dict)
        and isinstance(state["config"], dict)
        and isinstance(state["step"], int)
        and isinstance(shape, (list, tuple))
        and all(isinstance(d, int) and d > 0 for d in shape)
    )
    if not plain:  # a file that passed its CRC but is not what training_state writes
        raise CheckpointError(f"{name} is not a vaekit checkpoint (its model, config, step or data_shape is malformed)")
    return state


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load one checkpoint file safely (no code execution); one-line error if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return load_checkpoint_bytes(path, path, map_location)


def latest_checkpoint(run_dir: str | Path, map_location="cpu", warn=True, quarantine=False) -> tuple[Path, dict] | None:
    """The newest checkpoint of a run that loads; corrupt ones are reported and skipped.

    Returns ``None`` when the run has no checkpoint at all; raises ``CheckpointError``
    when it has some but none is readable, and when the newest readable one is not the run's
    (:func:`check_belongs`). ``quarantine=True`` (used when resuming) renames
    each corrupt file skipped on the way to ``<name>.corrupt``, so later readers do not trip
    over it again and the resumed run can write that step afresh.
    """
    paths = list_checkpoints(run_dir)
    if not paths:
        return None
    bad = []
    for p in paths:
        try:
            found = p, read_checkpoint(p, map_location)
        except CheckpointError as e:
            bad.append(p)
            if warn:
                print(f"vaekit: warning: {e}; falling back to an older checkpoint", file=sys.stderr)
            continue
        try:
            check_belongs(p, found[1], run_dir)
        except CheckpointError:
            _blame_edited_config(run_dir, p, found[1], [q for q in paths if q != p])
            raise
        if quarantine:
            for b in bad:
                try:
                    os.replace(b, b.with_name(b.name + ".corrupt"))
                except OSError:
                    pass
        return found
    raise CheckpointError(
        f"no readable checkpoint in {Path(run_dir) / CKPT_DIR} "
        f"({len(bad)} corrupt or refused: {', '.join(p.name for p in bad)})"
    )


# --- exported models -----------------------------------------------------------------------------
# An export folder (``vaekit export``) holds the weights of one model as ``model.safetensors`` (a
# flat map of named tensors: no pickle, nothing to execute), and ``config.json`` (plain JSON: the
# resolved config, the data shape and the rest of the checkpoint a model needs besides its weights).
# :func:`resolve` recognises such a folder by these two files, so that ``vaekit.load`` and every
# verb on a trained model take it like a run folder.

EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "config.json"
EXPORT_FORMAT = "vaekit-export"  # config.json's "format": what marks the folder as an export
EXPORT_FORMAT_VERSION = 1
COMMAND_FILE = "command.txt"  # in a run folder: each `vaekit train` command run on it, one per line
# checkpoint entries an export leaves out: the training state (optimiser, log window) and what
# config.json and model.safetensors hold in fields of their own
EXPORT_OMITS = ("model", "ema", "optimizer", "log_window", "config", "data_shape", "step")
_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
    )
}


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is an export folder: it holds ``model.safetensors`` and ``config.json`` and no
    checkpoints (a run folder stays a run folder whatever else is put into it)."""
    path = Path(path)
    return (path / EXPORT_WEIGHTS).is_file() and (path / EXPORT_CONFIG).is_file() and not list_checkpoints(path)


def plain_json(obj):
    """``obj`` (nested dicts, lists, numbers, strings, tensors) as plain JSON values: a tensor becomes
    ``{"tensor": nested list, "dtype": name, "shape": [...]}``, read back exactly by :func:`from_plain_json`."""
    if isinstance(obj, torch.Tensor):
        dtype = str(obj.dtype).removeprefix("torch.")
        if dtype not in _DTYPES:
            raise CheckpointError(f"a tensor of dtype {dtype} cannot be written to an export's {EXPORT_CONFIG}")
        return {"tensor": obj.detach().cpu().tolist(), "dtype": dtype, "shape": list(obj.shape)}
    if isinstance(obj, dict):
        return {str(k): plain_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_json(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"a {type(obj).__name__} cannot be written to an export's {EXPORT_CONFIG}")


def from_plain_json(obj):
    """The inverse of :func:`plain_json`."""
    if isinstance(obj, dict):
        if set(obj) == {"tensor", "dtype", "shape"} and obj["dtype"] in _DTYPES:
            return torch.tensor(obj["tensor"], dtype=_DTYPES[obj["dtype"]]).reshape(obj["shape"])
        return {k: from_plain_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_plain_json(v) for v in obj]
    return obj


def export_documents(state: dict, ema: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """The two documents of an export of the checkpoint ``state``: the weights (the EMA weights when
    the run kept them and ``ema``; contiguous CPU copies, since safetensors refuses tensors that share
    memory) and ``config.json`` (callers may add fields, e.g. a description of ONNX graphs)."""
    use_ema = ema and state.get("ema") is not None
    weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in state["ema" if use_ema else "model"].items()}
    doc = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "vaekit_version": __version__,
        "weights": "ema" if use_ema else "trained",
        "config": config_of(state).to_dict(),
        "data_shape": [int(s) for s in state["data_shape"]],
        "step": int(state["step"]),
        "state": plain_json({k: v for k, v in state.items() if k not in EXPORT_OMITS}),
    }
    return weights, doc


def write_export_documents(folder: str | Path, weights: dict[str, torch.Tensor], doc: dict) -> None:
    """``folder/model.safetensors`` and ``folder/config.json``, each written atomically."""
    from safetensors.torch import save

    data = save(weights, metadata={"format": "pt", "vaekit": __version__})
    atomic_write(Path(folder) / EXPORT_WEIGHTS, lambda f: f.write(data))
    text = (json_text(doc, indent=2) + "\n").encode()
    atomic_write(Path(folder) / EXPORT_CONFIG, lambda f: f.write(text))


def read_export(folder: str | Path) -> dict:
    """The checkpoint dict of an export folder (weights as ``model``, no optimiser, no EMA copy), so
    that :func:`model_from_state` rebuilds its model; a one-line error for a damaged folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    folder = Path(folder)
    try:
        doc = json.loads((folder / EXPORT_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {folder / EXPORT_CONFIG} ({one_line(e)})") from None
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        raise CheckpointError(
            f'{folder / EXPORT_CONFIG} is not the config of a vaekit export (no "format": "{EXPORT_FORMAT}")'
        )
    if (
        not (isinstance(doc.get("config"), dict) and isinstance(doc.get("data_shape"), list))
        or type(doc.get("step")) is not int
    ):
        raise CheckpointError(f"{folder / EXPORT_CONFIG} lacks the config, the data shape or the step")
    try:
        weights = load((folder / EXPORT_WEIGHTS).read_bytes())
    except (OSError, SafetensorError) as e:
        raise CheckpointError(
            f"corrupt or truncated weights {folder / EXPORT_WEIGHTS} ({_clip(one_line(e))})"
        ) from None
    try:
        state = from_plain_json(doc.get("state") or {})
    except (TypeError, ValueError, RuntimeError) as e:  # a hand-edited tensor that torch cannot build
        raise CheckpointError(f"{folder / EXPORT_CONFIG} holds a malformed tensor ({_clip(one_line(e))})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f'{folder / EXPORT_CONFIG}: "state" is not a JSON object')
    state.update(model=weights, ema=None, config=doc["config"], data_shape=doc["data_shape"], step=doc["step"])
    return state


def _state_bytes(path: Path) -> bytes:
    """The bytes of the checkpoint file ``path``, or of an export folder's state saved as one."""
    if not path.is_dir():
        return path.read_bytes()
    buf = io.BytesIO()
    torch.save(read_export(path), buf)
    return buf.getvalue()


def resolve(path: str | Path, map_location="cpu") -> tuple[Path, dict]:
    """A run folder (its newest good checkpoint), a checkpoint file or an export folder (the folder
    itself and :func:`read_export`'s state) -> (file, state)."""
    path = Path(path)
    if path.is_file():
        return path, read_checkpoint(path, map_location)
    if not path.is_dir():
        raise CheckpointError(f"no run folder or checkpoint at {path}")
    if is_export(path):
        return path, read_export(path)
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
    """Rebuild the model of a run folder, checkpoint file or export folder.

    Returns ``(model, config, state)``; the model is in eval mode on ``device`` and uses the
    EMA weights when the run kept them (``ema=False`` for the raw weights).
    """
    _, state = resolve(path, map_location="cpu")
    model, cfg = model_from_state(state, device, ema)
    return model, cfg, state


def model_from_state(state: dict, device="cpu", ema: bool = True):
    """``(model, config)`` rebuilt from a loaded checkpoint dict, in eval mode on ``device``, with the
    memory format its config asks for (``model.channels_last``), as training used it."""
    cfg = config_of(state)
    model = build_model(cfg, tuple(state["data_shape"]))
    weights = state["ema"] if ema and state.get("ema") is not None else state["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint weights do not fit the model its config describes ({str(e).splitlines()[0][:120]})"
        ) from None
    return to_channels_last(model.to(device), cfg.model.channels_last).eval(), cfg


def load_shared(path: str | Path, device="cpu", ema: bool = True, warn: bool = True, missing: str | None = None):
    """:func:`load_model` for every process of a torchrun job: rank 0 finds and reads the file
    (the run folder need exist on its machine only) and sends the bytes to the others.

    Returns ``(model, config, state)``; ``device=None`` skips building the model. ``missing``
    replaces the error message for a path that holds no checkpoint at all.
    """

    def locate() -> tuple[Path, dict]:
        p = Path(path)
        if missing is not None and not p.is_file() and not list_checkpoints(p):
            exported = " (an exported model: weights only, no training state)" if is_export(p) else ""
            raise CheckpointError(missing + exported)
        if p.is_dir() and not is_export(p):
            found = latest_checkpoint(p, warn=warn)
            if found is None:
                raise CheckpointError(f"run folder {p} has no checkpoint yet (train it first)")
            return found
        return resolve(p)

    if not distributed.active():
        _, state = locate()
    else:
        name = distributed.agree(lambda: str(locate()[0]))
        data = distributed.broadcast_bytes(_state_bytes(Path(name)) if distributed.is_main() else None)
        state = load_checkpoint_bytes(data, name)
    if device is None:
        return None, config_of(state), state
    model, cfg = model_from_state(state, device, ema)
    return model, cfg, state
