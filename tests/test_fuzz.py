"""Bad input, tried systematically (hypothesis): the ``vaekit`` command either works or says
what is wrong in one ``vaekit: error: ...`` line with exit status 2 — never a traceback, and
never a run folder for a run that did not start.

Each case goes through the real command, in process (``vaekit.cli.main``): malformed IDX
files (truncated, wrong magic, negative or zero sizes, wrong type codes, trailing bytes, bad
gzip), .npy / .npz files (every dtype incl. object and complex, any rank, NaN / inf /
out-of-range pixels, wrong label arrays, damaged bytes), image folders (empty, non-image
files, truncated PNGs, mixed sizes), config files and ``--set`` overrides (unknown keys, wrong
types, non-finite numbers, YAML that is not a mapping), and damaged checkpoints. Inputs that
are in fact valid must train (one step) or evaluate.

The examples are derandomised (same cases on every run) and few per test, to keep the suite
fast on a shared machine; run with ``VAEKIT_FUZZ_EXAMPLES=500`` for a longer search.
"""

import contextlib
import gzip
import io
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vaekit import checkpoint as ckpt
from vaekit.cli import main
from vaekit.config import SECTIONS, Config, _fields, build_config
from vaekit.errors import CheckpointError, ConfigError

EXAMPLES = int(os.environ.get("VAEKIT_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
TRAIN_ONE_STEP = [
    "--max-steps",
    "1",
    "--no-progress",
    "--set",
    "tensorboard=false",
    "--set",
    "epochs=1",
    "--set",
    "batch_size=4",
]


@contextlib.contextmanager
def workdir():
    with tempfile.TemporaryDirectory(prefix="vaekit-fuzz-") as d:
        yield Path(d)


def run_cli(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    return rc, capsys.readouterr().err


def assert_user_error(rc, err, out: Path | None = None):
    errors = [line for line in err.splitlines() if line.startswith("vaekit: error: ")]
    assert rc == 2, f"exit status {rc}: {err[-2000:]}"
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
    if out is not None:
        assert not out.exists(), f"a run folder was left for a run that did not start: {list(out.rglob('*'))}"


def check_train(argv, capsys, out: Path, must_work: bool | None = None) -> int:
    """Run ``vaekit train``; a failure must be a clean user error, a success a complete run."""
    rc, err = run_cli(["train", *argv, "--out", out, *TRAIN_ONE_STEP], capsys)
    if rc == 0:
        assert must_work is not False, f"accepted bad input: {err[-1000:]}"
        assert ckpt.list_checkpoints(out) and (out / "config.yaml").is_file()
    else:
        assert must_work is not True, f"rejected good input: {err[-1000:]}"
        assert_user_error(rc, err, out)
    return rc


# --- IDX --------------------------------------------------------------------------------------

IDX_CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MUTATIONS = [
    "none",
    "gzip",
    "truncate",
    "magic",
    "negative size",
    "zero size",
    "huge size",
    "extra bytes",
    "ndim",
    "type code",
    "gzip truncated",
    "label count",
    "empty",
]


def idx_bytes(arr: np.ndarray, code: int) -> bytes:
    head = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.astype(IDX_CODES[code]).tobytes()


@st.composite
def idx_cases(draw):
    n, h, w = draw(st.integers(1, 6)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    code = draw(st.sampled_from(sorted(IDX_CODES)))
    if code in (0x0D, 0x0E):
        pixels = draw(
            hnp.arrays(
                np.float64,
                (n, h, w),
                elements=st.one_of(st.floats(0, 1), st.sampled_from([math.nan, math.inf, -math.inf, -0.5, 2.0])),
            )
        )
    else:
        lo, hi = {0x08: (0, 255), 0x09: (-128, 127), 0x0B: (-400, 400), 0x0C: (-400, 400)}[code]
        pixels = draw(hnp.arrays(np.int64, (n, h, w), elements=st.integers(lo, hi)))
    mutation = draw(st.sampled_from(MUTATIONS))
    data = idx_bytes(pixels, code)
    labels = idx_bytes(np.arange(n) % 10, 0x08)
    where = draw(st.integers(0, max(0, len(data) - 1)))
    if mutation == "gzip":
        data = gzip.compress(data)
    elif mutation == "truncate":
        data = data[:where]
    elif mutation == "magic":
        data = (
            draw(
                st.binary(min_size=4, max_size=4).filter(
                    lambda b: b[:2] != b"\0\0" or b[2] not in IDX_CODES or b[3] == 0
                )
            )
            + data[4:]
        )
    elif mutation in ("negative size", "zero size", "huge size"):
        dim = draw(st.integers(0, 2))
        value = {"negative size": (-draw(st.integers(1, 2**31))) % 2**32, "zero size": 0, "huge size": 2**32 - 1}[
            mutation
        ]
        data = data[: 4 + 4 * dim] + value.to_bytes(4, "big") + data[8 + 4 * dim :]
    elif mutation == "extra bytes":
        data += draw(st.binary(min_size=1, max_size=9))
    elif mutation == "ndim":
        data = data[:3] + bytes([draw(st.sampled_from([0, 1, 2, 4, 255]))]) + data[4:]
    elif mutation == "type code":
        data = data[:2] + bytes([draw(st.sampled_from([0x00, 0x07, 0x0A, 0x0F, 0xFF]))]) + data[3:]
    elif mutation == "gzip truncated":
        z = gzip.compress(data)
        data = z[: draw(st.integers(2, len(z) - 1))]
    elif mutation == "label count":
        labels = idx_bytes(np.arange(n + draw(st.integers(1, 3))) % 10, 0x08)
    elif mutation == "empty":
        data = b""
    valid_pixels = bool(
        np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= (1 if code in (0x0D, 0x0E) else 255)
    )
    return data, labels, mutation, valid_pixels


@FUZZ
@given(case=idx_cases())
def test_idx_files(case, capsys):
    data, labels, mutation, valid_pixels = case
    with workdir() as d:
        folder = d / "data" / "mnist"
        folder.mkdir(parents=True)
        for split in ("train", "t10k"):
            (folder / f"{split}-images-idx3-ubyte").write_bytes(data)
            (folder / f"{split}-labels-idx1-ubyte").write_bytes(labels)
        good = mutation in ("none", "gzip") and valid_pixels
        check_train(
            ["--preset", "dense-digits", "--data", "mnist", "--data-dir", d / "data"],
            capsys,
            d / "out" / "run",
            must_work=True if good else False,
        )


# --- .npy / .npz --------------------------------------------------------------------------------

DTYPES = [
    "uint8",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint16",
    "float16",
    "float32",
    "float64",
    "bool",
    "complex64",
    "U2",
    "object",
]


@st.composite
def arrays_of_any_kind(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=5)))
    size = math.prod(shape)
    if dtype == "object":
        arr = np.empty(shape, dtype=object)
        arr.flat[:] = [[i] for i in range(size)] if size else []
        return arr
    if dtype == "U2":
        return np.full(shape, "ab")
    if dtype.startswith(("float", "complex")):
        elements = st.one_of(
            st.floats(0, 1, width=16 if dtype == "float16" else 32),
            st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 3.0]),
        )
    elif dtype == "bool":
        elements = st.booleans()
    else:
        info = np.iinfo(dtype)
        elements = st.integers(max(info.min, -300), min(info.max, 300))
    return draw(hnp.arrays(dtype, shape, elements=elements))


def damaged(draw, raw: bytes) -> tuple[bytes, bool]:
    how = draw(st.sampled_from(["none", "none", "truncate", "flip", "garbage"]))
    if how == "truncate" and raw:
        return raw[: draw(st.integers(0, len(raw) - 1))], True
    if how == "flip" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        return raw[:i] + bytes([raw[i] ^ draw(st.integers(1, 255))]) + raw[i + 1 :], True
    if how == "garbage":
        return draw(st.binary(max_size=64)), True
    return raw, False


@FUZZ
@given(data=st.data())
def test_npy_and_npz_files(data, capsys):
    arr = data.draw(arrays_of_any_kind())
    as_npz = data.draw(st.booleans())
    buf = io.BytesIO()
    if as_npz:
        key = data.draw(st.sampled_from(["x", "train", "x_train", "images", "y"]))
        extra = {}
        if data.draw(st.booleans()):  # labels, possibly wrong
            extra["y" if key != "y" else "z"] = data.draw(arrays_of_any_kind())
        np.savez(buf, **{key: arr}, **extra)
    else:
        np.save(buf, arr, allow_pickle=True)  # object arrays become pickles: must be refused, not run
    raw, broken = damaged(data.draw, buf.getvalue())
    with workdir() as d:
        path = d / ("set.npz" if as_npz else "set.npy")
        path.write_bytes(raw)
        rc = check_train(
            ["--preset", "dense-digits", "--data", path],
            capsys,
            d / "out" / "run",
            must_work=False if arr.dtype.kind in "UcO" else None,
        )
        if rc == 0 and not broken:  # what trained was a sound image set
            assert sound_images(arr), (arr.dtype, arr.shape)


def sound_images(arr: np.ndarray) -> bool:
    if arr.ndim not in (2, 3, 4) or arr.shape[0] < 2 or arr.size == 0:
        return False
    if arr.dtype.kind == "b":
        return True
    if arr.dtype.kind in "iu":
        return bool(arr.min() >= 0 and arr.max() <= 255)
    if arr.dtype.kind == "f":
        return bool(np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1)
    return False


@FUZZ
@given(data=st.data())
def test_image_folders(data, capsys):
    from PIL import Image

    kinds = data.draw(
        st.lists(
            st.sampled_from(
                [
                    "png",
                    "png",
                    "png other size",
                    "text",
                    "empty file",
                    "truncated png",
                    "hidden",
                    "subfolder",
                    "rgb png",
                ]
            ),
            max_size=5,
        )
    )
    with workdir() as d:
        folder = d / "images"
        folder.mkdir()
        for i, kind in enumerate(kinds):
            path = folder / f"{i:02d}.png"
            if kind in ("png", "png other size", "rgb png", "truncated png", "hidden"):
                size = (6, 5) if kind == "png other size" else (4, 4)
                mode = "RGB" if kind == "rgb png" else "L"
                im = Image.fromarray(
                    np.full(
                        (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0]), 37 * i % 256, dtype=np.uint8
                    ),
                    mode,
                )
                buf = io.BytesIO()
                im.save(buf, format="PNG")
                raw = buf.getvalue()
                if kind == "truncated png":
                    raw = raw[: len(raw) // 2]
                (folder / f".{i}.png" if kind == "hidden" else path).write_bytes(raw)
            elif kind == "text":
                path.with_suffix(".txt").write_text("not an image\n")
            elif kind == "empty file":
                path.write_bytes(b"")
            elif kind == "subfolder":
                (folder / f"sub{i}").mkdir()
        visible = [k for k in kinds if k not in ("hidden", "subfolder")]
        same = {("other" if k == "png other size" else "4x4") for k in visible}
        good = len(visible) >= 2 and set(visible) <= {"png", "rgb png", "png other size"} and len(same) == 1
        check_train(
            ["--preset", "dense-digits", "--data", folder], capsys, d / "out" / "run", must_work=True if good else None
        )


# --- configuration --------------------------------------------------------------------------

ALL_KEYS = [f"{s}.{k}" for s in SECTIONS for k in _fields(s)] + [k for s in SECTIONS for k in _fields(s)]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)
keys = st.one_of(st.sampled_from(ALL_KEYS), st.text(max_size=15), st.sampled_from(SECTIONS))


def assert_sound(cfg: Config):
    """A config that was accepted has the declared types and finite numbers."""
    import typing

    for section in SECTIONS:
        obj = getattr(cfg, section)
        hints = typing.get_type_hints(type(obj))
        for name in _fields(section):
            v = getattr(obj, name)
            if isinstance(v, float):
                assert math.isfinite(v), f"{section}.{name} = {v} was accepted"
            tp = hints[name]
            if tp in (int, float, str, bool):
                assert isinstance(v, tp) and (tp is bool or not isinstance(v, bool)), (section, name, v)


@FUZZ
@given(overrides=st.dictionaries(keys, values, max_size=4))
def test_config_overrides(overrides):
    try:
        cfg = build_config("dense-digits", overrides=overrides)
    except ConfigError as e:
        assert "\n" not in str(e) and str(e)
        return
    assert_sound(cfg)


@FUZZ
@given(
    doc=st.one_of(st.dictionaries(keys, values, max_size=4), values, st.text(max_size=40), st.binary(max_size=40)),
    sets=st.lists(st.text(max_size=20), max_size=2),
)
def test_config_files_and_set_on_the_command_line(doc, sets, capsys):
    with workdir() as d:
        path = d / "config.yaml"
        if isinstance(doc, bytes):
            path.write_bytes(doc)
        elif isinstance(doc, str):
            path.write_text(doc)
        else:
            path.write_text(yaml.safe_dump(doc))
        missing = d / "no-such-data.npz"  # so that a config that is fine still fails, on the data
        argv = ["train", "--config", path, "--data", missing, "--out", d / "out" / "run"]
        for s in sets:
            argv += ["--set", s]
        rc, err = run_cli(argv, capsys)
        assert_user_error(rc, err, d / "out" / "run")


@pytest.mark.parametrize(
    "override,complaint",
    [
        ("lr=.nan", "train.lr"),
        ("lr=-.inf", "train.lr"),
        ("beta=.inf", "train.beta"),
        ("ema=.nan", "train.ema"),
        ("epochs=2.5", "train.epochs"),
        ("hidden=[a]", "model.hidden"),
        ("nosuchkey=1", "nosuchkey"),
        ("batch_size=true", "train.batch_size"),
        ("grad_clip=.nan", "train.grad_clip"),
    ],
)
def test_malformed_values_are_named(override, complaint, capsys, tmp_path):
    rc, err = run_cli(
        ["train", "--preset", "dense-digits", "--set", override, "--out", tmp_path / "r", *TRAIN_ONE_STEP[:-4]], capsys
    )
    assert_user_error(rc, err, tmp_path / "r")
    assert complaint in err


# --- checkpoints --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "run"
    cfg = build_config("dense-digits", overrides={"epochs": 1, "tensorboard": False, "hidden": [8], "latent_dim": 2})
    from vaekit.train import train

    train(cfg, out, torch.rand(20, 1, 8, 8), progress=False, max_steps=1)
    return out


@FUZZ
@given(data=st.data())
def test_damaged_checkpoints(data, trained_run, capsys):
    raw = ckpt.list_checkpoints(trained_run)[0].read_bytes()
    how = data.draw(st.sampled_from(["truncate", "flip", "flip", "zero block", "garbage", "empty"]))
    if how == "truncate":
        bad = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "flip":
        i = data.draw(st.integers(0, len(raw) - 1))
        bad = raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1 :]
    elif how == "zero block":
        i = data.draw(st.integers(0, len(raw) - 1))
        bad = raw[:i] + bytes(min(512, len(raw) - i)) + raw[i + 512 :]
    elif how == "garbage":
        bad = data.draw(st.binary(max_size=200))
    else:
        bad = b""
    assume(bad != raw)
    with workdir() as d:
        path = d / "step-00000001.pt"
        path.write_bytes(bad)
        try:
            ckpt.read_checkpoint(path)
        except CheckpointError as e:
            assert str(path) in str(e) and "\n" not in str(e)
        rc, err = run_cli(
            ["evaluate", path, "--k", "2", "--n", "4", "--data", "digits", "--no-progress", "-o", d / "eval.json"],
            capsys,
        )
        if rc != 0:
            assert_user_error(rc, err)
            assert not (d / "eval.json").exists()
