"""Sample quality: a Fréchet distance in the feature space of a small classifier of the dataset.

The Fréchet Inception Distance (Heusel et al. 2017) compares two sets of images by the Gaussians
fitted to their features: with means mu_1, mu_2 and covariances S_1, S_2,

    d^2 = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}),

the squared 2-Wasserstein (Fréchet) distance between the two Gaussians (Dowson & Landau 1982).
Inception features mean little on 28x28 digits, so, as is usual for MNIST-like data, the features
here are those of a small LeNet-5-style classifier (LeCun et al. 1998) that vaekit trains on the
dataset's own training labels: two 5x5 convolutions (6 and 16 channels, each followed by ReLU and
2x2 max pooling; on 28x28 images 28 -> 14 -> 10 -> 5, LeNet-5's own sizes) and two hidden layers
(120, 84). The features are the 84 pre-activations of the
penultimate layer. Numbers are comparable only between runs that use the same classifier (same
dataset, seed and ``CLASSIFIER_VERSION``), and not with Inception FIDs.

The classifier is trained once per (dataset, seed, version) and cached in
``$VAEKIT_CACHE/fid`` (default ``~/.cache/vaekit/fid``, the download cache's folder), written
atomically; its test accuracy is stored beside its weights and reported with every distance.

Numerical handling of the matrix square root (:func:`frechet_distance`): ``scipy.linalg.sqrtm``
of S_1 S_2, whose eigenvalues are real and non-negative in exact arithmetic (the product of two
positive semi-definite matrices is similar to S_1^{1/2} S_2 S_1^{1/2}); rounding can give it a
small imaginary part, which is dropped (the real part is used). When the square root is not
finite (a near-singular product), both covariances get eps * I added first (``SQRTM_EPS``), as
in Heusel et al.'s reference code. An imaginary part that is not small against the trace means
the estimate is unreliable and raises an error rather than return a number.

References:
    Heusel, Ramsauer, Unterthiner, Nessler & Hochreiter, "GANs trained by a two time-scale update
        rule converge to a local Nash equilibrium", NeurIPS 2017.
    Dowson & Landau, "The Fréchet distance between multivariate normal distributions", J.
        Multivariate Analysis 1982.
    LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to document recognition",
        Proc. IEEE 1998.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoint import atomic_write
from .data import ALIASES, DATASETS, default_cache_dir, load_dataset
from .errors import DataError, VaekitError, one_line
from .seeding import FID_CLASSIFIER, FID_SAMPLES, derive_seed

CLASSIFIER_VERSION = 1  # part of the cache key: bump when the net or its training changes
CLASSIFIER_EPOCHS = 1  # passes over the training set...
CLASSIFIER_MIN_STEPS = 500  # ...or more, so that small datasets get enough Adam steps
CLASSIFIER_BATCH = 128
CLASSIFIER_LR = 1e-3
FEATURES = 84  # width of the penultimate layer: the feature space of the distance
MIN_SIDE = 4  # two 2x2 poolings need images of at least 4x4
UNPADDED_SIDE = 16  # the second convolution is unpadded (LeNet-5) on images at least this large
SQRTM_EPS = 1e-6  # the diagonal offset of the retried square root
IMAG_TOLERANCE = 1e-3  # largest |imaginary part| of Tr sqrt(S_1 S_2) accepted, relative to max(1, |trace|)
CHUNK = 1000  # examples per forward pass; samples are drawn in chunks of this size


# --- the Fréchet distance ------------------------------------------------------------------------


def feature_statistics(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [F] and covariance [F, F] (unbiased, float64) of ``features`` [N, F]."""
    f = np.asarray(features.cpu() if isinstance(features, Tensor) else features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise VaekitError(f"feature statistics need at least 2 examples of [N, F] features; got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}) between N(mu1, S1) and N(mu2, S2).

    Args:
        mu1, mu2: means [F]; sigma1, sigma2: covariances [F, F] (positive semi-definite).

    The square root is ``scipy.linalg.sqrtm`` of S1 S2; its real part is used, with eps * I added
    to both covariances when it is not finite (module docstring). Rounding can leave the result a
    little below 0 for (nearly) equal inputs.
    """
    from scipy.linalg import sqrtm

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise VaekitError(f"mismatched statistics: means {mu1.shape}, {mu2.shape}; covariances {s1.shape}, {s2.shape}")
    covmean = sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * SQRTM_EPS
        covmean = sqrtm((s1 + offset) @ (s2 + offset))
    tr_covmean = np.trace(covmean)
    if np.iscomplexobj(covmean):
        if abs(tr_covmean.imag) > IMAG_TOLERANCE * max(1.0, abs(tr_covmean.real)):
            raise VaekitError(
                f"the Fréchet distance is numerically unreliable: Tr sqrt(S1 S2) has imaginary part "
                f"{tr_covmean.imag:.3g}; use more examples than features ({s1.shape[0]})"
            )
        tr_covmean = tr_covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fid_of_features(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """The Fréchet distance between the Gaussians fitted to two sets of features [N_a, F], [N_b, F]."""
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


# --- the classifier ------------------------------------------------------------------------------


class LeNet(nn.Module):
    """A LeNet-5-style classifier of images [B, C, H, W], H, W >= 4: conv5(6)-ReLU-maxpool2,
    conv5(16)-ReLU-maxpool2, 120, 84, n_classes. The first convolution is padded by 2 (LeNet-5 read
    28x28 digits padded to 32x32); the second is unpadded on images of at least 16x16 (28x28:
    14 -> 10 -> 5) and padded on smaller ones, so that 8x8 images keep a 2x2 map.

    ``features(x)`` gives the 84 pre-activations of the penultimate layer [B, 84]."""

    def __init__(self, data_shape: tuple[int, int, int], n_classes: int):
        super().__init__()
        c, h, w = data_shape
        if h < MIN_SIDE or w < MIN_SIDE:
            raise DataError(f"the FID classifier needs images of at least {MIN_SIDE}x{MIN_SIDE}; got {h}x{w}")
        self.data_shape = (c, h, w)
        self.n_classes = n_classes
        pad = 0 if min(h, w) >= UNPADDED_SIDE else 2
        self.conv = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        side_h, side_w = (h // 2 + 2 * pad - 4) // 2, (w // 2 + 2 * pad - 4) // 2
        self.hidden = nn.Sequential(nn.Linear(16 * side_h * side_w, 120), nn.ReLU(), nn.Linear(120, FEATURES))
        self.out = nn.Sequential(nn.ReLU(), nn.Linear(FEATURES, n_classes))

    def features(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> the penultimate layer's pre-activations [B, 84]."""
        return self.hidden(self.conv(x))

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> class logits [B, n_classes]."""
        return self.out(self.features(x))


def train_classifier(
    x: Tensor,
    y: Tensor,
    n_classes: int,
    seed: int,
    epochs: int = CLASSIFIER_EPOCHS,
    device: str | torch.device = "cpu",
) -> LeNet:
    """A :class:`LeNet` trained by Adam on images ``x`` [N, C, H, W] with labels ``y`` [N] for
    ``epochs`` passes (more where needed to reach ``CLASSIFIER_MIN_STEPS`` steps); the
    initialisation and batch order are seeded by ``derive_seed(seed, FID_CLASSIFIER, ...)`` and the
    caller's random state is left alone."""
    n = x.shape[0]
    epochs = max(epochs, math.ceil(CLASSIFIER_MIN_STEPS / math.ceil(n / CLASSIFIER_BATCH)))
    order = torch.Generator().manual_seed(derive_seed(seed, FID_CLASSIFIER, 0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, FID_CLASSIFIER, 1))
        net = LeNet(tuple(x.shape[1:]), n_classes).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=CLASSIFIER_LR)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=order)
        for i in range(0, n, CLASSIFIER_BATCH):
            idx = perm[i : i + CLASSIFIER_BATCH]
            loss = nn.functional.cross_entropy(net(x[idx].to(device)), y[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def features(net: LeNet, x: Tensor) -> Tensor:
    """``net.features`` of ``x`` [N, C, H, W] in chunks: [N, 84] float64 on the CPU."""
    dev = next(net.parameters()).device
    return torch.cat([net.features(x[i : i + CHUNK].to(dev)).double().cpu() for i in range(0, x.shape[0], CHUNK)])


@torch.no_grad()
def accuracy(net: LeNet, x: Tensor, y: Tensor) -> float:
    """Share of ``x`` [N, ...] whose arg-max class is ``y`` [N]."""
    dev = next(net.parameters()).device
    hits = sum(
        int((net(x[i : i + CHUNK].to(dev)).argmax(1).cpu() == y[i : i + CHUNK]).sum()) for i in range(0, len(x), CHUNK)
    )
    return hits / max(1, x.shape[0])


# --- the cache -----------------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$VAEKIT_CACHE/fid``, else the ``fid`` folder of vaekit's download cache."""
    env = os.environ.get("VAEKIT_CACHE")
    return (Path(env).expanduser() if env else default_cache_dir()) / "fid"


def dataset_key(dataset: str) -> str:
    """A file-name-safe key of a dataset: its registered name, or for a path a hash of the absolute
    path, its size and modification time (so a changed file gets a new classifier)."""
    name = ALIASES.get(dataset.lower(), dataset.lower())
    if name in DATASETS:
        return name
    p = Path(dataset).expanduser().resolve()
    try:
        st = p.stat()
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        stamp = "missing"
    digest = hashlib.sha256(f"{p}|{stamp}".encode()).hexdigest()[:16]
    return f"path-{digest}"


def cache_path(dataset: str, seed: int) -> Path:
    """Where the classifier of (dataset, seed, ``CLASSIFIER_VERSION``) is cached."""
    return cache_dir() / f"lenet-{dataset_key(dataset)}-seed{seed}-v{CLASSIFIER_VERSION}.pt"


@dataclass
class Classifier:
    """A trained feature classifier and what it was trained on."""

    net: LeNet
    dataset: str
    seed: int
    test_accuracy: float  # on the dataset's test split, in [0, 1]
    n_test: int
    path: Path  # its cache file
    trained: bool  # True when this call trained it, False when it came from the cache


def _labelled(dataset: str, split: str, data_dir: str | None):
    ds = load_dataset(dataset, split, data_dir)
    if ds.y is None:
        raise DataError(f"the FID classifier is trained on labels, and {dataset} ({split}) has none")
    return ds


def _from_cache(path: Path, dataset: str, seed: int, device: str | torch.device) -> Classifier | None:
    """The cached classifier at ``path``, or None where there is none or it does not load."""
    if not path.is_file():
        return None
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
        if doc["version"] != CLASSIFIER_VERSION or doc["key"] != dataset_key(dataset) or doc["seed"] != seed:
            return None
        net = LeNet(tuple(doc["data_shape"]), int(doc["n_classes"]))
        net.load_state_dict(doc["state_dict"])
    except Exception:  # a truncated or foreign file: retrain and overwrite it
        return None
    return Classifier(
        net.to(device).eval(), dataset, seed, float(doc["test_accuracy"]), int(doc["n_test"]), path, False
    )


def classifier_for(
    dataset: str, seed: int = 0, data_dir: str | None = None, device: str | torch.device = "cpu"
) -> Classifier:
    """The feature classifier of ``dataset`` (a registered name or a path): loaded from the cache
    (:func:`cache_path`), or trained on its training split (:func:`train_classifier`), evaluated on
    its test split and written there atomically."""
    path = cache_path(dataset, seed)
    cached = _from_cache(path, dataset, seed, device)
    if cached is not None:
        return cached
    train, test = _labelled(dataset, "train", data_dir), _labelled(dataset, "test", data_dir)
    n_classes = int(max(train.y.max(), test.y.max())) + 1
    net = train_classifier(train.x, train.y, n_classes, seed, device=device)
    acc = accuracy(net, test.x, test.y)
    doc = {
        "version": CLASSIFIER_VERSION,
        "key": dataset_key(dataset),
        "dataset": str(dataset),
        "seed": seed,
        "data_shape": list(net.data_shape),
        "n_classes": n_classes,
        "test_accuracy": acc,
        "n_test": int(test.x.shape[0]),
        "state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
    }
    try:
        atomic_write(path, lambda f: torch.save(doc, f))
    except OSError as e:
        raise VaekitError(
            f"cannot write the FID classifier cache {path}: {e.strerror or one_line(e)}; "
            "set $VAEKIT_CACHE to a writable folder"
        ) from None
    return Classifier(net, dataset, seed, acc, int(test.x.shape[0]), path, True)


# --- the distance of a model's samples -----------------------------------------------------------


@torch.no_grad()
def sample_features(model, net: LeNet, n: int, seed: int = 0) -> Tensor:
    """Features [n, 84] of ``n`` samples ``model.sample`` draws (as drawn, not clamped), in chunks
    of ``CHUNK``; chunk c is drawn after ``torch.manual_seed(derive_seed(seed, FID_SAMPLES, c))``,
    and the caller's random state is left alone."""
    dev = next(net.parameters()).device
    out = []
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        for c, start in enumerate(range(0, n, CHUNK)):
            torch.manual_seed(derive_seed(seed, FID_SAMPLES, c))
            out.append(features(net, model.sample(min(CHUNK, n - start)).to(dev)))
    return torch.cat(out)


def model_fid(model, classifier: Classifier, x_ref: Tensor, n: int, seed: int = 0) -> dict:
    """The Fréchet distance between ``n`` samples of ``model`` and the first ``n`` images of
    ``x_ref`` [N, *data_shape] (fewer when ``x_ref`` holds fewer: both sets get the same size), in
    ``classifier``'s feature space.

    Returns:
        dict: ``fid``, ``n`` (examples per set), ``features`` (84), ``classifier_accuracy``
        (its test accuracy in [0, 1]), ``classifier_dataset``, ``classifier_seed``, ``seed``.
    """
    shape = tuple(model.data_shape)
    if shape != tuple(classifier.net.data_shape):
        raise DataError(
            f"the model's examples have shape {shape}; the FID classifier of {classifier.dataset} "
            f"reads {tuple(classifier.net.data_shape)}"
        )
    n = min(n, x_ref.shape[0])
    if n <= FEATURES:
        raise VaekitError(
            f"the Fréchet distance needs more examples per set than the {FEATURES} features; got {n} "
            f"(the reference set holds {x_ref.shape[0]})"
        )
    ref = features(classifier.net, x_ref[:n])
    gen = sample_features(model, classifier.net, n, seed)
    return {
        "fid": fid_of_features(gen, ref),
        "n": n,
        "features": FEATURES,
        "classifier_accuracy": classifier.test_accuracy,
        "classifier_dataset": classifier.dataset,
        "classifier_seed": classifier.seed,
        "seed": seed,
    }
