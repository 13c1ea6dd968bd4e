"""Worker of tests/test_distributed.py, started by torchrun with two gloo processes:

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_driver.py WORK

``WORK/data.pt`` holds the training and test tensors (written by the test, so the workers
need not import scikit-learn), ``WORK/single`` a single-process run stopped at step 3.
Scenarios, all in one process group:

- ``ddp``:   a new 2-process run, 6 steps (an epoch ends at step 4: evaluation split over ranks);
- ``cut``:   a new 2-process run stopped at step 3 (the test resumes it on one process);
- ``cut2``:  ``cut``'s twin, resumed here on 2 processes to step 6;
- ``single``: the single-process run resumed on 2 processes (re-sharded) to step 6;
- ``nan``:   a new 2-process run, 6 steps, on data with one NaN example, which only rank 1's
  shard holds: both ranks must skip the same steps;
- ``cli``:   ``vaekit train`` (the command, as ``torchrun -m vaekit`` runs it) on
  ``WORK/digits.npy``, 4 steps; ``cli_eval``: ``vaekit evaluate`` of that run, the test set
  split over the ranks; ``cli_err``: a command that fails.
  Each rank records its exit status, stdout and stderr in ``WORK/<scenario>.rank<r>.json``.

Every rank saves its final weights as ``WORK/<scenario>.rank<r>.pt``. After the session has
closed, each rank records in ``WORK/closed.rank<r>.json`` whether its process group is still
alive: a group that outlives ``destroy_process_group`` keeps gloo's worker threads running into
interpreter shutdown, where they can abort the process.
"""

import contextlib
import gc
import io
import json
import sys
import weakref
from pathlib import Path

import torch

torch.set_num_threads(1)

import vaekit.train as vt  # noqa: E402
from vaekit import distributed  # noqa: E402
from vaekit.config import build_config  # noqa: E402
from vaekit.train import train  # noqa: E402

SETTINGS = {
    "epochs": 2,
    "batch_size": 50,
    "log_every": 1,
    "ckpt_every": 2,
    "eval_k": 8,
    "eval_n": 40,
    "tensorboard": False,
}


def binarize(x, g):
    return torch.bernoulli(x, generator=g)


built = []  # every model train() builds on this rank, so its final weights can be saved


def _capture(build):
    def wrapped(*args, **kwargs):
        built.append(build(*args, **kwargs))
        return built[-1]

    return wrapped


vt.build_model = _capture(vt.build_model)


def main(work: Path) -> None:
    data = torch.load(work / "data.pt", weights_only=True)
    tr, te = data["train"], data["test"]
    cfg = build_config("dense-digits", overrides=SETTINGS)
    kw = dict(transform=binarize, progress=False)
    with distributed.session():
        assert distributed.world_size() == 2
        r = distributed.rank()
        group = weakref.ref(torch.distributed.group.WORLD)

        def keep(name, summary):
            torch.save({"summary": summary, "weights": built[-1].state_dict()}, work / f"{name}.rank{r}.pt")

        keep("ddp", train(cfg, work / "ddp", tr, te, max_steps=6, **kw))
        train(cfg, work / "cut", tr, te, max_steps=3, **kw)
        train(cfg, work / "cut2", tr, te, max_steps=3, **kw)
        keep("cut2", train(cfg, work / "cut2", tr, te, max_steps=6, resume=True, **kw))
        keep("single", train(cfg, work / "single", tr, te, max_steps=6, resume=True, **kw))
        keep("nan", train(cfg, work / "nan", nan_data(tr), te, max_steps=6, progress=False))

        def command(name, argv):
            from vaekit.cli import main as vaekit_main

            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = vaekit_main([str(a) for a in argv])
            (work / f"{name}.rank{r}.json").write_text(
                json.dumps({"rc": rc, "out": out.getvalue(), "err": err.getvalue()})
            )

        command("cli", CLI_TRAIN + ["--data", work / "digits.npy", "--out", work / "cli"])
        command(
            "cli_eval",
            ["evaluate", work / "cli", "--k", "4", "--seed", "0", "--no-progress", "-o", work / "eval_ddp.json"],
        )
        command("cli_err", ["train", "--resume", work / "no-such-run"])
    gc.collect()
    (work / f"closed.rank{r}.json").write_text(json.dumps({"group_alive": group() is not None}))


CLI_TRAIN = [
    "train",
    "--preset",
    "dense-digits",
    "--max-steps",
    "4",
    "--no-progress",
    "--set",
    "tensorboard=false",
    "--set",
    "eval_k=4",
    "--set",
    "batch_size=20",
]


def nan_data(tr):
    """``tr`` with example 1 (in shard 1 of 2, so on rank 1 only) all NaN."""
    bad = tr.clone()
    bad[1] = float("nan")
    return bad


if __name__ == "__main__":
    main(Path(sys.argv[1]))
