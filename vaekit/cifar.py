"""CIFAR-10, python version: reading the pickled batches, and the checked download.

The canonical file is ``cifar-10-python.tar.gz`` (md5 ``c58f30108f718f92721af3b95e74349a``,
from https://www.cs.toronto.edu/~kriz/cifar.html). It holds ``cifar-10-batches-py/`` with
``data_batch_1`` .. ``data_batch_5`` (train, 50 000 images) and ``test_batch`` (10 000),
each a pickled dict with ``b'data'``, uint8 [n, 3072] (the R, G and B planes of a 32x32
image, rows first) and ``b'labels'``, n ints in 0..9.

:func:`load_cifar10` reads either the extracted folder or the archive itself (no extraction
needed) from ``data_dir`` (default ``$VAEKIT_DATA``); with ``download=True`` a missing
archive is fetched from ``base_url`` (default ``$VAEKIT_CIFAR_URL`` or the Toronto site)
into a temporary file next to its destination, checked against the md5 and renamed into
place atomically (``vaekit.download.fetch_checked``), so an interrupted or corrupt download
never leaves a file that looks complete. The pickles are read by an unpickler that only
builds numpy arrays.

Reference: Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", tech.
report, University of Toronto, 2009.
"""

from __future__ import annotations

import http.client
import io
import os
import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import torch

from .download import DOWNLOAD_TIMEOUT_S, fetch_checked
from .errors import DataError, one_line

FILENAME = "cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
BASE_URL = "https://www.cs.toronto.edu/~kriz/"
FOLDER = "cifar-10-batches-py"
SPLITS = {
    "train": [f"data_batch_{i}" for i in range(1, 6)],
    "test": ["test_batch"],
}
IMAGE_SHAPE = (3, 32, 32)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir``, else ``$VAEKIT_DATA``; DataError when neither is set."""
    path = data_dir or os.environ.get("VAEKIT_DATA")
    if not path:
        raise DataError("no data folder: pass --data-dir (data.data_dir) or set VAEKIT_DATA")
    return Path(path).expanduser()


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays only (the content of a CIFAR batch)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _parse_batch(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Pickled batch bytes -> (uint8 [n, 3, 32, 32], int64 [n])."""
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
        data, labels = batch[b"data"], np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as e:  # any unpickling problem means a corrupt or foreign file
        raise DataError(f"{name}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3072
        or labels.shape != (data.shape[0],)
    ):
        raise DataError(f"{name}: expected uint8 data [n, 3072] and n labels")
    return data.reshape(-1, *IMAGE_SHAPE), labels


def _read_members(root: Path, names: list[str]) -> list[tuple[bytes, str]]:
    """Raw bytes of the named batches, from the extracted folder or from the archive."""
    folder, archive = root / FOLDER, root / FILENAME
    if folder.is_dir():
        out = []
        for n in names:
            f = folder / n
            if not f.is_file():
                raise DataError(f"{f} is missing; the CIFAR-10 folder is incomplete")
            out.append((f.read_bytes(), str(f)))
        return out
    try:
        with tarfile.open(archive, "r:gz") as tar:
            out = []
            for n in names:
                try:
                    member = tar.extractfile(f"{FOLDER}/{n}")
                except KeyError:
                    member = None
                if member is None:
                    raise DataError(f"{archive}: no {FOLDER}/{n} inside; not the CIFAR-10 python archive")
                out.append((member.read(), f"{archive}:{n}"))
            return out
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{archive}: corrupt archive ({e}); delete it and download again") from None


def load_cifar10(
    data_dir: str | os.PathLike | None = None, split: str = "train", download: bool = False, base_url: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 images and labels.

    Args:
        data_dir: folder holding ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``
            (default ``$VAEKIT_DATA``).
        split: ``train`` (50 000) or ``test`` (10 000).
        download: fetch the archive when neither is present (see :func:`download_cifar10`).
        base_url: where to download from (default ``$VAEKIT_CIFAR_URL`` or the Toronto site).

    Returns:
        x: float32 [N, 3, 32, 32] with values k/255; labels: int64 [N].
    """
    if split not in SPLITS:
        raise DataError(f"CIFAR-10 split must be one of {', '.join(SPLITS)}; got '{split}'")
    root = resolve_data_dir(data_dir)
    if not (root / FOLDER).is_dir() and not (root / FILENAME).is_file():
        if not download:
            raise DataError(
                f"CIFAR-10 not found in {root}: expected {FOLDER}/ or {FILENAME} (set data.download=true to fetch it)"
            )
        download_cifar10(root, base_url)
    parts = [_parse_batch(raw, name) for raw, name in _read_members(root, SPLITS[split])]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    x = torch.from_numpy(images).float().div_(255.0)
    return x, torch.from_numpy(labels)


def download_cifar10(
    data_dir: str | os.PathLike | None = None, base_url: str | None = None, timeout: float = DOWNLOAD_TIMEOUT_S
) -> Path:
    """Fetch ``cifar-10-python.tar.gz`` into ``data_dir``, md5-checked, renamed into place atomically.

    Returns the archive's path. DataError (one line) when the server cannot be reached or the
    checksum does not match; the partial file is removed either way.
    """
    root = resolve_data_dir(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    base = base_url or os.environ.get("VAEKIT_CIFAR_URL") or BASE_URL
    url = base.rstrip("/") + "/" + FILENAME
    target = root / FILENAME
    try:
        fetch_checked(url, target, "md5", MD5, timeout=timeout)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        raise DataError(f"cannot download {url}: {one_line(e)}") from None  # ValueError: malformed URL
    return target
