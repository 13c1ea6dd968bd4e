"""A crash-safe, append-only record of finished units of a long computation.

A K=5000 importance-sampled evaluation of an image VAE on a full test set can take hours on a
CPU. Its examples are cut into chunks, and each chunk is a pure function of (model weights, data,
K, seed, chunk size, precision) (``vaekit.evaluate``), so a chunk finished once never needs
computing again. The journal keeps every finished chunk's rows; an evaluation killed at any
moment and started again with the same arguments computes only the missing chunks and reports
the same numbers, to the last bit, as one uninterrupted run.

Format: JSON lines. The first line is the header ``{"vaekit_journal": 1, "key": {...}}``, the key
naming everything the rows are a function of. Every later line is one finished unit,
``{"unit": c, "seconds": s, "rows": [[float, ...], ...]}``: Python's ``repr`` of a float64
round-trips exactly, and JSON's ``NaN``/``-Infinity`` spellings carry the non-finite values. Each
line is written whole, flushed and fsync'ed before the next unit starts, so a kill leaves at most
one partial last line; reading drops it and cuts the file back to the last whole line. The file is
held under an exclusive advisory lock (``flock``) while open, so a second process running the same
computation at the same time is refused rather than appending the same units again.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import CheckpointError, one_line

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

FORMAT = 1
HEADER = b'{"vaekit_journal"'  # how every journal's first line starts


def tensor_digest(named: dict[str, Tensor]) -> str:
    """SHA-256 (hex) of named tensors, in name order: names, dtypes, shapes and bytes, so that two
    models (a ``state_dict``) or two data sets agree exactly when their digests do."""
    h = hashlib.sha256()
    for name in sorted(named):
        t = named[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def module_digest(module: nn.Module) -> str:
    """SHA-256 (hex) of what a model computes: every submodule's name, class and plain settings (its
    public attributes that are numbers, strings, booleans or tuples of them, such as a flow's base
    distribution or a likelihood's bit depth, which live in no tensor), then its ``state_dict``, then
    the names of the weights not stored contiguously (channels-last convolutions run other kernels,
    which round differently)."""
    h = hashlib.sha256()
    for name, m in module.named_modules():
        settings = {k: v for k, v in vars(m).items() if not k.startswith("_") and k != "training" and _plain(v)}
        h.update(f"{name}|{type(m).__module__}.{type(m).__qualname__}|{json.dumps(settings, sort_keys=True)}|".encode())
    state = module.state_dict()
    h.update(tensor_digest(state).encode())
    strided = sorted(name for name, t in state.items() if not t.is_contiguous())
    if strided:  # contiguous models keep the digest they had before memory formats were part of it
        h.update(f"strided|{','.join(strided)}".encode())
    return h.hexdigest()


def _plain(v) -> bool:
    if isinstance(v, (tuple, list)):
        return all(_plain(u) for u in v)
    return v is None or isinstance(v, (bool, int, float, str))


def key_digest(key: dict) -> str:
    """A short name (12 hex digits) for a journal key: the journal of one computation is found again
    under ``<stem>-<digest>.partial.jsonl`` by the same arguments, and differing ones never meet."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


class Journal:
    """The finished units of one computation, on disk at ``path``.

    Args:
        path: the journal file; created with ``key`` as its header when absent.
        key: JSON-able description of what the units are a function of. An existing journal whose
            header holds another key raises :class:`vaekit.errors.CheckpointError` naming the
            differing fields: its rows belong to a different computation.

    Attributes:
        done: unit -> (rows [n, F] float64 tensor, seconds it took), read from the file.
    """

    def __init__(self, path: str | Path, key: dict):
        self.path = Path(path)
        self.key = json.loads(json.dumps(key))  # as it reads back: tuples become lists
        self.done: dict[int, tuple[Tensor, float]] = {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a+b")  # held, and locked, for the journal's life
        except OSError as e:
            raise CheckpointError(f"cannot open the journal {self.path}: {one_line(e)}") from None
        try:
            self._lock()
            self._file.seek(0)
            raw = self._file.read()
            lines = raw.split(b"\n")  # every piece but the last ended in a newline: a whole line
            torn = len(lines) == 1 and (HEADER.startswith(raw) or raw.startswith(HEADER) or not raw.strip(b"\0"))
            if raw and not torn and not raw.startswith(HEADER):
                raise CheckpointError(f"{self.path} is not a vaekit journal; name another file for it")
            if len(lines) > 1:
                self._read(raw, lines)
            else:  # new, or killed before its header was whole
                self._file.truncate(0)
                self._write(json.dumps({"vaekit_journal": FORMAT, "key": self.key}))
        except BaseException:
            self._file.close()
            raise

    def _lock(self) -> None:
        """An exclusive advisory lock: two processes running the same evaluation at once would append
        the same chunks twice; the second is refused instead."""
        if fcntl is None:  # not POSIX: no advisory locks to take
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CheckpointError(
                f"the journal {self.path} is held by another running evaluation of the same thing; "
                "let it finish, or stop it first"
            ) from None
        except OSError:
            pass  # a filesystem without locks (some network mounts): proceed unlocked

    def _write(self, line: str) -> None:
        try:
            self._file.write(line.encode() + b"\n")
            self._file.flush()
        except OSError as e:  # a full disk, a lost mount: the units so far stay readable
            raise CheckpointError(f"cannot append to the journal {self.path}: {one_line(e)}") from None
        _sync(self._file)

    def _read(self, raw: bytes, lines: list[bytes]) -> None:
        theirs = _header(lines[0], self.path)
        if theirs != self.key:
            fields = sorted(k for k in set(theirs) | set(self.key) if theirs.get(k) != self.key.get(k))
            raise CheckpointError(
                f"the journal {self.path} records a different computation (differing: {', '.join(fields)}); "
                "delete it or write the journal elsewhere"
            )
        self.done, good = _units(lines)
        if good < len(raw):
            self._file.truncate(good)  # appends (mode "a") then start at the new end
            self._file.flush()
            _sync(self._file)

    def append(self, unit: int, rows: Tensor, seconds: float) -> None:
        """Record unit ``unit`` as finished with ``rows`` [n, F] (stored as float64) after ``seconds``."""
        doc = {"unit": int(unit), "seconds": float(seconds), "rows": rows.detach().double().cpu().tolist()}
        self._write(json.dumps(doc))
        self.done[int(unit)] = (rows.detach().double().cpu(), float(seconds))

    def close(self) -> None:
        """Release the file and its lock; what was appended stays for the next run."""
        self._file.close()


def _header(line: bytes, path) -> dict:
    """The key in a journal's first line; a one-line CheckpointError when it is no header of this format."""
    try:
        head = json.loads(line)
        key, version = head["key"], head["vaekit_journal"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path} is not a vaekit journal (its first line is no header)") from None
    if version != FORMAT or not isinstance(key, dict):
        raise CheckpointError(f"{path} is a journal of another format ({version!r}); delete it to start over")
    return key


def _units(lines: list[bytes]) -> tuple[dict[int, tuple[Tensor, float]], int]:
    """The whole units after the header line of ``lines`` (a journal split at newlines; the last
    piece, unterminated, is never a whole line), and the bytes they and the header span. A damaged
    line ends the units: it and everything after it count as not done."""
    done, good = {}, len(lines[0]) + 1
    for line in lines[1:-1]:
        try:
            doc = json.loads(line)
            rows = torch.tensor(doc["rows"], dtype=torch.float64)
            unit, seconds = int(doc["unit"]), float(doc["seconds"])
        except (ValueError, KeyError, TypeError):
            break
        done[unit] = (rows, seconds)
        good += len(line) + 1
    return done, good


def read_journal(path: str | Path) -> tuple[dict, dict[int, tuple[Tensor, float]]]:
    """(key, units) of the journal at ``path``, read only: no lock is taken and nothing is cut, so a
    journal still being written can be read (its newest whole units). For comparing evaluations,
    e.g. two precisions on the same chunks; :class:`Journal` is the writer."""
    try:
        lines = Path(path).read_bytes().split(b"\n")
    except OSError as e:
        raise CheckpointError(f"cannot read the journal {path}: {one_line(e)}") from None
    return _header(lines[0], path), _units(lines)[0]


def _sync(f) -> None:
    """fsync ``f``, where the filesystem can: some (FUSE, some network mounts) cannot, and there the
    journal is as durable as their writes are."""
    try:
        os.fsync(f.fileno())
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise CheckpointError(f"cannot sync the journal {f.name}: {one_line(e)}") from None
