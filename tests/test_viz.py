"""vaekit.viz: grid layout pixel by pixel, PNG files, completion colours, latent maps, and the
latent-space maths (lerp / slerp / interpolate / latent_grid)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from vaekit import viz
from vaekit.errors import VaekitError

H, W = 4, 3


def constant_images(levels, c=1):
    """Images [N, c, H, W], image k filled with the 8-bit level levels[k] (exact after rounding)."""
    lv = torch.tensor(levels, dtype=torch.float32).view(-1, 1, 1, 1) / 255
    return lv.expand(len(levels), c, H, W).clone()


def cell(grid, i, j, pad=2):
    """The [H, W, C] tile at row i, column j of a grid with tiles of H x W."""
    top, left = pad + i * (H + pad), pad + j * (W + pad)
    return grid[top : top + H, left : left + W]


def read_png(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.mode, im.size, np.asarray(im)


def assert_one_line(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


# ----------------------------------------------------------------------------------------
# grids
# ----------------------------------------------------------------------------------------
def test_image_grid_layout_pixel_by_pixel():
    levels = [10, 40, 70, 100, 130]
    grid = viz.image_grid(constant_images(levels), nrow=3, pad=2, pad_value=1.0)
    assert grid.dtype == np.uint8 and grid.shape == (2 * (H + 2) + 2, 3 * (W + 2) + 2, 1)
    for k, level in enumerate(levels):
        assert np.all(cell(grid, k // 3, k % 3) == level)  # image k at row k // nrow, column k % nrow
    assert np.all(cell(grid, 1, 2) == 255)  # the empty sixth cell is padding
    assert np.all(grid[:2] == 255) and np.all(grid[:, :2] == 255)  # the border
    assert np.all(grid[2 + H : 2 + H + 2] == 255)  # the gap between the rows
    assert (grid == 255).sum() == grid.size - 5 * H * W


def test_image_grid_default_nrow_rgb_and_clamping():
    x = torch.rand(10, 3, H, W)
    x[0, 0, 0, 0], x[0, 1, 0, 0] = 1.7, -0.3  # decoder samples may leave [0, 1]: clamped
    grid = viz.image_grid(x, pad=0)
    assert grid.shape == (3 * H, 4 * W, 3)  # ceil(sqrt(10)) = 4 per row
    assert tuple(grid[0, 0, :2]) == (255, 0)
    k = 6
    expect = (x[k].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(grid[H : 2 * H, 2 * W : 3 * W], expect)


def test_save_grid_writes_png_of_expected_size(tmp_path):
    images = constant_images([0, 255, 128, 64])
    path = viz.save_grid(images, tmp_path / "sub" / "grid.png", nrow=2)  # creates the folder
    mode, size, arr = read_png(path)
    assert mode == "L" and size == (2 * (W + 2) + 2, 2 * (H + 2) + 2)
    assert np.array_equal(arr, viz.image_grid(images, nrow=2)[..., 0])
    mode, size, _ = read_png(viz.save_grid(torch.rand(2, 3, H, W), tmp_path / "rgb.png", pad=0))
    assert mode == "RGB" and size == (2 * W, H)


def test_reconstructions_sit_below_their_originals(tmp_path):
    orig = constant_images([10, 20, 30, 40, 50])
    recon = constant_images([110, 120, 130, 140, 150])
    _, size, arr = read_png(viz.save_reconstructions(orig, recon, tmp_path / "r.png", nrow=3))
    assert size == (3 * (W + 2) + 2, 4 * (H + 2) + 2)
    for k in range(5):
        i, j = divmod(k, 3)
        assert np.all(cell(arr, 2 * i, j) == 10 * (k + 1))
        assert np.all(cell(arr, 2 * i + 1, j) == 10 * (k + 1) + 100)


def test_interpolation_rows(tmp_path):
    rows = torch.stack([constant_images([0, 50, 100, 150]), constant_images([200, 210, 220, 230])])
    _, size, arr = read_png(viz.save_interpolation(rows, tmp_path / "i.png"))
    assert size == (4 * (W + 2) + 2, 2 * (H + 2) + 2)
    assert np.all(cell(arr, 0, 3) == 150) and np.all(cell(arr, 1, 0) == 200)


def test_completion_paints_missing_pixels(tmp_path):
    orig = constant_images([100, 200])
    mask = torch.ones(2, 1, H, W)
    mask[:, :, : H // 2] = 0  # top half missing
    comps = torch.stack([constant_images([10, 20, 30]), constant_images([40, 50, 60])])
    mode, size, arr = read_png(viz.save_completion(orig, mask, comps, tmp_path / "c.png"))
    assert mode == "RGB" and size == (5 * (W + 2) + 2, 2 * (H + 2) + 2)
    shown = cell(arr, 1, 0)
    assert np.all(shown[: H // 2] == (255, 0, 0))  # missing: red
    assert np.all(shown[H // 2 :] == 200)  # observed: the original grey level
    assert np.all(cell(arr, 1, 2) == 50) and np.all(cell(arr, 1, 4) == 200)  # completion 2, original
    grey = viz.masked_input(orig, mask)
    assert grey.shape == (2, 3, H, W)
    # a grey image never has R != G, so the missing pixels are unmistakable
    assert torch.all((grey[:, 0] != grey[:, 1]) == (mask[:, 0] == 0))


def test_latent_map_png_size_and_variants(tmp_path):
    n = 5
    decoded = torch.rand(n * n, 1, 6, 6)
    pts, labels = torch.randn(200, 2), torch.arange(200) % 10
    mode, size, _ = read_png(viz.save_latent_map(decoded, n, None, tmp_path / "m.png", pts, labels))
    assert size == (1100, 500)
    _, size, _ = read_png(viz.save_latent_map(decoded, n, (-3, 3), tmp_path / "alone.png"))
    assert size == (550, 500)
    many = torch.arange(200) % 25  # more than 10 classes: a colour bar instead of a legend
    _, size, _ = read_png(
        viz.save_latent_map(torch.rand(n * n, 3, 4, 4), n, viz.latent_axis(n), tmp_path / "cb.png", pts, many)
    )
    assert size == (1100, 500)


@pytest.mark.parametrize("suffix", sorted(viz.PICTURE_FORMATS))
@pytest.mark.parametrize("channels", [1, 3])
def test_pictures_are_written_in_the_format_their_suffix_names(tmp_path, suffix, channels):
    from PIL import Image as PILImage

    fmt = viz.PICTURE_FORMATS[suffix]
    PILImage.init()
    if fmt not in PILImage.SAVE:
        pytest.skip(f"this Pillow cannot write {fmt}")
    images = constant_images([0, 255, 128, 64], c=channels)
    path = viz.save_grid(images, tmp_path / f"grid{suffix.upper()}", nrow=2, pad=0)  # suffixes in any case
    if fmt == "PDF":  # Pillow writes PDF but does not read it back
        assert path.read_bytes().startswith(b"%PDF")
        return
    with PILImage.open(path) as im:
        assert im.format == fmt and im.size == (2 * W, 2 * H)
        grey = np.asarray(im.convert("L"), dtype=float)
    if fmt != "JPEG":  # lossless formats keep every level
        assert grey[0, 0] == 0 and grey[0, W] == 255 and grey[H, 0] == 128 and grey[H, W] == 64


def test_latent_map_as_jpeg(tmp_path):
    n = 3
    path = viz.save_latent_map(torch.rand(n * n, 1, 6, 6), n, None, tmp_path / "m.jpg", torch.randn(20, 2))
    with Image.open(path) as im:
        assert im.format == "JPEG" and im.size == (1100, 500)


@pytest.mark.parametrize("name", ["x.xyz", "x", "x.npy", "x.png.txt"])
def test_an_unknown_picture_suffix_is_refused_before_writing(tmp_path, name):
    with pytest.raises(VaekitError) as e:
        viz.save_grid(torch.rand(2, 1, H, W), tmp_path / name)
    assert_one_line(e, "cannot write", name, ".png", ".jpg")
    assert not (tmp_path / name).exists()
    with pytest.raises(VaekitError):
        viz.save_latent_map(torch.rand(4, 1, H, W), 2, None, tmp_path / "new" / name)
    assert not (tmp_path / "new").exists()  # nor a folder for it


def test_save_array_writes_npy_only(tmp_path):
    x = torch.rand(3, 1, H, W)
    path = viz.save_array(x, tmp_path / "sub" / "a.npy")
    assert np.array_equal(np.load(path), x.numpy())
    with pytest.raises(VaekitError) as e:
        viz.save_array(x, tmp_path / "a.csv")
    assert_one_line(e, "must end in .npy")
    assert not (tmp_path / "a.csv").exists() and not (tmp_path / "a.csv.npy").exists()
    with pytest.raises(VaekitError) as e:
        viz.save_array(x, tmp_path / "sub")
    assert_one_line(e, "is a folder")
    with pytest.raises(VaekitError) as e:
        viz.save_array(x, tmp_path / "sub" / "a.npy" / "deeper" / "b.npy")
    assert_one_line(e, f"{tmp_path / 'sub' / 'a.npy'} is a file, not a folder")


# ----------------------------------------------------------------------------------------
# one-line errors
# ----------------------------------------------------------------------------------------
def test_wrong_shapes_raise_one_line(tmp_path):
    cases = [
        (lambda: viz.image_grid(torch.rand(4, H, W)), "[N, C, H, W]"),
        (lambda: viz.image_grid(torch.rand(4, 2, H, W)), "1 or 3 channels"),
        (lambda: viz.image_grid(torch.full((2, 1, H, W), float("nan"))), "NaN"),
        (lambda: viz.image_grid(torch.rand(0, 1, H, W)), "empty"),
        (lambda: viz.image_grid(torch.rand(2, 1, H, W), nrow=0), "nrow"),
        (
            lambda: viz.save_reconstructions(torch.rand(2, 1, H, W), torch.rand(3, 1, H, W), tmp_path / "r.png"),
            "differ in shape",
        ),
        (lambda: viz.save_interpolation(torch.rand(4, 1, H, W), tmp_path / "i.png"), "[R, S, C, H, W]"),
        (
            lambda: viz.save_completion(
                torch.rand(2, 1, H, W), torch.ones(2, 1, H, W + 1), torch.rand(2, 3, 1, H, W), tmp_path / "c.png"
            ),
            "mask must be",
        ),
        (
            lambda: viz.save_completion(
                torch.rand(2, 1, H, W), torch.ones(2, 1, H, W), torch.rand(3, 3, 1, H, W), tmp_path / "c.png"
            ),
            "completions must be",
        ),
        (lambda: viz.save_latent_map(torch.rand(8, 1, H, W), 3, None, tmp_path / "m.png"), "n*n = 9"),
        (
            lambda: viz.save_latent_map(torch.rand(9, 1, H, W), 3, None, tmp_path / "m.png", torch.rand(5, 3)),
            "points must be [M, 2]",
        ),
        (
            lambda: viz.save_latent_map(
                torch.rand(9, 1, H, W), 3, None, tmp_path / "m.png", torch.rand(5, 2), torch.arange(4)
            ),
            "labels must be [M]",
        ),
        (lambda: viz.interpolate(torch.rand(2, 3), torch.rand(2, 4), 5), "same shape [B, D]"),
        (lambda: viz.interpolate(torch.rand(2, 3), torch.rand(2, 3), 1), "steps must be >= 2"),
    ]
    for fn, needle in cases:
        with pytest.raises(VaekitError) as e:
            fn()
        assert_one_line(e, needle)


def test_unwritable_output_path(tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    images = torch.rand(2, 1, H, W)
    with pytest.raises(VaekitError) as e:
        viz.save_grid(images, tmp_path / "file" / "x.png")
    assert_one_line(e, "cannot write", "x.png")
    with pytest.raises(VaekitError) as e:
        viz.save_grid(images, tmp_path)
    assert_one_line(e, "cannot write", "is a folder")
    with pytest.raises(VaekitError) as e:
        viz.save_latent_map(torch.rand(4, 1, H, W), 2, None, tmp_path / "file" / "m.png")
    assert_one_line(e, "cannot write")


# ----------------------------------------------------------------------------------------
# latent-space maths
# ----------------------------------------------------------------------------------------
def test_slerp_endpoints_unit_norm_and_constant_speed():
    g = torch.Generator().manual_seed(0)
    z0 = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    z1 = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    assert torch.equal(viz.slerp(z0, z1, 0.0), z0) and torch.equal(viz.slerp(z0, z1, 1.0), z1)
    t = torch.linspace(0, 1, 11).view(1, 11, 1)
    path = viz.slerp(z0[:, None], z1[:, None], t)  # [6, 11, 8]
    assert torch.allclose(path.norm(dim=-1), torch.ones(6, 11), atol=1e-5)
    omega = torch.arccos((z0 * z1).sum(-1))
    angle = torch.arccos((path * z0[:, None]).sum(-1).clamp(-1, 1))  # angle from z0 grows linearly
    assert torch.allclose(angle, omega[:, None] * t[0, :, 0], atol=1e-3)
    # equal norms r stay at norm r; the straight line cuts inside the sphere
    r = 3.0
    mid_s, mid_l = viz.slerp(r * z0, r * z1, 0.5), viz.lerp(r * z0, r * z1, 0.5)
    assert torch.allclose(mid_s.norm(dim=-1), torch.full((6,), r), atol=1e-4)
    assert torch.all(mid_l.norm(dim=-1) < r)


def test_slerp_parallel_falls_back_to_lerp_and_lerp_is_linear():
    z0 = torch.tensor([[1.0, 2.0]])
    z1 = 3 * z0
    assert torch.allclose(viz.slerp(z0, z1, 0.5), viz.lerp(z0, z1, 0.5))
    assert torch.allclose(viz.lerp(z0, z1, 0.25), torch.tensor([[1.5, 3.0]]))
    assert torch.isfinite(viz.slerp(z0, -z0, 0.3)).all()  # antipodal: no NaN


@pytest.mark.parametrize("spherical", [False, True])
def test_interpolate_shape_and_endpoints(spherical):
    z0, z1 = torch.randn(3, 5), torch.randn(3, 5)
    path = viz.interpolate(z0, z1, 7, slerp=spherical)
    assert path.shape == (3, 7, 5)
    assert torch.allclose(path[:, 0], z0, atol=1e-6) and torch.allclose(path[:, -1], z1, atol=1e-6)
    if not spherical:  # equal steps along the straight line
        assert torch.allclose(path.diff(dim=1), ((z1 - z0) / 6)[:, None].expand(3, 6, 5), atol=1e-5)


def test_latent_grid_quantiles_order_and_symmetry():
    n = 7
    a = viz.latent_axis(n)
    normal = torch.distributions.Normal(0.0, 1.0)
    assert torch.allclose(normal.cdf(a), torch.linspace(0.05, 0.95, n), atol=1e-6)  # Gaussian quantiles
    assert torch.allclose(a, -a.flip(0), atol=1e-6) and abs(a[n // 2]) < 1e-6
    grid = viz.latent_grid(n)
    assert grid.shape == (n * n, 2)
    assert torch.equal(grid[0], torch.stack([a[0], a[-1]]))  # top-left: smallest z1, largest z2
    assert torch.equal(grid[n - 1], torch.stack([a[-1], a[-1]]))  # top-right
    assert torch.equal(grid[-1], torch.stack([a[-1], a[0]]))  # bottom-right
    assert torch.allclose(grid.mean(0), torch.zeros(2), atol=1e-6)
    # point symmetry: z -> -z maps the grid onto itself (entry k onto entry n*n - 1 - k)
    assert torch.allclose(grid, -grid.flip(0), atol=1e-6)
    lin = viz.latent_grid(3, z_range=(-3, 3))
    assert torch.equal(lin[:, 0].unique(), torch.tensor([-3.0, 0.0, 3.0]))
    assert math.isclose(viz.latent_axis(2, (-2, 4))[1].item(), 4.0)


# ----------------------------------------------------------------------------------------
# figures for people: enlarged, titled, labelled
# ----------------------------------------------------------------------------------------
def test_small_panels_are_enlarged_pixel_for_pixel_and_titled(tmp_path):
    images = constant_images([0, 255, 128, 64])
    fig = viz.samples_figure(images, "four samples", nrow=2)
    assert viz.figure_text(fig) == ["four samples"]
    arr = viz.figure_array(fig)
    grid = viz.image_grid(images, nrow=2)  # 12 x 12 pixels
    s = viz._enlargement(grid)
    assert s * grid.shape[0] >= viz.PANEL_MIN_SIDE and (s - 1) * grid.shape[0] < viz.PANEL_MIN_SIDE
    big = np.repeat(np.repeat(grid, s, 0), s, 1)[..., 0]
    grey = (arr == 128).all(-1)  # the padding's level: only the grid has long runs of it
    top = int(np.argmax(grey.sum(1) >= big.shape[1]))
    left = int(np.argmax(grey.sum(0) >= big.shape[0]))
    assert np.array_equal(arr[top : top + big.shape[0], left : left + big.shape[1], 0], big)  # no resampling
    path = viz.save_figure(fig, tmp_path / "s.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.text["Title"] == "four samples"
        assert max(im.size) >= viz.PANEL_MIN_SIDE and np.array_equal(np.asarray(im.convert("RGB")), arr)


def test_reconstruction_rows_are_labelled_data_and_reconstruction():
    orig, recon = constant_images([10, 20, 30, 40, 50]), constant_images([110, 120, 130, 140, 150])
    fig = viz.reconstructions_figure(orig, recon, "recon", nrow=3)
    assert viz.figure_text(fig) == ["recon", "data", "reconstruction", "data", "reconstruction"]
    with pytest.raises(VaekitError, match="differ in shape"):
        viz.reconstructions_figure(orig, recon[:4], "recon")


def test_interpolations_show_their_two_data_images_framed():
    paths = torch.stack([constant_images([60, 70, 80]), constant_images([90, 100, 110])])  # [2, 3, 1, H, W]
    starts, ends = constant_images([1, 2]), constant_images([254, 253])
    fig = viz.interpolation_figure(paths, starts, ends, "paths")
    texts = viz.figure_text(fig)
    assert texts[0] == "paths" and texts[1:6] == ["data", "0", "0.5", "1", "data"]
    assert "framed: the test images themselves" in texts[-1]
    # the cells: row i is (start, path..., end), and the padding around both ends is orange
    grid = viz._frame(
        viz._tile(
            [list(r) for r in viz._hwc_uint8(torch.cat([starts[:, None], paths, ends[:, None]], 1))], (H, W, 1), 2, 0.5
        ),
        [(i, j) for i in range(2) for j in (0, 4)],
        (H, W),
        2,
        viz.MARK_COLOR,
    )
    orange = tuple(viz._level(c) for c in viz.MARK_COLOR)
    assert np.all(cell(grid, 0, 0) == 1) and np.all(cell(grid, 1, 4) == 253) and np.all(cell(grid, 1, 2) == 100)
    assert tuple(grid[0, 0]) == orange and tuple(grid[2 + H, 2 + 4 * (W + 2) - 1]) == orange  # frame corners
    assert tuple(grid[2 + H // 2, 2 + 2 * (W + 2) - 1]) == (128, 128, 128)  # between two path cells: grey
    with pytest.raises(VaekitError, match="starts and ends must be"):
        viz.interpolation_figure(paths, starts[:1], ends, "paths")


def test_traverse_rows_and_columns_are_labelled():
    images = torch.rand(2, 5, 1, H, W)
    off = torch.tensor([-3.0, -1.5, 0.0, 1.5, 3.0])
    fig = viz.traverse_figure(images, ["z_3 (var 1.2)", "z_1 (var 0.01)"], off, "traverse", "offset in prior std")
    assert viz.figure_text(fig) == [
        "traverse",
        "z_3 (var 1.2)",
        "z_1 (var 0.01)",
        "-3",
        "-1.5",
        "0 (mean)",
        "+1.5",
        "+3",
        "offset in prior std",
    ]
    many = viz.traverse_figure(torch.rand(1, 41, 1, H, W), ["z_1"], torch.linspace(-3, 3, 41), "t", "x")
    cols = viz.figure_text(many)[2:-1]
    assert len(cols) < 41 and {"-3", "0 (mean)", "+3"} <= set(cols)  # thinned, keeping both ends and the mean
    with pytest.raises(VaekitError, match="needs 2 row labels and 5 offsets"):
        viz.traverse_figure(images, ["z_1"], off, "t", "x")


def test_numbers_on_axes_keep_their_sign():
    assert [viz._number(v) for v in (-0.75, 0.75, -3.0, 1e-9, -1e-9, 0.111)] == [
        "-0.75",
        "0.75",
        "-3",
        "0",
        "0",
        "0.11",
    ]


def test_latent_map_names_its_axes_and_carries_its_title(tmp_path):
    n = 3
    decoded, pts = torch.rand(n * n, 1, 6, 6), torch.randn(20, 2)
    fig = viz.latent_map_figure(decoded, n, None, pts, title="2 of 5 units active", axis_names=("PC1", "PC2"))
    texts = viz.figure_text(fig)
    assert "2 of 5 units active" in texts and texts.count("PC1") == 2 and texts.count("PC2") == 2
    assert "z1" not in texts and "z2" not in texts
    assert viz.figure_text(viz.latent_map_figure(decoded, n, None, pts)).count("z_1") == 2  # the default names
    path = viz.save_latent_map(decoded, n, None, tmp_path / "m.png", pts, title="2 of 5 units active")
    with Image.open(path) as im:
        assert im.text["Title"] == "2 of 5 units active" and im.size == (1100, 500)


# vector data: pair plots, histograms, tables, paths, a latent scatter
# ----------------------------------------------------------------------------------------
def _has_color(rgb: np.ndarray, color, tol: int = 40) -> bool:
    """Whether any pixel is within ``tol`` of ``color`` (RGB 0..255) in every channel."""
    return bool((np.abs(rgb[..., :3].astype(int) - np.array(color)) <= tol).all(-1).any())


# histograms at alpha 0.45 on white: samples tab:orange (255, 127, 14), data grey 0.45 (115, 115, 115)
ORANGE_ON_WHITE, GREY_ON_WHITE = (255, 197, 146), (192, 192, 192)


def test_vector_samples_pair_plot_up_to_6_features_then_histograms(tmp_path):
    g = torch.Generator().manual_seed(0)
    for d, size in ((3, (700, 660)), (6, (1300, 1260)), (13, (1440, 660)), (60, (1440, 1660))):
        samples, data = torch.randn(50, d, generator=g), torch.randn(40, 1, 1, d, generator=g) * 3
        mode, got, rgb = read_png(viz.save_vector_samples(samples, data, tmp_path / f"s{d}.png"))
        assert mode == "RGB" and got == size  # pair plot D x D panels; histograms 6 per row, the first 48
        assert _has_color(rgb, ORANGE_ON_WHITE, tol=8) and _has_color(rgb, GREY_ON_WHITE, tol=8)  # samples and data
    _, _, rgb = read_png(viz.save_vector_samples(torch.randn(20, 2), None, tmp_path / "alone.png", ["a", "b"]))
    assert _has_color(rgb, ORANGE_ON_WHITE, tol=8)
    for args, needle in (
        ((torch.randn(5, 3), torch.randn(5, 4)), "samples have 3 features and data 4"),
        ((torch.randn(5, 2, 3), None), "must be vectors [N, D] or [N, 1, 1, D]"),
        ((torch.full((5, 2), float("nan")), None), "NaN or infinite"),
    ):
        with pytest.raises(VaekitError) as e:
            viz.save_vector_samples(*args, tmp_path / "bad.png")
        assert_one_line(e, needle)
    with pytest.raises(VaekitError) as e:
        viz.save_vector_samples(torch.randn(5, 2), None, tmp_path / "bad.png", names=["only one"])
    assert_one_line(e, "1 feature names for 2 features")


def test_reconstruction_table_rows_csv_and_picture(tmp_path):
    import csv

    x = torch.tensor([[1.0, 250.5, -3.25], [0.0, 1e-4, 7.0]]).view(2, 1, 1, 3)
    r = x + 0.5
    header, rows = viz.vector_table(x, r, ["a", "b", "c"])
    assert header == ["example", "row", "a", "b", "c"]
    assert [row[:2] for row in rows] == [[0, "data"], [0, "reconstruction"], [1, "data"], [1, "reconstruction"]]
    assert rows[1][2:] == pytest.approx([1.5, 251.0, -2.75]) and rows[2][2:] == pytest.approx([0.0, 1e-4, 7.0])
    with open(viz.write_csv(header, rows, tmp_path / "t" / "r.csv"), newline="") as f:
        back = list(csv.reader(f))
    assert back[0] == header and back[2] == ["0", "reconstruction", "1.5", "251", "-2.75"] and len(back) == 5
    mode, size, rgb = read_png(viz.save_table(header, rows, tmp_path / "r.png", "reconstructions"))
    assert mode == "RGB" and size == (round(100 * (1.2 + 1.1 * 5)), round(100 * (0.9 + 0.3 * 4)))
    wide = [["example", "row", *[f"f{i}" for i in range(30)]], [[i, "data", *[1.0] * 30] for i in range(40)]]
    assert read_png(viz.save_table(*wide, tmp_path / "wide.png"))[1][0] == round(100 * (1.2 + 1.1 * 13))  # 10 shown
    with pytest.raises(VaekitError) as e:
        viz.vector_table(x, r[:1])
    assert_one_line(e, "differ in shape")


def test_vector_paths_and_latent_scatter(tmp_path):
    mode, size, _ = read_png(viz.save_vector_paths(torch.randn(3, 5, 1, 1, 4), tmp_path / "p.png", list("abcd")))
    assert mode == "RGB" and size[0] > size[1] > 0
    with pytest.raises(VaekitError) as e:
        viz.save_vector_paths(torch.randn(3, 5), tmp_path / "p.png")
    assert_one_line(e, "interpolation paths must be finite [R, steps, D]")
    pts, labels = torch.randn(30, 2), np.arange(30) % 3
    mode, size, rgb = read_png(viz.save_latent_scatter(pts, tmp_path / "m.png", labels=labels, title="map"))
    assert size == (650, 550) and _has_color(rgb, (31, 119, 180)) and _has_color(rgb, (44, 160, 44))  # tab10 classes
    with pytest.raises(VaekitError) as e:
        viz.save_latent_scatter(torch.randn(30, 3), tmp_path / "m.png")
    assert_one_line(e, "points must be [M, 2]")
