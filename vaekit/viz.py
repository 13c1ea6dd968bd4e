"""Pictures of generative models, and the latent-space arithmetic behind them.

Image panels (pure functions of tensors; files written with Pillow in the format the path's
suffix names, ``PICTURE_FORMATS``: PNG, JPEG, ...; matplotlib's Agg canvas draws where axes
are needed; no GUI, no pyplot global state):

- ``image_grid`` / ``save_grid``: images [N, C, H, W] in [0, 1] tiled row by row,
  ``nrow`` images per row (the torchvision ``make_grid`` convention).
- ``save_reconstructions``: each row of originals with its reconstructions right below.
- ``save_interpolation``: one row per interpolation path.
- ``save_completion``: rows of (masked input, several completions, original), the
  missing pixels painted in a colour no grey image has.
- ``save_latent_map``: the decoded manifold of a 2-D latent space beside a scatter of
  posterior means coloured by label (Kingma & Welling 2014, Fig. 4; Fig. 5 of the arXiv
  version for the scatter).

Figures for people (matplotlib ``Figure`` objects: small images enlarged by a whole factor so
they can be read, a title on each, labels where rows or columns mean something;
``figure_text`` lists what a figure says, ``save_figure`` writes it, a PNG with its title in
its ``Title`` text chunk):

- ``samples_figure``; ``reconstructions_figure`` (rows labelled "data" / "reconstruction");
  ``interpolation_figure`` (each path between its two data images, framed);
  ``traverse_figure`` (rows "z_j (var ...)", columns the offsets); ``latent_map_figure``
  (axes "z_1 / z_2", or "PC1 / PC2" for a projection).

Vector data (examples [1, 1, D]: tables of features, in data units):

- ``save_vector_samples``: samples against data, as a pair plot (D <= 6) or one histogram per
  feature; ``vector_table`` / ``write_csv`` / ``save_table``: reconstructions as a table, in a
  CSV and as a picture of its first rows; ``save_vector_paths``: interpolation paths as heat
  maps; ``save_latent_scatter``: posterior means coloured by label, without a decoded manifold.

Latent-space helpers (pure tensor maths):

- ``lerp`` and ``slerp``: linear and spherical interpolation. Slerp follows the
  great circle between z0 and z1 (Shoemake 1985); White (2016) argues for it in
  Gaussian latent spaces, where the straight line passes through the low-norm region
  the prior rarely visits.
- ``interpolate``: [B, steps, D] paths between two batches of codes.
- ``latent_grid``: an n x n grid in a 2-D latent space. By default it lies on the
  Gaussian quantiles, z = Phi^{-1}(p) for p evenly spaced in (0.05, 0.95), as in Kingma &
  Welling (2014, Fig. 4), so each cell covers equal prior probability mass;
  ``z_range=(lo, hi)`` gives an evenly spaced grid instead.

Every user-caused problem (wrong tensor shape, unwritable output) raises
:class:`vaekit.errors.VaekitError` with a one-line message.

References:
    Kingma & Welling, "Auto-encoding variational Bayes", ICLR 2014 (Fig. 4: learned
        manifolds on a grid of Gaussian quantiles).
    Shoemake, "Animating rotation with quaternion curves", SIGGRAPH 1985 (slerp).
    White, "Sampling generative networks", arXiv:1609.04468, 2016.
    torchvision.utils.make_grid (the ``nrow`` / ``padding`` convention).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import VaekitError, one_line

PAD_VALUE = 0.5  # grey between tiles: visible against black digits and white faces alike
MASK_COLOR = (1.0, 0.0, 0.0)  # missing pixels in completion panels (pure red: no grey level)
QUANTILES = (0.05, 0.95)  # probability range of the default latent grid (Kingma & Welling, Fig. 4)


# ----------------------------------------------------------------------------------------
# Checks and conversions
# ----------------------------------------------------------------------------------------
def _as_tensor(x, what: str) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise VaekitError(f"{what} must be a tensor; got {type(x).__name__}")
    return x.detach().to("cpu", torch.float32)


def _check_images(images, what: str = "images", ndim: int = 4) -> Tensor:
    """``images`` as a CPU float tensor with ``ndim`` dims, channels in {1, 3}, finite, clamped to [0, 1]."""
    x = _as_tensor(images, what)
    layout = {4: "[N, C, H, W]", 5: "[R, S, C, H, W]"}[ndim]
    if x.dim() != ndim:
        raise VaekitError(f"{what} must be {layout}; got shape {tuple(x.shape)}")
    if x.shape[-3] not in (1, 3):
        raise VaekitError(f"{what} must have 1 or 3 channels (shape {layout}); got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise VaekitError(f"{what} is empty (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        raise VaekitError(f"{what} contains NaN or infinite values")
    return x.clamp(0.0, 1.0)


def _hwc_uint8(x: Tensor) -> np.ndarray:
    """[..., C, H, W] floats in [0, 1] -> [..., H, W, C] uint8 levels round(255 x)."""
    k = (x * 255.0).round().to(torch.uint8)
    return k.movedim(-3, -1).numpy()


def _level(value: float) -> int:
    return int(round(255.0 * min(max(float(value), 0.0), 1.0)))


def _tile(cells: list[list[np.ndarray | None]], hwc: tuple[int, int, int], pad: int, pad_value: float) -> np.ndarray:
    """Tile uint8 [H, W, C] cells row by row; None leaves a blank (pad-coloured) cell.

    Cell (i, j) has its top-left pixel at (pad + i (H + pad), pad + j (W + pad)).
    """
    if pad < 0:
        raise VaekitError(f"pad must be >= 0; got {pad}")
    h, w, c = hwc
    rows, cols = len(cells), max(len(r) for r in cells)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), _level(pad_value), np.uint8)
    for i, row in enumerate(cells):
        for j, cell in enumerate(row):
            if cell is not None:
                top, left = pad + i * (h + pad), pad + j * (w + pad)
                out[top : top + h, left : left + w] = cell
    return out


def _chunks(items: np.ndarray, size: int) -> list[list[np.ndarray]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _check_nrow(nrow: int | None, default: int) -> int:
    nrow = default if nrow is None else nrow
    if nrow < 1:
        raise VaekitError(f"nrow must be >= 1; got {nrow}")
    return nrow


# ----------------------------------------------------------------------------------------
# Writing files
# ----------------------------------------------------------------------------------------
def prepare_output(path: str | os.PathLike) -> Path:
    """Create the parent folder of ``path``; a one-line VaekitError where that is impossible
    (``path`` is a folder, a folder above it is a plain file, no permission)."""
    path = Path(path)
    if path.is_dir():
        raise VaekitError(f"cannot write {path}: it is a folder")
    blocking = [p for p in path.parents if p.exists() and not p.is_dir()]
    if blocking:
        raise VaekitError(f"cannot write {path}: {blocking[-1]} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VaekitError(f"cannot write {path}: {e.strerror or type(e).__name__}") from None
    return path


# Picture files by suffix (lower case): Pillow formats that store 8-bit grey and RGB images as
# they are. Formats that need other modes (1-bit XBM, float PFM) or plugins are left out.
PICTURE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".bmp": "BMP",
    ".gif": "GIF",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
    ".tga": "TGA",
    ".pdf": "PDF",
}
SAVE_OPTIONS = {"WEBP": {"lossless": True}, "JPEG": {"quality": 95}}  # WebP is lossy by default


def picture_format(path: str | os.PathLike, also: Sequence[str] = ()) -> str:
    """The Pillow format the suffix of ``path`` names (``PICTURE_FORMATS``), or a one-line
    :class:`VaekitError` listing the suffixes this Pillow can write and ``also`` (other
    suffixes the caller accepts, for the message)."""
    from PIL import Image

    if Path(path).is_dir():
        raise VaekitError(f"cannot write {path}: it is a folder")
    Image.init()
    suffix = Path(path).suffix.lower()
    known = [s for s, f in PICTURE_FORMATS.items() if f in Image.SAVE]
    if suffix in known:
        return PICTURE_FORMATS[suffix]
    what = f"unknown suffix '{suffix}'" if suffix else "no suffix"
    raise VaekitError(f"cannot write {path}: {what}; use one of {', '.join([*known, *also])}")


def _why(e: Exception) -> str:
    return e.strerror if isinstance(e, OSError) and e.strerror else one_line(e)


def write_image(array: np.ndarray, path: str | os.PathLike, title: str | None = None) -> Path:
    """Write a uint8 image [H, W, 1] (greyscale) or [H, W, 3] (RGB) in the format of the path's
    suffix (:func:`picture_format`: ``.png``, ``.jpg``, ...); a PNG also carries ``title`` as its
    ``Title`` text chunk, so a program can read what the picture shows."""
    from PIL import Image, PngImagePlugin

    fmt = picture_format(path)  # before any folder is made
    path = prepare_output(path)
    mode = {1: "L", 3: "RGB"}[array.shape[-1]]
    img = Image.fromarray(np.ascontiguousarray(array[..., 0] if mode == "L" else array), mode)
    options = dict(SAVE_OPTIONS.get(fmt, {}))
    if title and fmt == "PNG":
        options["pnginfo"] = PngImagePlugin.PngInfo()
        options["pnginfo"].add_text("Title", title)
    try:
        img.save(path, format=fmt, **options)
    except (OSError, ValueError) as e:
        raise VaekitError(f"cannot write {path}: {_why(e)}") from None
    return path


def save_array(array, path: str | os.PathLike) -> Path:
    """Write ``array`` (a tensor or numpy array, any shape, its own dtype) to ``path`` with
    ``numpy.save``; the path must end in ``.npy`` (numpy would append it to any other name)."""
    path = Path(path)
    if path.is_dir():
        raise VaekitError(f"cannot write {path}: it is a folder")
    if path.suffix.lower() != ".npy":
        raise VaekitError(f"cannot write an array to {path}: the file name must end in .npy")
    path = prepare_output(path)
    arr = array.detach().cpu().numpy() if isinstance(array, Tensor) else np.asarray(array)
    try:
        with open(path, "wb") as f:
            np.save(f, arr, allow_pickle=False)
    except OSError as e:
        raise VaekitError(f"cannot write {path}: {_why(e)}") from None
    return path


# ----------------------------------------------------------------------------------------
# Image panels
# ----------------------------------------------------------------------------------------
def image_grid(images, nrow: int | None = None, pad: int = 2, pad_value: float = PAD_VALUE) -> np.ndarray:
    """Tile images into one picture.

    Args:
        images: [N, C, H, W], C in {1, 3}, values in [0, 1] (clamped).
        nrow: images per row; default ceil(sqrt(N)).
        pad: pixels of ``pad_value`` around and between tiles.
        pad_value: grey level of the padding, in [0, 1].

    Returns:
        uint8 array [rows (H + pad) + pad, nrow (W + pad) + pad, C], rows = ceil(N / nrow);
        image k sits in row k // nrow, column k % nrow.
    """
    x = _check_images(images)
    n, c, h, w = x.shape
    nrow = _check_nrow(nrow, math.ceil(math.sqrt(n)))
    return _tile(_chunks(_hwc_uint8(x), nrow), (h, w, c), pad, pad_value)


def save_grid(
    images, path: str | os.PathLike, nrow: int | None = None, pad: int = 2, pad_value: float = PAD_VALUE
) -> Path:
    """Write ``image_grid(images, nrow, pad, pad_value)`` in the format of the path's suffix; returns the path."""
    return write_image(image_grid(images, nrow, pad, pad_value), path)


def save_reconstructions(
    originals, reconstructions, path: str | os.PathLike, nrow: int | None = None, pad: int = 2
) -> Path:
    """Originals with their reconstructions right below them.

    Args:
        originals, reconstructions: [N, C, H, W] in [0, 1], same shape.
        nrow: images per row; default min(N, 8). Rows come in pairs: row 2j holds
            originals j*nrow .. (j+1)*nrow - 1, row 2j + 1 their reconstructions.
    """
    x = _check_images(originals, "originals")
    r = _check_images(reconstructions, "reconstructions")
    if x.shape != r.shape:
        raise VaekitError(f"originals {tuple(x.shape)} and reconstructions {tuple(r.shape)} differ in shape")
    n, c, h, w = x.shape
    nrow = _check_nrow(nrow, min(n, 8))
    cells = []
    for top, bottom in zip(_chunks(_hwc_uint8(x), nrow), _chunks(_hwc_uint8(r), nrow)):
        cells += [top, bottom]
    return write_image(_tile(cells, (h, w, c), pad, PAD_VALUE), path)


def save_interpolation(rows, path: str | os.PathLike, pad: int = 2) -> Path:
    """Interpolation paths, one per row.

    Args:
        rows: [R, steps, C, H, W] in [0, 1] (e.g. decoded ``interpolate(z0, z1, steps)``).
    """
    x = _check_images(rows, "interpolation rows", ndim=5)
    _, _, c, h, w = x.shape
    cells = [list(row) for row in _hwc_uint8(x)]
    return write_image(_tile(cells, (h, w, c), pad, PAD_VALUE), path)


def masked_input(originals: Tensor, mask: Tensor, color: Sequence[float] = MASK_COLOR) -> Tensor:
    """RGB images [N, 3, H, W]: the originals where ``mask`` is 1, ``color`` where it is 0.

    Args:
        originals: [N, C, H, W] in [0, 1], C in {1, 3}.
        mask: [N, 1 or C, H, W], 1 / True = observed pixel; a pixel is shown as missing
            when any of its channels is missing.
        color: RGB of missing pixels, each in [0, 1].
    """
    x = _check_images(originals, "originals")
    m = _as_tensor(mask, "mask")
    n, c, h, w = x.shape
    if m.dim() != 4 or m.shape[0] != n or m.shape[1] not in (1, c) or m.shape[2:] != (h, w):
        raise VaekitError(f"mask must be [N, 1 or C, H, W] = [{n}, 1 or {c}, {h}, {w}]; got {tuple(m.shape)}")
    observed = (m != 0).all(dim=1, keepdim=True)
    rgb = x.expand(n, 3, h, w) if c == 1 else x
    fill = torch.tensor(color, dtype=torch.float32).view(1, 3, 1, 1).expand_as(rgb)
    return torch.where(observed, rgb, fill)


def save_completion(
    originals, mask, completions, path: str | os.PathLike, color: Sequence[float] = MASK_COLOR, pad: int = 2
) -> Path:
    """Image completion: each row is (masked input, S completions, original), in RGB.

    Args:
        originals: [N, C, H, W] in [0, 1].
        mask: [N, 1 or C, H, W], 1 = observed, 0 = missing (shown in ``color``).
        completions: [N, S, C, H, W] in [0, 1], S completions of each masked input.
        color: RGB in [0, 1] of the missing pixels.
    """
    x = _check_images(originals, "originals")
    comp = _check_images(completions, "completions", ndim=5)
    n, c, h, w = x.shape
    if comp.shape[0] != n or comp.shape[2:] != x.shape[1:]:
        raise VaekitError(
            f"completions must be [N, S, C, H, W] with N, C, H, W of originals "
            f"{tuple(x.shape)}; got {tuple(comp.shape)}"
        )
    shown = masked_input(x, mask, color)
    to_rgb = (lambda t: t.expand(*t.shape[:-3], 3, h, w)) if c == 1 else (lambda t: t)
    row_images = torch.cat([shown[:, None], to_rgb(comp), to_rgb(x)[:, None]], dim=1)  # [N, S + 2, 3, H, W]
    cells = [list(row) for row in _hwc_uint8(row_images)]
    return write_image(_tile(cells, (h, w, 3), pad, PAD_VALUE), path)


# ----------------------------------------------------------------------------------------
# Figures for people: enlarged, titled, labelled panels (matplotlib's Agg canvas)
# ----------------------------------------------------------------------------------------
PANEL_MIN_SIDE = 640  # pixels: a small grid is enlarged by a whole factor until its longer side reaches this
FIGURE_DPI = 100
TITLE_PT, LABEL_PT = 12, 9  # font sizes in points
MARK_COLOR = (1.0, 0.55, 0.0)  # frame around real data images among decodings (orange: no grey level)


def _text_px(text: str, pt: float) -> float:
    """A generous estimate of the width of ``text`` in pixels at ``pt`` points (DejaVu Sans)."""
    return 0.62 * len(text) * pt * FIGURE_DPI / 72


def _enlargement(grid: np.ndarray) -> int:
    """The whole factor :func:`panel_figure` enlarges a tiled grid by."""
    return max(1, math.ceil(PANEL_MIN_SIDE / max(grid.shape[:2])))


def _frame(grid: np.ndarray, cells: Sequence[tuple[int, int]], hw: tuple[int, int], pad: int, color) -> np.ndarray:
    """RGB copy of a tiled uint8 grid (``_tile`` geometry) with the padding around each (row, column)
    cell painted in ``color`` (RGB in [0, 1])."""
    out = np.repeat(grid, 3, axis=-1) if grid.shape[-1] == 1 else grid.copy()
    h, w = hw
    rgb = [_level(c) for c in color]
    for i, j in cells:
        top, left = pad + i * (h + pad), pad + j * (w + pad)
        region = out[top - pad : top + h + pad, left - pad : left + w + pad]
        inner = region[pad : pad + h, pad : pad + w].copy()
        region[:] = rgb
        region[pad : pad + h, pad : pad + w] = inner
    return out


def panel_figure(
    grid: np.ndarray,
    hw: tuple[int, int],
    pad: int,
    title: str,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str | None] | None = None,
    xlabel: str | None = None,
):
    """A tiled grid (``_tile`` geometry) as a figure people can read: enlarged by a whole factor
    (nearest neighbour, every pixel a square) until its longer side is at least ``PANEL_MIN_SIDE``
    pixels, with a title above, a label left of each row of cells, a label under each column
    (None: unlabelled) and an x-axis label at the bottom.

    Args:
        grid: uint8 [GH, GW, 1 or 3], cells of ``hw`` = (H, W) pixels with ``pad`` between.
        title: the figure's title (its suptitle).

    Returns:
        a matplotlib ``Figure`` with an Agg canvas; :func:`figure_text` lists its texts and
        :func:`save_figure` writes it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = hw
    scale = _enlargement(grid)
    big = np.repeat(np.repeat(grid, scale, 0), scale, 1)
    big = np.repeat(big, 3, axis=-1) if big.shape[-1] == 1 else big
    longest = max((_text_px(t, LABEL_PT) for t in row_labels or []), default=0.0)
    left = 10 + (math.ceil(longest) + 8 if row_labels else 0)
    top, bottom = 44, 10 + (20 if col_labels else 0) + (22 if xlabel else 0)
    width = max(left + big.shape[1] + 10, math.ceil(_text_px(title, TITLE_PT)) + 20)
    left += (width - (left + big.shape[1] + 10)) // 2  # centred under a title wider than the panel
    height = top + big.shape[0] + bottom
    fig = Figure(figsize=(width / FIGURE_DPI, height / FIGURE_DPI), dpi=FIGURE_DPI)
    FigureCanvasAgg(fig)
    fig.figimage(big, xo=left, yo=bottom, origin="upper")  # pixel for pixel, no resampling
    fig.suptitle(title, fontsize=TITLE_PT, y=1 - 10 / height, va="top")
    for i, label in enumerate(row_labels or []):
        y = top + scale * (pad + i * (h + pad) + h / 2)
        fig.text((left - 8) / width, 1 - y / height, label, ha="right", va="center", fontsize=LABEL_PT)
    for j, label in enumerate(col_labels or []):
        if label is not None:
            x = left + scale * (pad + j * (w + pad) + w / 2)
            fig.text(x / width, (bottom - 4) / height, label, ha="center", va="top", fontsize=LABEL_PT)
    if xlabel:
        fig.text((left + big.shape[1] / 2) / width, 6 / height, xlabel, ha="center", va="bottom", fontsize=LABEL_PT)
    return fig


def figure_text(fig) -> list[str]:
    """Every text a figure shows: its title, free texts, and each axes' title, axis labels and
    tick labels (what tests and programs check instead of pixels)."""
    texts = [t.get_text() for t in fig.texts]  # the title (suptitle) is one of them
    for ax in fig.axes:
        texts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        texts += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
    return [t for t in texts if t]


def figure_array(fig) -> np.ndarray:
    """The figure drawn: uint8 [H, W, 3] (its white background is opaque, so alpha is dropped)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write ``figure_array(fig)`` in the format the path's suffix names, titled by the figure's title."""
    picture_format(path)  # before drawing anything
    return write_image(figure_array(fig), path, title=fig.get_suptitle() or None)


def _column_labels(labels: Sequence[str], width_px: float, keep: Sequence[int] = ()) -> list[str | None]:
    """``labels`` thinned to about one per 48 pixels of ``width_px``, evenly spaced, always
    keeping the first, the last and the indices in ``keep``."""
    n = len(labels)
    shown = min(n, max(2, int(width_px // 48)))
    picked = set(np.linspace(0, n - 1, shown).round().astype(int).tolist()) | set(keep)
    return [label if j in picked else None for j, label in enumerate(labels)]


def _number(v: float) -> str:
    """``v`` with at most two decimals and no trailing zeros; "0" for |v| < 0.005 (never "-0")."""
    return f"{v:.2f}".rstrip("0").rstrip(".") if abs(v) >= 5e-3 else "0"


def samples_figure(images, title: str, nrow: int | None = None, pad: int = 2):
    """Samples [N, C, H, W] in [0, 1] tiled ``nrow`` per row (default ceil(sqrt(N))), titled."""
    x = _check_images(images, "samples")
    n, c, h, w = x.shape
    nrow = _check_nrow(nrow, math.ceil(math.sqrt(n)))
    return panel_figure(_tile(_chunks(_hwc_uint8(x), nrow), (h, w, c), pad, PAD_VALUE), (h, w), pad, title)


def reconstructions_figure(originals, reconstructions, title: str, nrow: int | None = None, pad: int = 2):
    """Test images and their reconstructions ([N, C, H, W] each, in [0, 1]) in pairs of rows,
    labelled "data" and "reconstruction" (the layout of :func:`save_reconstructions`)."""
    x = _check_images(originals, "originals")
    r = _check_images(reconstructions, "reconstructions")
    if x.shape != r.shape:
        raise VaekitError(f"originals {tuple(x.shape)} and reconstructions {tuple(r.shape)} differ in shape")
    n, c, h, w = x.shape
    nrow = _check_nrow(nrow, min(n, 8))
    cells, labels = [], []
    for top, bottom in zip(_chunks(_hwc_uint8(x), nrow), _chunks(_hwc_uint8(r), nrow)):
        cells += [top, bottom]
        labels += ["data", "reconstruction"]
    return panel_figure(_tile(cells, (h, w, c), pad, PAD_VALUE), (h, w), pad, title, row_labels=labels)


def interpolation_figure(rows, starts, ends, title: str, pad: int = 2):
    """Interpolation paths between pairs of data images, each row framed by its two endpoints.

    Args:
        rows: [R, S, C, H, W] in [0, 1], the decoded path at t = 0, 1/(S-1), ..., 1.
        starts, ends: [R, C, H, W] in [0, 1], the data images whose codes the paths join; drawn
            in the first and last column inside an orange frame (``MARK_COLOR``), labelled "data".
    """
    x = _check_images(rows, "interpolation rows", ndim=5)
    a, b = _check_images(starts, "starts"), _check_images(ends, "ends")
    R, S, c, h, w = x.shape
    if a.shape != (R, c, h, w) or b.shape != a.shape:
        raise VaekitError(
            f"starts and ends must be [R, C, H, W] = {(R, c, h, w)}; got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    cells = [list(row) for row in _hwc_uint8(torch.cat([a[:, None], x, b[:, None]], dim=1))]
    ends_at = [(i, j) for i in range(R) for j in (0, S + 1)]
    grid = _frame(_tile(cells, (h, w, c), pad, PAD_VALUE), ends_at, (h, w), pad, MARK_COLOR)
    t = ["data", *(_number(v) for v in torch.linspace(0, 1, S).tolist()), "data"]
    width = grid.shape[1] * _enlargement(grid)
    xlabel = "t along the path between the two codes; framed: the test images themselves"
    return panel_figure(grid, (h, w), pad, title, col_labels=_column_labels(t, width), xlabel=xlabel)


def traverse_figure(images, row_labels: Sequence[str], offsets, title: str, xlabel: str, pad: int = 2):
    """A latent traversal: row k decodes one latent dimension swept over ``offsets``.

    Args:
        images: [K, S, C, H, W] in [0, 1].
        row_labels: K labels, e.g. "z_3 (var 0.92)".
        offsets: the S offsets of the columns (their labels; 0 is labelled "0 (mean)" and never
            thinned away).
        xlabel: what the offsets are in (e.g. prior standard deviations from the posterior mean).
    """
    x = _check_images(images, "traversal", ndim=5)
    K, S, c, h, w = x.shape
    off = [float(v) for v in torch.as_tensor(offsets).flatten().tolist()]
    if len(row_labels) != K or len(off) != S:
        raise VaekitError(f"a traversal of {K} x {S} images needs {K} row labels and {S} offsets")
    cells = [list(row) for row in _hwc_uint8(x)]
    grid = _tile(cells, (h, w, c), pad, PAD_VALUE)
    labels = [("0 (mean)" if _number(v) == "0" else f"{'+' if v > 0 else ''}{_number(v)}") for v in off]
    width = grid.shape[1] * _enlargement(grid)
    cols = _column_labels(labels, width, keep=[j for j, label in enumerate(labels) if label == "0 (mean)"])
    return panel_figure(grid, (h, w), pad, title, row_labels=list(row_labels), col_labels=cols, xlabel=xlabel)


def _axis_values(n: int, z_range) -> Tensor:
    """The n grid coordinates per latent axis: None -> Gaussian quantiles, (lo, hi) -> linear,
    a length-n sequence -> itself."""
    if z_range is None or (not isinstance(z_range, Tensor) and len(z_range) == 2 and n != 2):
        return latent_axis(n, z_range)
    values = torch.as_tensor(z_range, dtype=torch.float32).flatten()
    if len(values) != n:
        raise VaekitError(f"z_range must be None, (lo, hi) or the {n} axis values; got {len(values)} values")
    return values


def save_latent_map(
    decoded,
    n: int,
    z_range,
    path: str | os.PathLike,
    points=None,
    labels=None,
    dpi: int = 100,
    title: str | None = None,
    axis_names: tuple[str, str] = ("z_1", "z_2"),
) -> Path:
    """Write :func:`latent_map_figure` (same arguments) in the format the path's suffix names; its
    size is 1100 x 500 pixels with points, 550 x 500 without (dpi 100)."""
    picture_format(path)  # before drawing anything
    fig = latent_map_figure(decoded, n, z_range, points, labels, dpi, title, axis_names)
    return save_figure(fig, path)


def latent_map_figure(
    decoded,
    n: int,
    z_range,
    points=None,
    labels=None,
    dpi: int = 100,
    title: str | None = None,
    axis_names: tuple[str, str] = ("z_1", "z_2"),
):
    """A 2-D latent manifold, beside a scatter of posterior means coloured by label.

    Args:
        decoded: [n*n, C, H, W] in [0, 1], the decoder's means on ``latent_grid(n, z_range)``
            in its order (row-major, top row = largest z2, left column = smallest z1).
        n: cells per side.
        z_range: what was given to ``latent_grid``: None (Gaussian quantiles), (lo, hi), or
            the n axis values themselves; used for the axis ticks.
        points: [M, 2] posterior means of test data, or None for the manifold panel alone.
        labels: [M] integer labels (legend when there are at most 10 classes, else a colour
            bar), or None.
        title: optional figure title (e.g. which plane of a >2-D latent space is shown).
        axis_names: the names of the two axes: ("z_1", "z_2") for a 2-D latent space, ("PC1",
            "PC2") for a plane of principal directions.

    Returns:
        a matplotlib ``Figure`` (see :func:`figure_text`, :func:`save_figure`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    x = _check_images(decoded, "decoded grid")
    if x.shape[0] != n * n:
        raise VaekitError(f"decoded grid must hold n*n = {n * n} images; got {x.shape[0]}")
    axis = _axis_values(n, z_range)
    pts, labs = _check_points(points, labels)
    fig = Figure(figsize=(11.0 if pts is not None else 5.5, 5.0), dpi=dpi)
    FigureCanvasAgg(fig)
    ax_map = fig.add_subplot(1, 2 if pts is not None else 1, 1)
    _draw_manifold(ax_map, image_grid(x, nrow=n, pad=0), axis, x.shape[-2:], axis_names)
    if pts is not None:
        ax = fig.add_subplot(1, 2, 2)
        _draw_scatter(fig, ax, pts, labs, axis_names)
        lo, hi = float(axis.min()), float(axis.max())
        ax.add_patch(Rectangle((lo, lo), hi - lo, hi - lo, fill=False, ls="--", lw=1, ec="0.3", label="manifold panel"))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _check_points(points, labels) -> tuple[np.ndarray | None, np.ndarray | None]:
    if points is None:
        if labels is not None:
            raise VaekitError("labels given without points")
        return None, None
    pts = _as_tensor(points, "points")
    if pts.dim() != 2 or pts.shape[1] != 2:
        raise VaekitError(f"points must be [M, 2] (2-D posterior means); got shape {tuple(pts.shape)}")
    if labels is None:
        return pts.numpy(), None
    labs = torch.as_tensor(labels).detach().cpu()
    if labs.shape != (pts.shape[0],):
        raise VaekitError(f"labels must be [M] = [{pts.shape[0]}]; got shape {tuple(labs.shape)}")
    return pts.numpy(), labs.numpy()


def _draw_manifold(ax, grid: np.ndarray, axis: Tensor, hw, names: tuple[str, str]) -> None:
    """Show the tiled decodings with ticks at cell centres labelled by their latent coordinates."""
    h, w = int(hw[0]), int(hw[1])
    n = len(axis)
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ticks = sorted(set(np.linspace(0, n - 1, min(n, 5)).round().astype(int).tolist()))
    ax.set_xticks([(j + 0.5) * w - 0.5 for j in ticks], [f"{axis[j]:.2g}" for j in ticks])
    ax.set_yticks([(i + 0.5) * h - 0.5 for i in ticks], [f"{axis[n - 1 - i]:.2g}" for i in ticks])
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title("decoded latent grid")


def _draw_scatter(fig, ax, pts: np.ndarray, labs: np.ndarray | None, names: tuple[str, str]) -> None:
    """Posterior means, one colour per class with a legend (<= 10 classes) or a colour bar."""
    if labs is None:
        ax.scatter(pts[:, 0], pts[:, 1], s=4, alpha=0.6)
    elif len(np.unique(labs)) <= 10:
        cmap = _tab10()
        for i, c in enumerate(np.unique(labs)):
            sel = labs == c
            ax.scatter(pts[sel, 0], pts[sel, 1], s=4, alpha=0.7, color=cmap(i), label=str(c))
        ax.legend(title="label", markerscale=3, fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    else:
        sc = ax.scatter(pts[:, 0], pts[:, 1], s=4, alpha=0.7, c=labs, cmap="viridis")
        fig.colorbar(sc, ax=ax, label="label")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title("posterior means of test data")


def _tab10():
    from matplotlib import colormaps

    return colormaps["tab10"]


# ----------------------------------------------------------------------------------------
# Vector data: pair plots, histograms, tables
# ----------------------------------------------------------------------------------------
PAIR_PLOT_MAX = 6  # features drawn as a pair plot; more get one histogram each
HISTOGRAMS_MAX = 48  # features drawn as histograms; the rest are left out (the title says so)
TABLE_ROWS = 8  # examples a table picture shows (the CSV holds them all)
TABLE_COLUMNS = 10  # features a table picture shows
SAMPLE_COLOR, DATA_COLOR = "tab:orange", "0.45"


def _vectors(x, what: str) -> np.ndarray:
    """``x`` [N, D] or [N, 1, 1, D] (vector data) as a finite float64 array [N, D]."""
    t = _as_tensor(x, what)
    if t.dim() == 4 and t.shape[1:3] == (1, 1):
        t = t[:, 0, 0]
    if t.dim() != 2 or t.numel() == 0:
        raise VaekitError(f"{what} must be vectors [N, D] or [N, 1, 1, D]; got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise VaekitError(f"{what} contains NaN or infinite values")
    return t.double().numpy()


def _names(names, d: int) -> list[str]:
    """Feature names, ``x0 .. x{d-1}`` when None; a one-line error when they do not number d."""
    if names is None:
        return [f"x{i}" for i in range(d)]
    if len(names) != d:
        raise VaekitError(f"{len(names)} feature names for {d} features")
    return [str(n) for n in names]


def _figure(width: float, height: float, dpi: int = 100):
    """A matplotlib Figure on an Agg canvas (no pyplot state): (figure, canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    return fig, FigureCanvasAgg(fig)


def _write_figure(fig, canvas, path: str | os.PathLike) -> Path:
    canvas.draw()
    return write_image(np.asarray(canvas.buffer_rgba())[..., :3], path)  # opaque white figure: alpha is 255


def _bins(*columns: np.ndarray, n: int = 20) -> np.ndarray:
    """Shared histogram edges over the central 99% of the values (a sample's far tail would squash the rest)."""
    values = np.concatenate(columns)
    lo, hi = np.percentile(values, [0.5, 99.5])
    return np.linspace(lo, hi if hi > lo else lo + 1.0, n + 1)


def save_vector_samples(samples, data, path: str | os.PathLike, names=None, title: str | None = None) -> Path:
    """Samples against data, feature by feature, in data units.

    D <= ``PAIR_PLOT_MAX``: a pair plot (a histogram of each feature on the diagonal, a scatter of
    each pair of features off it); larger D: one histogram per feature (the first
    ``HISTOGRAMS_MAX``). Data in grey, samples in orange, histograms as densities.

    Args:
        samples: [n, D] or [n, 1, 1, D] model samples.
        data: [m, D] or [m, 1, 1, D] examples of the data (e.g. the test split), or None.
        path: output picture (format by suffix, as :func:`write_image`): (100 + 200 D) x (60 + 200 D)
            pixels for a pair plot, 240 per column (at most 6) by 60 + 200 per row for histograms.
        names: D feature names (default x0, x1, ...).
    """
    s = _vectors(samples, "samples")
    x = _vectors(data, "data") if data is not None else None
    d = s.shape[1]
    if x is not None and x.shape[1] != d:
        raise VaekitError(f"samples have {d} features and data {x.shape[1]}")
    names = _names(names, d)
    cols = [s] if x is None else [x, s]
    if d <= PAIR_PLOT_MAX:
        fig, canvas = _figure(1.0 + 2.0 * d, 0.6 + 2.0 * d)
        axes = fig.subplots(d, d, squeeze=False)
        for i in range(d):
            for j in range(d):
                _pair_panel(axes[i][j], [c[:, j] for c in cols], [c[:, i] for c in cols], i == j)
                axes[i][j].set_xlabel(names[j] if i == d - 1 else "")
                axes[i][j].set_ylabel(names[i] if j == 0 else "")
    else:
        shown = min(d, HISTOGRAMS_MAX)
        ncol = min(shown, 6)
        nrow = math.ceil(shown / ncol)
        fig, canvas = _figure(2.4 * ncol, 0.6 + 2.0 * nrow)
        axes = fig.subplots(nrow, ncol, squeeze=False)
        for k, ax in enumerate(axes.flat):
            if k >= shown:
                ax.set_visible(False)
                continue
            _pair_panel(ax, [c[:, k] for c in cols], None, True)
            ax.set_title(names[k][:24], fontsize="small")
    from matplotlib.patches import Patch

    handles = [Patch(color=c, alpha=0.6) for c in [DATA_COLOR, SAMPLE_COLOR][-len(cols) :]]
    fig.legend(handles, ["data", "samples"][-len(cols) :], loc="upper right", fontsize="small")
    more = f" (first {HISTOGRAMS_MAX} of {d} features)" if d > HISTOGRAMS_MAX else ""
    fig.suptitle((title or f"{s.shape[0]} samples" + (" against the data" if x is not None else "")) + more)
    fig.tight_layout(rect=(0, 0, 0.97, 0.97))
    return _write_figure(fig, canvas, path)


def _pair_panel(ax, xs: list[np.ndarray], ys: list[np.ndarray] | None, diagonal: bool) -> None:
    """One panel: overlaid density histograms of ``xs`` (diagonal) or a scatter of ``ys`` against ``xs``;
    the last column is the samples, a first one the data."""
    colors = [DATA_COLOR, SAMPLE_COLOR][-len(xs) :]
    if diagonal:
        bins = _bins(*xs)
        for v, c in zip(xs, colors):
            ax.hist(v, bins=bins, density=True, histtype="stepfilled", alpha=0.45, color=c)
    else:
        for v, w, c in zip(xs, ys, colors):
            ax.scatter(v, w, s=3, alpha=0.5, color=c, linewidths=0)
    ax.tick_params(labelsize="x-small")


def vector_table(originals, reconstructions, names=None) -> tuple[list[str], list[list]]:
    """(header, rows) of a reconstruction table: for each example i a row ``i, data, x...`` and a row
    ``i, reconstruction, x'...`` (values in data units).

    Args:
        originals, reconstructions: [n, D] or [n, 1, 1, D], same shape.
        names: D feature names (the header after ``example, row``).
    """
    x = _vectors(originals, "originals")
    r = _vectors(reconstructions, "reconstructions")
    if x.shape != r.shape:
        raise VaekitError(f"originals {x.shape} and reconstructions {r.shape} differ in shape")
    rows = []
    for i in range(x.shape[0]):
        rows += [[i, "data", *x[i].tolist()], [i, "reconstruction", *r[i].tolist()]]
    return ["example", "row", *_names(names, x.shape[1])], rows


def write_csv(header: Sequence[str], rows: Sequence[Sequence], path: str | os.PathLike) -> Path:
    """A CSV file: the header, then the rows (floats with 6 significant digits)."""
    import csv

    path = prepare_output(path)
    try:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows([f"{v:.6g}" if isinstance(v, float) else v for v in row] for row in rows)
    except OSError as e:
        raise VaekitError(f"cannot write {path}: {_why(e)}") from None
    return path


def save_table(header: Sequence[str], rows: Sequence[Sequence], path: str | os.PathLike, title: str = "") -> Path:
    """A picture of the first ``TABLE_ROWS`` pairs of rows and ``TABLE_COLUMNS`` value columns of a
    table (as :func:`vector_table` makes), values with 4 significant digits, reconstruction rows shaded."""
    keep = 2 + TABLE_COLUMNS
    head = list(header[:keep]) + (["..."] if len(header) > keep else [])
    body = [
        [str(v) if not isinstance(v, float) else f"{v:.4g}" for v in row[:keep]] + (["..."] if len(row) > keep else [])
        for row in rows[: 2 * TABLE_ROWS]
    ]
    if not body:
        raise VaekitError("the table has no rows")
    fig, canvas = _figure(1.2 + 1.1 * len(head), 0.9 + 0.3 * len(body))
    ax = fig.add_subplot(1, 1, 1)
    ax.axis("off")
    shade = [["#f2f2f2" if r[1] != "data" else "white"] * len(head) for r in body]
    table = ax.table(cellText=body, colLabels=[h[:14] for h in head], cellColours=shade, loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.0, 1.2)
    more = len(rows) // 2 - len(body) // 2
    ax.set_title(title + (f" (first {len(body) // 2} examples; {more} more in the CSV)" if more > 0 else ""))
    fig.tight_layout()
    return _write_figure(fig, canvas, path)


def save_vector_paths(paths, path: str | os.PathLike, names=None) -> Path:
    """Interpolation paths of vector data: one heat map per path, a row per feature and a column per
    step, coloured by the feature's value scaled to [0, 1] over all paths (each feature its own scale:
    features in different units stay readable); the endpoints are the two encoded examples' decodings.

    Args:
        paths: [R, steps, D] or [R, steps, 1, 1, D], values in data units.
        names: D feature names.
    """
    t = _as_tensor(paths, "interpolation paths")
    if t.dim() == 5 and t.shape[2:4] == (1, 1):
        t = t[:, :, 0, 0]
    if t.dim() != 3 or t.numel() == 0 or not torch.isfinite(t).all():
        raise VaekitError(f"interpolation paths must be finite [R, steps, D]; got shape {tuple(t.shape)}")
    v = t.double().numpy()
    r, steps, d = v.shape
    names = _names(names, d)
    lo, hi = v.min(axis=(0, 1)), v.max(axis=(0, 1))
    scaled = (v - lo) / np.where(hi > lo, hi - lo, 1.0)
    ncol = min(r, 4)
    nrow = math.ceil(r / ncol)
    fig, canvas = _figure(1.5 + 0.35 * steps * ncol, 0.8 + (0.5 + 0.18 * d) * nrow)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= r:
            ax.set_visible(False)
            continue
        im = ax.imshow(scaled[k].T, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks(range(d), names if k % ncol == 0 else [""] * d, fontsize="x-small")
        ax.set_xticks([0, steps - 1], ["start", "end"], fontsize="x-small")
        ax.set_title(f"path {k}", fontsize="small")
    fig.colorbar(im, ax=list(axes.flat), label="feature value (its own min to max)", shrink=0.8)
    return _write_figure(fig, canvas, path)


def save_latent_scatter(
    points, path: str | os.PathLike, labels=None, title: str | None = None, axis_names: tuple[str, str] = ("z_1", "z_2")
) -> Path:
    """Posterior means [M, 2] of test data coloured by label (a legend for at most 10 classes, else
    a colour bar): the latent map of a model whose decodings are not pictures (vector data)."""
    pts, labs = _check_points(points, labels)
    fig, canvas = _figure(6.5, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    _draw_scatter(fig, ax, pts, labs, axis_names)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _write_figure(fig, canvas, path)


# ----------------------------------------------------------------------------------------
# Latent-space arithmetic
# ----------------------------------------------------------------------------------------
def lerp(z0: Tensor, z1: Tensor, t) -> Tensor:
    """Linear interpolation (1 - t) z0 + t z1; exact at t = 0 and t = 1.

    Args:
        z0, z1: codes [..., D].
        t: a float, or a tensor that broadcasts against [..., 1].
    """
    t = torch.as_tensor(t, dtype=z0.dtype, device=z0.device)
    return (1 - t) * z0 + t * z1


def slerp(z0: Tensor, z1: Tensor, t, eps: float = 1e-6) -> Tensor:
    """Spherical interpolation along the great circle from z0 to z1 (Shoemake 1985).

    slerp = sin((1 - t) w) / sin w * z0 + sin(t w) / sin w * z1, with w the angle between
    z0 and z1. For unit vectors every point has unit norm (for equal norms r, norm r) and
    the angle to z0 grows linearly in t. Where sin w < eps (parallel or antipodal codes,
    where the great circle is not unique) it falls back to ``lerp``.

    Args:
        z0, z1: codes [..., D].
        t: a float, or a tensor that broadcasts against [..., 1].
    """
    t = torch.as_tensor(t, dtype=z0.dtype, device=z0.device)
    norms = z0.norm(dim=-1, keepdim=True) * z1.norm(dim=-1, keepdim=True)
    cos = ((z0 * z1).sum(-1, keepdim=True) / norms.clamp_min(torch.finfo(z0.dtype).tiny)).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    curved = sin > eps
    sin = torch.where(curved, sin, torch.ones_like(sin))
    a = torch.where(curved, torch.sin((1 - t) * omega) / sin, 1 - t)
    b = torch.where(curved, torch.sin(t * omega) / sin, t)
    return a * z0 + b * z1


INTERPOLATIONS = {"lerp": lerp, "slerp": slerp}


def interpolate(z0: Tensor, z1: Tensor, steps: int, slerp: bool = False) -> Tensor:
    """Paths from each z0[b] to z1[b] at t = 0, 1/(steps-1), ..., 1.

    Args:
        z0, z1: codes [B, D].
        steps: points per path, >= 2 (the endpoints included).
        slerp: spherical (True) or linear (False) interpolation.

    Returns:
        [B, steps, D]; [:, 0] == z0 and [:, -1] == z1.
    """
    if not isinstance(z0, Tensor) or not isinstance(z1, Tensor) or z0.dim() != 2 or z0.shape != z1.shape:
        raise VaekitError(
            f"interpolate wants z0 and z1 of the same shape [B, D]; got "
            f"{tuple(getattr(z0, 'shape', ()))} and {tuple(getattr(z1, 'shape', ()))}"
        )
    if steps < 2:
        raise VaekitError(f"interpolation steps must be >= 2; got {steps}")
    t = torch.linspace(0.0, 1.0, steps, dtype=z0.dtype, device=z0.device).view(1, steps, 1)
    return INTERPOLATIONS["slerp" if slerp else "lerp"](z0[:, None], z1[:, None], t)


def latent_axis(
    n: int, z_range: tuple[float, float] | None = None, quantiles: tuple[float, float] = QUANTILES
) -> Tensor:
    """n coordinates along one latent axis, increasing.

    Args:
        n: number of points, >= 1.
        z_range: (lo, hi) for evenly spaced z; None for Gaussian quantiles.
        quantiles: (p_lo, p_hi) in (0, 1): with z_range None, z = Phi^{-1}(p) for p evenly
            spaced in [p_lo, p_hi] (Kingma & Welling 2014, Fig. 4).

    Returns:
        [n] float32.
    """
    if n < 1:
        raise VaekitError(f"latent grid size must be >= 1; got {n}")
    if z_range is not None:
        lo, hi = (float(v) for v in z_range)
        return torch.linspace(lo, hi, n)
    p_lo, p_hi = quantiles
    if not 0.0 < p_lo <= p_hi < 1.0:
        raise VaekitError(f"quantiles must satisfy 0 < lo <= hi < 1; got {quantiles}")
    p = torch.linspace(p_lo, p_hi, n, dtype=torch.float64)
    return torch.distributions.Normal(0.0, 1.0).icdf(p).to(torch.float32)


def latent_grid(
    n: int, z_range: tuple[float, float] | None = None, quantiles: tuple[float, float] = QUANTILES
) -> Tensor:
    """An n x n grid of 2-D codes in image order, for ``save_latent_map``.

    Row i (top to bottom), column j (left to right) is entry k = i n + j with
    z = (a[j], a[n - 1 - i]), a = ``latent_axis(n, z_range, quantiles)``: z1 grows to the
    right and z2 grows upwards, as on a plot. Default: Gaussian quantiles.

    Returns:
        [n*n, 2] float32.
    """
    a = latent_axis(n, z_range, quantiles)
    z1 = a.repeat(n)
    z2 = a.flip(0).repeat_interleave(n)
    return torch.stack([z1, z2], dim=1)
