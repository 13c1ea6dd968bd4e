"""Training speed with and without the flush of subnormal Adam moments (``vaekit.train.flush_subnormal_moments``).

A weight whose gradient stays zero has its Adam first moment decay by 0.9 a step into float32's
subnormal range, where x86 CPUs compute tens of times slower. This script trains a preset on real
MNIST (``bench.common.data_dir('mnist')``) for --steps steps by ``vaekit.train.train_step`` with the
flush switched off (the loop as it was before it), counts the subnormal moments, then times two copies
of that learner in interleaved rounds of --speed-steps steps: one going on without the flush, one
with it (every ``MOMENT_FLUSH_EVERY`` steps, as ``vaekit train`` runs). Reported: the median
images/s of each, the median per-round ratio, and the subnormal count each copy ends with.

    python bench/adam_subnormal.py --threads 2                       # nice-mnist, 1000 steps
    python bench/adam_subnormal.py --preset dense-mnist --steps 2000
    python bench/adam_subnormal.py --set amp=false                   # the preset in float32
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vaekit.train as vt  # noqa: E402
from bench.amp_speed import learner_for, load  # noqa: E402
from bench.common import cpu_name, data_dir  # noqa: E402
from vaekit.config import build_config  # noqa: E402
from vaekit.data import resolve_binarize  # noqa: E402
from vaekit.models import binary_data  # noqa: E402

NEVER = 1 << 62  # a flush period no run reaches: the flush switched off


def subnormal_moments(opt: torch.optim.Optimizer) -> int:
    """Nonzero float32 entries of exp_avg / exp_avg_sq with all exponent bits zero."""
    return sum(int(vt.zero_exponent(t).sum() - (t == 0).sum()) for t in vt.float32_moments(opt))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="nice-mnist")
    ap.add_argument("--steps", type=int, default=1000, help="training steps before the timing (flush off)")
    ap.add_argument("--speed-steps", type=int, default=64, help="steps per timed block (one flush period)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="a train setting: amp=false")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = build_config(args.preset, overrides=args.sets)
    cfg.data.name, cfg.data.data_dir = "mnist", data_dir("mnist")
    cfg.data.binarize = resolve_binarize(cfg.data.binarize, binary_data(cfg.model), False)
    train_x, _, transform = load(cfg, {})
    device = torch.device("cpu")
    learner, tc = learner_for(cfg, vt.resolve_amp(cfg.train.amp, device), train_x, device)
    prepare = vt.batch_preparer(transform, cfg.model.channels_last, device)
    B = tc.batch_size
    n_batches = len(train_x) // B
    shipped_every = vt.MOMENT_FLUSH_EVERY

    def run(learner, first: int, n: int, every: int) -> float:
        vt.MOMENT_FLUSH_EVERY = every
        try:
            t0 = time.perf_counter()
            for step in range(first, first + n):
                xb = train_x[(step % n_batches) * B : (step % n_batches + 1) * B]
                vt.train_step(learner, [(0, xb)], B, step, tc.lr, tc, prepare)
            return n * B / (time.perf_counter() - t0)
        finally:
            vt.MOMENT_FLUSH_EVERY = shipped_every

    precision = "float32" if not tc.amp else "bf16 hidden layers" if tc.amp_outputs_float32 else "bf16 nets"
    print(f"# adam_subnormal: {args.preset} on MNIST, batch {B}, {precision} (train.amp resolved), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {cpu_name()}, {time.strftime('%Y-%m-%d %H:%M')}")  # fmt: skip
    early = run(learner, 0, args.steps, NEVER)
    print(f"trained {args.steps} steps without the flush ({early:.1f} img/s over them): "
          f"{subnormal_moments(learner.opt):,d} subnormal moments")  # fmt: skip
    arms = {False: copy.deepcopy(learner), True: learner}
    rates: dict = {False: [], True: []}
    step = {False: args.steps, True: args.steps}
    for r in range(args.rounds):
        for flush in (False, True) if r % 2 == 0 else (True, False):
            rates[flush].append(run(arms[flush], step[flush], args.speed_steps, shipped_every if flush else NEVER))
            step[flush] += args.speed_steps
    ratios = [on / off for on, off in zip(rates[True], rates[False])]
    for flush in (False, True):
        print(f"{'with' if flush else 'without':7s} the flush: {statistics.median(rates[flush]):8.1f} img/s "
              f"(rounds {', '.join(f'{v:.0f}' for v in rates[flush])}), "
              f"{subnormal_moments(arms[flush].opt):,d} subnormal moments at the end")  # fmt: skip
    print(f"with/without: {statistics.median(ratios):.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
