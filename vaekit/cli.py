"""The ``vaekit`` command.

    vaekit presets
    vaekit train --preset dense-mnist --data mnist5k --epochs 20 --out runs/a
    vaekit train --resume runs/a
    vaekit evaluate runs/a --k 5000
    vaekit sample runs/a -n 64 -o samples.png
    vaekit reconstruct runs/a -o recon.png
    vaekit interpolate runs/a --steps 10 [--slerp] -o interp.png
    vaekit latent-map runs/a -o map.png
    vaekit traverse runs/a --dims 10 --steps 9 --index 0 -o traverse.png
    vaekit encode runs/a --data mnist -o feats.npy
    vaekit compare runs/a runs/b -o curves.png --markdown table.md
    vaekit export runs/a -o models/a [--onnx]

Every user error ends in one line ``vaekit: error: <what is wrong>`` and exit status 2.
Subcommands are one registry, ``COMMANDS``: name -> :class:`Command` (add_arguments, run, help).
A new verb is a pair of functions, ``_verb_args(parser)`` and ``_verb(args) -> exit status``,
and one entry there.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from . import __version__
from .checks import lookup, shown
from .errors import DataError, Interrupted, VaekitError, one_line

# --- shared helpers ------------------------------------------------------------------------

# vaekit evaluate / score --amp / --no-amp
AMP_HELP = (
    "--amp: run the hidden layers of the encoder and decoder nets in bf16 (autocast; faster for conv,"
    " ResNet and PixelCNN decoders on CPUs with AMX or AVX512-BF16 and on recent GPUs, not for dense "
    "MLPs); their output layers, log-likelihoods, log-weights and the logsumexp stay float32, so the "
    "NLL moves only by the hidden layers' bf16 rounding. --no-amp: float32 throughout. Default: the "
    "run's train.eval_amp (auto: bf16 where this device has bf16 hardware)"
)


def _load_run(args):
    """(model, cfg, state) of the run folder or checkpoint ``args.run`` on ``args.device``."""
    from .checkpoint import load_model
    from .train import resolve_device

    device = resolve_device(args.device or "cpu")
    return load_model(args.run, device=device)


def _model_device(model):
    """The device the loaded model lives on (see ``vaekit.models.model_device``)."""
    from .models import model_device

    return model_device(model)


def _data_config(cfg, args):
    """The run's data config with ``--data`` / ``--data-dir`` (see ``_add_data_args``) applied."""
    import copy

    dc = copy.deepcopy(cfg.data)
    if args.data:
        dc.name = args.data
    if args.data_dir:
        dc.data_dir = args.data_dir
    return dc


def _split(cfg, args, split: str):
    """The named split (``train``/``test``) of the run's data, prepared as the model expects."""
    from .data import prepare_data

    train, test = prepare_data(_data_config(cfg, args))
    return train if split == "train" else test


def _model_data(model, cfg, args, split: str):
    """``_split(cfg, args, split)`` after checking that its examples have the shape the model
    was trained on (``model.data_shape``); every command that feeds data to a model reads
    its data here, so another dataset's images end in one line, not inside a matrix product."""
    ds = _split(cfg, args, split)
    have, want = tuple(ds.x.shape[1:]), tuple(model.data_shape)
    if have != want:
        raise DataError(
            f"data {shown(_data_config(cfg, args).name)} has examples of shape {have}; the model was trained on {want}"
        )
    trained = cfg.data.columns
    if trained is not None and ds.columns is not None and list(ds.columns) != list(trained):
        j = next((i for i, (a, b) in enumerate(zip(ds.columns, trained)) if a != b), min(len(trained), len(ds.columns)))
        raise DataError(
            f"data {shown(_data_config(cfg, args).name)} has feature {j} named {shown(ds.columns[j])}; the model was "
            f"trained on {shown(trained[j])} there (its features: {', '.join(map(shown, trained))})"
        )
    return ds


def _first(x, n: int | None, flag: str, what: str):
    """The first ``n`` rows of ``x`` (all of them for None); says so on stderr when ``n`` asks
    for more than there are, so that the numbers are not mistaken for ``n`` examples."""
    if n is None:
        return x
    if n > x.shape[0]:
        print(f"vaekit: {flag} {n} is more than the {x.shape[0]} {what}; using all {x.shape[0]}", file=sys.stderr)
    return x[:n]


def _at_least(minimum: int, counts: dict[str, int | None]) -> None:
    """A one-line error for the first count (flag -> value; None: not given) below ``minimum``."""
    need = {0: "non-negative", 1: "positive"}.get(minimum, f"at least {minimum}")
    for flag, value in counts.items():
        if value is not None and value < minimum:
            raise VaekitError(f"{flag} must be {need}; got {value}")


def _positive_numbers(values: dict[str, float]) -> None:
    """A one-line error for the first real-valued option (flag -> value) that is not a finite
    positive number (argparse's float() also reads 'nan' and 'inf')."""
    for flag, value in values.items():
        if not (math.isfinite(value) and value > 0):
            raise VaekitError(f"{flag} must be a positive number; got {value}")


def _picture_path(path: str) -> Path:
    """``path`` once its suffix names a picture format (``vaekit.viz.PICTURE_FORMATS``) or ``.npy``;
    checked before any work is done."""
    from .viz import picture_format

    if Path(path).is_dir() or Path(path).suffix.lower() != ".npy":
        picture_format(path, also=(".npy (the array drawn)",))
    return Path(path)


_PICTURE_HELP = "picture, in the format its suffix names (.png, .jpg, ...), or .npy for {}"
_DECODE_SEED_HELP = (
    "seed of the decoder's draws where E[x|z] has no closed form (a PixelCNN decoder samples it); "
    "other decoders are deterministic"
)


def _needs_codes(model, cfg, args, verb: str) -> None:
    """A one-line error unless the model has an encoder and a decoder (``model.has_codes``)."""
    if not model.has_codes:
        raise VaekitError(
            f"vaekit {verb} needs a model with codes (a VAE or an autoencoder); {args.run} is a {cfg.model.kind}"
        )


def _npy_path(path: str) -> Path:
    """``path`` once it ends in ``.npy`` (numpy would append the suffix to any other name)."""
    if Path(path).is_dir():
        raise VaekitError(f"cannot write {path}: it is a folder")
    if Path(path).suffix.lower() != ".npy":
        raise VaekitError(f"cannot write {path}: the file name must end in .npy")
    return Path(path)


def _save_picture(path: Path, array, draw: Callable[[Path], object]) -> None:
    """Write ``array`` (the tensor a picture shows, e.g. samples [n, *data_shape]) with numpy
    where ``path`` ends in ``.npy``; otherwise call ``draw(path)``, which writes the picture in
    the format the suffix names."""
    from .viz import save_array

    if path.suffix.lower() == ".npy":
        save_array(array, path)
    else:
        draw(path)


def _data_units(model, x):
    """Model outputs or model-ready data [..., *data_shape] in data units: the run's standardisation
    inverted (``model.data_transform``; the identity for runs that did not standardise)."""
    return model.data_transform.invert(x)


def _vector_data(model) -> bool:
    """Whether the model's examples are vectors of features (``vaekit.data.is_vector_shape``), drawn
    as plots and tables rather than as pictures of pixels."""
    from .data import is_vector_shape

    return is_vector_shape(model.data_shape)


def _output_path(path: str) -> Path:
    """``_picture_path(path)``, or a ``.csv`` table (written for vector data only: ``_table_for``)."""
    if Path(path).suffix.lower() == ".csv" and not Path(path).is_dir():
        return Path(path)
    return _picture_path(path)


def _table_for(model, out: Path, run: str) -> bool:
    """Whether ``out`` is a ``.csv`` table; a one-line error when the model's data are not vectors."""
    if out.suffix.lower() != ".csv":
        return False
    if not _vector_data(model):
        raise VaekitError(
            f"cannot write {out}: a .csv table is written for vector data; {run} models examples of shape "
            f"{tuple(model.data_shape)} (use a picture suffix or .npy)"
        )
    return True


def _write_text(path: str | Path, text: str) -> None:
    """``text`` written atomically; a one-line error where ``path`` cannot be written."""
    from .checkpoint import atomic_write
    from .viz import prepare_output

    path = prepare_output(path)
    try:
        atomic_write(path, lambda f: f.write(text.encode()))
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise
        raise VaekitError(f"cannot write {path}: {e.strerror or one_line(e)}") from None


def _write_json(path: str | Path, doc: dict) -> None:
    """``doc`` as indented JSON, written atomically; a one-line error where ``path`` cannot be written."""
    from .checkpoint import json_text

    _write_text(path, json_text(doc, indent=2) + "\n")  # standard JSON: NaN and inf are written as null


def _progress(args) -> bool:
    """Whether to draw progress bars: not with ``--no-progress``, and not where stderr is no
    terminal (a log file or a pipe), where every redraw would be one more line of the log."""
    return not args.no_progress and sys.stderr.isatty()


LOG_EVERY_S = 300.0  # a long evaluation logged to a file says where it stands this often
EVAL_PROGRESS_HELP = (
    "no progress: no bar on a terminal, and no line every 5 minutes (examples done, time left) where "
    "stderr is a log file or a pipe"
)


def _log_every(args) -> float | None:
    """Seconds between the progress lines of a long evaluation whose stderr is no terminal (a
    background run's log), where no bar is drawn; None with ``--no-progress`` or on a terminal."""
    return None if args.no_progress or sys.stderr.isatty() else LOG_EVERY_S


def _seed(args):
    """Seed the global torch RNG with ``--seed`` (every command that samples declares it)."""
    import torch

    torch.manual_seed(args.seed)


def _run_folder(run: str) -> Path:
    """The folder results of ``run`` go to by default: the run folder itself, the run folder of
    a checkpoint in its ``checkpoints/`` folder, or the folder holding a loose checkpoint file."""
    from .checkpoint import CKPT_DIR

    p = Path(run)
    if p.is_dir():
        return p
    return p.parent.parent if p.parent.name == CKPT_DIR else p.parent


def _add_run_args(p, run_help="run folder or checkpoint file"):
    """The arguments every command on a trained run shares: the run and the device."""
    p.add_argument("run", help=run_help)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda[:N]")


def _add_data_args(p):
    """Which data a command on a trained run reads (default: the run's own)."""
    p.add_argument("--data", default=None, help="dataset name or path (default: the run's)")
    p.add_argument("--data-dir", default=None, help="folder holding standard dataset files")


# --- commands -------------------------------------------------------------------------------


def _presets_args(p):
    pass


def _presets(args):
    from .config import describe_presets

    rows = describe_presets()
    w = max(len(n) for n, _, _ in rows)
    for name, parent, desc in rows:
        print(f"{name:<{w}}  {desc}" + (f"  [from {parent}]" if parent and parent != "base" else ""))
    return 0


def _train_args(p):
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", help="named preset (see `vaekit presets`)")
    g.add_argument("--config", help="YAML config file instead of a preset")
    g.add_argument("--resume", metavar="RUN", help="continue the run in this folder from its newest good checkpoint")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set k=50 --set train.lr=3e-4 (repeatable)",
    )
    p.add_argument(
        "--model",
        help="model kind, sets model.kind: vae, flow, mixture, autoencoder "
        "(mixtures want grey levels: --set binarize=none, or --preset gmm-mnist)",
    )
    p.add_argument("--data", help="dataset name or path (sets data.name)")
    p.add_argument("--data-dir", help="folder holding standard dataset files (sets data.data_dir)")
    p.add_argument("--epochs", type=int, help="sets train.epochs (with --resume: extend the run)")
    p.add_argument(
        "--seed",
        type=int,
        help="sets train.seed (as --set seed=N): the seed of the initial weights, the batch order, "
        "the binarisation and the sampling noise of every step",
    )
    p.add_argument("--device", help="sets train.device (auto, cpu, cuda)")
    p.add_argument("--out", help="run folder to create (default runs/<preset>)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps in total (time-boxed runs)")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (none is drawn where stderr is not a terminal)"
    )


def _train(args):
    from . import distributed, heap

    heap.keep()  # this process only trains: let it hold its peak heap rather than fault it in every step
    with distributed.session():  # under torchrun: one process group for the whole command
        return _train_in_session(args, distributed.is_main())


def _train_in_session(args, main: bool):
    from . import distributed
    from .checkpoint import json_text, load_shared
    from .config import build_config, named_keys, validate
    from .data import FOLDER_DATASETS, binarize_dynamic, prepare_data, reads_data_dir, resolve_binarize
    from .models import binary_data, dequantize_of
    from .nets import bf16_emulated, resolve_amp
    from .train import resolve_device, train

    if args.resume:
        cfg = load_shared(
            args.resume,
            device=None,
            warn=False,  # rank 0 reads, all get the config
            missing=f"nothing to resume: {args.resume} has no checkpoint",
        )[1]
        if args.overrides or args.data or args.model:
            raise VaekitError(
                "--resume continues the saved config; only --epochs, --device, --max-steps and --data-dir may change"
            )
        if args.data_dir:  # the data moved: allowed where the fingerprint check below can vouch for them
            if not reads_data_dir(cfg.data.name):
                raise VaekitError(
                    f"--resume --data-dir: {args.resume} trained on {cfg.data.name}, which is not read from a "
                    f"data folder; --data-dir moves the files of {', '.join(FOLDER_DATASETS)}"
                )
            if cfg.data.fingerprint is None:
                raise VaekitError(
                    f"--resume --data-dir: {args.resume} records no fingerprint of its data (started before "
                    f"fingerprints, or not by `vaekit train`), so data found elsewhere cannot be checked to be "
                    f"the same; resume without --data-dir"
                )
            cfg.data.data_dir = args.data_dir
        if args.seed is not None and args.seed != cfg.train.seed:
            raise VaekitError(
                f"--resume continues the saved config; --seed {args.seed} differs from the run's {cfg.train.seed}"
            )
        out = Path(args.resume)
        if args.epochs is None:
            _keep_extension(cfg, out, main)
    else:
        model_kind = [f"model.kind={args.model}"] if args.model else []
        cfg = build_config(args.preset, args.config, model_kind + list(args.overrides) + _seed_override(args))
        named = named_keys(args.config, model_kind + list(args.overrides))  # what the user set explicitly
        _vector_likelihood(cfg, named, args.data or cfg.data.name, main)
        # binarisation follows the likelihood; the resolved mode is what the run's config records
        cfg.data.binarize = resolve_binarize(cfg.data.binarize, binary_data(cfg.model), "data.binarize" in named)
        if args.data:
            cfg.data.name = args.data
        if args.data_dir:
            cfg.data.data_dir = args.data_dir
        out = Path(args.out or f"runs/{cfg.preset}")
    if args.epochs is not None:
        cfg.train.epochs = args.epochs
    if args.device:
        cfg.train.device = args.device
    validate(cfg, new_run=not args.resume)
    train_ds, test_ds = prepare_data(cfg.data, fingerprint=True)
    if not args.resume:  # what a resume must find again, wherever data_dir then points
        cfg.data.fingerprint = train_ds.fingerprint
    elif cfg.data.fingerprint is not None and train_ds.fingerprint != cfg.data.fingerprint:
        where = cfg.data.data_dir or "the default data folders"
        raise VaekitError(
            f"the {cfg.data.name} data read from {where} are not the data {args.resume} trained on "
            f"(fingerprint {train_ds.fingerprint}, the run recorded {cfg.data.fingerprint})"
        )
    if not args.resume:  # fitted on the training split; the config records it, so resumes reuse it
        train_ds, test_ds = _standardize(cfg, train_ds, test_ds, main)
    if not args.resume and "data.levels" not in named:  # the model's bits/dim follow them (build_model)
        cfg.data.levels = train_ds.levels
    if not args.resume:  # recorded resolved, as data.standardize: a resume reads what the run trained
        cfg.model.dequantize = dequantize_of(cfg)
        cfg.train.amp = distributed.agree(resolve_amp, cfg.train.amp, resolve_device(cfg.train.device))
        _flow_of_standardized(cfg, named)
    if not args.resume and train_ds.columns is not None:  # later data must name the same features
        cfg.data.columns = list(train_ds.columns)
    transform = binarize_dynamic if train_ds.binarize == "dynamic" else None
    if main:
        print(
            f"vaekit: training {cfg.preset} ({cfg.model.kind}) on {cfg.data.name}: "
            f"{train_ds.x.shape[0]} train / {test_ds.x.shape[0]} test examples of shape "
            f"{tuple(train_ds.x.shape[1:])}{_precision_words(cfg.train)} -> {out}",
            file=sys.stderr,
        )
    if main and cfg.train.amp is True and bf16_emulated(resolve_device(cfg.train.device)):
        why = (
            "the run recorded train.amp=true, which a resume keeps"
            if args.resume
            else "amp=auto trains in float32 here"
        )
        _warn_bf16_emulated("train.amp is on", "each step runs", why)
    with _recorded(out, args.argv, main):
        summary = train(
            cfg,
            out,
            train_ds.x,
            test_ds.x,
            transform=transform,
            resume=bool(args.resume),
            progress=_progress(args),
            max_steps=args.max_steps,
            epoch_lines=True,  # readable in a log file too, where no bar is drawn
        )
    if main:
        print(json_text({k: v for k, v in summary.items() if k != "run_dir"}))
        print(f"vaekit: done; evaluate with `vaekit evaluate {out} --k 5000`", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _recorded(run: Path, argv: list[str], main: bool):
    """Record this ``vaekit train`` command in the run's ``command.txt`` when training ends or Ctrl-C
    stops it (its steps are checkpointed); an error records nothing."""
    try:
        yield
    except KeyboardInterrupt:
        _record_command(run, argv, main)
        raise
    _record_command(run, argv, main)


def _record_command(run: Path, argv: list[str], main: bool) -> None:
    """Append ``vaekit ARGV`` to the run folder's ``command.txt`` (the model card of ``vaekit export``
    shows it), on rank 0 and once the run exists: a run that never started leaves no folder."""
    import shlex

    from .checkpoint import COMMAND_FILE, list_checkpoints

    if not main or not list_checkpoints(run):
        return
    try:
        with open(run / COMMAND_FILE, "a", encoding="utf-8") as f:
            f.write(shlex.join(["vaekit", *argv]) + "\n")
    except OSError as e:  # the run itself is complete; only its record of the command is missing
        print(f"vaekit: warning: cannot write {run / COMMAND_FILE} ({e.strerror or one_line(e)})", file=sys.stderr)


def _seed_override(args) -> list[str]:
    """``--seed N`` as the override ``train.seed=N``; refused where ``--set`` names another seed."""
    if args.seed is None:
        return []
    from .config import Config, apply_overrides, named_keys, parse_set

    if "train.seed" in named_keys(None, args.overrides):
        given = apply_overrides(Config(), parse_set(args.overrides)).train.seed  # the last one given
        if given != args.seed:
            raise VaekitError(f"--seed {args.seed} and --set seed={given} disagree; give the seed once")
    return [f"train.seed={args.seed}"]


def _flow_of_standardized(cfg, named: set[str]) -> None:
    """A flow of standardised data (vectors that no source name announced, e.g. a ``.npy``) gets no
    dequantisation and no logit: its inputs are no 8-bit levels in [0, 1]. Asking for either is a
    one-line error."""
    if cfg.model.kind != "flow" or cfg.data.standardize is not True:
        return
    for key, value in (("flow_dequantize", "none"), ("flow_preprocess", "none")):
        if f"model.{key}" not in named:
            setattr(cfg.model, key, value)
        elif getattr(cfg.model, key) != value:
            raise VaekitError(
                f"model.{key}={getattr(cfg.model, key)} needs data in [0, 1], but data.standardize moved them; "
                f"use --set {key}={value} or --set standardize=false"
            )


def _vector_likelihood(cfg, named: set[str], data: str, main: bool) -> None:
    """Vector data (a .csv, a registered table) get a Gaussian p(x|z) with learned variance unless
    the user named the likelihood: a preset's Bernoulli would binarise features that are not pixels.
    A flow gets MAF, no dequantisation and no logit (its input is a continuous vector, not in [0, 1])."""
    from .data import is_vector_source
    from .models import binary_data

    if not is_vector_source(data):
        return
    for key, value in (("flow_arch", "maf"), ("flow_dequantize", "none"), ("flow_preprocess", "none")):
        if cfg.model.kind == "flow" and f"model.{key}" not in named:
            setattr(cfg.model, key, value)
    if "model.likelihood" not in named and binary_data(cfg.model):
        cfg.model.likelihood = "gaussian"
        if cfg.model.variance == "fixed" and "model.variance" not in named:
            cfg.model.variance = "global"
        if main:
            print(
                f"vaekit: note: {data} holds vectors: likelihood gaussian (variance {cfg.model.variance}); "
                "name another with --set likelihood=...",
                file=sys.stderr,
            )


def _standardize(cfg, train_ds, test_ds, main: bool):
    """``(train, test)`` standardised as ``data.standardize`` resolves for a fresh run, the statistics
    of the training split recorded in ``cfg.data`` (``vaekit.data.resolve_standardize``)."""
    from .data import resolve_standardize, standardize_dataset
    from .models import binary_data

    t = resolve_standardize(cfg.data, train_ds, binary_data(cfg.model))
    if t.identity:
        return train_ds, test_ds
    if main:
        print(
            f"vaekit: standardising {len(t.mean)} features with the training split's mean and std; "
            "samples, reconstructions and interpolations come back in data units",
            file=sys.stderr,
        )
    return standardize_dataset(train_ds, t), standardize_dataset(test_ds, t)


def _keep_extension(cfg, run: Path, main: bool) -> None:
    """Resume to the epochs the run folder's ``config.yaml`` asks for when they exceed the
    checkpoint's own: an earlier ``--resume --epochs N`` whose newer checkpoints were lost (corrupt,
    fallen back from) still counts."""
    from . import distributed
    from .checkpoint import requested_epochs

    asked = distributed.agree(requested_epochs, run)  # rank 0 holds the folder
    if asked is not None and asked > cfg.train.epochs:
        if main:
            print(
                f"vaekit: note: {run / 'config.yaml'} asks for {asked} epochs and the checkpoint resumed "
                f"from for {cfg.train.epochs} (an extension whose checkpoints were lost): training to {asked}",
                file=sys.stderr,
            )
        cfg.train.epochs = asked


def _evaluate_args(p):
    _add_run_args(p, "run folder or checkpoint file")
    _add_data_args(p)
    p.add_argument("--k", type=int, default=5000, help="importance samples per example (default 5000)")
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--n", type=int, help="evaluate only the first N examples")
    p.add_argument("--batch-size", type=int, help="examples per pass (default: memory-bounded)")
    p.add_argument("--seed", type=int, default=0, help="seed of the importance samples")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help=AMP_HELP)
    p.add_argument(
        "-o",
        "--output",
        help="where to write the JSON (default RUN/eval-SPLIT.json); until it is written, finished chunks "
        "wait in OUTPUT.journal/, from which the same command resumes after a kill",
    )
    p.add_argument(
        "--keep-journal",
        action="store_true",
        help="keep this evaluation's journal in OUTPUT.journal/ after the JSON is written (the JSON names it): "
        "one row per example (a VAE's log p(x), effective sample size, ELBO, reconstruction, KL and posterior "
        "mean; an exact model's log p(x)), for comparing evaluations example by example (bench/eval_pair.py); "
        "the same command, with the same torch and vaekit on the same kind of device, then reads every example "
        "back. A kept journal belongs to the evaluation that wrote it, not to OUTPUT, which a later evaluation "
        "with other arguments may overwrite",
    )
    p.add_argument("--no-progress", action="store_true", help=EVAL_PROGRESS_HELP)


def _evaluate(args):
    from . import distributed
    from .checkpoint import load_shared
    from .evaluate import evaluate, format_table
    from .train import resolve_device

    if args.k <= 0:
        raise VaekitError(f"--k must be positive; got {args.k}")
    _at_least(1, {"--n": args.n, "--batch-size": args.batch_size})
    if args.keep_journal and distributed.launched():
        e = VaekitError("--keep-journal: under torchrun the processes split the examples and keep no journal")
        e.shared = True  # every process refuses alike: rank 0 says it once
        raise e
    with distributed.session():  # under torchrun the examples are split over the processes
        model, cfg, state = load_shared(args.run, device=resolve_device(args.device or "cpu"))
        if args.keep_journal and model.log_prob_kind == "none":
            raise VaekitError(
                f"--keep-journal: {args.run} is a model without a density ({cfg.model.kind}); its evaluation is "
                "a reconstruction error, with no per-example rows to keep"
            )
        x = _first(_eval_ready(_model_data(model, cfg, args, args.split), cfg), args.n, "--n", f"{args.split} examples")
        _resolve_eval_amp(args, cfg, x.device)
        out = Path(args.output) if args.output else _run_folder(args.run) / f"eval-{args.split}.json"  # one per split
        if out.is_dir():  # refused before hours of evaluation, not after
            raise VaekitError(f"cannot write {out}: it is a folder")
        journal_dir = _journal_dir(out)
        _note_journal(journal_dir, model, x, args)
        res = evaluate(
            model,
            x,
            k=args.k,
            batch_size=args.batch_size,
            progress=_progress(args),
            seed=args.seed,
            amp=args.amp,
            journal_dir=journal_dir,
            log_every=_log_every(args),
        )
        if not distributed.is_main():
            return 0
    _note_resumed(res["resumed"], res["n"])
    res.update(dataset=_data_config(cfg, args).name, split=args.split, step=int(state["step"]), seed=args.seed)
    kept = _journal_of(journal_dir, model, x, args) if args.keep_journal else None
    if kept is not None:
        res["journal"] = str(kept)
    print(format_table(res))
    _data_unit_nll(res, model.data_transform)
    _write_json(out, res)
    if kept is None:
        _drop_journal(journal_dir, model, x, args)
    print(f"wrote {out}" + (f" (per-example rows kept in {kept})" if kept else ""), file=sys.stderr)
    return 0


def _precision_words(tc) -> str:
    """How the nets train, for the start line: nothing in float32, else what rounds to bf16."""
    if tc.amp is not True:
        return ""
    if tc.amp_outputs_float32:
        return ", hidden layers in bf16 (train.amp; output layers float32: train.amp_outputs_float32)"
    return ", nets in bf16 (train.amp)"


def _warn_bf16_emulated(asked: str, what_runs: str, remedy: str) -> None:
    """One warning line on stderr: bf16 was ``asked`` for on a CPU without bf16 instructions
    (``nets.bf16_emulated``), where ``what_runs`` several times slower than in float32."""
    print(
        f"vaekit: warning: {asked}, but this CPU has no bf16 instructions (AVX512-BF16 or AMX): "
        f"bf16 is emulated and {what_runs} several times slower than in float32 ({remedy})",
        file=sys.stderr,
    )


def _resolve_eval_amp(args, cfg, device) -> None:
    """``args.amp`` := whether this evaluation runs the nets' hidden layers in bf16: ``--amp`` /
    ``--no-amp``, else the run's ``train.eval_amp`` decided for ``device`` (by rank 0 under torchrun,
    so that every process evaluates alike). Says so on stderr when bf16 came from the run, and warns where
    the CPU has no bf16 instructions (``nets.bf16_emulated``)."""
    from . import distributed
    from .nets import bf16_emulated, resolve_amp

    asked = cfg.train.eval_amp if args.amp is None else args.amp
    resolved = distributed.agree(resolve_amp, asked, device, "train.eval_amp")
    if resolved and bf16_emulated(device) and distributed.is_main():
        _warn_bf16_emulated("bf16 hidden layers asked for", "the evaluation runs", "--no-amp")
    if resolved and args.amp is None and distributed.is_main():
        print(
            f"vaekit: note: the nets' hidden layers run in bf16 (the run's train.eval_amp={asked}); "
            "--no-amp evaluates in float32 throughout",
            file=sys.stderr,
        )
    args.amp = resolved


def _journal_dir(out: Path) -> Path | None:
    """Where a long evaluation keeps its finished chunks (``vaekit.journal``), so that the same command
    after a kill resumes it: ``OUT.journal/`` beside its output, deleted once the output is written
    (:func:`_drop_journal`); none under torchrun, whose processes split the chunks between them."""
    from . import distributed

    return None if distributed.launched() else out.with_name(out.name + ".journal")


def _journal_of(journal_dir: Path, model, x, args) -> Path:
    """The journal file in ``journal_dir`` of the evaluation that ``args`` ran of ``model`` on ``x``
    (``evaluate.journal_file``)."""
    from .evaluate import journal_file

    return journal_file(journal_dir, model, x, k=args.k, batch_size=args.batch_size, seed=args.seed, amp=args.amp)


def _note_journal(journal_dir: Path | None, model, x, args) -> None:
    """Before a journaled evaluation starts, say whether it resumes (how many examples its journal
    holds), or, where ``journal_dir`` holds only other evaluations' journals, that it starts from the
    first example: a resume that cannot happen (another model, data, K, seed, chunk size, precision,
    device, torch or vaekit) is then known at once, not when the hours it repeats are spent."""
    from .evaluate import journals_in
    from .journal import read_journal

    if journal_dir is None or not journal_dir.is_dir():
        return
    mine = _journal_of(journal_dir, model, x, args)
    if mine.is_file():
        try:
            _, units = read_journal(mine)
        except VaekitError:  # the evaluation reports a damaged journal itself
            return
        held = sum(rows.shape[0] for rows, _ in units.values())
        print(f"vaekit: note: resuming from {mine}: {held:,} of {x.shape[0]:,} examples done", file=sys.stderr)
        return
    others = [p.name for p in journals_in(journal_dir)]
    if others:
        print(
            f"vaekit: note: {journal_dir} holds {len(others)} journal{'s' if len(others) > 1 else ''} of other "
            f"evaluations ({', '.join(others)}) and none of this one (its key: model, data, K, seed, chunk size, "
            "precision, device, torch and vaekit versions), so it starts from the first example",
            file=sys.stderr,
        )


def _drop_journal(journal_dir: Path | None, model, x, args) -> None:
    """Delete the journal of the evaluation that ``args`` ran of ``model`` on ``x``, its output now
    holding the result, and ``journal_dir`` once no other evaluation's journal is left in it."""
    if journal_dir is None:
        return
    _journal_of(journal_dir, model, x, args).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: another evaluation's journal waits there
        journal_dir.rmdir()


def _note_resumed(resumed: int, n: int) -> None:
    if resumed:
        print(
            f"vaekit: note: {resumed} of the {n} examples were read back from the journal of an earlier run "
            "of this same evaluation (interrupted, or kept with --keep-journal)",
            file=sys.stderr,
        )


def _data_unit_nll(res: dict, t) -> None:
    """For a standardised run, add the NLL of the data in their own units to ``res`` and print it:
    -log p(x) = -log p'(x') + sum_d log std_d (``Standardization.log_scale``, the map's Jacobian)."""
    if t.identity:
        return
    res.update(standardized=True, log_scale=t.log_scale)
    if res.get("nll") is not None:
        res["nll_data_units"] = res["nll"] + t.log_scale
        print(
            f"nll of the data in their own units: {res['nll_data_units']:.3f} "
            f"(the standardised data's {res['nll']:.3f} + sum log std {t.log_scale:.3f})"
        )


def _sample_args(p):
    _add_run_args(p)
    p.add_argument("-n", type=int, default=64, help="number of samples")
    p.add_argument(
        "-o",
        "--output",
        default="samples.png",
        help=_PICTURE_HELP.format("the samples [n, *data_shape]")
        + "; vector data: a pair plot (histograms beyond 6 features) against the test data, or .csv",
    )
    p.add_argument("--mean", action="store_true", help="show E[x|z] instead of a sample of p(x|z)")
    p.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="T >= 0 scales the prior's spread, z ~ N(0, T^2 I) (a flow's base); 0: the decoded prior mean",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the draws z ~ p(z) and, without --mean, x ~ p(x|z)")


def _sample(args):
    from .viz import samples_figure, save_figure

    if args.n <= 0:
        raise VaekitError(f"-n must be positive; got {args.n}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise VaekitError(
            f"--temperature must be a positive number; got {args.temperature} (or 0: the prior's mean, decoded)"
        )
    out = _output_path(args.output)
    model, cfg, _ = _load_run(args)
    table = _table_for(model, out, args.run)
    _seed(args)
    x = _data_units(model, model.sample(args.n, mean=args.mean, temperature=args.temperature))  # or refuses
    if _vector_data(model):
        _save_vector_samples(out, x, model, cfg, table)
        return 0
    what = [f"{args.n} samples of {cfg.preset} ({cfg.model.kind})"]
    if model.has_codes and (args.mean or args.temperature == 0):
        what.append("decoder means E[x|z]")
    if args.temperature != 1:
        what.append(f"temperature {args.temperature:g}")
    title = ", ".join(what)
    _save_picture(out, x, lambda path: save_figure(samples_figure(x.clamp(0, 1).cpu(), title), path))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _save_vector_samples(out: Path, x, model, cfg, table: bool) -> None:
    """Samples of vector data [n, 1, 1, D] in data units: a table (.csv), the array (.npy), or a pair
    plot / histograms against the run's test data (drawn without them where they cannot be read)."""
    from .data import prepare_data
    from .viz import save_array, save_vector_samples, write_csv

    if out.suffix.lower() == ".npy":
        save_array(x, out)
        return
    try:
        test = prepare_data(cfg.data)[1]
    except DataError as e:
        test = None
        print(f"vaekit: note: samples drawn without the data ({e})", file=sys.stderr)
    names = test.columns if test is not None else None
    flat = x.reshape(x.shape[0], -1).cpu()
    if table:
        header = list(names or [f"x{i}" for i in range(flat.shape[1])])
        write_csv(header, flat.double().tolist(), out)
    else:
        data = None if test is None else _data_units(model, test.x)
        save_vector_samples(flat, data, out, names)


def _reconstruct_args(p):
    _add_run_args(p)
    _add_data_args(p)
    p.add_argument("-n", type=int, default=16, help="number of test images")
    p.add_argument(
        "-o",
        "--output",
        default="recon.png",
        help=_PICTURE_HELP.format("the reconstructions [n, *data_shape]")
        + "; vector data: a table, as .csv (and pictured, with the .csv beside the picture)",
    )
    p.add_argument("--seed", type=int, default=0, help=_DECODE_SEED_HELP)


def _reconstruct(args):
    from .viz import reconstructions_figure, save_figure

    _at_least(1, {"-n": args.n})
    out = _output_path(args.output)
    model, cfg, _ = _load_run(args)
    _needs_codes(model, cfg, args, "reconstruct")
    table = _table_for(model, out, args.run)
    ds = _model_data(model, cfg, args, "test")
    x = _first(ds.x, args.n, "-n", "test examples").to(_model_device(model))
    _seed(args)
    x, r = _data_units(model, x), _data_units(model, model.reconstruct(x))
    if _vector_data(model) and out.suffix.lower() != ".npy":
        return _write_vector_table(out, x, r, ds.columns, table)
    code = "the posterior mean" if model.has_latents else "the code"
    title = f"{x.shape[0]} test images of {_data_config(cfg, args).name} and E[x|z] at {code} of each"
    _save_picture(out, r, lambda path: save_figure(reconstructions_figure(x.cpu(), r.clamp(0, 1).cpu(), title), path))
    print(
        f"wrote {out}" + (" (originals above, reconstructions below)" if out.suffix != ".npy" else ""), file=sys.stderr
    )
    return 0


def _write_vector_table(out: Path, x, r, names, table: bool) -> int:
    """Reconstructions of vector data as a table in data units (``vaekit.viz.vector_table``): ``out``
    itself when it is a .csv, else the picture ``out`` of its first rows and the .csv beside it."""
    from .viz import save_table, vector_table, write_csv

    header, rows = vector_table(x.cpu(), r.cpu(), names)
    csv_path = out if table else out.with_suffix(".csv")
    write_csv(header, rows, csv_path)
    if not table:
        save_table(header, rows, out, title="test examples (data) and their reconstructions, in data units")
    also = "" if table else f" and {csv_path}"
    print(f"wrote {out}{also} (each example: data, reconstruction)", file=sys.stderr)
    return 0


def _interpolate_args(p):
    _add_run_args(p)
    _add_data_args(p)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--pairs", type=int, default=8, help="rows: pairs of test images to join")
    p.add_argument("--slerp", action="store_true", help="spherical instead of linear interpolation")
    p.add_argument(
        "-o", "--output", default="interp.png", help=_PICTURE_HELP.format("the paths [pairs, steps, *data_shape]")
    )
    p.add_argument("--seed", type=int, default=0, help=_DECODE_SEED_HELP)


def _interpolate(args):
    from .viz import interpolate, interpolation_figure, save_figure, save_vector_paths

    if args.steps < 2:
        raise VaekitError(f"--steps must be at least 2; got {args.steps}")
    _at_least(1, {"--pairs": args.pairs})
    out = _picture_path(args.output)
    model, cfg, _ = _load_run(args)
    _needs_codes(model, cfg, args, "interpolate")
    ds = _model_data(model, cfg, args, "test")
    x = ds.x[: 2 * args.pairs].to(_model_device(model))
    if x.shape[0] < 2:
        raise VaekitError("interpolation needs at least two test images")
    half = x.shape[0] // 2
    z0, _ = model.encode(x[:half])
    z1, _ = model.encode(x[half : 2 * half])
    zs = interpolate(z0, z1, args.steps, slerp=args.slerp)  # [R, steps, D]
    R, S, D = zs.shape
    _seed(args)
    imgs = _data_units(model, model.decode_to_x(zs.reshape(R * S, D)).view(R, S, *model.data_shape))
    if _vector_data(model):
        _save_picture(out, imgs, lambda path: save_vector_paths(imgs.cpu(), path, ds.columns))
    else:
        title = f"{'spherical' if args.slerp else 'linear'} paths between the codes of {R} pairs of test images"
        ends = x[:half].cpu(), x[half : 2 * half].cpu()
        _save_picture(
            out, imgs, lambda path: save_figure(interpolation_figure(imgs.clamp(0, 1).cpu(), *ends, title), path)
        )
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _latent_map_args(p):
    _add_run_args(p)
    _add_data_args(p)
    p.add_argument(
        "-o", "--output", default="map.png", help=_PICTURE_HELP.format("the decoded grid [grid^2, *data_shape]")
    )
    p.add_argument("--grid", type=int, default=20, help="decoded images per side")
    p.add_argument("--points", type=int, default=2000, help="test points in the scatter")


def _latent_map(args):
    import torch

    from .viz import latent_grid, save_latent_map, save_latent_scatter

    _at_least(1, {"--grid": args.grid, "--points": args.points})
    out = _picture_path(args.output)
    model, cfg, _ = _load_run(args)
    _needs_codes(model, cfg, args, "latent-map")
    ds = _model_data(model, cfg, args, "test")
    dev = _model_device(model)
    x = _first(ds.x, args.points, "--points", "test examples").to(dev)
    mu = torch.cat([model.encode(x[i : i + 1000])[0] for i in range(0, x.shape[0], 1000)])
    D = mu.shape[1]
    if D < 2:
        raise VaekitError(f"vaekit latent-map needs at least 2 latent dimensions; {args.run} has {D}")
    grid2 = latent_grid(args.grid).to(dev)  # [n*n, 2], Gaussian quantiles
    if D == 2:
        z, pts, names, where = grid2, mu, ("z_1", "z_2"), "2-D latent space"
    else:  # the plane of the two leading principal directions of the posterior means, in z units
        centre = mu.mean(0)
        _, s, v = torch.linalg.svd(mu - centre, full_matrices=False)
        basis = v[:2]  # [2, D], orthonormal: a unit step along PC1 is a unit step in z
        if s.shape[0] < 2 or not bool((s[:2] > 0).all()):
            raise VaekitError(
                f"the posterior means of the {mu.shape[0]} test point(s) span fewer than 2 directions; "
                "use more --points"
            )
        # not standardised: a collapsed direction stays flat instead of being stretched to unit spread
        z, pts = centre + grid2 @ basis, (mu - centre) @ basis.T
        share = (s[:2] ** 2 / (s**2).sum()).tolist()
        names = (f"PC1 ({share[0]:.0%} of variance)", f"PC2 ({share[1]:.0%} of variance)")
        where = f"top-2 principal plane of {D}-D posterior means, z units"
    title = f"{where}: {_active_units(mu)} of {D} units active ({mu.shape[0]} test points)"
    imgs = _data_units(model, model.decode_to_x(z))
    labels = ds.y[: args.points].numpy() if ds.y is not None else None
    if _vector_data(model):  # decoded vectors are no pictures: the coloured scatter alone
        _save_picture(
            out, imgs, lambda path: save_latent_scatter(pts.cpu(), path, labels=labels, title=title, axis_names=names)
        )
    else:
        _save_picture(
            out,
            imgs,
            lambda path: save_latent_map(
                imgs.clamp(0, 1).cpu(),
                args.grid,
                None,
                path,
                points=pts.cpu(),
                labels=labels,
                title=title,
                axis_names=names,
            ),
        )
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _active_units(mu) -> str:
    """How many latent dimensions of posterior means [N, D] are active (the evaluator's statistic,
    ``vaekit.evaluate.unit_activity`` above ``ACTIVE_UNIT_THRESHOLD``); "?" for fewer than 2 examples."""
    from .evaluate import ACTIVE_UNIT_THRESHOLD, unit_activity

    return "?" if mu.shape[0] < 2 else str(int((unit_activity(mu) > ACTIVE_UNIT_THRESHOLD).sum()))


def _encode_args(p):
    _add_run_args(p)
    _add_data_args(p)
    p.add_argument(
        "-o", "--output", default="feats.npy", help="features [N, D] (.npy); labels beside it as *.labels.npy"
    )
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--logvar", action="store_true", help="append log-variances: [N, 2D] instead of [N, D]")


def _encode(args):
    import torch

    from .viz import save_array

    out = _npy_path(args.output)
    model, cfg, _ = _load_run(args)
    _needs_codes(model, cfg, args, "encode")
    ds = _model_data(model, cfg, args, args.split)
    x = _eval_ready(ds, cfg)
    dev = _model_device(model)
    feats = []
    with torch.no_grad():
        for i in range(0, x.shape[0], 1000):
            mu, lv = model.encode(x[i : i + 1000].to(dev))
            feats.append(torch.cat([mu, lv], 1) if args.logvar else mu)
    arr = torch.cat(feats).cpu().numpy()
    save_array(arr, out)
    if ds.y is not None:
        save_array(ds.y.numpy(), out.with_suffix(".labels.npy"))
    print(
        f"wrote {out}: {arr.shape[0]} x {arr.shape[1]} "
        f"({'means, log-variances' if args.logvar else 'posterior means'})",
        file=sys.stderr,
    )
    return 0


# --- mixtures (cluster), SVI gap decomposition (gap), image completion (complete) ---
# Command logic lives in vaekit.models.mixture.cluster, vaekit.inference.gap_decomposition and
# vaekit.completion.complete; these functions only load, call and write.


def _eval_ready(ds, cfg):
    """The split's images as the model saw them: a dynamically binarised split is binarised
    once with a fixed seed (as test data already is), so numbers are reproducible."""
    x = ds.x
    if ds.binarize == "dynamic":
        from .data import binarize_static

        x = binarize_static(x, cfg.data.binarize_seed + 1)
    return x


def _cluster_args(p):
    _add_run_args(
        p, "run folder or checkpoint of a Gaussian mixture, or a features file [N, D] (.npy, e.g. from vaekit encode)"
    )
    _add_data_args(p)
    p.add_argument(
        "-o",
        "--output",
        default="labels.npy",
        help="hard labels [N] (.npy); soft assignments [N, K] go beside it as *.soft.npy",
    )
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument(
        "--labels",
        help="true labels [N] (.npy) for the adjusted Rand index and NMI (features file: default "
        "FEATURES.labels.npy beside it, or the labels of --data)",
    )
    p.add_argument("--components", type=int, help="features file: K (default: the labels' classes, else 10)")
    p.add_argument("--covariance", choices=("full", "diag", "spherical"), help="features file: default full")
    p.add_argument("--restarts", type=int, help="features file: EM restarts, the best kept (default 3)")
    p.add_argument("--seed", type=int, help="features file: seed of the EM initialisation (default 0)")


def _cluster(args):
    from .models.mixture import GaussianMixtureModel, cluster

    out = _npy_path(args.output)
    _at_least(1, {"--components": args.components, "--restarts": args.restarts})
    if Path(args.run).suffix.lower() == ".npy":
        return _cluster_features(args, out)
    given = [f for f, v in (("--components", args.components), ("--covariance", args.covariance),
                            ("--restarts", args.restarts), ("--seed", args.seed)) if v is not None]  # fmt: skip
    if given:
        raise VaekitError(f"{given[0]} applies to a features file (.npy); {args.run} is a run, fitted already")
    model, cfg, _ = _load_run(args)
    if not isinstance(model, GaussianMixtureModel):
        raise VaekitError(
            f"vaekit cluster needs a Gaussian mixture run (model.kind=mixture) or a features file (.npy); "
            f"{args.run} is a {cfg.model.kind}"
        )
    ds = _model_data(model, cfg, args, args.split)
    y = _labels_file(args.labels, ds.x.shape[0]) if args.labels else (None if ds.y is None else ds.y.numpy())
    soft, hard = cluster(model, ds.x)
    _report_clusters(out, soft, hard, model.K, y, "the given labels" if args.labels else "the dataset's labels")
    return 0


def _labels_file(path: str, n: int):
    from .data import load_labels

    return load_labels(path, n)


def _feature_labels(args, n: int):
    """(labels [N] or None, where they come from) for a features file: --labels, the labels of
    --data (its --split), or FEATURES.labels.npy beside the file (``vaekit encode`` writes it)."""
    from .data import labels_path, load_dataset

    if args.labels:
        return _labels_file(args.labels, n), args.labels
    if args.data:
        ds = load_dataset(args.data, args.split, args.data_dir, vectors=True)
        if ds.y is None:
            raise VaekitError(f"--data {args.data} has no labels to compare the clusters with")
        if len(ds) != n:
            raise VaekitError(
                f"{args.run} holds {n} feature vectors but the {args.split} split of {args.data} {len(ds)} examples"
            )
        return ds.y.numpy(), f"the labels of {args.data} ({args.split})"
    side = labels_path(args.run)
    return (_labels_file(side, n), str(side)) if side.is_file() else (None, None)


def _cluster_features(args, out: Path) -> int:
    """``vaekit cluster FEATURES.npy``: a Gaussian mixture on the standardised features
    (``vaekit.models.mixture.cluster_features``), scored against labels where there are some."""
    import numpy as np

    from .data import load_features
    from .models.mixture import cluster_features

    feats = load_features(args.run)
    y, where = _feature_labels(args, feats.shape[0])
    k = args.components or (len(np.unique(y)) if y is not None else 10)
    print(f"vaekit cluster: {feats.shape[0]} x {feats.shape[1]} features, K={k}", file=sys.stderr)
    soft, hard, _ = cluster_features(
        feats, k, covariance=args.covariance or "full", restarts=args.restarts or 3, seed=args.seed or 0
    )
    _report_clusters(out, soft, hard, k, y, where)
    return 0


def _report_clusters(out: Path, soft, hard, k: int, y, where: str | None) -> None:
    """Write the hard [N] and soft [N, K] assignments, print the cluster sizes and, with labels y,
    the adjusted Rand index and NMI against them."""
    import numpy as np

    from .models.mixture import agreement
    from .viz import save_array

    h = hard.cpu().numpy()
    save_array(h, out)
    soft_path = out.with_name(out.stem + ".soft.npy")
    save_array(soft.float().cpu().numpy(), soft_path)
    counts = np.bincount(h, minlength=k)
    print(f"clustered {h.shape[0]} examples into {k} components; sizes: " + " ".join(str(int(c)) for c in counts))
    if y is not None:
        score = agreement(y, h)
        print(f"against {where}: adjusted Rand {score['ari']:.3f}, NMI {score['nmi']:.3f}")
    print(f"wrote {out} (hard) and {soft_path} (soft)", file=sys.stderr)


def _gap_args(p):
    _add_run_args(p, "run folder or checkpoint of a VAE")
    _add_data_args(p)
    p.add_argument("--k", type=int, default=5000, help="importance samples for log p(x) and each ELBO")
    p.add_argument("--splits", default="test,train", help="comma-separated splits (default test,train)")
    p.add_argument("--n", type=int, help="only the first N examples of each split")
    p.add_argument("--svi-steps", type=int, default=500, help="Adam steps of the per-example q*")
    p.add_argument("--svi-lr", type=float, default=1e-2)
    p.add_argument("--svi-samples", type=int, default=1, help="reparameterised samples per SVI step")
    p.add_argument(
        "--init",
        choices=("encoder", "prior"),
        default="encoder",
        help="start q* at the encoder's q(z|x) (semi-amortised, default) or at the prior",
    )
    p.add_argument("--batch-size", type=int, help="examples optimised together (memory bound)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the importance samples and of the SVI steps' reparameterisation noise",
    )
    p.add_argument("-o", "--output", help="JSON file (default RUN/gap.json)")


def _gap(args):
    from .inference import format_gap_table, gap_decomposition
    from .models.base import check_data_levels

    if args.k <= 0 or args.svi_steps < 0:
        raise VaekitError("--k must be positive and --svi-steps non-negative")
    _at_least(1, {"--n": args.n, "--svi-samples": args.svi_samples, "--batch-size": args.batch_size})
    _positive_numbers({"--svi-lr": args.svi_lr})
    model, cfg, _ = _load_run(args)
    if not model.has_latents:
        raise VaekitError(f"vaekit gap needs a VAE (encoder, decoder, prior); {args.run} is a {cfg.model.kind}")
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    if not splits or any(s not in ("test", "train") for s in splits):
        raise VaekitError(f"--splits must name test and/or train; got '{args.splits}'")
    dev = _model_device(model)
    results = {}
    for split in splits:
        x = _eval_ready(_model_data(model, cfg, args, split), cfg)
        x = _first(x, args.n, "--n", f"{split} examples").to(dev)
        check_data_levels(model, x)
        _seed(args)
        print(f"vaekit gap: {split}: {x.shape[0]} examples, K={args.k}, {args.svi_steps} SVI steps", file=sys.stderr)
        res = gap_decomposition(
            model,
            x,
            k=args.k,
            svi_steps=args.svi_steps,
            svi_lr=args.svi_lr,
            svi_samples=args.svi_samples,
            svi_init=args.init,
            batch_size=args.batch_size,
        )
        res.pop("per_example")
        results[split] = res
    print(format_gap_table(results))
    out = Path(args.output) if args.output else _run_folder(args.run) / "gap.json"
    doc = {
        "run": str(args.run),
        "dataset": _data_config(cfg, args).name,
        "splits": results,
        "units": "nats per example; stderr over examples",
    }
    _write_json(out, doc)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _complete_args(p):
    _add_run_args(p, "run folder or checkpoint of a VAE")
    _add_data_args(p)
    p.add_argument(
        "--mask",
        default="bottom",
        help="missing pixels: top|bottom|left|right|random:P|FILE (.npy/.png, nonzero = missing)",
    )
    p.add_argument(
        "-o",
        "--output",
        default="completion.png",
        help=_PICTURE_HELP.format("the completions [n, completions, *data_shape]"),
    )
    p.add_argument("-n", type=int, default=8, help="test images to complete (rows)")
    p.add_argument("--completions", type=int, default=8, help="completions per image (columns)")
    p.add_argument(
        "--method",
        choices=("importance", "svi"),
        default="importance",
        help="posterior over z from the observed pixels: importance-weighted encoder proposal, or SVI",
    )
    p.add_argument("--k", type=int, default=1000, help="importance samples per image")
    p.add_argument("--svi-steps", type=int, default=200)
    p.add_argument("--mean", action="store_true", help="paste E[x|z] instead of a sample")
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of a random mask (random:P) and of the posterior samples and completions",
    )
    p.add_argument("--json", help="also write the per-image numbers here")


def _complete(args):
    from .completion import complete, format_completion_summary, parse_mask
    from .viz import save_completion

    if args.n <= 0 or args.completions <= 0:
        raise VaekitError("-n and --completions must be positive")
    _at_least(1, {"--k": args.k})
    _at_least(0, {"--svi-steps": args.svi_steps})
    out = _picture_path(args.output)
    model, cfg, _ = _load_run(args)
    if not model.has_latents:
        raise VaekitError(f"vaekit complete needs a VAE; {args.run} is a {cfg.model.kind}")
    x = _eval_ready(_model_data(model, cfg, args, args.split), cfg)
    x = _first(x, args.n, "-n", f"{args.split} examples").to(_model_device(model))
    mask = parse_mask(args.mask, tuple(x.shape[1:]), seed=args.seed)
    _seed(args)
    res = complete(
        model,
        x,
        mask,
        n_completions=args.completions,
        method=args.method,
        k=args.k,
        svi_steps=args.svi_steps,
        mean=args.mean,
    )
    print(format_completion_summary(res["summary"]))
    comp, x = _data_units(model, res["completions"]), _data_units(model, x)
    _save_picture(out, comp, lambda path: save_completion(x.cpu(), res["mask"].cpu(), comp.clamp(0, 1).cpu(), path))
    print(f"wrote {out} (each row: masked input, {args.completions} completions, original)", file=sys.stderr)
    if args.json:
        doc = {
            "summary": res["summary"],
            "mask": args.mask,
            "heldout_log_lik": res["heldout_log_lik"].tolist(),
            "heldout_log_lik_per_completion": res["heldout_log_lik_per_completion"].tolist(),
        }
        _write_json(args.json, doc)
    return 0


def _compare_args(p):
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or export folders) to compare")
    p.add_argument("--split", choices=("test", "train"), default="test", help="which eval-SPLIT.json to read")
    p.add_argument("-o", "--output", help="training curves of all runs, a picture (.png, .pdf, ...)")
    p.add_argument("--markdown", metavar="FILE", help="also write the table as markdown (e.g. for a README)")


def _compare(args):
    from .compare import check_runs, format_markdown, format_text, read_run, save_curves, table_row
    from .viz import picture_format

    if args.output:
        picture_format(args.output)
    if args.markdown and Path(args.markdown).is_dir():
        raise VaekitError(f"cannot write {args.markdown}: it is a folder")
    records = [read_run(p, args.split, name) for p, name in zip(check_runs(args.runs), args.runs)]
    for r in records:
        for note in r.notes:
            print(f"vaekit: note: {r.name}: {note}", file=sys.stderr)
    rows = [table_row(r) for r in records]
    print(format_text(rows))
    if args.markdown:
        _write_text(args.markdown, format_markdown(rows, args.split))
        print(f"wrote {args.markdown}", file=sys.stderr)
    if args.output:
        save_curves(records, args.output)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _score_args(p):
    _add_run_args(p, "run folder or checkpoint of a model with a density (VAE, flow, Gaussian mixture)")
    _add_data_args(p)
    p.add_argument(
        "-o",
        "--output",
        default="scores.npy",
        help="scores as a float64 array [N, 2] (.npy): column 0 log p(x) in nats (higher: more typical of the "
        "training data), column 1 bits/dim (NaN where undefined); until it is written, finished chunks wait "
        "in OUTPUT.journal/, from which the same command resumes after a kill",
    )
    p.add_argument("--csv", help="also write the scores here as CSV: index,log_px,bits_per_dim[,label]")
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--n", type=int, help="only the first N examples")
    p.add_argument(
        "--k", type=int, default=5000, help="importance samples per example (VAEs; flows and mixtures are exact)"
    )
    p.add_argument("--batch-size", type=int, help="examples per pass (default: memory-bounded)")
    p.add_argument("--seed", type=int, default=0, help="seed of the importance samples")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help=AMP_HELP)
    p.add_argument("--no-progress", action="store_true", help=EVAL_PROGRESS_HELP)


def _score(args):
    from . import distributed
    from .checkpoint import load_shared
    from .evaluate import precision
    from .score import format_summary, score, scores_csv
    from .train import resolve_device
    from .viz import save_array

    _at_least(1, {"--k": args.k, "--n": args.n, "--batch-size": args.batch_size})
    out = _npy_path(args.output)
    if args.csv and Path(args.csv).is_dir():
        raise VaekitError(f"cannot write {args.csv}: it is a folder")
    with distributed.session():  # under torchrun the examples are split over the processes
        model, cfg, _ = load_shared(args.run, device=resolve_device(args.device or "cpu"))
        if model.log_prob_kind == "none":
            raise VaekitError(
                f"vaekit score needs a model with a density (a VAE, flow or mixture); {args.run} is a {cfg.model.kind}"
            )
        ds = _model_data(model, cfg, args, args.split)
        x = _first(_eval_ready(ds, cfg), args.n, "--n", f"{args.split} examples")
        _resolve_eval_amp(args, cfg, x.device)
        journal_dir = _journal_dir(out)
        _note_journal(journal_dir, model, x, args)
        scores = score(
            model,
            x,
            k=args.k,
            batch_size=args.batch_size,
            seed=args.seed,
            progress=_progress(args),
            amp=args.amp,
            journal_dir=journal_dir,
            log_every=_log_every(args),
        )
        if not distributed.is_main():
            return 0
    save_array(scores.numpy(), out)
    summary = format_summary(scores, model.log_prob_kind, args.k, precision(model, args.amp))
    print(f"{_data_config(cfg, args).name} ({args.split}): {summary}")
    written = [str(out)]
    if args.csv:
        _write_text(args.csv, scores_csv(scores, None if ds.y is None else ds.y[: x.shape[0]]))
        written.append(args.csv)
    _drop_journal(journal_dir, model, x, args)
    print(f"wrote {' and '.join(written)}", file=sys.stderr)
    return 0


def _fid_args(p):
    _add_run_args(p, "run folder or checkpoint of a model that samples")
    _add_data_args(p)
    p.add_argument(
        "--n", type=int, default=10000, help="samples, compared with as many test images (default 10000; more than 84)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the samples")
    p.add_argument(
        "--classifier-seed", type=int, default=0, help="seed of the feature classifier (trained once, cached per seed)"
    )
    p.add_argument("-o", "--output", help="also write the result here as JSON")


def _fid(args):
    from .fid import cache_path, classifier_for, model_fid

    _at_least(1, {"--n": args.n})
    model, cfg, _ = _load_run(args)
    ds = _model_data(model, cfg, args, "test")
    dc = _data_config(cfg, args)
    if not cache_path(dc.name, args.classifier_seed).is_file():
        print(
            f"vaekit: training the FID classifier of {dc.name} (seed {args.classifier_seed}), once; "
            f"cached in {cache_path(dc.name, args.classifier_seed)}",
            file=sys.stderr,
        )
    clf = classifier_for(dc.name, seed=args.classifier_seed, data_dir=dc.data_dir, device=_model_device(model))
    res = model_fid(model, clf, _eval_ready(ds, cfg), args.n, seed=args.seed)
    ref = "binarised " if ds.binarize != "none" else ""
    print(
        f"FID {res['fid']:.3f}: {res['n']} samples vs {res['n']} {ref}{dc.name} test images, in the "
        f"{res['features']}-d features of a LeNet with test accuracy {100 * res['classifier_accuracy']:.2f}%"
    )
    if args.output:
        _write_json(args.output, {"run": str(args.run), "dataset": dc.name, **res})
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _export_args(p):
    p.add_argument("run", help="run folder, checkpoint file or export folder")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="the export folder to create (new or empty)")
    p.add_argument(
        "--onnx",
        action="store_true",
        help="also write encoder.onnx (x -> mean, log_var) and decoder.onnx (z -> likelihood parameters), VAEs only",
    )


def _export(args):
    from .export import export

    doc = export(args.run, args.output, onnx=args.onnx)
    extra = ", encoder.onnx, decoder.onnx" if "onnx" in doc else ""
    print(f"wrote {args.output}: model.safetensors, config.json, README.md{extra}", file=sys.stderr)
    return 0


def _traverse_args(p):
    _add_run_args(p, "run folder or checkpoint of a VAE")
    _add_data_args(p)
    p.add_argument("--dims", type=int, default=10, help="rows: the N most active latent dimensions (default 10)")
    p.add_argument(
        "--steps", type=int, default=9, help="columns, odd: offsets from -3 to +3 prior std, 0 (the mean) in the middle"
    )
    p.add_argument("--index", type=int, default=0, help="the test example whose posterior mean every row starts from")
    p.add_argument(
        "-o",
        "--output",
        default="traverse.png",
        help=_PICTURE_HELP.format("the decodings [dims, steps, *data_shape]"),
    )
    p.add_argument("--seed", type=int, default=0, help="seed of a Monte-Carlo prior std (priors other than normal)")


def _traverse(args):
    from .traverse import SPAN, latent_traversal
    from .viz import save_figure, traverse_figure

    _at_least(1, {"--dims": args.dims})
    _at_least(0, {"--index": args.index})
    if args.steps < 3 or args.steps % 2 == 0:
        raise VaekitError(
            f"--steps must be odd and at least 3 (the middle column is the posterior mean); got {args.steps}"
        )
    out = _picture_path(args.output)
    model, cfg, _ = _load_run(args)
    if not model.has_latents:
        raise VaekitError(
            f"vaekit traverse needs a VAE (a prior to measure offsets in); {args.run} is a {cfg.model.kind}"
        )
    x = _model_data(model, cfg, args, "test").x
    if args.index >= x.shape[0]:
        raise VaekitError(f"--index {args.index} is past the {x.shape[0]} test examples (0..{x.shape[0] - 1})")
    if x.shape[0] < 2:
        raise VaekitError("vaekit traverse needs at least 2 test examples to rank the latent dimensions")
    _seed(args)
    tr = latent_traversal(model, x, args.index, args.dims, args.steps)
    if args.dims > len(tr.dims):
        print(
            f"vaekit: --dims {args.dims} is more than the {len(tr.dims)} latent dimensions; using all", file=sys.stderr
        )
    rows = [f"z_{j + 1} (var {v:.2g})" for j, v in zip(tr.dims.tolist(), tr.activity.tolist())]
    title = f"latent traversal around test example {args.index}: one dimension per row, most active first"
    xlabel = f"offset of z_j from the example's posterior mean, in prior std (±{SPAN:g}); var: Var_x E[z_j|x]"
    imgs = tr.images.clamp(0, 1).cpu()
    _save_picture(
        out, tr.images, lambda path: save_figure(traverse_figure(imgs, rows, tr.offsets, title, xlabel), path)
    )
    print(f"wrote {out}: rows " + ", ".join(rows), file=sys.stderr)
    return 0


class Command(NamedTuple):
    """One subcommand: its arguments, what it does (returns the exit status) and its help line."""

    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    help: str


COMMANDS: dict[str, Command] = {
    "presets": Command(_presets_args, _presets, "list the named presets"),
    "train": Command(_train_args, _train, "train a model (or --resume one)"),
    "evaluate": Command(_evaluate_args, _evaluate, "test NLL (importance-sampled), ELBO, KL, bpd, active units"),
    "sample": Command(_sample_args, _sample, "a grid of samples from the prior"),
    "reconstruct": Command(_reconstruct_args, _reconstruct, "test images above, reconstructions below"),
    "interpolate": Command(_interpolate_args, _interpolate, "decode straight (or spherical) paths between test codes"),
    "latent-map": Command(_latent_map_args, _latent_map, "decoded latent manifold + test points coloured by label"),
    "encode": Command(_encode_args, _encode, "posterior means (and log-variances) as features, .npy"),
    "cluster": Command(_cluster_args, _cluster, "Gaussian mixture assignments: hard labels .npy and soft p(z=k|x)"),
    "gap": Command(_gap_args, _gap, "approximation and amortisation gaps (SVI vs encoder), gap.json"),
    "complete": Command(_complete_args, _complete, "complete masked images from the posterior over z, completion.png"),
    "compare": Command(_compare_args, _compare, "runs side by side: a table of their evaluations, training curves"),
    "export": Command(_export_args, _export, "weights (safetensors), config.json and a model card; --onnx graphs"),
    "score": Command(_score_args, _score, "per-example log p(x) and bits/dim (anomaly scores), scores.npy"),
    "fid": Command(_fid_args, _fid, "Fréchet distance of samples in a LeNet's features, with its test accuracy"),
    "traverse": Command(_traverse_args, _traverse, "decode each latent dimension swept ±3 prior std, active first"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other vaekit error
        self.exit(2, f"vaekit: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vaekit", description="Latent-variable generative models: VAEs, flows, mixtures.")
    parser.add_argument("--version", action="version", version=f"vaekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.help, description=command.help))
    return parser


def _report(e: VaekitError) -> None:
    """One line on stderr; under torchrun, an error every rank shares is printed by rank 0 only."""
    from .distributed import rank

    r, msg = rank(), str(e).replace("\r", "\\r").replace("\n", "\\n")  # one line, whatever it quotes
    if r == 0:
        print(f"vaekit: error: {msg}", file=sys.stderr)
    elif not e.shared:
        print(f"vaekit: error: [rank {r}] {msg}", file=sys.stderr)


def _interrupted(args, e: KeyboardInterrupt) -> str:
    """The one line for Ctrl-C: where training stopped, or a plain "interrupted"; ``--resume`` is
    suggested only for a run folder that holds a checkpoint."""
    if isinstance(e, Interrupted):  # the loop saved the step it reached and says so
        return f"vaekit: {e}"
    if args.command == "train":
        run = args.resume or args.out or (f"runs/{args.preset}" if args.preset else None)
        if run and any((Path(run) / "checkpoints").glob("step-*.pt")):  # no torch import here: it may be half done
            return f"vaekit: interrupted; continue with `vaekit train --resume {run}`"
    return "vaekit: interrupted"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed, for the run's command.txt
    if not args.command:
        parser.print_help()
        return 2
    try:
        return lookup(COMMANDS, args.command, "command").run(args) or 0
    except VaekitError as e:
        _report(e)
        return 2
    except KeyboardInterrupt as e:
        print(_interrupted(args, e), file=sys.stderr)
        return 130
    except FileNotFoundError as e:
        print(f"vaekit: error: file not found: {e.filename}", file=sys.stderr)
        return 2
    except OSError as e:  # permissions, a read-only or full disk, a quota: the file and the reason
        what = f" {shown(e.filename)}" if e.filename else ""
        if e.errno == errno.ENOSPC:
            print(f"vaekit: error: disk full while writing{what}", file=sys.stderr)
        else:
            print(f"vaekit: error: cannot access{what}: {one_line(e.strerror or e)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:  # torch's OutOfMemoryError and the CPU allocator's are RuntimeErrors
        if (
            isinstance(e, RuntimeError)
            and "can't allocate memory" not in str(e)
            and "out of memory" not in str(e).lower()
        ):
            raise  # any other RuntimeError is a bug: its traceback says where
        print(_OUT_OF_MEMORY, file=sys.stderr)
        return 2


_OUT_OF_MEMORY = (
    "vaekit: error: out of memory; use a smaller --batch-size / -n (or --set batch_size=...), or a smaller model"
)


if __name__ == "__main__":
    sys.exit(main())
