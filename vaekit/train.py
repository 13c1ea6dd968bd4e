"""The training loop: one loop for every model that honours the model contract.

It knows only ``model.loss(x, step) -> dict`` of per-example terms (``loss`` is minimised,
the rest are logged) and, for models fitted in closed form (the Gaussian mixture's EM),
``model.fit(x)``. Everything else is bookkeeping a researcher expects:

- the whole training set is one tensor on the device; a batch is an index slice of a
  per-epoch permutation, optionally binarised afresh (dynamic binarisation);
- Adam(W) with a learning-rate schedule that is a pure function of the step
  (:func:`learning_rate`), global gradient-norm clipping, optional EMA of the weights
  (``torch.optim.swa_utils``), as in openai/vdvae;
- a step whose loss or gradient is NaN/inf is skipped and counted; a run that keeps
  producing them stops and names the term that blew up;
- tqdm progress bar with the running loss, ``metrics.jsonl`` and TensorBoard scalars and
  sample grids;
- checkpoints written atomically (see ``vaekit.checkpoint``) every ``ckpt_every`` steps and
  at every epoch end; ``resume`` continues exactly: all randomness of step ``t`` (batch order,
  binarisation, reparameterisation noise) is a pure function of (seed, t), so a resumed run
  replays the same steps as an uninterrupted one;
- distributed data parallel under torchrun (``vaekit.distributed``, PyTorch's
  ``DistributedDataParallel``), laid out so that the run does not depend on how many
  processes execute it (below).

Data shards. A run splits its training set into ``S`` shards, fixed when the run starts
(``S`` = the number of processes then; 1 for a single process) and saved in every
checkpoint: shard ``s`` is examples ``s, s+S, s+2S, ...``. Each shard has its own batch order
per epoch (:func:`shard_permutation`) and its own noise stream per step (:func:`shard_seed`),
and at step ``t`` contributes its ``t``-th slice (:func:`shard_slice`); the global batch of step
``t`` is the union of those slices and the loss is their per-example losses summed and divided
by the global batch size. Process ``r`` of ``W`` holds (on its device) and trains on the shards
``r, r+W, ...`` only; DistributedDataParallel averages the gradients over processes, so each
process scales its loss by ``W / global batch``. The same ``S``-shard run therefore gives the
same weights (up to float summation order) on 1, 2, ... or ``S`` processes, and a run can be
resumed on a different number of processes and continue exactly. Resuming on *more*
processes than shards re-shards the data into one shard per process: the run goes on
correctly, with a different (equally random) batch order from then on. With ``S = 1`` this is
the single-process loop: one permutation of the whole set, one seed per step.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from torch import Tensor, nn

from . import checkpoint as ckpt
from . import distributed
from .config import Config
from .errors import CheckpointError, VaekitError
from .models import build_model
from .nets.conv import autocast, channels_last_input, maybe_compile, to_channels_last


class TrainingDiverged(VaekitError):
    """The loss or gradients stayed NaN/inf for ``max_bad_steps`` consecutive steps."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device.

    Under torchrun, ``auto`` and ``cuda`` mean this process's GPU, ``cuda:LOCAL_RANK``.
    """
    return distributed.process_device(name)


def learning_rate(step: int, total_steps: int, lr: float, schedule: str = "constant", warmup_steps: int = 0) -> float:
    """Learning rate at ``step``: linear warm-up, then constant, cosine or linear decay to 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr * (1.0 - progress)  # linear


def step_seed(seed: int, step: int) -> int:
    """The seed of all randomness at training step ``step`` (a pure function)."""
    return (seed * 1_000_003 + step * 7_919 + 12_345) % (2**63 - 1)


def seed_device(seed: int, device: torch.device) -> None:
    """Seed the global generator of ``device`` only (the step's reparameterisation noise).

    ``torch.manual_seed`` also queues lazy seeding of every accelerator backend, recording a
    stack trace for each: about 0.5 ms per call, 3-4% of a dense-mnist CPU step.
    """
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


def epoch_permutation(n: int, seed: int, epoch: int, device) -> Tensor:
    """The batch order of ``epoch``: a permutation of range(n), a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed(step_seed(seed, -1 - epoch))
    return torch.randperm(n, generator=g).to(device)


def _mix(seed: int, shard: int) -> int:
    return (seed * 6_364_136_223_846_793_005 + shard * 1_442_695_040_888_963_407) % (2**63 - 1)


def shard_seed(seed: int, step: int, shard: int) -> int:
    """The seed of shard ``shard``'s randomness at ``step``; shard 0's is :func:`step_seed`."""
    base = step_seed(seed, step)
    return base if shard == 0 else _mix(base, shard)


def shard_permutation(n: int, seed: int, epoch: int, shard: int, device) -> Tensor:
    """Batch order of shard ``shard`` (``n`` examples) in ``epoch``; shard 0's is :func:`epoch_permutation`."""
    return epoch_permutation(n, seed if shard == 0 else _mix(seed, shard), epoch, device)


def shard_size(n: int, shards: int, shard: int) -> int:
    """Examples in shard ``shard`` of ``n`` examples dealt into ``shards`` (``shard::shards``)."""
    return len(range(shard, n, shards))


def shard_slice(n_shard: int, steps_per_epoch: int, i: int) -> tuple[int, int]:
    """Positions ``[lo, hi)`` of the shard's permutation used at step ``i`` of an epoch.

    The epoch's ``n_shard`` examples are cut into ``steps_per_epoch`` slices of sizes that
    differ by at most one, so every example is used once per epoch and no step is tiny.
    """
    return i * n_shard // steps_per_epoch, (i + 1) * n_shard // steps_per_epoch


class MetricsLog:
    """Append-only ``metrics.jsonl``; on resume, lines after the checkpoint's step are dropped."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is not None and path.exists():
            keep = []
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a kill
                if rec.get("step", 0) <= resume_step:
                    keep.append(line)
            ckpt.atomic_write(path, lambda f: f.write("".join(l + "\n" for l in keep).encode()))
        elif resume_step is None:
            path.write_text("")
        self.f = open(path, "a")

    def write(self, record: dict) -> None:
        try:
            self.f.write(json.dumps(record) + "\n")
            self.f.flush()
        except OSError as e:
            what = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            raise VaekitError(f"cannot write {self.path} ({what}); the run resumes from its last checkpoint") from None

    def close(self) -> None:
        self.f.close()


TERM_NAMES = {"rec": "reconstruction (rec)", "kl": "KL (kl)", "logdet": "logdet"}  # root terms


def _nonfinite_terms(out: dict) -> list[str]:
    return [k for k, v in out.items() if isinstance(v, Tensor) and not torch.isfinite(v).all()]


def _blame(bad_keys: list[str]) -> str:
    """Name the terms that blew up: the root terms (reconstruction, KL, logdet) when any of
    them is non-finite, else the derived ones (loss, elbo, ...), else the gradient."""
    roots = [TERM_NAMES[k] for k in TERM_NAMES if k in bad_keys]
    if roots:
        return ", ".join(roots)
    return ", ".join(bad_keys) if bad_keys else "the gradient (loss finite)"


class _LossModule(nn.Module):
    """``forward(x, step) = model.loss(x, step)``: what DistributedDataParallel wraps, since DDP
    synchronises gradients only for computations that go through ``forward``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, step: int) -> dict:
        return self.model.loss(x, step=step)


def _tensorboard(run_dir: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: scalars still go to metrics.jsonl
        return None
    return SummaryWriter(str(run_dir / "tb"))


def train(
    cfg: Config,
    run_dir: str | Path,
    train_x: Tensor,
    test_x: Tensor | None = None,
    transform: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    resume: bool = False,
    progress: bool = True,
    max_steps: int | None = None,
    data_shape: tuple[int, ...] | None = None,
    shards: int | None = None,
) -> dict:
    """Train the model that ``cfg`` describes on ``train_x``; returns a summary dict.

    Under torchrun every process calls this with the same arguments (the whole training set;
    each process keeps only its shards) and gets the same summary; only rank 0 reads and
    writes ``run_dir``, which therefore needs to exist on rank 0's machine only.

    Args:
        cfg: the resolved config (saved into every checkpoint and ``config.yaml``).
        run_dir: the run folder; it appears, complete, with the first checkpoint.
        train_x: training data [N, *data_shape], float32 (kept on the device as one tensor).
        test_x: optional held-out data [M, *data_shape] for the end-of-epoch evaluation.
        transform: ``f(batch, generator) -> batch`` applied to every batch (dynamic
            binarisation); the generator is seeded per step so resumes replay it exactly.
        resume: continue from the newest good checkpoint in ``run_dir``.
        max_steps: stop after this global step (for tests and time-boxed runs).
        shards: data shards of a new run (default: the number of processes); see the module
            docstring. A resumed run keeps its own.
    """
    with distributed.session():
        device = resolve_device(cfg.train.device)
        return _train(
            cfg, Path(run_dir), train_x, test_x, transform, resume, progress, max_steps, data_shape, shards, device
        )


def _resume_state(run_dir: Path, resume: bool) -> dict | None:
    """The newest good checkpoint's state when resuming (read by rank 0, sent to all), else None.

    Also refuses to start a new run in a folder that holds one.
    """

    def locate():  # rank 0 only: the run folder lives there
        if not resume:
            if ckpt.list_checkpoints(run_dir):
                raise VaekitError(f"{run_dir} already holds a run; use --resume to continue it or another --out")
            return None
        found = ckpt.latest_checkpoint(run_dir, quarantine=True)
        if found is None:
            raise CheckpointError(f"nothing to resume: {run_dir} has no checkpoint")
        ckpt.remove_stale_temp_files(run_dir)
        return found if not distributed.active() else str(found[0])

    found = distributed.agree(locate)
    if found is None:
        return None
    if not distributed.active():
        path, state = found
    else:
        path = Path(found)
        data = distributed.broadcast_bytes(path.read_bytes() if distributed.is_main() else None)
        state = ckpt.load_checkpoint_bytes(data, path)
    if distributed.is_main():
        print(f"vaekit: resuming {run_dir} from {Path(path).name} (step {int(state['step'])})", file=sys.stderr)
    return state


def _train(cfg, run_dir, train_x, test_x, transform, resume, progress, max_steps, data_shape, shards, device) -> dict:
    tc = cfg.train
    W, rank, main = distributed.world_size(), distributed.rank(), distributed.is_main()
    data_shape = tuple(data_shape or train_x.shape[1:])
    N = train_x.shape[0]
    if N == 0:
        raise VaekitError("the training set is empty")
    state = _resume_state(run_dir, resume)

    torch.manual_seed(tc.seed)
    model = build_model(cfg, data_shape).to(device)  # before the run folder exists: bad configs leave none
    to_channels_last(model, cfg.model.channels_last)
    maybe_compile(model, cfg.model.compile)

    if model.fitted_in_closed_form:  # EM: no gradient steps
        return _fit_closed_form(
            model,
            cfg,
            run_dir,
            train_x.to(device),
            test_x.to(device) if test_x is not None else None,
            data_shape,
            progress,
        )

    # the fused kernel updates all parameters in one pass instead of a per-tensor loop
    fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=fused)
    ema = None
    if tc.ema > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema), use_buffers=True)

    steps_per_epoch = math.ceil(N / tc.batch_size)
    total_steps = steps_per_epoch * tc.epochs
    step, bad_total = 0, 0
    saved_window: dict = {}
    S = int(shards or W)
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            if ema is not None and state.get("ema") is not None:
                ema.module.load_state_dict(state["ema"])
                ema.n_averaged.fill_(int(state.get("ema_n", 1)))
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"the checkpoint of {run_dir} does not fit the model its config describes "
                f"({str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__})"
            ) from None
        step, bad_total = int(state["step"]), int(state.get("bad_steps", 0))
        S = int(state.get("shards", 1))
        saved_window = state.get("log_window") or {}
        if W > S:
            if main:
                print(
                    f"vaekit: note: the run has {S} data shard(s) and {W} processes resume it: re-sharding "
                    f"into {W}; the batch order from step {step} on differs from a {S}-process resume",
                    file=sys.stderr,
                )
            S = W
        del state
    if S < 1:
        raise VaekitError(f"shards must be positive; got {S}")
    if N // S < steps_per_epoch:
        raise VaekitError(
            f"train.batch_size={tc.batch_size} is too small for {S} data shards of "
            f"{N} examples: each shard needs an example every step (use a batch of at "
            f"least {S * 2} or fewer processes)"
        )

    # this process's shards, on its device; the rest of train_x is not kept
    mine = list(range(rank, S, W))
    shard_x = {s: train_x[s::S].to(device) for s in mine}
    sizes = [shard_size(N, S, s) for s in range(S)]
    eval_x = test_x[: tc.eval_n].to(device) if test_x is not None and tc.eval_k > 0 else None

    net: nn.Module = _LossModule(model)
    if W > 1:
        from torch.nn.parallel import DistributedDataParallel

        # buffers are broadcast from rank 0 at every forward only when every process runs the
        # same number of forwards per step (S divisible by W); otherwise the counts would not match
        sync = S % W == 0
        kw = (
            {"forward_sync_buffers": sync}
            if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            else {"broadcast_buffers": sync}
        )
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None, **kw)

    # metric sums of the steps since the last log line; under DDP each process holds its share,
    # and a resumed window's (global) sums go to rank 0 alone
    window: dict[str, float] = {k: float(v) if main else 0.0 for k, v in (saved_window.get("sums") or {}).items()}
    window_n = int(saved_window.get("n", 0))
    window_examples = 0  # for examples_per_s, counted from this process's start

    def global_window() -> dict[str, float]:
        keys = sorted(window)
        if W == 1 or not keys:
            return dict(window)
        tot = distributed.all_reduce_sum(torch.tensor([window[k] for k in keys], dtype=torch.float64))
        return dict(zip(keys, tot.tolist()))

    def snapshot(log_window: dict) -> dict:
        return {
            "step": step,
            "epoch": step // steps_per_epoch,
            "bad_steps": bad_total,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,
            "ema_n": int(ema.n_averaged) if ema is not None else 0,
            "config": cfg.to_dict(),
            "data_shape": list(data_shape),
            "shards": S,
            "world_size": W,
            # the metrics of the steps since the last log line, so a resumed run logs the same means
            "log_window": {"sums": log_window, "n": window_n},
            "vaekit_version": __import__("vaekit").__version__,
        }

    def save() -> None:
        state = snapshot(global_window())  # (the all-reduce runs on every process)
        distributed.agree(lambda: ckpt.save_checkpoint(run_dir, state) and None)

    config_text = yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode()

    def open_run_folder() -> None:  # rank 0 only
        if not resume:  # the folder appears in one rename, holding config, empty log and step 0

            def populate(folder: Path) -> None:
                ckpt.atomic_write(folder / "config.yaml", lambda f: f.write(config_text))
                (folder / "metrics.jsonl").write_text("")
                ckpt.save_checkpoint(folder, snapshot({}))

            ckpt.create_run_dir(run_dir, populate)
        else:
            ckpt.atomic_write(run_dir / "config.yaml", lambda f: f.write(config_text))

    distributed.agree(open_run_folder)
    log = MetricsLog(run_dir / "metrics.jsonl", step if resume else None) if main else None
    tb = _tensorboard(run_dir, tc.tensorboard) if main else None

    last = min(total_steps, max_steps) if max_steps is not None else total_steps
    consecutive_bad = 0
    term_keys: list[str] | None = None
    t0, summary = time.perf_counter(), {}
    gen = torch.Generator(device=device)
    bar, perms, synced = None, {}, W == 1
    try:
        while step < last:
            epoch, i = divmod(step, steps_per_epoch)
            if bar is None or i == 0:
                if bar is not None:
                    bar.close()
                from tqdm.auto import tqdm

                bar = tqdm(
                    total=steps_per_epoch,
                    initial=i,
                    desc=f"epoch {epoch + 1}/{tc.epochs}",
                    disable=not (progress and main),
                    leave=False,
                    dynamic_ncols=True,
                    file=sys.stderr,
                )
                perms = {s: shard_permutation(sizes[s], tc.seed, epoch, s, device) for s in mine}
            bounds = [shard_slice(sizes[s], steps_per_epoch, i) for s in range(S)]
            global_batch = sum(hi - lo for lo, hi in bounds)
            scale = W / global_batch  # DDP averages over W processes: the sum is over the global batch

            lr = learning_rate(step, total_steps, tc.lr, tc.schedule, tc.lr_warmup_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            model.train()
            opt.zero_grad(set_to_none=True)
            local_bad, bad_keys, sums, final_loss, shown, n_local = False, set(), {}, None, 0.0, 0
            for j, s in enumerate(mine):
                lo, hi = bounds[s]
                xb = shard_x[s][perms[s][lo:hi]]
                seed = shard_seed(tc.seed, step, s)
                seed_device(seed, device)
                gen.manual_seed(seed)
                if transform is not None:
                    xb = transform(xb, gen)
                xb = channels_last_input(xb, cfg.model.channels_last)
                final = j == len(mine) - 1
                # every process runs all its forwards, even after a bad one, so that the
                # collectives inside DDP's forward stay matched across processes
                with net.no_sync() if W > 1 and not final else contextlib.nullcontext():
                    with autocast(device, tc.amp):
                        out = net(xb, step)
                    loss = out["loss"].sum() * scale
                    if not bool(torch.isfinite(loss)):
                        local_bad = True
                        bad_keys.update(_nonfinite_terms(out))
                    elif not final and not local_bad:
                        loss.backward()  # accumulates locally (no_sync); the final backward syncs
                if final:
                    final_loss = loss
                shown += float(out["loss"].detach().sum())  # the bar shows this process's mean loss
                n_local += xb.shape[0]
                for k, v in out.items():
                    if isinstance(v, Tensor) and v.dim() == 1:
                        sums[k] = sums.get(k, 0.0) + float(v.detach().sum()) / global_batch
            if term_keys is None:
                term_keys = sorted(sums)
            if W > 1:  # one verdict for all processes: skip the step everywhere if any saw NaN/inf
                flags = torch.tensor(
                    [float(local_bad)] + [float(k in bad_keys) for k in term_keys], dtype=torch.float64
                )
                flags = distributed.all_reduce_sum(flags)
                local_bad = bool(flags[0] > 0)
                bad_keys = {k for k, f in zip(term_keys, flags[1:].tolist()) if f > 0}
            ok = not local_bad
            grad_norm = float("nan")
            if ok:
                final_loss.backward()
                gn = torch.nn.utils.clip_grad_norm_(
                    model.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf")
                )
                grad_norm = float(gn)  # identical on every process: the gradients are all-reduced
                ok = math.isfinite(grad_norm)
            if ok:
                opt.step()
                if ema is not None:
                    ema.update_parameters(model)
                consecutive_bad = 0
                if not synced:  # data-dependent initialisation (ActNorm) saw different batches
                    distributed.broadcast_module_state(model)
                    if ema is not None:
                        distributed.broadcast_module_state(ema)
                    synced = True
            else:
                opt.zero_grad(set_to_none=True)
                bad_total += 1
                consecutive_bad += 1
                if consecutive_bad >= tc.max_bad_steps:
                    e = TrainingDiverged(
                        f"{consecutive_bad} consecutive non-finite steps at step {step}: "
                        f"{_blame(sorted(bad_keys))} blew up (try a lower lr, grad_clip, or check the data)"
                    )
                    e.shared = W > 1 and not main  # every process stops; rank 0 says why
                    raise e
            step += 1
            bar.update(1)
            for k, v in sums.items():
                window[k] = window.get(k, 0.0) + v
            window_n += 1
            window_examples += global_batch
            if ok:
                bar.set_postfix(loss=f"{shown / max(n_local, 1):.2f}", refresh=False)

            if step % tc.log_every == 0 or step == last:
                keys = sorted(window)
                window = global_window()  # global-batch means: every process holds its share of each sum
                if main:
                    dt = time.perf_counter() - t0
                    rec = {
                        "step": step,
                        "epoch": epoch + 1,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "bad_steps": bad_total,
                        "examples_per_s": window_examples / max(dt, 1e-9),
                    }
                    rec.update({k: window[k] / window_n for k in keys})
                    log.write(rec)
                    if tb is not None:
                        for k, v in rec.items():
                            if k not in ("step", "epoch"):
                                tb.add_scalar(f"train/{k}", v, step)
                window, window_n, window_examples, t0 = {}, 0, 0, time.perf_counter()

            end_of_epoch = step % steps_per_epoch == 0
            if end_of_epoch and eval_x is not None:
                summary = _epoch_eval(ema.module if ema is not None else model, eval_x, tc, step, epoch + 1, log, tb)
            if end_of_epoch or step % tc.ckpt_every == 0 or step == last:
                save()
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
        if tb is not None:
            tb.close()
    # the last evaluation's record, then the run's own step (the evaluation may be older)
    return {**summary, "step": step, "bad_steps": bad_total, "run_dir": str(run_dir)}


@torch.no_grad()
def _epoch_eval(model, test_x: Tensor, tc, step: int, epoch: int, log: MetricsLog | None, tb) -> dict:
    """Test ELBO and a quick IS-NLL on the first ``eval_n`` test examples.

    The examples are split over the processes and the per-example results all-gathered, with
    noise seeded per chunk of examples, so every process count reports the same numbers.
    """
    from .evaluate import evaluate

    model.eval()
    x = test_x[: tc.eval_n]
    res = evaluate(model, x, k=tc.eval_k, progress=False, seed=step_seed(tc.seed, -(10**9) - step))
    rec = {
        "step": step,
        "epoch": epoch,
        "test_nll": res["nll"],
        "test_elbo": res.get("elbo"),
        "test_kl": res.get("kl"),
        "test_k": tc.eval_k,
        "test_n": int(x.shape[0]),
    }
    if log is not None:
        log.write(rec)
    if tb is not None:
        for k in ("test_nll", "test_elbo", "test_kl"):
            if rec[k] is not None:
                tb.add_scalar(f"test/{k[5:]}", rec[k], step)
        try:
            samples = model.sample(16).clamp(0, 1)
            if samples.dim() == 4:
                tb.add_images("samples", samples, step)
        except NotImplementedError:
            pass
    return rec


def _fit_closed_form(model, cfg, run_dir, train_x, test_x, data_shape, progress) -> dict:
    """Models with ``fit`` (EM for mixtures): fit, log the history, write one checkpoint.

    Every process fits the same model (EM is deterministic given the seed); rank 0 writes.
    """
    history = model.fit(train_x, progress=progress and distributed.is_main())
    state = {
        "step": len(history),
        "epoch": 1,
        "bad_steps": 0,
        "model": model.state_dict(),
        "optimizer": None,
        "ema": None,
        "config": cfg.to_dict(),
        "data_shape": list(data_shape),
        "shards": 1,
        "vaekit_version": __import__("vaekit").__version__,
    }

    def write() -> None:
        def populate(folder: Path) -> None:
            ckpt.atomic_write(
                folder / "config.yaml", lambda f: f.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
            )
            lines = "".join(
                json.dumps({"step": i, "train_mean_log_likelihood": float(ll)}) + "\n"
                for i, ll in enumerate(history, 1)
            )
            ckpt.atomic_write(folder / "metrics.jsonl", lambda f: f.write(lines.encode()))
            ckpt.save_checkpoint(folder, state)

        ckpt.create_run_dir(run_dir, populate)

    distributed.agree(write)
    out = {"step": len(history), "bad_steps": 0, "run_dir": str(run_dir)}
    if test_x is not None:
        out["test_nll"] = float(-model.log_prob(test_x).mean())
    return out
