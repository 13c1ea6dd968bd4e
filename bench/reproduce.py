"""Reproduce Burda et al. (2015) Table 1 on MNIST under the paper's protocol, and the rows that beat it.

Each ROW trains one cell of Table 1 (1 or 2 stochastic layers x VAE / IWAE x k = 1, 5, 50; the VAE
and IWAE are the same at k = 1) on full MNIST (60,000 training images, dynamically binarised each
batch) under the paper's protocol: Adam (eps 1e-4), batch 20, lr 1e-3 * 10^(-i/7) for 3^i epochs,
i = 0..7 (3,280 epochs; ``--scale S`` shrinks every stage in proportion, each keeping at least one
epoch: ``vaekit.config.burda_stage_epochs``; ``--batch-size B`` trains with
another batch, a deviation from the paper that the result line states). It then reports the importance-sampled test NLL with
K = 5000 on the 10,000 test images, binarised once with a fixed seed (``--n-test`` uses the first N,
``--k`` another K; both are printed), with its standard error over the test images. ``--fid`` adds
the Fréchet distance of as many samples to those test images in the features of a LeNet trained on
MNIST's labels (``vaekit.fid``; its test accuracy beside it).

A row name may carry variants: ``+dreg`` (doubly reparameterised gradients, Tucker et al. 2018; the
IWAE bound, so k1 rows train the k = 1 IWAE bound, which is the ELBO), ``+stl`` (sticking the
landing, Roeder et al. 2017; ELBO rows) and ``+biasinit`` (decoder output bias = logit of the
training-set mean pixel, clamped to [0.001, 0.999]). Each row runs in ``--runs DIR/ROW``; a stopped row resumes there from its
newest checkpoint (vaekit's own resume; a folder trained under another config is refused). The
evaluation reads the checkpoint of the protocol's last step and refuses to fall back to an older one;
it is kept in the run folder with that step and reused. Each evaluated row is printed and appended to
``--results``: row, paper, vaekit NLL ± s.e., K, test images, protocol epochs and scale, training
wall-clock (summed over the sessions that trained it, a killed chunk's time excepted), evaluation
wall-clock, the device of this session, and the command.

Paper numbers (nats, dynamically binarised MNIST, K = 5000), Burda et al. 2015, Table 1:
1 layer VAE k=1/5/50 86.76 / 86.47 / 86.35, IWAE k=5/50 85.54 / 84.78; 2 layers VAE 85.33 / 85.01 /
84.78, IWAE 83.89 / 82.90. The nbip/IWAE reproduction (its README at commit 0216b45; ``REFERENCES``):
1 layer VAE k=1/5/50 86.35 / 86.10 / 86.06, IWAE k=5/50 85.18 / 84.59; 2 layers VAE 84.83 / 84.08 /
83.89, IWAE 83.48 / 82.82; with DReG, 1 layer IWAE k=1/5/50 86.08 / 84.90 / 84.32.

The protocol is the paper's text. The paper's code (github.com/yburda/iwae) differs from it, and
from these rows, in: the decoder's output bias, initialised at the logit of the training mean for
every model (``+biasinit`` here; ``iwae.random_iwae``); Adam with beta1 = 0.99 and the second moment
started at 1 (``optimizers.py``; here torch's Adam, beta1 = 0.9, moments started at 0); learning rates
rounded to 1e-4 * round(10^(1 - i/7), 1) (7.2e-4, 5.2e-4, ...; ``experiments.py``); 59,600 training
images, 400 held out (``datasets.binarized_mnist``); and the VAE's gradient, that of the ELBO with a
Monte-Carlo KL (``iwae.gradIminibatch_srng``; here the analytic KL, the same objective).

    python bench/reproduce.py 1l-k1 --device cuda
    python bench/reproduce.py 2l-iwae-k50+dreg 1l-k1+biasinit --scale 0.1
    python bench/reproduce.py --list
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vaekit  # noqa: E402
from bench.common import cpu_name, data_dir, header, parser  # noqa: E402
from vaekit.checkpoint import (  # noqa: E402
    atomic_write,
    config_differences,
    latest_checkpoint,
    list_checkpoints,
    run_identity,
)
from vaekit.config import Config, build_config  # noqa: E402
from vaekit.data import binarize_dynamic, prepare_data  # noqa: E402
from vaekit.evaluate import evaluate  # noqa: E402
from vaekit.fid import classifier_for, model_fid  # noqa: E402
from vaekit.train import train  # noqa: E402

# base cell -> (stochastic layers, objective, k, Table 1 NLL)
CELLS = {
    "1l-k1": (1, "elbo", 1, 86.76),
    "1l-vae-k5": (1, "elbo", 5, 86.47),
    "1l-vae-k50": (1, "elbo", 50, 86.35),
    "1l-iwae-k5": (1, "iwae", 5, 85.54),
    "1l-iwae-k50": (1, "iwae", 50, 84.78),
    "2l-k1": (2, "elbo", 1, 85.33),
    "2l-vae-k5": (2, "elbo", 5, 85.01),
    "2l-vae-k50": (2, "elbo", 50, 84.78),
    "2l-iwae-k5": (2, "iwae", 5, 83.89),
    "2l-iwae-k50": (2, "iwae", 50, 82.90),
}
# variant -> the config fields it sets
VARIANTS = {
    "dreg": {"gradient": "dreg", "objective": "iwae"},
    "stl": {"gradient": "stl"},
    "biasinit": {"decoder_bias_init": "data_mean"},
}
# a published reproduction of the same row: the nbip/IWAE README (commit 0216b45), K = 5000
REFERENCES = {
    "1l-k1": 86.35,
    "1l-vae-k5": 86.10,
    "1l-vae-k50": 86.06,
    "1l-iwae-k5": 85.18,
    "1l-iwae-k50": 84.59,
    "2l-k1": 84.83,
    "2l-vae-k5": 84.08,
    "2l-vae-k50": 83.89,
    "2l-iwae-k5": 83.48,
    "2l-iwae-k50": 82.82,
    "1l-k1+dreg": 86.08,
    "1l-iwae-k5+dreg": 84.90,
    "1l-iwae-k50+dreg": 84.32,
}
PROTOCOL = {"schedule": "burda", "adam_eps": 1e-4, "batch_size": 20, "lr": 1e-3}


def fail(message: str):
    """One line on stderr and exit status 2, as vaekit's own errors."""
    print(f"reproduce: error: {message}", file=sys.stderr)
    raise SystemExit(2)


@dataclass
class Row:
    name: str
    layers: int
    paper: float  # Table 1's number of the base cell
    overrides: dict = field(default_factory=dict)
    reference: float | None = None  # a published number of this exact variant, if any


def parse_row(name: str) -> Row:
    """``CELL[+VARIANT...]`` -> the row's config overrides; exits with one line when invalid."""
    cell, *variants = name.split("+")
    if cell not in CELLS or any(v not in VARIANTS for v in variants) or len(set(variants)) < len(variants):
        fail(f"unknown row '{name}'; rows are CELL[+VARIANT...], see --list")
    layers, objective, k, paper = CELLS[cell]
    if {"dreg", "stl"} <= set(variants):
        fail(f"{name}: +dreg and +stl are two gradient estimators; pick one")
    over = {"objective": objective, "k": k}
    for v in variants:
        if v == "dreg" and objective == "elbo" and k > 1:
            fail(f"{name}: +dreg is for the IWAE bound (k1 and iwae rows)")
        if v == "stl" and objective == "iwae":
            fail(f"{name}: +stl is for the ELBO (k1 and vae rows)")
        over.update(VARIANTS[v])
    canonical = "+".join([cell, *sorted(variants)])
    return Row(canonical, layers, paper, over, REFERENCES.get(canonical))


def row_config(row: Row, scale: float, device: str, ddir: str, batch_size: int = PROTOCOL["batch_size"]) -> Config:
    """The row's resolved config: the paper's protocol at ``scale`` (epochs derived from it), with
    another batch size only when asked (a stated deviation: the result line shows it)."""
    sets = {
        **PROTOCOL,
        "batch_size": batch_size,
        **row.overrides,
        "schedule_scale": scale,
        "data.name": "mnist",
        "data.data_dir": ddir,
        "binarize": "dynamic",
        "eval_k": 0,
        "tensorboard": False,
        "device": device,
    }
    return build_config("iwae-1l" if row.layers == 1 else "iwae-2l", overrides=sets)


def _comparable(d: dict) -> dict | None:
    """What must match between a run folder's config and this session's: the config resolved as a
    checkpoint's is on load (``checkpoint.run_identity``: keys of older versions dropped, fields added
    since at their defaults, the resumable ones left out), less the data folder; None if invalid."""
    ident = run_identity(d)
    if ident is not None:
        ident["data"].pop("data_dir", None)
    return ident


def check_run_folder(run: Path, cfg: Config) -> bool:
    """Whether ``run`` holds a run to resume; refuses one trained under another config."""
    if not list_checkpoints(run):
        return False
    found = latest_checkpoint(run)
    if found is None:
        fail(f"{run} has checkpoints but none is readable")
    if _comparable(found[1]["config"]) != _comparable(cfg.to_dict()):
        saved = {**found[1]["config"], "data": {**found[1]["config"]["data"], "data_dir": None}}
        ours = cfg.to_dict()
        ours["data"]["data_dir"] = None  # may differ between sessions
        diff = "; ".join(config_differences(saved, ours))
        fail(f"{run} holds a run of another config ({diff}: the folder's vs this command's); use another --runs")
    return True


def protocol_steps(cfg: Config, n_train: int) -> int:
    """The optimisation steps of the whole protocol: epochs x ceil(n_train / batch)."""
    return -(-n_train // cfg.train.batch_size) * cfg.train.epochs


def final_checkpoint(run: Path, steps: int) -> tuple[Path, dict]:
    """The run's newest readable checkpoint, which must be the protocol's last step ``steps``:
    never an older one that a damaged newest file let ``latest_checkpoint`` fall back to."""
    found = latest_checkpoint(run)
    step = int(found[1]["step"]) if found is not None else None
    if step != steps:
        fail(f"{run}: the newest readable checkpoint is at step {step}, not the protocol's last step {steps}")
    return found


def train_row(cfg: Config, run: Path, x_train, progress: bool, chunks: int = 20) -> float:
    """Train (resuming) to the end of the protocol in about ``chunks`` calls, adding each call's
    wall-clock to ``run/reproduce.json``; returns the run's accumulated training seconds."""
    log = run / "reproduce.json"
    steps_per_epoch = -(-x_train.shape[0] // cfg.train.batch_size)
    total = protocol_steps(cfg, x_train.shape[0])
    chunk = steps_per_epoch * max(1, cfg.train.epochs // chunks)
    while True:
        resume = check_run_folder(run, cfg)
        step = int(latest_checkpoint(run)[1]["step"]) if resume else 0
        done = json.loads(log.read_text()) if resume and log.is_file() else {"train_seconds": 0.0}
        if done.get("n_train", x_train.shape[0]) != x_train.shape[0]:
            fail(f"{run} was trained on {done['n_train']} images; use another --runs")
        if step >= total:
            return done["train_seconds"]
        t0 = time.perf_counter()
        train(cfg, run, x_train, None, binarize_dynamic, resume=resume, progress=progress, max_steps=step + chunk)
        done = {"train_seconds": done["train_seconds"] + time.perf_counter() - t0, "n_train": x_train.shape[0]}
        atomic_write(log, lambda f, d=done: f.write(json.dumps(d).encode()))


def _kept(out: Path, step: int) -> dict | None:
    """The result kept in ``out`` when it is of the checkpoint at ``step`` (a file without a step
    predates the record and counts as this step's); None when there is none or it is of another."""
    if not out.is_file():
        return None
    kept = json.loads(out.read_text())
    if kept.get("step", step) == step:
        return kept
    print(f"# {out} evaluated step {kept['step']}, not {step}: evaluating again", flush=True)
    return None


def evaluate_row(run: Path, ckpt: Path, step: int, x_test, k: int, device: str, progress: bool) -> dict:
    """K-sample IS test NLL (seed 0) of the checkpoint ``ckpt`` at ``step``, kept in ``run`` and
    reused while its recorded step is ``step`` (:func:`_kept`)."""
    out = run / f"eval-k{k}-n{x_test.shape[0]}.json"
    kept = _kept(out, step)
    if kept is not None:
        return {**kept, "cached": True}
    model = vaekit.load(ckpt, device=device)
    journal_dir = out.with_name(out.name + ".journal")  # resumable; kept until the result is
    res = evaluate(model, x_test, k=k, progress=progress, seed=0, journal_dir=journal_dir)
    res["eval_seconds"] = res["seconds"]  # with the time of chunks read back from the journal
    res["step"] = step
    atomic_write(out, lambda f: f.write((json.dumps(res, indent=2) + "\n").encode()))
    shutil.rmtree(journal_dir, ignore_errors=True)  # this row's own folder: one evaluation
    return res


def fid_row(run: Path, ckpt: Path, step: int, x_test, ddir: str, device: str) -> tuple[str, bool]:
    """The FID of the samples of the checkpoint ``ckpt`` at ``step`` against ``x_test`` (as many), kept in
    ``run`` and reused while its recorded step is ``step`` (as :func:`evaluate_row`); as a note for the
    result line, and whether it was read from ``run`` (not computed now)."""
    out = run / f"fid-n{x_test.shape[0]}.json"
    res = _kept(out, step)
    cached = res is not None
    if not cached:
        model = vaekit.load(ckpt, device=device)
        res = model_fid(model, classifier_for("mnist", 0, data_dir=ddir, device=device), x_test, x_test.shape[0])
        res["step"] = step
        atomic_write(out, lambda f: f.write((json.dumps(res, indent=2) + "\n").encode()))
    return f"  FID {res['fid']:.2f} (n {res['n']}, LeNet test accuracy {100 * res['classifier_accuracy']:.2f}%)", cached


def device_name(device: str, threads: int) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU {cpu_name()}, {threads} threads"


COLUMNS = f"{'row':<26} {'paper':>6} {'ref':>6} {'vaekit NLL':>16} {'K':>5} {'n test':>6} {'epochs':>14} "
COLUMNS += f"{'train h':>7} {'eval min':>8}  device  |  command"


def result_line(row: Row, cfg: Config, res: dict, train_s: float, device: str, note: str) -> str:
    ref = f"{row.reference:.2f}" if row.reference is not None else "-"
    epochs = f"{cfg.train.epochs} (x{cfg.train.schedule_scale:g})"
    if cfg.train.batch_size != PROTOCOL["batch_size"]:
        note = f" [batch {cfg.train.batch_size}, not the paper's {PROTOCOL['batch_size']}]" + note
    command = "python bench/reproduce.py " + shlex.join(sys.argv[1:])
    return (
        f"{row.name:<26} {row.paper:6.2f} {ref:>6} {res['nll']:9.2f} ± {res['nll_stderr']:.2f} {res['k']:>5} "
        f"{res['n']:>6} {epochs:>14} {train_s / 3600:7.2f} {res['eval_seconds'] / 60:8.1f}  {device}{note}  |  {command}"
    )


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("rows", nargs="*", metavar="ROW", help="CELL[+VARIANT...], e.g. 1l-k1, 2l-iwae-k50+dreg")
    p.add_argument("--list", action="store_true", help="list the cells and variants")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the protocol's epochs, in (0, 1]")
    p.add_argument("--runs", default="runs/reproduce", help="parent folder of the run folders (DIR/ROW)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=PROTOCOL["batch_size"],
        help=f"training batch (the paper's is {PROTOCOL['batch_size']}; another is shown on the result line)",
    )
    p.add_argument("--k", type=int, default=5000, help="importance samples of the test NLL")
    p.add_argument("--n-test", type=int, default=10000, help="evaluate the first N test images")
    p.add_argument("--n-train", type=int, help="train on the first N images only (smoke tests; not the protocol)")
    p.add_argument("--results", default=str(Path(__file__).parent / "results" / "reproduce.txt"))
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--fid", action="store_true", help="also the FID of samples against the n test images (vaekit.fid)")
    args = p.parse_args()
    if args.list or not args.rows:
        for cell, (layers, objective, k, paper) in CELLS.items():
            print(f"{cell:<12} {layers} layer(s), {'VAE' if objective == 'elbo' else 'IWAE'} k={k}: paper {paper}")
        print("variants: " + ", ".join(f"+{v}" for v in VARIANTS) + "; references: " + json.dumps(REFERENCES))
        return
    rows = [parse_row(r) for r in args.rows]
    header(f"reproduce: Burda et al. 2015 Table 1 at scale {args.scale:g} of the protocol", args)
    ddir = data_dir("mnist")
    device = device_name(args.device, args.threads)
    for row in rows:
        if args.batch_size < 1:
            fail(f"--batch-size must be positive; got {args.batch_size}")
        cfg = row_config(row, args.scale, args.device, ddir, args.batch_size)
        train_ds, test_ds = prepare_data(cfg.data)  # test: binarised once with data.binarize_seed
        x_train = train_ds.x[: args.n_train] if args.n_train else train_ds.x
        note = f" [n_train={x_train.shape[0]}: smoke test]" if args.n_train else ""
        run = Path(args.runs) / row.name
        print(f"# {row.name}: {cfg.train.epochs} epochs of {x_train.shape[0]} images -> {run}", flush=True)
        train_s = train_row(cfg, run, x_train, not args.no_progress)
        steps = protocol_steps(cfg, x_train.shape[0])
        ckpt, state = final_checkpoint(run, steps)
        if state.get("bad_steps"):
            note += f" [{state['bad_steps']} non-finite steps skipped]"
        res = evaluate_row(run, ckpt, steps, test_ds.x[: args.n_test], args.k, args.device, not args.no_progress)
        fid_cached = True
        if args.fid:
            fid_note, fid_cached = fid_row(run, ckpt, steps, test_ds.x[: args.n_test], ddir, args.device)
            note += fid_note
        line = result_line(row, cfg, res, train_s, device, note)
        print(COLUMNS + "\n" + line, flush=True)
        if res.get("cached") and fid_cached:  # nothing new: its line is in the results file already
            print(f"# {row.name}: evaluation read from {run}, not appended again", flush=True)
            continue
        results = Path(args.results)
        results.parent.mkdir(parents=True, exist_ok=True)
        with results.open("a", encoding="utf-8") as f:
            f.write(("" if results.stat().st_size else COLUMNS + "\n") + line + "\n")


if __name__ == "__main__":
    main()
