"""Checked downloads: file digests and an atomic, digest-verified fetch.

Shared by every dataset that can be fetched (``vaekit.data`` for the IDX files of MNIST and
Fashion-MNIST, ``vaekit.cifar`` for the CIFAR-10 archive). A download streams into a
temporary file next to its destination, is fsynced, checked against a known digest and only
then renamed into place with ``os.replace``, so an interrupted or corrupt download never
leaves a file under the final name that looks complete.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from .errors import DataError, one_line

DOWNLOAD_TIMEOUT_S = 60.0  # seconds per network read
CHUNK_BYTES = 1 << 20  # read and hash files in 1 MiB pieces, so memory stays flat for any size


def file_checksum(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file (``algorithm``: any hashlib name, e.g. sha256, md5), read in chunks."""
    h = hashlib.new(algorithm)
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
                h.update(chunk)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({one_line(e)})") from None
    return h.hexdigest()


def fetch_checked(url: str, target: Path, algorithm: str, expected: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Stream ``url`` into a temporary file next to ``target``, fsync it, check its ``algorithm``
    digest against ``expected``, then os.replace it onto ``target`` (no partial file is ever left).

    Args:
        url: where to fetch from (http, https or file URL).
        target: final path; its folder must exist.
        algorithm: hashlib name of the digest, e.g. ``"sha256"`` or ``"md5"``.
        expected: the hex digest the file must have (either case).
        timeout: seconds per network read.

    Network errors (urllib.error.URLError, http.client.HTTPException, OSError, ValueError for a
    malformed URL) propagate, so callers can try the next mirror; a digest mismatch raises
    DataError.
    """
    fd, tmp = tempfile.mkstemp(prefix="." + target.name + ".", suffix=".part", dir=target.parent)
    h = hashlib.new(algorithm)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(CHUNK_BYTES), b""):
                h.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != expected.lower():
            raise DataError(
                f"checksum mismatch for {target.name} from {url}: {algorithm} {h.hexdigest()} != expected {expected}"
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
