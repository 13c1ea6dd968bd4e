"""vaekit.data: datasets, formats, downloads, binarisation, splits, one-line errors."""

import functools
import gzip
import http.server
import math
import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from vaekit import data
from vaekit.config import DataConfig
from vaekit.errors import ConfigError, DataError

README_SHA256 = {  # ../shared/datasets/README.md
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}


@pytest.fixture(autouse=True)
def _isolated_data_env(monkeypatch, tmp_path):
    """No user $VAEKIT_DATA / $VAEKIT_MIRROR / proxy leaks in; the download cache is in tmp."""
    for var in ("VAEKIT_DATA", "VAEKIT_MIRROR", "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def assert_one_line(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    """An IDX file: 0, 0, type code, ndim, big-endian uint32 dims, data (uint8)."""
    head = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def write_idx_pair(folder, split="train", n=7, gz=True, seed=0):
    """Synthetic MNIST-layout IDX images [n, 4, 3] and labels [n]; returns the arrays."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    os.makedirs(folder, exist_ok=True)
    for name, arr in zip(data.IDX_FILES[split], (images, labels)):
        blob = idx_bytes(arr)
        if gz:
            with gzip.open(os.path.join(folder, name), "wb") as f:
                f.write(blob)
        else:
            with open(os.path.join(folder, name[:-3]), "wb") as f:
                f.write(blob)
    return images, labels


# ----------------------------------------------------------------------------------------
# embedded datasets
# ----------------------------------------------------------------------------------------
def test_mnist5k_split_shapes_range_balance():
    train, test = data.load_dataset("mnist5k", "train"), data.load_dataset("mnist5k", "test")
    assert (len(train), len(test)) == (4500, 500)
    assert train.shape == test.shape == (1, 28, 28) and train.dims == 784
    for ds in (train, test):
        assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
        assert ds.x.min() == 0.0 and ds.x.max() == 1.0
        # every value is an 8-bit level k/255
        k = ds.x * 255
        assert torch.equal(k, k.round())
    assert torch.bincount(train.y).tolist() == [450] * 10
    assert torch.bincount(test.y).tolist() == [50] * 10
    # rows come shuffled, not sorted by class (the CSV is sorted by label)
    assert len(set(test.y[:20].tolist())) > 3


def test_mnist5k_deterministic_disjoint_and_complete():
    a, b = data.load_dataset("mnist5k", "test"), data.load_dataset("mnist5k", "test")
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    train = data.load_dataset("mnist5k", "train")
    rows = lambda ds: {bytes(r) for r in data.to_uint8(ds.x).flatten(1).numpy()}
    assert not rows(train) & rows(a)
    pixels, labels = data._read_mnist5k()
    # the two splits are exactly the 5,000 CSV rows (as a multiset of (image, label))
    full = sorted((bytes(p.astype(np.uint8)), int(l)) for p, l in zip(pixels, labels))
    both = sorted((bytes(r), int(l)) for ds in (train, a) for r, l in zip(data.to_uint8(ds.x).flatten(1).numpy(), ds.y))
    assert both == full


def test_digits_shapes_range_and_split():
    train, test = data.load_dataset("digits", "train"), data.load_dataset("digits", "test")
    assert train.shape == (1, 8, 8)
    assert len(train) + len(test) == 1797 and 280 <= len(test) <= 320
    for ds in (train, test):
        assert 0.0 <= ds.x.min() and ds.x.max() == 1.0
        assert torch.equal(ds.x * 16, (ds.x * 16).round())  # levels k/16
    from sklearn.datasets import load_digits

    counts = np.bincount(load_digits().target)
    assert torch.bincount(test.y).tolist() == [round(c / 6) for c in counts]


def test_registry_aliases_and_unknown_name_suggestion():
    assert set(data.DATASETS) >= {"mnist5k", "digits", "mnist", "fashion-mnist", "binarized-mnist", "frey"}
    assert [n for n, _ in data.describe_datasets()] == list(data.DATASETS)
    with pytest.raises(DataError) as e:
        data.load_dataset("mnsit", "train")
    assert_one_line(e, "unknown dataset 'mnsit'", "did you mean 'mnist'")
    with pytest.raises(DataError) as e:
        data.load_dataset("mnist5k", "validation")
    assert_one_line(e, "unknown split 'validation'")


# ----------------------------------------------------------------------------------------
# real files in ../shared/datasets
# ----------------------------------------------------------------------------------------
def test_real_mnist_idx_shapes_and_readme_checksums(shared_datasets):
    folder = os.path.join(shared_datasets, "mnist")
    for name, sha in README_SHA256.items():
        assert data.file_checksum(os.path.join(folder, name)) == sha == data.CHECKSUMS["mnist"][name][1]
    train = data.load_dataset("mnist", "train", data_dir=shared_datasets)
    test = data.load_dataset("mnist", "test", data_dir=folder)  # files directly in data_dir
    assert (len(train), len(test)) == (60000, 10000)
    assert train.shape == test.shape == (1, 28, 28)
    assert test.y.min() == 0 and test.y.max() == 9
    assert train.y[:5].tolist() == [5, 0, 4, 1, 9]  # the famous first training labels
    assert 0.12 < train.x.mean() < 0.14  # MNIST mean intensity 0.1307


def test_real_fashion_md5_and_binarized_and_frey(shared_datasets):
    folder = os.path.join(shared_datasets, "fashion-mnist")
    for name, (algo, digest) in data.CHECKSUMS["fashion-mnist"].items():
        assert algo == "md5" and data.file_checksum(os.path.join(folder, name), "md5") == digest
    fashion = data.load_dataset("fashion-mnist", "test", data_dir=shared_datasets)
    assert len(fashion) == 10000 and torch.bincount(fashion.y).tolist() == [1000] * 10

    sizes = {s: len(data.load_dataset("binarized-mnist", s, data_dir=shared_datasets)) for s in ("valid", "test")}
    assert sizes == {"valid": 10000, "test": 10000}
    test = data.load_dataset("binarized-mnist", "test", data_dir=shared_datasets)
    assert test.shape == (1, 28, 28) and test.y is None
    assert set(test.x.unique().tolist()) == {0.0, 1.0}

    frey_train = data.load_dataset("frey", "train", data_dir=shared_datasets)
    frey_test = data.load_dataset("frey-faces", "test", data_dir=shared_datasets)
    assert (len(frey_train), len(frey_test)) == (1765, 200)
    assert frey_train.shape == (1, 28, 20)
    raw = np.load(os.path.join(shared_datasets, "frey-faces", "frey_faces_uint8.npz"))["faces"]
    assert torch.equal(data.to_uint8(frey_test.x[-1, 0]), torch.from_numpy(raw[-1]))  # contiguous tail


# ----------------------------------------------------------------------------------------
# IDX format
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    images, labels = write_idx_pair(tmp_path / "mnist", "test", gz=gz)
    ds = data.load_dataset("mnist", "test", data_dir=tmp_path)
    assert ds.shape == (1, 4, 3) and len(ds) == 7
    assert torch.equal(data.to_uint8(ds.x[:, 0]), torch.from_numpy(images))
    assert ds.y.tolist() == labels.tolist()


def test_idx_found_through_vaekit_data_env(tmp_path, monkeypatch):
    images, _ = write_idx_pair(tmp_path / "fashion-mnist", "train", n=5)
    monkeypatch.setenv("VAEKIT_DATA", str(tmp_path))
    ds = data.load_dataset("fashion-mnist", "train")
    assert torch.equal(data.to_uint8(ds.x[:, 0]), torch.from_numpy(images))


def test_idx_reads_other_dtypes(tmp_path):
    arr = (np.arange(6) - 3).astype(">i2").reshape(2, 3)  # IDX is big-endian
    blob = bytes([0, 0, 0x0B, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + arr.tobytes()
    (tmp_path / "a.idx").write_bytes(blob)
    out = data.read_idx(tmp_path / "a.idx")
    assert out.dtype == np.int16 and out.tolist() == arr.tolist()


def test_idx_wrong_magic(tmp_path):
    blob = bytearray(idx_bytes(np.zeros((2, 3, 3), np.uint8)))
    blob[2] = 0x42
    (tmp_path / "bad.idx").write_bytes(bytes(blob))
    with pytest.raises(DataError) as e:
        data.read_idx(tmp_path / "bad.idx")
    assert_one_line(e, "bad.idx", "not an IDX file", "magic number 0x00004203")


def test_idx_truncated_and_trailing(tmp_path):
    blob = idx_bytes(np.zeros((5, 4, 4), np.uint8))
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(blob[:-10])
    with pytest.raises(DataError) as e:
        data.read_idx(tmp_path / "short.gz")
    assert_one_line(e, "short.gz", "truncated", "(5, 4, 4)", "80 bytes", "has 70")
    (tmp_path / "long.idx").write_bytes(blob + b"xx")
    with pytest.raises(DataError) as e:
        data.read_idx(tmp_path / "long.idx")
    assert_one_line(e, "long.idx", "2 unexpected bytes")


def test_idx_bad_gzip(tmp_path):
    (tmp_path / "garbage.gz").write_bytes(b"this is not gzip at all" * 10)
    with pytest.raises(DataError) as e:
        data.read_idx(tmp_path / "garbage.gz")
    assert_one_line(e, "garbage.gz", "not a valid gzip file")
    whole = gzip.compress(idx_bytes(np.zeros((50, 8, 8), np.uint8)))
    (tmp_path / "cut.gz").write_bytes(whole[: len(whole) // 2])  # stream ends early
    with pytest.raises(DataError) as e:
        data.read_idx(tmp_path / "cut.gz")
    assert_one_line(e, "cut.gz", "not a valid gzip file")


def test_idx_label_count_mismatch_and_missing_file(tmp_path):
    write_idx_pair(tmp_path, "test", n=7)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(idx_bytes(np.zeros(6, np.uint8)))
    with pytest.raises(DataError) as e:
        data.load_dataset("mnist", "test", data_dir=tmp_path)
    assert_one_line(e, "t10k-labels-idx1-ubyte.gz", "6 labels for 7 images")
    with pytest.raises(DataError) as e:
        data.load_dataset("mnist", "train", data_dir=tmp_path)
    assert_one_line(e, "train-images-idx3-ubyte.gz not found", str(tmp_path), "download=True")


# ----------------------------------------------------------------------------------------
# downloads from a local HTTP server
# ----------------------------------------------------------------------------------------
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_serve():
    """serve(folder) -> base URL of a threaded HTTP server on 127.0.0.1 (ephemeral port)."""
    servers = []

    def serve(folder):
        handler = functools.partial(_QuietHandler, directory=str(folder))
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/"

    yield serve
    for srv in servers:
        srv.shutdown()
        srv.server_close()


TEST_FILES = list(data.IDX_FILES["test"])


def test_download_real_files_verifies_sha256(shared_datasets, tmp_path, http_serve):
    url = http_serve(os.path.join(shared_datasets, "mnist"))
    paths = data.download("mnist", tmp_path / "dl", files=TEST_FILES, mirrors=[url])
    assert [p.name for p in paths] == TEST_FILES
    for p in paths:
        assert data.file_checksum(p) == README_SHA256[p.name]
    assert sorted(os.listdir(tmp_path / "dl")) == sorted(TEST_FILES)  # no temporary files left


def test_download_via_load_dataset_and_mirror_env(shared_datasets, tmp_path, http_serve, monkeypatch):
    monkeypatch.setenv("VAEKIT_MIRROR", http_serve(shared_datasets))  # <mirror>/mnist/<file>
    ds = data.load_dataset("mnist", "test", data_dir=tmp_path, download=True)
    assert len(ds) == 10000 and ds.shape == (1, 28, 28)
    assert sorted(os.listdir(tmp_path / "mnist")) == sorted(TEST_FILES)  # only the split's files


def _synthetic_mirror(folder, monkeypatch, corrupt=False):
    """Serve synthetic test files; their true sha256 goes in the checksum table."""
    write_idx_pair(folder, "test", n=9)
    table = {n: ("sha256", data.file_checksum(folder / n)) for n in TEST_FILES}
    monkeypatch.setitem(data.CHECKSUMS, "mnist", table)
    if corrupt:
        blob = bytearray((folder / TEST_FILES[0]).read_bytes())
        blob[-5] ^= 0xFF
        (folder / TEST_FILES[0]).write_bytes(bytes(blob))
    return table


def test_download_falls_back_to_next_mirror(tmp_path, http_serve, monkeypatch):
    table = _synthetic_mirror(tmp_path / "srv", monkeypatch)
    (tmp_path / "empty").mkdir()
    mirrors = [http_serve(tmp_path / "empty"), http_serve(tmp_path / "srv")]  # first one 404s
    monkeypatch.setitem(data.MIRRORS, "mnist", mirrors)
    ds = data.load_dataset("mnist", "test", data_dir=tmp_path / "data", download=True)
    assert len(ds) == 9
    for n in TEST_FILES:
        assert data.file_checksum(tmp_path / "data" / "mnist" / n) == table[n][1]


def test_download_checksum_mismatch_leaves_no_file(tmp_path, http_serve, monkeypatch):
    _synthetic_mirror(tmp_path / "srv", monkeypatch, corrupt=True)
    url = http_serve(tmp_path / "srv")
    with pytest.raises(DataError) as e:
        data.download("mnist", tmp_path / "dl", files=TEST_FILES[:1], mirrors=[url])
    assert_one_line(e, "checksum mismatch", TEST_FILES[0], "sha256")
    assert os.listdir(tmp_path / "dl") == []


def test_download_unreachable_mirror_is_one_line(tmp_path, monkeypatch):
    _synthetic_mirror(tmp_path / "srv", monkeypatch)
    with pytest.raises(DataError) as e:
        data.download("mnist", tmp_path / "dl", files=TEST_FILES[:1], mirrors=["http://127.0.0.1:9/"])
    assert_one_line(e, "download failed", TEST_FILES[0])
    assert os.listdir(tmp_path / "dl") == []


# ----------------------------------------------------------------------------------------
# npz / npy / image folders
# ----------------------------------------------------------------------------------------
def test_npz_with_x_and_y_split_90_10(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(30, 5, 6), dtype=np.uint8)
    y = np.arange(30) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    train, test = (data.load_dataset(str(tmp_path / "d.npz"), s) for s in ("train", "test"))
    assert (len(train), len(test)) == (27, 3) and train.shape == (1, 5, 6)
    # together they are the file's rows, labels travelling with their images
    got = sorted((bytes(r), int(l)) for ds in (train, test) for r, l in zip(data.to_uint8(ds.x[:, 0]).numpy(), ds.y))
    assert got == sorted((bytes(r), int(l)) for r, l in zip(x, y))
    again = data.load_dataset(str(tmp_path / "d.npz"), "test")
    assert torch.equal(again.x, test.x)


def test_npz_per_split_arrays_and_first_array(tmp_path):
    np.savez(
        tmp_path / "k.npz",
        x_train=np.ones((4, 2, 2), np.float32),
        y_train=np.arange(4),
        x_test=np.zeros((2, 2, 2), np.float32),
        y_test=np.array([7, 8]),
    )
    test = data.load_dataset(str(tmp_path / "k.npz"), "test")
    assert len(test) == 2 and test.y.tolist() == [7, 8] and test.x.sum() == 0
    np.savez(tmp_path / "f.npz", images=np.full((10, 3, 3), 0.25, np.float32))
    ds = data.load_dataset(str(tmp_path / "f.npz"), "train")
    assert len(ds) == 9 and ds.y is None and torch.all(ds.x == 0.25)


def test_npz_with_per_split_arrays_but_none_for_the_split_is_refused_not_split(tmp_path):
    # a 90 / 10 split of x_train would put training rows in the test set
    np.savez(tmp_path / "v.npz", x_train=np.ones((40, 2, 2), np.float32), x_valid=np.zeros((5, 2, 2), np.float32))
    assert len(data.load_dataset(str(tmp_path / "v.npz"), "train")) == 40  # its own split is read whole
    with pytest.raises(DataError, match=r"has per-split arrays \(x_train, x_valid\) but none named 'test' or 'x_test'"):
        data.load_dataset(str(tmp_path / "v.npz"), "test")


def test_npz_per_split_arrays_are_read_in_the_same_units(tmp_path):
    # integer features; the train split exceeds 255, the test split does not: both must stay a table
    g = np.random.default_rng(0)
    tr, te = g.integers(0, 301, size=(30, 64)), g.integers(0, 201, size=(6, 64))
    tr[0, 0] = 300
    np.savez(tmp_path / "t.npz", x_train=tr, x_test=te)
    train, test = (data.load_dataset(str(tmp_path / "t.npz"), s, vectors=True) for s in ("train", "test"))
    assert train.shape == test.shape == (1, 1, 64) and train.levels == test.levels
    assert torch.equal(test.x[:, 0, 0], torch.from_numpy(te).float())  # its own units, not divided by 255
    np.savez(tmp_path / "s.npz", x_train=np.ones((4, 3, 3), np.float32), x_test=np.ones((2, 4, 4), np.float32))
    with pytest.raises(DataError, match="differ in the shape of one example"):
        data.load_dataset(str(tmp_path / "s.npz"), "test")


@pytest.mark.parametrize(
    "shape,expect",
    [
        ((10, 784), (1, 28, 28)),  # [N, D], D square
        ((10, 12), (1, 1, 12)),  # [N, D], D not square
        ((10, 5, 7), (1, 5, 7)),  # [N, H, W]
        ((10, 3, 5, 7), (3, 5, 7)),  # [N, C, H, W]
        ((10, 5, 7, 3), (3, 5, 7)),  # [N, H, W, C]
    ],
)
def test_npy_shapes(tmp_path, shape, expect):
    arr = np.random.default_rng(0).random(shape, dtype=np.float32)
    np.save(tmp_path / "a.npy", arr)
    ds = data.load_dataset(str(tmp_path / "a.npy"), "train")
    assert ds.shape == expect and len(ds) == 9


def test_npy_channels_last_keeps_pixels(tmp_path):
    arr = np.random.default_rng(1).integers(0, 256, size=(10, 5, 7, 3), dtype=np.uint8)
    np.save(tmp_path / "c.npy", arr)
    got = sorted(
        r.tobytes() for s in ("train", "test") for r in data.to_uint8(data.load_path(tmp_path / "c.npy", s).x).numpy()
    )
    assert got == sorted(np.ascontiguousarray(a.transpose(2, 0, 1)).tobytes() for a in arr)


def test_an_rgba_or_two_channel_array_stored_channels_last_is_read_as_its_channels():
    for c in (2, 4):
        arr = np.random.default_rng(c).integers(0, 256, size=(6, 28, 28, c), dtype=np.uint8)
        x = data.images_from_array(arr, "a.npy")
        assert x.shape == (6, c, 28, 28)  # not 28 channels of 28 x c images
        assert torch.equal(data.to_uint8(x), torch.from_numpy(arr.transpose(0, 3, 1, 2).copy()))
    assert data.images_from_array(np.zeros((6, 2, 28, 28), np.uint8), "b.npy").shape == (6, 2, 28, 28)
    assert data.images_from_array(np.zeros((6, 16, 4, 4), np.uint8), "c.npy").shape == (6, 16, 4, 4)  # 16 channels


def test_integer_zero_one_data_is_binary(tmp_path):
    np.save(tmp_path / "b.npy", np.array([[0, 1, 1, 0]] * 10, np.uint8))
    ds = data.load_dataset(str(tmp_path / "b.npy"), "train")
    assert set(ds.x.unique().tolist()) == {0.0, 1.0}


def test_png_folder_grey_and_rgb(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(10, 6, 5), dtype=np.uint8)
    for i, a in enumerate(grey):
        Image.fromarray(a, "L").save(tmp_path / f"g{i:02d}.png")
    (tmp_path / ".hidden").write_text("ignored")
    train, test = data.load_dataset(str(tmp_path), "train"), data.load_dataset(str(tmp_path), "test")
    assert train.shape == (1, 6, 5) and (len(train), len(test)) == (9, 1)
    got = sorted(bytes(r) for ds in (train, test) for r in data.to_uint8(ds.x).numpy())
    assert got == sorted(bytes(a[None]) for a in grey)

    rgb_dir = tmp_path / "rgb"
    rgb_dir.mkdir()
    rgb = rng.integers(0, 256, size=(3, 4, 4, 3), dtype=np.uint8)
    for i, a in enumerate(rgb):
        Image.fromarray(a, "RGB").save(rgb_dir / f"c{i}.png")
    Image.fromarray(grey[0][:4, :4], "L").save(rgb_dir / "d.png")  # mixed: all loaded as RGB
    ds = data.load_dataset(str(rgb_dir), "train")
    assert ds.shape == (3, 4, 4) and len(ds) == 3


def test_image_modes_without_a_fixed_range_are_refused_and_grey_palettes_stay_grey(tmp_path):
    for name, im, fragment in (
        ("f", Image.fromarray(np.full((4, 4), 0.7, np.float32), "F"), "a 32-bit float image has no fixed value range"),
        ("i", Image.fromarray(np.full((4, 4), 70000, np.int32), "I"), "32-bit integer pixels from 70000 to 70000"),
    ):
        folder = tmp_path / name
        folder.mkdir()
        for j in range(3):
            im.save(folder / f"{j}.tif")
        with pytest.raises(DataError, match=fragment):
            data.load_dataset(str(folder), "train")
    pal = tmp_path / "p"
    pal.mkdir()
    g = np.random.default_rng(0).integers(0, 256, size=(3, 4, 4), dtype=np.uint8)
    for j, a in enumerate(g):
        Image.fromarray(a, "L").convert("P").save(pal / f"{j}.png")  # a palette of greys
    ds = data.load_dataset(str(pal), "train")
    assert ds.shape == (1, 4, 4)  # one grey channel, not three equal ones


def _class_folder(root, counts, size=(5, 4), seed=0):
    """root/CLASS/*.png with counts[CLASS] grey images each, every image's first pixel encoding
    (class index, image index) so a test can check each label; returns root."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(sorted(counts)):
        (root / name).mkdir(parents=True)
        for i in range(counts[name]):
            a = rng.integers(0, 256, size=size[::-1], dtype=np.uint8)
            a[0, 0] = 100 * c + i
            Image.fromarray(a, "L").save(root / name / f"{i:03d}.png")
    return root


def test_image_folder_with_class_subfolders_gives_labels(tmp_path):
    counts = {"dog": 10, "cat": 20, "zebra": 5}  # sorted: cat 0, dog 1, zebra 2
    root = _class_folder(tmp_path / "animals", counts)
    (root / ".thumbs").mkdir()  # hidden: not a class
    train, test = data.load_dataset(str(root), "train"), data.load_dataset(str(root), "test")
    assert train.classes == test.classes == ("cat", "dog", "zebra")
    assert train.shape == (1, 4, 5) and (len(train), len(test)) == (32, 3)
    for ds in (train, test):  # every image carries the label of its folder
        first = data.to_uint8(ds.x)[:, 0, 0, 0].long()
        assert torch.equal(ds.y, first // 100)
    both = torch.cat([train.y, test.y])
    assert torch.bincount(both).tolist() == [20, 10, 5]
    assert torch.bincount(test.y, minlength=3).tolist() == [2, 1, 0]  # stratified: round(10% of each class)
    sub = train.subset(torch.arange(3))
    assert sub.classes == train.classes and torch.equal(sub.y, train.y[:3])
    prepared = data.prepare_data(DataConfig(name=str(root), binarize="dynamic"))
    assert all(ds.classes == ("cat", "dog", "zebra") for ds in prepared)


def test_flat_image_folder_stays_unlabelled_and_tiny_classes_still_split(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(4):
        Image.fromarray(np.full((3, 3), i, np.uint8)).save(flat / f"{i}.png")
    (flat / "extra").mkdir()  # a subfolder beside image files is skipped, as before
    ds = data.load_dataset(str(flat), "train")
    assert ds.y is None and ds.classes is None and len(ds) == 3
    tiny = _class_folder(tmp_path / "tiny", {"a": 2, "b": 2})  # round(10% of 2) = 0 per class
    train, test = data.load_dataset(str(tiny), "train"), data.load_dataset(str(tiny), "test")
    assert (len(train), len(test)) == (3, 1) and train.classes == ("a", "b")


def test_class_folder_problems_are_one_line(tmp_path):
    root = _class_folder(tmp_path / "c", {"a": 3})
    (root / "empty").mkdir()
    with pytest.raises(DataError) as e:
        data.load_dataset(str(root), "train")
    assert_one_line(e, str(root / "empty"), "class folder holds no images")
    sizes = _class_folder(tmp_path / "s", {"a": 2})
    _class_folder(tmp_path / "s2", {"b": 2}, size=(6, 6))
    (tmp_path / "s2" / "b").rename(sizes / "b")
    with pytest.raises(DataError) as e:
        data.load_dataset(str(sizes), "train")
    assert_one_line(e, "image size 6x6 differs from 5x4")


# ----------------------------------------------------------------------------------------
# bad data: one DataError line naming the file and the problem
# ----------------------------------------------------------------------------------------
BAD_ARRAYS = {
    "nan": (np.array([[0.5, np.nan]] * 4, np.float32), "NaN or infinite"),
    "inf": (np.array([[0.5, np.inf]] * 4, np.float64), "NaN or infinite"),
    "float_range": (np.array([[0.5, 1.5]] * 4, np.float32), "must be in [0, 1]"),
    "negative": (np.array([[-0.1, 0.5]] * 4, np.float32), "must be in [0, 1]"),
    "int_range": (np.array([[0, 300]] * 4, np.int32), "must be in 0..255"),
    "one_d": (np.zeros(5, np.uint8), "got shape (5,)"),
    "five_d": (np.zeros((2, 1, 1, 2, 2), np.uint8), "got shape (2, 1, 1, 2, 2)"),
    "empty": (np.zeros((0, 4, 4), np.uint8), "empty dataset"),
    "strings": (np.array([["a", "b"]] * 3), "unsupported pixel dtype"),
}


@pytest.mark.parametrize("case", list(BAD_ARRAYS))
def test_bad_arrays(tmp_path, case):
    arr, problem = BAD_ARRAYS[case]
    np.save(tmp_path / f"{case}.npy", arr)
    with pytest.raises(DataError) as e:
        data.load_dataset(str(tmp_path / f"{case}.npy"), "train")
    assert_one_line(e, f"{case}.npy", problem)


def test_bad_files_and_folders(tmp_path):
    cases = []
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 broken zip")
    cases.append((tmp_path / "corrupt.npz", "cannot read the .npz archive"))
    np.savez(tmp_path / "labels.npz", x=np.zeros((4, 2, 2), np.uint8), y=np.arange(3))
    cases.append((tmp_path / "labels.npz", "4 images but labels of shape (3,)"))
    np.savez(tmp_path / "nothing.npz")
    cases.append((tmp_path / "nothing.npz", "empty .npz archive"))
    (tmp_path / "text.npy").write_text("hello")
    cases.append((tmp_path / "text.npy", "cannot read the .npy file"))
    (tmp_path / "data.txt").write_text("1,2")
    cases.append((tmp_path / "data.txt", "unsupported file type '.txt'"))
    cases.append((tmp_path / "missing.npz", "file or folder not found"))
    (tmp_path / "emptydir").mkdir()
    cases.append((tmp_path / "emptydir", "empty folder"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(mixed / "a.png")
    (mixed / "notes.txt").write_text("not an image")
    cases.append((mixed / "notes.txt", "not a readable image"))
    sizes = tmp_path / "sizes"
    sizes.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(sizes / "a.png")
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(sizes / "b.png")
    cases.append((sizes / "b.png", "image size 4x5 differs from 4x4 of a.png"))
    single = tmp_path / "single"
    single.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(single / "a.png")
    cases.append((single, "need at least 2"))
    for path, problem in cases:
        target = path.parent if path.name in ("notes.txt", "b.png") else path
        with pytest.raises(DataError) as e:
            data.load_dataset(str(target), "train")
        assert_one_line(e, str(path), problem)


def test_missing_named_dataset_files(tmp_path):
    for name, file in (("binarized-mnist", "binarized_mnist_uint8.npz"), ("frey", "frey_faces_uint8.npz")):
        with pytest.raises(DataError) as e:
            data.load_dataset(name, "train", data_dir=tmp_path)
        assert_one_line(e, file, "not found", str(tmp_path))


def test_binarized_mnist_amat_and_bad_values(tmp_path):
    rows = np.random.default_rng(0).integers(0, 2, size=(3, 784))
    np.savetxt(tmp_path / "binarized_mnist_valid.amat", rows, fmt="%d")
    ds = data.load_dataset("binarized-mnist", "valid", data_dir=tmp_path)
    assert ds.shape == (1, 28, 28) and torch.equal(ds.x.flatten(1), torch.from_numpy(rows).float())
    np.savetxt(tmp_path / "binarized_mnist_test.amat", rows * 0.5)
    with pytest.raises(DataError) as e:
        data.load_dataset("binarized-mnist", "test", data_dir=tmp_path)
    assert_one_line(e, "binarized_mnist_test.amat", "values must be 0 or 1")


# ----------------------------------------------------------------------------------------
# binarisation and 8-bit helpers
# ----------------------------------------------------------------------------------------
def test_dynamic_binarization_is_unbiased_and_fresh():
    p = torch.tensor([0.0, 0.05, 0.3, 0.5, 0.9, 1.0])
    n = 20000
    g = torch.Generator().manual_seed(1)
    b = data.binarize_dynamic(p.expand(n, -1).contiguous(), g)
    assert set(b.unique().tolist()) <= {0.0, 1.0} and b.dtype == torch.float32
    se = torch.sqrt(p * (1 - p) / n)
    assert torch.all((b.mean(0) - p).abs() <= 4 * se + 1e-12)  # E[b] = x, within 4 standard errors
    x = torch.full((4, 1, 8, 8), 0.5)
    first, second = data.binarize_dynamic(x, g), data.binarize_dynamic(x, g)
    assert not torch.equal(first, second)  # a fresh draw every call
    same = [data.binarize_dynamic(x, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(*same)  # but reproducible from the same generator state


def test_static_binarization_reproducible_and_seeded():
    x = torch.rand(50, 1, 6, 6)
    a, b, c = data.binarize_static(x, 3), data.binarize_static(x, 3), data.binarize_static(x, 4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    binary = (x > 0.5).float()
    assert torch.equal(data.binarize_static(binary, 3), binary)  # binary data is left unchanged
    big = torch.full((40000,), 0.3)
    assert abs(data.binarize_static(big, 0).mean().item() - 0.3) < 4 * math.sqrt(0.21 / 40000)


def test_uint8_round_trip_and_dequantization():
    k = torch.arange(256, dtype=torch.uint8)
    x = data.from_uint8(k)
    assert torch.equal(data.to_uint8(x), k)
    assert torch.equal(data.to_uint8(torch.tensor([-0.2, 1.3])), torch.tensor([0, 255], dtype=torch.uint8))
    y = data.dequantize(x.expand(100, -1), torch.Generator().manual_seed(0))
    assert y.min() >= 0 and y.max() < 1
    assert torch.equal(torch.floor(y * 256).to(torch.uint8), k.expand(100, -1))  # (k + u)/256, u in [0,1)


# ----------------------------------------------------------------------------------------
# DataConfig preparation
# ----------------------------------------------------------------------------------------
def test_prepare_data_binarization_modes():
    grey_test = data.load_dataset("digits", "test").x
    grey_train = data.load_dataset("digits", "train").x
    train, test = data.prepare_data(DataConfig(name="digits", binarize="static", binarize_seed=5))
    assert torch.equal(test.x, data.binarize_static(grey_test, 5))
    assert torch.equal(train.x, data.binarize_static(grey_train, 6))
    assert train.binarize == test.binarize == "static"

    train, test = data.prepare_data(DataConfig(name="digits", binarize="dynamic", binarize_seed=5))
    assert torch.equal(train.x, grey_train) and train.binarize == "dynamic"
    assert torch.equal(test.x, data.binarize_static(grey_test, 5))  # same test data as "static"
    g = torch.Generator().manual_seed(0)
    b1, b2 = data.binarize_dynamic(train.x[:64], g), data.binarize_dynamic(train.x[:64], g)  # as the training loop
    assert set(b1.unique().tolist()) <= {0.0, 1.0} and not torch.equal(b1, b2)

    train, test = data.prepare_data(DataConfig(name="digits", binarize="none"))
    assert torch.equal(train.x, grey_train) and torch.equal(test.x, grey_test)
    assert torch.equal(train.x[:5], grey_train[:5]) and train.binarize == test.binarize == "none"


def test_binarisation_follows_the_likelihood():
    """Only a model of binary data is binarised; a default binarisation meets a grey-level or
    continuous model as "none", an explicit one is refused in one line."""
    for mode in data.BINARIZE_MODES:
        assert data.resolve_binarize(mode, binary_model=True, explicit=True) == mode
        assert data.resolve_binarize(mode, binary_model=True, explicit=False) == mode
        assert data.resolve_binarize("none", binary_model=False, explicit=True) == "none"
    for mode in ("dynamic", "static"):
        assert data.resolve_binarize(mode, binary_model=False, explicit=False) == "none"
        with pytest.raises(ConfigError) as e:
            data.resolve_binarize(mode, binary_model=False, explicit=True)
        assert_one_line(e, f"data.binarize={mode}", "grey levels or continuous", "data.binarize=none")
    with pytest.raises(ConfigError, match="did you mean 'dynamic'"):
        data.resolve_binarize("dynamc", binary_model=True, explicit=True)


def test_datasets_declare_their_levels(tmp_path):
    """Dataset.levels: what the source declares (dtype, or the registered dataset), 2 after binarisation."""
    assert data.load_dataset("digits", "test").levels == 17
    assert data.load_dataset("mnist5k", "test").levels == 256
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "f.npz", x=rng.random((20, 5)).astype(np.float32))
    np.savez(tmp_path / "u.npz", x=rng.integers(0, 256, (20, 4, 4)).astype(np.uint8))
    np.savez(tmp_path / "b.npz", x=rng.integers(0, 2, (20, 4, 4)).astype(np.uint8))
    np.save(tmp_path / "f.npy", rng.random((20, 5)))
    expected = {"f.npz": None, "u.npz": 256, "b.npz": 2, "f.npy": None}
    for name, levels in expected.items():
        for split in ("train", "test"):
            ds = data.load_dataset(str(tmp_path / name), split)
            assert ds.levels == levels and ds.subset(torch.tensor([0])).levels == levels
            assert ds.to("cpu").levels == levels
    for mode, levels in (("none", None), ("static", 2), ("dynamic", 2)):
        train, test = data.prepare_data(DataConfig(name=str(tmp_path / "f.npz"), binarize=mode))
        assert train.levels == test.levels == levels
    assert data.array_levels(np.zeros(3, dtype=bool)) == 2


def test_dataset_checks_and_to():
    ds = data.Dataset(torch.zeros(3, 1, 2, 2), torch.arange(3), "toy")
    assert ds.to("cpu").x.shape == (3, 1, 2, 2) and len(ds.subset(torch.tensor([0, 2]))) == 2
    with pytest.raises(DataError):
        data.Dataset(torch.zeros(3, 4), None, "flat")
    with pytest.raises(DataError):
        data.Dataset(torch.zeros(3, 1, 2, 2), torch.arange(4), "labels")


def test_prepare_data_rejects_an_unknown_binarization_before_loading():
    with pytest.raises(ConfigError) as e:
        data.prepare_data(DataConfig(name="no-such-file.npz", binarize="dynamc"))
    assert_one_line(e, "data.binarize 'dynamc'", "did you mean 'dynamic'", "dynamic, static, none")


def test_unknown_dataset_lists_the_registry_and_paths():
    with pytest.raises(DataError) as e:
        data.load_dataset("Fashion-MNST", "train")
    assert_one_line(e, "unknown dataset", "did you mean 'fashion-mnist'", ", ".join(data.DATASETS), "or a path")
    assert all(name in data.DATASETS for name in data.ALIASES.values())  # every alias names a registered dataset


def test_download_helpers_are_re_exported():
    from vaekit import download

    assert data.file_checksum is download.file_checksum and data.fetch_checked is download.fetch_checked
    assert data.DOWNLOAD_TIMEOUT_S == download.DOWNLOAD_TIMEOUT_S


# ----------------------------------------------------------------------------------------
# vector (tabular) data: CSV, tables in .npy / .npz, the registered tables, standardisation
# ----------------------------------------------------------------------------------------
IRIS_LIKE = "sepal length,sepal width,Species\n" + "".join(
    f"{5 + 0.1 * i},{3 - 0.05 * i},{['setosa', 'versicolor', 'virginica'][i % 3]}\n" for i in range(30)
)


def test_a_csv_with_a_header_and_a_label_column_loads_as_vectors_with_labels(tmp_path):
    (tmp_path / "t.csv").write_text(IRIS_LIKE)
    feats, names, labels = data.read_csv_table(tmp_path / "t.csv", label_column="Species")
    assert feats.shape == (30, 2) and names == ("sepal length", "sepal width")
    assert feats[3].tolist() == [5.3, 2.85] and labels.tolist() == [0, 1, 2] * 10  # sorted class names -> 0, 1, 2
    train = data.load_dataset(str(tmp_path / "t.csv"), "train", label_column="Species")
    test = data.load_dataset(str(tmp_path / "t.csv"), "test", label_column="Species")
    assert (len(train), len(test)) == (27, 3) and train.shape == (1, 1, 2) and data.is_vector_shape(train.shape)
    assert train.columns == names and train.levels is None and train.y.dtype == torch.int64
    rows = {tuple(r) for ds in (train, test) for r in torch.cat([ds.x[:, 0, 0].double(), ds.y[:, None]], 1).tolist()}
    want = {(f[0], f[1], float(y)) for f, y in zip(feats.astype(np.float32).astype(np.float64).tolist(), labels)}
    assert rows == want  # every row once, its label with it, values in their own units
    (tmp_path / "d.csv").write_text("a,b,target\n1,2,7\n3,4,9\n5,6,7\n")
    feats, names, labels = data.read_csv_table(tmp_path / "d.csv")  # "target" found by its name; integers kept
    assert names == ("a", "b") and labels.tolist() == [7, 9, 7] and feats.tolist() == [[1, 2], [3, 4], [5, 6]]


CSV_PROBLEMS = {
    "text_feature": ("x,colour,label\n1,red,0\n2,blue,1\n", "column 'colour' is not numeric (line 2: 'red')"),
    "missing_value": ("x,y\n1,2\n3,\n", "column 'y' is not numeric (line 3: a missing value)"),
    "nan": ("x,y\n1,2\n3,nan\n", "NaN or infinite"),
    "no_header": ("1,2\n3,4\n", "must be a header"),
    "ragged": ("x,y\n1,2\n3\n", "line 3 has 1 fields; the header has 2"),
    "only_header": ("x,y\n", "a header but no rows"),
    "empty": ("", "empty CSV file"),
    "duplicate_names": ("x,x\n1,2\n", "distinct, non-empty column names"),
    "only_labels": ("label\n1\n2\n", "no feature columns"),
}


@pytest.mark.parametrize("case", list(CSV_PROBLEMS))
def test_bad_csv_files_are_one_line_errors_naming_the_problem(tmp_path, case):
    text, problem = CSV_PROBLEMS[case]
    (tmp_path / f"{case}.csv").write_text(text)
    with pytest.raises(DataError) as e:
        data.load_dataset(str(tmp_path / f"{case}.csv"), "train")
    assert_one_line(e, f"{case}.csv", problem)


def test_a_feature_float32_cannot_hold_is_refused_and_labels_is_a_label_column(tmp_path):
    rows = ["time,reading,labels"] + [f"{1_600_000_000 + i},{0.1 * i},{i % 2}" for i in range(20)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match="feature 0 cannot be held in float32 without losing its variation"):
        data.load_dataset(str(tmp_path / "t.csv"), "train")
    rows = ["time,reading,constant,labels"] + [f"{i},{0.1 * i},0.1,{i % 2}" for i in range(20)]
    (tmp_path / "u.csv").write_text("\n".join(rows) + "\n")
    ds = data.load_dataset(str(tmp_path / "u.csv"), "train")
    assert list(ds.columns) == ["time", "reading", "constant"] and ds.y is not None and set(ds.y.tolist()) == {0, 1}


def test_csv_label_column_must_exist_and_belongs_to_csv_files(tmp_path):
    (tmp_path / "t.csv").write_text(IRIS_LIKE)
    with pytest.raises(DataError) as e:
        data.load_dataset(str(tmp_path / "t.csv"), "train", label_column="kind")
    assert_one_line(e, "no column 'kind'", "columns: sepal length, sepal width, Species")
    np.save(tmp_path / "a.npy", np.zeros((4, 3)))
    for name in (str(tmp_path / "a.npy"), "wine"):
        with pytest.raises(DataError) as e:
            data.load_dataset(name, "train", label_column="Species")
        assert_one_line(e, "data.label_column names a column of a .csv file")


def test_tables_in_npy_and_npz_are_vectors_in_their_own_units_when_nothing_binarises(tmp_path):
    rng = np.random.default_rng(0)
    table = rng.normal(50.0, 20.0, size=(40, 4))  # 4 = 2 x 2, but a table: not an image
    np.save(tmp_path / "t.npy", table)
    np.save(tmp_path / "t.labels.npy", np.arange(40) % 3)  # the labels file beside it, as `vaekit encode` writes
    ds = data.load_dataset(str(tmp_path / "t.npy"), "train", vectors=True)
    assert ds.shape == (1, 1, 4) and ds.levels is None and len(ds) == 36
    rows = {
        tuple(r) for s in ("train", "test") for r in data.load_path(tmp_path / "t.npy", s, True).x[:, 0, 0].tolist()
    }
    assert rows == {tuple(r) for r in table.astype(np.float32).tolist()}
    assert set(ds.y.tolist()) == {0, 1, 2}
    np.savez(tmp_path / "t.npz", x=table, labels=np.arange(40) % 2)
    ds = data.load_dataset(str(tmp_path / "t.npz"), "test", vectors=True)
    assert ds.shape == (1, 1, 4) and set(ds.y.tolist()) <= {0, 1}
    with pytest.raises(DataError) as e:  # read as images (the default) the same table is refused, with a hint
        data.load_dataset(str(tmp_path / "t.npy"), "train")
    assert_one_line(e, "must be in [0, 1]", "likelihood=gaussian")
    flat = rng.random((20, 64)).astype(np.float32)  # flattened 8x8 images stay images
    np.save(tmp_path / "img.npy", flat)
    assert data.load_dataset(str(tmp_path / "img.npy"), "train", vectors=True).shape == (1, 8, 8)
    for cfg_binarize, shape in (("none", (1, 1, 4)), ("dynamic", (1, 2, 2))):  # prepare_data: nothing binarises
        np.save(tmp_path / "u.npy", rng.random((20, 4)).astype(np.float32))
        train, _ = data.prepare_data(DataConfig(name=str(tmp_path / "u.npy"), binarize=cfg_binarize))
        assert train.shape == shape


@pytest.mark.parametrize("name,n,d,classes", [("wine", 178, 13, 3), ("breast-cancer", 569, 30, 2)])
def test_the_registered_tables_are_stratified_vectors_with_feature_names(name, n, d, classes):
    train, test = data.load_dataset(name, "train"), data.load_dataset(name, "test")
    assert len(train) + len(test) == n and train.shape == test.shape == (1, 1, d) and len(train.columns) == d
    assert train.levels is None and data.is_vector_source(name) and data.is_vector_source("x/y.CSV")
    assert not data.is_vector_source("mnist5k") and not data.is_vector_source("feats.npy")
    for c in range(classes):  # 20% of every class held out
        total = int((train.y == c).sum() + (test.y == c).sum())
        assert int((test.y == c).sum()) == round(0.2 * total)


def test_standardisation_round_trip_with_statistics_from_the_training_split_only(tmp_path):
    rng = np.random.default_rng(1)
    table = np.concatenate([rng.normal([100.0, -3.0, 0.5], [30.0, 0.1, 2.0], size=(60, 3)), np.ones((60, 1))], 1)
    header = "a,b,c,const\n" + "".join(",".join(f"{v:.6f}" for v in row) + "\n" for row in table)
    (tmp_path / "t.csv").write_text(header)
    cfg = DataConfig(name=str(tmp_path / "t.csv"), binarize="none")
    raw_train, raw_test = data.prepare_data(cfg)
    t = data.resolve_standardize(cfg, raw_train, binary_model=False)
    assert cfg.standardize is True and len(cfg.feature_mean) == 4
    flat = raw_train.x[:, 0, 0].double()
    assert np.allclose(cfg.feature_mean, flat.mean(0).numpy(), rtol=0, atol=1e-9)  # the training split's
    assert np.allclose(cfg.feature_std[:3], flat.std(0, correction=0)[:3].numpy(), rtol=1e-12)
    assert cfg.feature_std[3] == 1.0  # a constant feature is only centred
    train, test = data.prepare_data(cfg)  # what every later command reads: standardised as recorded
    z = train.x[:, 0, 0].double()
    assert torch.allclose(z.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(z[:, :3].std(0, correction=0), torch.ones(3, dtype=torch.float64), atol=1e-5)
    assert train.levels is None and test.x.shape == raw_test.x.shape
    assert not torch.allclose(test.x[:, 0, 0].double().mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-3)
    for raw, std in ((raw_train, train), (raw_test, test)):  # invert(apply(x)) = x, in float32
        assert torch.allclose(t.invert(std.x), raw.x, rtol=1e-6, atol=1e-4)
        assert torch.allclose(t.apply(raw.x), std.x)
    paths = std.x[:2, None].expand(2, 5, 1, 1, 4)  # any leading dims: [R, S, *example shape]
    assert torch.allclose(t.invert(paths)[:, 3], raw.x[:2], rtol=1e-6, atol=1e-4)
    assert t.log_scale == pytest.approx(float(np.log(cfg.feature_std).sum()))
    again = data.standardization_of(cfg)
    assert torch.equal(again.mean, t.mean) and torch.equal(again.std, t.std)  # what a config records is exact
    with pytest.raises(DataError) as e:
        t.apply(torch.zeros(3, 1, 1, 5))
    assert_one_line(e, "standardisation is for 4 features", "(1, 1, 5)")


def test_standardize_auto_is_on_for_continuous_vectors_only():
    vec = data.Dataset(torch.randn(20, 1, 1, 3) * 5, None, "vec", levels=None)
    binary = data.Dataset(torch.randint(0, 2, (20, 1, 1, 3)).float(), None, "bin", levels=2)
    img = data.Dataset(torch.rand(20, 1, 4, 4), None, "img", levels=None)
    for ds, binary_model, want in ((vec, False, True), (vec, True, False), (binary, False, False), (img, False, False)):
        cfg = DataConfig(standardize="auto")
        t = data.resolve_standardize(cfg, ds, binary_model)
        assert cfg.standardize is want and t.identity is not want and (cfg.feature_mean is None) is not want
    cfg = DataConfig(standardize=True)  # asked for: any data, here images (per pixel)
    assert not data.resolve_standardize(cfg, img, False).identity and cfg.standardize is True
    cfg = DataConfig(standardize=False)
    assert data.resolve_standardize(cfg, vec, False).identity and cfg.feature_std is None
    with pytest.raises(ConfigError) as e:
        data.resolve_standardize(DataConfig(standardize=True), vec, binary_model=True)
    assert_one_line(e, "data.standardize=true", "binary data")
    ident = data.standardization_of(DataConfig())  # configs without statistics (older runs): the identity
    x = torch.randn(3, 1, 1, 3)
    assert ident.identity and ident.invert(x) is x and ident.apply(x) is x and ident.log_scale == 0.0


def test_features_and_labels_files(tmp_path):
    np.save(tmp_path / "f.npy", np.arange(12, dtype=np.float32).reshape(6, 2))
    np.save(tmp_path / "l.npy", np.arange(6))
    assert data.load_features(tmp_path / "f.npy").shape == (6, 2)
    assert data.load_labels(tmp_path / "l.npy", 6).tolist() == list(range(6))
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 4)))
    for call, needle in (
        (lambda: data.load_features(tmp_path / "bad.npy"), "must be [N, D]"),
        (lambda: data.load_features(tmp_path / "f.csv"), "must be an .npy array"),
        (lambda: data.load_features(tmp_path / "no.npy"), "file not found"),
        (lambda: data.load_labels(tmp_path / "l.npy", 5), "5 images but labels of shape (6,)"),
    ):
        with pytest.raises(DataError) as e:
            call()
        assert_one_line(e, needle)
