"""Every verb of the ``vaekit`` command, fed argument lists drawn from valid and invalid values
(hypothesis): counts and seeds of every sign, non-finite numbers, missing files and folders,
wrong suffixes, unknown presets, keys and splits, data of another shape than the model's.

Whatever the arguments, the command exits 0 or 2, its stderr never holds a traceback, an
exit status 2 comes with exactly one ``vaekit: error: ...`` line, and a command that succeeds
has written the file its ``-o`` names, in the format the suffix names. The runs it works on
(a tiny VAE and a tiny Gaussian mixture on the 8x8 digits) are trained once per module; every
bounding option (K, steps, examples) is always drawn from small values, so the whole search
takes seconds per verb. ``VAEKIT_CLI_EXAMPLES=150`` searches longer.
"""

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vaekit.cli import COMMANDS, main
from vaekit.viz import PICTURE_FORMATS

EXAMPLES = int(os.environ.get("VAEKIT_CLI_EXAMPLES", "8"))  # per verb; 12 verbs
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
QUIET = ["--set", "tensorboard=false"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Paths the arguments are drawn from: two trained runs, files of every kind, missing paths."""
    root = tmp_path_factory.mktemp("cli-properties")
    vae, gmm = root / "vae", root / "gmm"
    small_vae = ["hidden=[16]", "latent_dim=3", "epochs=1", "eval_n=20"]
    small_gmm = ["components=3", "em_max_iter=3", "em_restarts=1"]
    for out, preset, sets in ((vae, "dense-digits", small_vae), (gmm, "gmm-digits", small_gmm)):
        argv = ["train", "--preset", preset, "--out", str(out), "--max-steps", "3", "--no-progress", *QUIET]
        assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    rng = np.random.default_rng(0)
    np.save(root / "big.npy", rng.random((12, 1, 12, 12)).astype(np.float32))  # another shape than 8x8
    np.save(root / "mask.npy", np.eye(8))  # a mask for the digits
    np.save(root / "mask-big.npy", np.eye(12))  # a mask of another shape
    (root / "notes.txt").write_text("not a checkpoint\n")
    (root / "empty-run").mkdir()
    (root / "empty.yaml").write_text("# nothing\n")
    (root / "good.yaml").write_text("preset: dense-digits\nhidden: [8]\nlatent_dim: 2\n")
    from vaekit.checkpoint import list_checkpoints

    return {
        "root": root,
        "vae": vae,
        "gmm": gmm,
        "ckpt": list_checkpoints(vae)[-1],
        "missing": root / "no" / "such",
        "notes": root / "notes.txt",
        "empty-run": root / "empty-run",
        "big": root / "big.npy",
        "mask": root / "mask.npy",
        "mask-big": root / "mask-big.npy",
        "empty.yaml": root / "empty.yaml",
        "good.yaml": root / "good.yaml",
    }


# --- argument lists ---------------------------------------------------------------------------
# Each verb: (flag, likely-valid values, invalid values, always given). A value is one token or
# a list of tokens (flag None: the tokens alone); a strategy stands for its values. An example
# draws likely-valid values for the options it gives and replaces at most one of them by an
# invalid value (or adds an unknown option), so that both successes and each kind of mistake
# are reached. Names of ``world`` stand for its paths; outputs: DIR a folder, UNDER-FILE a path
# below a plain file. Bounding options (K, steps, examples) are always given and small.

SEEDS = st.integers(-(2**40), 2**40)
BAD_INTS = ["-7", "-1", "0", "x", "1.5"]
BAD_REALS = ["nan", "inf", "-inf", "-1", "0", "abc"]
PICTURE = ("-o", ["p.png", "p.jpg", "p.npy", "p.PDF"], ["p.xyz", "p", "DIR", "UNDER-FILE"], True)
ARRAY = ("-o", ["f.npy"], ["f.csv", "f", "DIR", "UNDER-FILE"], True)
JSON = ("-o", ["r.json", "r.txt"], ["DIR", "UNDER-FILE"], True)
SEED = ("--seed", SEEDS, ["x"], False)
VAE_RUN = (None, ["vae", "ckpt"], ["gmm", "missing", "notes", "empty-run"], True)
ANY_RUN = (None, ["vae", "gmm", "ckpt"], ["missing", "notes", "empty-run"], True)
DATA = ("--data", ["digits"], ["big", "missing", "nosuch-data", "notes"], False)
SPLIT = ("--split", ["test", "train"], ["valid"], False)

SPECS = {
    "presets": [],
    "train": [
        (None, [["--preset", "dense-digits"], ["--config", "good.yaml"]],
         [["--preset", "dense-digts"], ["--config", "empty.yaml"], ["--config", "missing"], ["--resume", "missing"],
          ["--resume", "empty-run"], ["--preset", "dense-digits", "--config", "good.yaml"]], True),
        ("--set", ["hidden=[4]", "latent_dim=2", "beta=0.5", "objective=iwae", "batch_size=16", "free_bits=0.1"],
         ["beta=-1", "free_bits=-2", "grad_clip=-1", "lr=0", "lr=.nan", "epochs=0", "k=-3", "bogus=1", "ema=1",
          "warmup_steps=-1", "noequals", "eval_k=-1", "eval_n=0", "weight_decay=-1"], False),
        ("--epochs", [1, 2], BAD_INTS, False),
        ("--data", ["digits", "big"], ["missing", "nosuch-data", "notes"], False),
        ("--model", ["vae", "autoencoder", "flow"], ["nosuch"], False),
        ("--max-steps", [1, 2], [], True),
    ],
    "evaluate": [
        ANY_RUN, DATA, ("--k", [1, 4], BAD_INTS, True), SPLIT, ("--n", [1, 5, 100000], BAD_INTS, False),
        ("--batch-size", [1, 7], BAD_INTS, False), SEED, JSON, (None, [["--no-progress"]], [], True),
    ],
    "sample": [
        ANY_RUN, ("-n", [1, 4], BAD_INTS, False), (None, [[], ["--mean"]], [], False),
        ("--temperature", [0.5, 1, 2.5], BAD_REALS, False), SEED, PICTURE,
    ],
    "reconstruct": [VAE_RUN, DATA, ("-n", [1, 4, 100000], BAD_INTS, False), SEED, PICTURE],
    "interpolate": [
        VAE_RUN, DATA, ("--steps", [2, 3], ["1", *BAD_INTS], False), ("--pairs", [1, 2], BAD_INTS, False),
        (None, [[], ["--slerp"]], [], False), SEED, PICTURE,
    ],
    "latent-map": [
        VAE_RUN, DATA, ("--grid", [1, 3], BAD_INTS, False), ("--points", [1, 2, 50, 100000], BAD_INTS, False), PICTURE,
    ],
    "encode": [VAE_RUN, DATA, SPLIT, (None, [[], ["--logvar"]], [], False), ARRAY],
    "cluster": [(None, ["gmm"], ["vae", "missing", "notes"], True), DATA, SPLIT, ARRAY],
    "gap": [
        VAE_RUN, DATA, ("--k", [1, 3], BAD_INTS, True),
        ("--splits", ["test", "train", "test,train"], ["valid", ",", ""], False),
        ("--n", [1, 3], BAD_INTS, True), ("--svi-steps", [0, 2], ["-1", "x"], True),
        ("--svi-lr", [1e-3, 0.1], BAD_REALS, False),
        ("--svi-samples", [1, 2], BAD_INTS, False), ("--init", ["encoder", "prior"], ["nosuch"], False),
        ("--batch-size", [1, 2], BAD_INTS, False), SEED, JSON,
    ],
    "complete": [
        VAE_RUN, DATA, ("--mask", ["top", "left", "random:0.3", "mask"],
                        ["random:2", "random:x", "middle", "mask-big", "missing", "notes", "DIR"], False),
        ("-n", [1, 3], BAD_INTS, True), ("--completions", [1, 2], BAD_INTS, True),
        ("--method", ["importance", "svi"], ["gibbs"], False), ("--k", [1, 5], BAD_INTS, True),
        ("--svi-steps", [0, 2], ["-1", "x"], True), (None, [[], ["--mean"]], [], False), SPLIT, SEED,
        ("--json", ["r.json"], ["DIR", "UNDER-FILE"], False), PICTURE,
    ],
    "compare": [
        (None, [["vae"], ["vae", "gmm"], ["gmm", "vae"]], [["missing"], ["notes"], ["empty-run"], ["vae", "notes"]],
         True),
        ("--split", ["test", "train"], ["valid"], False),
        ("-o", ["c.png", "c.pdf", "c.jpg"], ["c.xyz", "c.npy", "c", "DIR", "UNDER-FILE"], False),
        ("--markdown", ["t.md"], ["DIR", "UNDER-FILE"], False),
    ],
    "export": [
        (None, ["vae", "gmm", "ckpt"], ["missing", "notes", "empty-run"], True),
        ("-o", ["EXPORT"], ["DIR-FULL", "UNDER-FILE", "file"], True),
    ],
    "score": [
        ANY_RUN, DATA, SPLIT, ("--n", [1, 5], BAD_INTS, True), ("--k", [1, 3], BAD_INTS, True),
        ("--batch-size", [1, 7], BAD_INTS, False), SEED, ("--csv", ["s.csv"], ["DIR", "UNDER-FILE"], False),
        (None, [["--no-progress"]], [], True), ARRAY,
    ],
    "fid": [
        ANY_RUN, DATA, ("--n", [85, 100], ["84", *BAD_INTS], True), SEED,
        ("--classifier-seed", [0], ["x"], False), JSON,
    ],
    "traverse": [
        VAE_RUN, DATA, ("--dims", [1, 2, 100], BAD_INTS, False), ("--steps", [3, 5], ["4", "1", *BAD_INTS], False),
        ("--index", [0, 3, 100000], ["-1", "x"], False), SEED, PICTURE,
    ],
}  # fmt: skip


def _values(values) -> st.SearchStrategy:
    return values if isinstance(values, st.SearchStrategy) else st.sampled_from(values)


@st.composite
def argument_lists(draw, verb: str) -> list:
    options = SPECS[verb]
    spoilt = draw(st.one_of(st.none(), st.integers(0, len(options))))  # len(options): an unknown option
    argv = [verb]
    for i, (flag, valid, invalid, required) in enumerate(options):
        if i == spoilt and invalid:
            value = draw(_values(invalid))
        elif required or draw(st.booleans()):
            value = draw(_values(valid))
        else:
            continue
        argv += ([flag] if flag else []) + (value if isinstance(value, list) else [value])
    if spoilt == len(options):
        argv.append("--no-such-option")
    return argv


def test_every_verb_has_an_argument_strategy():
    assert set(SPECS) == set(COMMANDS)


def resolve(argv: list, world: dict, out: Path) -> tuple[list[str], list[Path]]:
    """Concrete arguments: names of ``world`` become its paths, output names land in ``out``
    (``DIR``: a folder, ``UNDER-FILE``: below a plain file); returns them and the outputs."""
    (out / "file").write_text("a plain file\n")
    (out / "folder").mkdir()
    (out / "full").mkdir()
    (out / "full" / "keep.txt").write_text("kept\n")
    special = {"DIR": out / "folder", "UNDER-FILE": out / "file" / "x.png", "DIR-FULL": out / "full"}
    outputs, args = [], []
    for i, a in enumerate(argv):
        a = str(a)
        before = argv[i - 1] if i else None
        if before in ("-o", "--json", "--markdown", "--csv"):
            path = special.get(a, out / a)
            if a != "EXPORT":  # vaekit export's output is a folder: check() looks into it
                outputs.append(path)
            args.append(str(path))
        elif a in world and before not in ("--set", "--split", "--splits", "--init", "--method", "--model"):
            args.append(str(world[a]))
        elif a == "DIR" and before == "--mask":
            args.append(str(out / "folder"))
        else:
            args.append(a)
    return args, outputs


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    return rc, capsys.readouterr().err


def assert_format(path: Path) -> None:
    """A written file holds what its suffix names: a picture of that format, or a numpy array."""
    fmt = PICTURE_FORMATS.get(path.suffix.lower())
    if path.suffix.lower() == ".npy":
        np.load(path, allow_pickle=False)
    elif fmt == "PDF":
        assert path.read_bytes().startswith(b"%PDF"), path
    elif fmt is not None:
        with Image.open(path) as im:
            assert im.format == fmt, (path, im.format)


def check(argv: list, world: dict, capsys) -> None:
    with tempfile.TemporaryDirectory(prefix="vaekit-cli-") as d:
        out = Path(d)
        args, outputs = resolve(argv, world, out)
        if args[0] == "train":
            args += ["--out", str(out / "run"), "--no-progress", *QUIET]
        rc, err = run_cli(args, capsys)
        if args[0] == "export" and rc == 0:
            assert (out / "EXPORT" / "model.safetensors").is_file() and (out / "EXPORT" / "config.json").is_file()
        assert "Traceback" not in err, (args, err[-3000:])
        assert rc in (0, 2), (args, rc, err[-3000:])
        errors = [line for line in err.splitlines() if line.startswith("vaekit: error: ")]
        if rc == 2:
            assert len(errors) == 1 and err.rstrip().endswith(errors[0]), (args, err[-3000:])
        else:
            assert not errors, (args, err[-3000:])
            for path in outputs:
                assert path.is_file(), (args, f"exit 0 but {path} was not written", err[-3000:])
                assert_format(path)
        shutil.rmtree(out / "run", ignore_errors=True)


@pytest.mark.parametrize("verb", list(SPECS))
def test_any_arguments_end_in_exit_0_or_one_error_line(verb, world, capsys):
    @PROPERTY
    @given(argv=argument_lists(verb))
    def prop(argv):
        check(argv, world, capsys)

    prop()
