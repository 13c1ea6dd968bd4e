"""bf16 autocast (``--set amp=true``) against float32 training: images/s, and test quality after equal steps.

For every preset, on real MNIST (``bench.common.data_dir('mnist')``), in one process:

- **speed**: two copies of the preset's model from the same seed, one trained with ``amp`` off and one
  with it on, each by the training loop's own step (``vaekit.train.train_step``: AdamW, gradient
  clipping, the NaN vote; the preset's channels-last and compile settings) on the same real batches
  at the preset's batch size. They are timed in interleaved rounds: a block of --speed-steps steps
  off and a block on, in alternating order, --rounds times, after one untimed warm-up step each
  (ActNorm's initialisation, oneDNN's kernel creation), so both see the same machine load. Reported:
  the median images/s of each and the median of the per-round ratios on/off.
- **quality**: ``vaekit.train.train`` of the preset for --steps steps from the same seed with amp off
  and on (the same batches and noise), then, in float32 and with the same noise for both, per test
  image of the first --n-test: log p(x) (``vaekit.evaluate.per_example_log_prob``: VAEs importance
  sampled with --k samples, flows exact) and for VAEs a one-sample ELBO. Reported: the test NLL (and
  bits/dim where defined), the ELBO, and the paired difference on - off with its standard error over
  the test images. That error is the test set's only: the two runs' trajectories part after the first
  steps, so the difference also carries the training noise; --seeds S repeats the pair with seeds
  seed, seed+1, ... and reports each seed's NLL difference and their mean with its standard error.

With --float32-outputs the amp arm trains with the nets' output layers in float32
(``--set amp_outputs_float32=true``, as the evaluators run them), so that only the
hidden layers round to bf16: the shifts and log-scales of a flow's couplings, a likelihood's logits and
a posterior's parameters, and the gradients that enter the nets through them, stay float32. A
preset that sets ``train.amp_outputs_float32`` itself (``nice-mnist``) trains its amp arm so without
the flag too, as ``--set amp=true`` would; its row says so.

    python bench/amp_speed.py --threads 1                          # the default presets
    python bench/amp_speed.py --presets conv-mnist --steps 300 --rounds 7
    python bench/amp_speed.py --quick                              # smoke run: 2 presets, a few steps
    python bench/amp_speed.py --presets nice-mnist --steps 938 --n-test 10000 --float32-outputs

The figures are evidence for turning amp on in a preset or not; this script changes no preset.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vaekit  # noqa: E402
from bench.common import cpu_name, data_dir  # noqa: E402
from vaekit.config import get_preset  # noqa: E402
from vaekit.data import binarize_dynamic, prepare_data, resolve_binarize  # noqa: E402
from vaekit.evaluate import per_example_log_prob  # noqa: E402
from vaekit.models import binary_data, build_model, compile_model  # noqa: E402
from vaekit.nets import to_channels_last  # noqa: E402
from vaekit.objectives import elbo_terms  # noqa: E402
from vaekit.train import batch_preparer, build_learner, train, train_step  # noqa: E402

PRESETS = ["dense-mnist", "iwae-1l", "conv-mnist", "resnet-mnist", "pixelvae-mnist", "nice-mnist", "glow-mnist"]
QUICK_PRESETS = ["dense-mnist", "glow-mnist"]
ELBO_SEED = 0  # the noise of the per-example ELBO, the same for both arms


def config(name: str, args):
    """The preset's config on MNIST from bench.common.data_dir, binarised as its likelihood wants."""
    cfg = get_preset(name)
    cfg.data.name, cfg.data.data_dir = "mnist", data_dir("mnist")
    cfg.data.binarize = resolve_binarize(cfg.data.binarize, binary_data(cfg.model), False)
    cfg.train.device, cfg.train.tensorboard, cfg.train.eval_k = args.device, False, 0
    cfg.train.amp_outputs_float32 = cfg.train.amp_outputs_float32 or args.float32_outputs  # read by the amp arm only
    if args.seed is not None:
        cfg.train.seed = args.seed
    if args.batch_size:
        cfg.train.batch_size = args.batch_size
    return cfg


def load(cfg, cache: dict):
    """(train images, test images, transform) of ``cfg.data``, read once per binarisation mode."""
    if cfg.data.binarize not in cache:
        train_ds, test_ds = prepare_data(cfg.data)
        transform = binarize_dynamic if train_ds.binarize == "dynamic" else None
        cache[cfg.data.binarize] = (train_ds.x, test_ds.x, transform, train_ds.levels)
    train_x, test_x, transform, levels = cache[cfg.data.binarize]
    cfg.data.levels = levels  # the model's bits/dim follow them (as `vaekit train` records)
    return train_x, test_x, transform


def learner_for(cfg, amp: bool, train_x, device):
    """(learner, train config) of the preset's model built from the run's seed, with ``amp``."""
    tc = copy.deepcopy(cfg.train)
    tc.amp = amp
    torch.manual_seed(tc.seed)
    model = build_model(cfg, tuple(train_x.shape[1:])).to(device)
    to_channels_last(model, cfg.model.channels_last)
    compile_model(model, cfg.model.compile)
    model.init_from_data(train_x.mean(0).to(device))
    return build_learner(model, tc, device), tc


def speed(cfg, train_x, transform, args) -> dict:
    """Median training images/s with amp off and on over interleaved rounds, and the median ratio."""
    device = torch.device(args.device)
    arms = {amp: learner_for(cfg, amp, train_x, device) for amp in (False, True)}
    prepare = batch_preparer(transform, cfg.model.channels_last, device)
    B = cfg.train.batch_size
    batches = [train_x[i * B : (i + 1) * B].to(device) for i in range(args.speed_steps + 1)]
    step = {False: 0, True: 0}

    def block(amp: bool, xs: list) -> float:
        learner, tc = arms[amp]
        t0 = time.perf_counter()
        for xb in xs:
            train_step(learner, [(0, xb)], xb.shape[0], step[amp], tc.lr, tc, prepare)
            step[amp] += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        return sum(x.shape[0] for x in xs) / (time.perf_counter() - t0)

    for amp in (False, True):
        block(amp, batches[:1])  # warm-up
    rates = {False: [], True: []}
    for r in range(args.rounds):
        for amp in (False, True) if r % 2 == 0 else (True, False):
            rates[amp].append(block(amp, batches[1:]))
    ratios = [on / off for on, off in zip(rates[True], rates[False])]
    return {
        "batch": B,
        "off_img_s": statistics.median(rates[False]),
        "on_img_s": statistics.median(rates[True]),
        "ratio": statistics.median(ratios),
        "ratio_range": (min(ratios), max(ratios)),
    }


@torch.no_grad()
def per_example_elbo(model, x, batch: int = 500):
    """One-sample ELBO per example [N] (float64), the noise seeded with ELBO_SEED."""
    with torch.random.fork_rng():
        torch.manual_seed(ELBO_SEED)
        return torch.cat([elbo_terms(model, x[i : i + batch], 1)["elbo"].double() for i in range(0, len(x), batch)])


def quality(cfg, amp: bool, train_x, test_x, transform, args, seed_offset: int = 0) -> dict:
    """Per-test-image log p(x) (and ELBO for VAEs) after --steps training steps with ``amp``."""
    cfg = copy.deepcopy(cfg)
    cfg.train.amp, cfg.train.seed = amp, cfg.train.seed + seed_offset
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, Path(tmp) / "run", train_x, None, transform=transform, progress=False, max_steps=args.steps)
        model = vaekit.load(Path(tmp) / "run", device=args.device)
    x = test_x[: args.n_test].to(args.device)
    out = {"model": model, "log_px": per_example_log_prob(model, x, k=args.k, progress=False, seed=0)}
    if model.log_prob_kind == "importance-sampled":
        out["elbo"] = per_example_elbo(model.eval(), x)
    return out


def paired(off, on) -> tuple[float, float]:
    """Mean of on - off over the test images and its standard error."""
    d = (on - off).double()
    return d.mean().item(), (d.std().item() / math.sqrt(d.numel()) if d.numel() > 1 else float("nan"))


def quality_cells(off: dict, on: dict) -> str:
    """NLL (bits/dim) and ELBO of both arms and the paired differences on - off."""
    nll_off, nll_on = -off["log_px"].mean().item(), -on["log_px"].mean().item()
    d, se = paired(-off["log_px"], -on["log_px"])
    cells = f"test NLL {nll_off:8.2f} -> {nll_on:8.2f} nats (on - off {d:+.3f} ± {se:.3f})"
    bpd = [off["model"].bits_per_dim(nll_off), on["model"].bits_per_dim(nll_on)]
    if bpd[0] is not None:
        cells += f", bits/dim {float(bpd[0]):.4f} -> {float(bpd[1]):.4f}"
    if "elbo" in off:
        d, se = paired(off["elbo"], on["elbo"])
        cells += f"; ELBO {off['elbo'].mean().item():8.2f} -> {on['elbo'].mean().item():8.2f} ({d:+.3f} ± {se:.3f})"
    return cells


def seeds_cell(pairs: list) -> str:
    """Each seed's NLL difference on - off and their mean with its standard error over seeds."""
    diffs = [paired(-off["log_px"], -on["log_px"])[0] for off, on in pairs]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    listed = ", ".join(f"{d:+.3f}" for d in diffs)
    return f"; NLL on - off over {len(diffs)} seeds: {statistics.mean(diffs):+.3f} ± {se:.3f} ({listed})"


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=None, help=f"default: {' '.join(PRESETS)}")
    ap.add_argument("--steps", type=int, default=200, help="training steps of each quality run (amp off, amp on)")
    ap.add_argument("--speed-steps", type=int, default=3, help="timed training steps per block")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved off/on blocks; medians are reported")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    ap.add_argument("--n-test", type=int, default=500, help="test images evaluated")
    ap.add_argument("--k", type=int, default=100, help="importance samples per test image (VAEs)")
    ap.add_argument("--seeds", type=int, default=1, help="quality pairs with seeds seed, seed+1, ...")
    ap.add_argument(
        "--seed", type=int, default=None, help="the first of those seeds (default: the preset's train.seed)"
    )
    ap.add_argument("--skip-quality", action="store_true", help="time the steps only")
    ap.add_argument(
        "--float32-outputs",
        action="store_true",
        help="the amp arm trains with the nets' output layers in float32: only hidden layers in bf16",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 thread, presets " + " ".join(QUICK_PRESETS))
    args = ap.parse_args(argv)
    if args.quick:
        args.threads, args.steps, args.speed_steps, args.rounds = args.threads or 1, 2, 1, 2
        args.batch_size, args.n_test, args.k = args.batch_size or 8, 8, 4
    args.presets = args.presets or (QUICK_PRESETS if args.quick else PRESETS)
    return args


def main(argv=None):
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# bf16 autocast vs float32 training on MNIST: torch {torch.__version__}, {args.device},"
          f" {torch.get_num_threads()} threads, {cpu_name()}, {time.strftime('%Y-%m-%d %H:%M')}")  # fmt: skip
    print(f"# speed: {args.rounds} interleaved rounds of {args.speed_steps} train_step calls per arm, medians;"
          f" quality: {args.steps} steps per arm from the same seed, {args.n_test} test images, K={args.k} (VAEs),"
          " evaluated in float32")  # fmt: skip
    if args.float32_outputs:
        print("# amp arm: bf16 hidden layers, float32 output layers in training (--float32-outputs)")
    cache: dict = {}
    for name in args.presets:
        cfg = config(name, args)
        if cfg.model.kind not in ("vae", "flow"):
            print(f"{name:15s} skipped: only VAEs and flows train by gradient and have a log p(x)", flush=True)
            continue
        train_x, test_x, transform = load(cfg, cache)
        s = speed(cfg, train_x, transform, args)
        hidden = " (amp arm: bf16 hidden layers)" if cfg.train.amp_outputs_float32 and not args.float32_outputs else ""
        line = (
            f"{name:15s}{hidden} batch {s['batch']:4d}: {s['off_img_s']:8.1f} -> {s['on_img_s']:8.1f} img/s,"
            f" amp/fp32 {s['ratio']:.2f}x (rounds {s['ratio_range'][0]:.2f}-{s['ratio_range'][1]:.2f})"
        )
        if not args.skip_quality:
            pairs = []
            for seed in range(args.seeds):
                pairs.append(tuple(quality(cfg, amp, train_x, test_x, transform, args, seed) for amp in (False, True)))
                if args.seeds > 1:  # each seed as it ends, so that a killed run keeps the seeds it finished
                    print(f"#   {name} seed {cfg.train.seed + seed}: {quality_cells(*pairs[-1])}", flush=True)
            line += " | " + quality_cells(*pairs[0]) + (seeds_cell(pairs) if args.seeds > 1 else "")
        print(line, flush=True)


if __name__ == "__main__":
    main()
