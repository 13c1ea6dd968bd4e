"""CIFAR-10 python batches: reading (folder or archive), and the download against a local server."""

import functools
import hashlib
import http.server
import io
import pickle
import tarfile
import threading

import numpy as np
import pytest
import torch

from vaekit import cifar
from vaekit.errors import DataError

N_PER_BATCH = 3


def _batch(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return pickle.dumps(
        {
            b"batch_label": b"synthetic",
            b"labels": rng.integers(0, 10, N_PER_BATCH).tolist(),
            b"data": rng.integers(0, 256, (N_PER_BATCH, 3072), dtype=np.uint8),
            b"filenames": [b"x.png"] * N_PER_BATCH,
        },
        protocol=2,
    )


def _archive() -> bytes:
    """A tiny tar.gz in the layout of cifar-10-python.tar.gz (3 images per batch)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for seed, name in enumerate(cifar.SPLITS["train"] + cifar.SPLITS["test"]):
            raw = _batch(seed)
            info = tarfile.TarInfo(f"{cifar.FOLDER}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


@pytest.fixture
def server(tmp_path):
    """An http.server on 127.0.0.1 serving the tiny archive under the canonical name; yields its base URL."""
    root = tmp_path / "www"
    root.mkdir()
    (root / cifar.FILENAME).write_bytes(_archive())

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", root / cifar.FILENAME
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def test_download_then_load(server, tmp_path, monkeypatch):
    url, served = server
    monkeypatch.setattr(cifar, "MD5", hashlib.md5(served.read_bytes()).hexdigest())
    data = tmp_path / "data"
    x, y = cifar.load_cifar10(data, "train", download=True, base_url=url)
    assert x.shape == (5 * N_PER_BATCH, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (5 * N_PER_BATCH,) and y.dtype == torch.int64
    assert torch.equal(torch.round(x * 255) / 255, x) and 0 <= x.min() and x.max() <= 1
    raw = pickle.loads(_batch(0))
    first = torch.from_numpy(raw[b"data"][0].reshape(3, 32, 32)).float() / 255
    assert torch.equal(x[0], first)  # R, G, B planes, rows first
    assert [p.name for p in data.iterdir()] == [cifar.FILENAME]  # no partial files left
    xt, yt = cifar.load_cifar10(data, "test")  # from the archive, no download needed
    assert xt.shape == (N_PER_BATCH, 3, 32, 32)


def test_base_url_from_the_environment(server, tmp_path, monkeypatch):
    url, served = server
    monkeypatch.setattr(cifar, "MD5", hashlib.md5(served.read_bytes()).hexdigest())
    monkeypatch.setenv("VAEKIT_CIFAR_URL", url)
    monkeypatch.setenv("VAEKIT_DATA", str(tmp_path / "env-data"))
    assert cifar.download_cifar10().name == cifar.FILENAME
    assert cifar.load_cifar10(split="test")[0].shape[0] == N_PER_BATCH


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    url, _ = server  # the real md5 does not match the synthetic archive
    data = tmp_path / "data"
    with pytest.raises(DataError, match="md5") as e:
        cifar.load_cifar10(data, download=True, base_url=url)
    assert "\n" not in str(e.value)
    assert list(data.iterdir()) == []


def test_unreachable_server_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot download"):
        cifar.download_cifar10(tmp_path, base_url="http://127.0.0.1:9/", timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_missing_and_corrupt_files(tmp_path, monkeypatch):
    monkeypatch.delenv("VAEKIT_DATA", raising=False)
    with pytest.raises(DataError, match="VAEKIT_DATA"):
        cifar.load_cifar10(None)
    with pytest.raises(DataError, match="not found"):
        cifar.load_cifar10(tmp_path)
    with pytest.raises(DataError, match="split"):
        cifar.load_cifar10(tmp_path, "valid")
    (tmp_path / cifar.FILENAME).write_bytes(b"not a tar at all")
    with pytest.raises(DataError, match="corrupt"):
        cifar.load_cifar10(tmp_path)


def test_extracted_folder_and_foreign_pickles(tmp_path):
    folder = tmp_path / cifar.FOLDER
    folder.mkdir()
    (folder / "test_batch").write_bytes(_batch(7))
    x, y = cifar.load_cifar10(tmp_path, "test")
    assert x.shape == (N_PER_BATCH, 3, 32, 32)
    with pytest.raises(DataError, match="incomplete"):
        cifar.load_cifar10(tmp_path, "train")
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match="3072"):
        cifar.load_cifar10(tmp_path, "test")

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    (folder / "test_batch").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(DataError, match="not a CIFAR-10"):
        cifar.load_cifar10(tmp_path, "test")
