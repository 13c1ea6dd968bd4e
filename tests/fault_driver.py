"""Worker of tests/test_faults.py: trains (or resumes) ``WORK/run`` on ``WORK/data.pt``.

    python tests/fault_driver.py WORK
    python tests/fault_driver.py --cli ARGS...   # the `vaekit` command, with slow steps

Each step sleeps ``STEP_SLEEP`` seconds inside the data transform, so that a SIGKILL (or a
SIGINT) sent at a random moment lands in a step; ``VAEKIT_TEST_SLOW_CKPT`` (see
``vaekit.checkpoint``) makes checkpoint writes stop half-way, so that one can land in a write.
Prints ``vaekit-test: ready`` on stderr once imports are done. The run keeps an EMA and follows
a warm-up and cosine learning-rate schedule, so that a resume has to restore all of them.
"""

import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

from vaekit import checkpoint as ckpt  # noqa: E402
from vaekit.config import build_config  # noqa: E402
from vaekit.train import train  # noqa: E402

SETTINGS = {
    "epochs": 3,
    "batch_size": 20,
    "log_every": 2,
    "ckpt_every": 3,
    "eval_k": 4,
    "eval_n": 20,
    "tensorboard": False,
    "ema": 0.9,
    "schedule": "cosine",
    "lr_warmup_steps": 4,
}
STEP_SLEEP = 0.05


def binarize(x, g):
    return torch.bernoulli(x, generator=g)


def slow_binarize(x, g):
    time.sleep(STEP_SLEEP)
    return binarize(x, g)


def main(work: Path) -> None:
    data = torch.load(work / "data.pt", weights_only=True)
    cfg = build_config("dense-digits", overrides=SETTINGS)
    run = work / "run"
    print("vaekit-test: ready", file=sys.stderr, flush=True)
    train(
        cfg,
        run,
        data["train"],
        data["test"],
        transform=slow_binarize,
        progress=False,
        resume=bool(ckpt.list_checkpoints(run)),
    )


def cli(argv: list[str]) -> int:
    """``vaekit ARGV`` with each step slowed by ``STEP_SLEEP`` (dynamic binarisation sleeps first)."""
    import vaekit.data
    from vaekit.cli import main as vaekit_main

    fast = vaekit.data.binarize_dynamic

    def slow(x, g):
        time.sleep(STEP_SLEEP)
        return fast(x, g)

    vaekit.data.binarize_dynamic = slow
    print("vaekit-test: ready", file=sys.stderr, flush=True)
    return vaekit_main(argv)


if __name__ == "__main__":
    if sys.argv[1] == "--cli":
        sys.exit(cli(sys.argv[2:]))
    main(Path(sys.argv[1]))
