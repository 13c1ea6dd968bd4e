"""vaekit.download: file digests and the atomic, digest-checked fetch (against a local HTTP server)."""

import functools
import hashlib
import http.server
import os
import threading
import urllib.error

import pytest

from vaekit import download
from vaekit.errors import DataError

PAYLOAD = bytes(range(256)) * 4099 + b"tail"  # over 1 MiB, so the chunked reads loop more than once


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(base URL, served folder) of a threaded HTTP server on 127.0.0.1 holding ``blob.bin``."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "www"
    root.mkdir()
    (root / "blob.bin").write_bytes(PAYLOAD)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/", root
    srv.shutdown()
    srv.server_close()


def test_checksum_of_bytes_matches_hashlib(tmp_path):
    (tmp_path / "f").write_bytes(b"abc" * 1000)
    assert download.file_checksum(tmp_path / "f") == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert download.file_checksum(tmp_path / "f", "md5") == hashlib.md5(b"abc" * 1000).hexdigest()


def test_checksum_of_a_file_larger_than_one_chunk(tmp_path):
    (tmp_path / "big").write_bytes(PAYLOAD)
    assert len(PAYLOAD) > download.CHUNK_BYTES
    assert download.file_checksum(tmp_path / "big") == hashlib.sha256(PAYLOAD).hexdigest()


def test_checksum_of_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(DataError) as e:
        download.file_checksum(tmp_path / "absent")
    msg = str(e.value)
    assert "absent" in msg and "cannot read" in msg and "\n" not in msg


def test_fetch_checked_writes_the_file_and_nothing_else(served, tmp_path):
    url, _ = served
    dest = tmp_path / "dl"
    dest.mkdir()
    digest = hashlib.md5(PAYLOAD).hexdigest().upper()  # the expected digest may be given in either case
    download.fetch_checked(url + "blob.bin", dest / "blob.bin", "md5", digest)
    assert (dest / "blob.bin").read_bytes() == PAYLOAD
    assert os.listdir(dest) == ["blob.bin"]


def test_fetch_checked_mismatch_keeps_the_old_file_and_leaves_no_part(served, tmp_path):
    url, _ = served
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / "blob.bin").write_bytes(b"old")
    with pytest.raises(DataError) as e:
        download.fetch_checked(url + "blob.bin", dest / "blob.bin", "sha256", "0" * 64)
    msg = str(e.value)
    assert "checksum mismatch for blob.bin" in msg and hashlib.sha256(PAYLOAD).hexdigest() in msg
    assert (dest / "blob.bin").read_bytes() == b"old" and os.listdir(dest) == ["blob.bin"]


def test_fetch_checked_network_errors_propagate_for_the_caller(served, tmp_path):
    url, _ = served
    with pytest.raises(urllib.error.HTTPError):  # 404: callers try the next mirror
        download.fetch_checked(url + "missing.bin", tmp_path / "missing.bin", "sha256", "0" * 64)
    with pytest.raises(ValueError):  # malformed URL
        download.fetch_checked("not a url", tmp_path / "x.bin", "sha256", "0" * 64)
    assert os.listdir(tmp_path) == ["www"]  # no partial file left
