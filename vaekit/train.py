"""The training loop: one loop for every model that honours the model contract.

It knows only ``model.loss(x, step) -> dict`` of per-example terms (``loss`` is minimised,
the rest are logged) and, for models fitted in closed form (the Gaussian mixture's EM),
``model.fit(x)``. :func:`train` runs a short loop (``_loop``) over :func:`train_step`, which
does one optimisation step on this process's shards of the global batch. Everything else is
bookkeeping a researcher expects:

- the whole training set is one tensor on the device; a batch is an index slice of a
  per-epoch permutation, optionally binarised afresh (dynamic binarisation);
- Adam(W) with a learning-rate schedule that is a pure function of the step
  (:func:`learning_rate`), global gradient-norm clipping, optional EMA of the weights
  (``torch.optim.swa_utils``), as in openai/vdvae;
- a step whose loss or gradient is NaN/inf is skipped and counted; a run that keeps
  producing them stops and names the term that blew up, and so does a run whose weights
  turn NaN/inf or whose end-of-epoch evaluation does (checked before every log line,
  evaluation and checkpoint, so no checkpoint ever holds non-finite weights);
- tqdm progress bar with the running loss, one line per epoch on stderr (:func:`epoch_line`:
  the epoch's training loss and the end-of-epoch test NLL, ELBO and KL with their K), readable
  in a log file where the CLI draws no bar, ``metrics.jsonl`` and TensorBoard scalars and
  sample grids;
- checkpoints written atomically (see ``vaekit.checkpoint``) every ``ckpt_every`` steps and
  at every epoch end; ``resume`` continues exactly: all randomness of step ``t`` (batch order,
  binarisation, reparameterisation noise) is a pure function of (seed, t), derived by
  :func:`vaekit.seeding.derive_seed` (streams STEP, EPOCH, EPOCH_EVAL), so a resumed run
  replays the same steps as an uninterrupted one; a resume keeps the run's config (only the
  epochs and the device may change) and refuses to stop short of the step already reached;
  Ctrl-C stops the loop after the step under way and writes a checkpoint of that step first;
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

import bisect
import contextlib
import copy
import errno
import inspect
import itertools
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import distributed, heap
from .config import Config, TrainConfig, burda_stage_epochs
from .errors import CheckpointError, ConfigError, Interrupted, VaekitError
from .evaluate import evaluate
from .models import build_model, compile_model, dequantize_of
from .models.base import GenerativeModel, check_data_levels
from .models.dense_step import DenseVAEStep, dense_vae_step
from .nets import autocast, channels_last_input, resolve_amp, to_channels_last
from .seeding import BATCH_TRANSFORM, EPOCH, EPOCH_EVAL, STEP, derive_seed


class TrainingDiverged(VaekitError):
    """The loss or gradients stayed NaN/inf for ``max_bad_steps`` consecutive steps, or the weights
    or the end-of-epoch evaluation became NaN/inf."""


def _everywhere(e: VaekitError) -> VaekitError:
    """``e``, raised by every process of a torchrun job alike: only rank 0 prints it."""
    e.shared = distributed.world_size() > 1 and not distributed.is_main()
    return e


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device.

    Under torchrun, ``auto`` and ``cuda`` mean this process's GPU, ``cuda:LOCAL_RANK``.
    """
    return distributed.process_device(name)


def learning_rate(
    step: int,
    total_steps: int,
    lr: float,
    schedule: str = "constant",
    warmup_steps: int = 0,
    steps_per_epoch: int = 1,
    scale: float = 1.0,
) -> float:
    """Learning rate at ``step``: linear warm-up, then constant, cosine or linear decay to 0, or
    Burda et al.'s stages (``burda``: :func:`burda_learning_rate` of the step's epoch, with
    ``steps_per_epoch`` steps per epoch and the stages scaled by ``scale``)."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if schedule == "burda":
        return burda_learning_rate(step // steps_per_epoch, lr, scale)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr * (1.0 - progress)  # linear


def burda_learning_rate(epoch: int, lr: float = 1e-3, scale: float = 1.0) -> float:
    """Burda et al. (2015, Sec. 5): lr * 10^(-i/7) in stage i = 0..7, which lasts 3^i epochs times
    ``scale`` (:func:`vaekit.config.burda_stage_epochs`); ``epoch`` counts from 0. Epochs past the
    protocol's end (a run extended beyond it) keep the last stage's rate."""
    ends = list(itertools.accumulate(burda_stage_epochs(scale)))  # stage i covers epochs [ends[i-1], ends[i])
    i = min(bisect.bisect_right(ends, epoch), len(ends) - 1)
    return lr * 10 ** (-i / 7)


# --- seeds and data shards (pure functions of the run's seed: see the module docstring) -------


def shard_seed(seed: int, step: int, shard: int) -> int:
    """The seed of shard ``shard``'s randomness (binarisation, reparameterisation) at ``step``."""
    return derive_seed(seed, STEP, step, shard)


def step_seed(seed: int, step: int) -> int:
    """The seed of all randomness at ``step`` of a single-shard run (shard 0's :func:`shard_seed`)."""
    return shard_seed(seed, step, 0)


def shard_permutation(n: int, seed: int, epoch: int, shard: int, device) -> Tensor:
    """Batch order of shard ``shard`` (``n`` examples) in ``epoch``: a permutation of range(n)."""
    g = torch.Generator().manual_seed(derive_seed(seed, EPOCH, epoch, shard))
    return torch.randperm(n, generator=g).to(device)


def epoch_permutation(n: int, seed: int, epoch: int, device) -> Tensor:
    """The batch order of ``epoch`` in a single-shard run (shard 0's :func:`shard_permutation`)."""
    return shard_permutation(n, seed, epoch, 0, device)


def shard_size(n: int, shards: int, shard: int) -> int:
    """Examples in shard ``shard`` of ``n`` examples dealt into ``shards`` (``shard::shards``)."""
    return len(range(shard, n, shards))


def shard_slice(n_shard: int, steps_per_epoch: int, i: int) -> tuple[int, int]:
    """Positions ``[lo, hi)`` of the shard's permutation used at step ``i`` of an epoch.

    The epoch's ``n_shard`` examples are cut into ``steps_per_epoch`` slices of sizes that
    differ by at most one, so every example is used once per epoch and no step is tiny.
    """
    return i * n_shard // steps_per_epoch, (i + 1) * n_shard // steps_per_epoch


def seed_device(seed: int, device: torch.device) -> None:
    """Seed the global generator of ``device`` only (the step's reparameterisation noise).

    ``torch.manual_seed`` also queues lazy seeding of every accelerator backend, recording a
    stack trace for each, a cost that shows in a small model's CPU step.
    """
    if device.type == "cuda":  # that device's generator, not the current device's
        torch.cuda.init()  # default_generators is empty until CUDA is initialised
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[index].manual_seed(seed)
    elif device.type == "mps":
        torch.mps.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


class ShardedData:
    """This process's shards of the training set, on its device, and the slice each gives per step.

    Process ``r`` of ``W`` keeps shards ``r, r+W, ...`` of ``shards``; the rest of ``x`` is not kept.
    """

    def __init__(self, x: Tensor, shards: int, batch_size: int, seed: int, device: torch.device):
        N, W = x.shape[0], distributed.world_size()
        steps_per_epoch = math.ceil(N / batch_size)
        if shards < 1:
            raise VaekitError(f"shards must be positive; got {shards}")
        if N // shards < steps_per_epoch:
            raise VaekitError(
                f"train.batch_size={batch_size} is too small for {shards} data shards of "
                f"{N} examples: each shard needs an example every step (use a batch of at "
                f"least {shards * 2} or fewer processes)"
            )
        self.shards, self.steps_per_epoch, self.seed = shards, steps_per_epoch, seed
        self.sizes = [shard_size(N, shards, s) for s in range(shards)]
        self.x = {s: x[s::shards].to(device) for s in range(distributed.rank(), shards, W)}
        self._epoch, self._perms = -1, {}

    def batches(self, step: int) -> tuple[list[tuple[int, Tensor]], int]:
        """``([(shard, examples [b_s, ...]) for this process's shards], global batch size)`` of ``step``."""
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._perms = {
                s: shard_permutation(self.sizes[s], self.seed, epoch, s, x.device) for s, x in self.x.items()
            }
            self._epoch = epoch
        bounds = [shard_slice(n, self.steps_per_epoch, i) for n in self.sizes]
        # index_select copies whole rows; advanced indexing x[idx] goes element by element
        mine = [(s, torch.index_select(x, 0, self._perms[s][bounds[s][0] : bounds[s][1]])) for s, x in self.x.items()]
        return mine, sum(hi - lo for lo, hi in bounds)


# --- one optimisation step ---------------------------------------------------------------------


class _LossModule(nn.Module):
    """``forward(x, step) = model.loss(x, step)``: what DistributedDataParallel wraps, since DDP
    synchronises gradients only for computations that go through ``forward``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, step: int) -> dict:
        return self.model.loss(x, step=step)


@dataclass
class Learner:
    """What an optimisation step updates: the model, the net its forwards go through (the model's
    loss, wrapped in DistributedDataParallel on several processes), AdamW and the optional EMA."""

    model: GenerativeModel
    net: nn.Module
    opt: torch.optim.Optimizer
    ema: AveragedModel | None
    synced: bool  # every process holds rank 0's weights (False until the first step under DDP)
    fused: DenseVAEStep | None = None  # the hand-derived gradient, where the model has one

    @property
    def eval_model(self) -> GenerativeModel:
        """The weights evaluations use: the EMA's when the run keeps one."""
        return self.ema.module if self.ema is not None else self.model


def build_learner(model: GenerativeModel, tc: TrainConfig, device: torch.device) -> Learner:
    """AdamW (fused where it can be) and, when ``tc.ema > 0``, an EMA of the weights and buffers.
    On the CPU it primes glibc's heap (:func:`vaekit.heap.prime`), so that a step's freed tensors
    are reused by the next instead of unmapped and faulted in anew."""
    if device.type == "cpu":
        heap.prime()
    # the fused kernel updates all parameters in one pass instead of a per-tensor loop
    fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, eps=tc.adam_eps, weight_decay=tc.weight_decay, fused=fused)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema), use_buffers=True) if tc.ema > 0 else None
    single = distributed.world_size() == 1
    # the kernel runs float32 without DDP's hooks: under autocast or several processes autograd stays
    fused_step = dense_vae_step(model) if tc.fused and single and not resolve_amp(tc.amp, device) else None
    return Learner(model, _LossModule(model), opt, ema, synced=single, fused=fused_step)


def distribute(learner: Learner, shards: int, device: torch.device) -> None:
    """Wrap the learner's net in DistributedDataParallel when several processes train."""
    if distributed.world_size() == 1:
        return
    # buffers are broadcast from rank 0 at every forward only when every process runs the same
    # number of forwards per step (shards divisible by processes); otherwise the counts would not match
    sync = shards % distributed.world_size() == 0
    params = inspect.signature(DistributedDataParallel).parameters
    kw = {"forward_sync_buffers": sync} if "forward_sync_buffers" in params else {"broadcast_buffers": sync}
    learner.net = DistributedDataParallel(
        learner.net, device_ids=[device.index] if device.type == "cuda" else None, **kw
    )


@dataclass
class StepResult:
    """What the loop logs of one step."""

    ok: bool  # the step was applied (its loss and gradient norm were finite on every process)
    grad_norm: float  # before clipping; NaN for a skipped step
    sums: dict[str, float]  # per-example term -> this process's sum over its examples / global batch
    bad_terms: list[str]  # terms that were non-finite on some process
    shown_loss: float  # mean loss of this process's examples, for the progress bar


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


def _vote(bad: bool, bad_keys: set[str], terms: list[str]) -> tuple[bool, set[str]]:
    """One verdict for all processes: the step is bad everywhere if any process saw NaN/inf."""
    if distributed.world_size() == 1:
        return bad, bad_keys
    flags = torch.tensor([float(bad)] + [float(k in bad_keys) for k in terms], dtype=torch.float64)
    flags = distributed.all_reduce_sum(flags)
    return bool(flags[0] > 0), {k for k, f in zip(terms, flags[1:].tolist()) if f > 0}


def train_step(
    learner: Learner,
    batches: list[tuple[int, Tensor]],
    global_batch: int,
    step: int,
    lr: float,
    tc: TrainConfig,
    prepare: Callable[[Tensor, int], Tensor],
) -> StepResult:
    """One optimisation step on this process's ``batches`` (``[(shard, examples)]``).

    The loss is the per-example losses summed over the global batch of ``global_batch``
    examples and divided by it; DDP averages gradients over the ``W`` processes, so each scales
    its share by ``W``. ``prepare(x, seed)`` seeds the step's noise and transforms a batch. A
    step whose loss (on any process) or gradient norm is non-finite is skipped on every process.
    The gradient comes from the learner's hand-derived kernel where it has one and the step is one
    batch (``learner.fused``), else from autograd.
    """
    model, opt = learner.model, learner.opt
    for g in opt.param_groups:
        g["lr"] = lr
    if not model.training:  # train() walks every submodule: a tenth of a small step
        model.train()
    if learner.fused is not None and len(batches) == 1:
        grads = _fused_gradient(learner.fused, batches[0], global_batch, step, tc, prepare)
    else:
        grads = _autograd_gradient(learner, batches, global_batch, step, tc, prepare)
    sums = grads.sums
    bad, bad_keys = _vote(grads.bad, grads.bad_keys, sorted(sums))
    grad_norm = float("nan")
    if not bad:
        if grads.loss is not None:
            grads.loss.backward()  # on every process or none: DDP all-reduces the gradients here
        fused = learner.fused if grads.loss is None else None  # the gradients it wrote, if it ran
        grad_norm = float(_grad_norm(model, tc.grad_clip, fused))  # the same on every process
        bad = not math.isfinite(grad_norm)
    if bad:
        opt.zero_grad(set_to_none=True)
    else:
        adam_step(opt)
        if (step + 1) % MOMENT_FLUSH_EVERY == 0:  # by step: a resumed run flushes where it would have
            flush_subnormal_moments(opt)
        if learner.ema is not None:
            learner.ema.update_parameters(model)
        if not learner.synced:  # data-dependent initialisation (ActNorm) saw different batches
            distributed.broadcast_module_state(model)
            if learner.ema is not None:
                distributed.broadcast_module_state(learner.ema)
            learner.synced = True
    return StepResult(not bad, grad_norm, sums, sorted(bad_keys), grads.shown / max(grads.n_local, 1))


def _grad_norm(model: nn.Module, clip: float, fused: DenseVAEStep | None = None) -> Tensor:
    """The global gradient norm (before clipping), clipping the gradients to ``clip`` when > 0
    (without clipping, the norm alone: ``clip_grad_norm_`` would rescale every gradient by 1); from
    the hand-derived step's flat buffer (one reduction) when ``fused`` wrote the gradients."""
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    if fused is not None:
        return fused.grad_norm()
    return torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])


def _shared_step_counter(states: list[dict]) -> Tensor:
    """One tensor [P] whose elements are the P parameters' ``state["step"]`` (0-d views of it), so
    that one addition counts a step for all (``torch._foreach_add_`` on the CPU is P additions).
    The state keeps its layout (a checkpoint saves P step tensors); a loaded state is re-shared."""
    steps = [st["step"] for st in states]
    base = steps[0]._base
    if base is None or base.shape != (len(steps),) or any(t._base is not base for t in steps):
        base = torch.stack(steps)
        for i, st in enumerate(states):
            st["step"] = base[i]
    return base


@dataclass
class _Gradient:
    """The forward passes of a step: whether a loss was non-finite (and which terms), the per-example
    terms summed / global batch, the summed loss and examples of this process, and ``loss``: the final
    backward still to run (autograd), or None when the gradients are already in ``.grad``."""

    bad: bool
    bad_keys: set[str]
    sums: dict[str, float]
    shown: float
    n_local: int
    loss: Tensor | None = None


def _terms(out: dict, global_batch: int, sums: dict[str, float]) -> float:
    """Add the step's per-example terms [B] of ``out`` (summed, / global batch) to ``sums``;
    returns the summed loss (for the progress bar)."""
    for k, v in out.items():
        if isinstance(v, Tensor) and v.dim() == 1:
            sums[k] = sums.get(k, 0.0) + float(v.detach().sum()) / global_batch
    return float(out["loss"].detach().sum())


def _fused_gradient(fused: DenseVAEStep, batch, global_batch: int, step: int, tc: TrainConfig, prepare) -> _Gradient:
    """The hand-derived loss terms and gradients (written into ``.grad``) of one batch."""
    s, xb = batch
    xb = prepare(xb, shard_seed(tc.seed, step, s))
    out = fused(xb, step, 1.0 / global_batch)
    sums: dict[str, float] = {}
    shown = _terms(out, global_batch, sums)
    bad = not math.isfinite(shown)
    return _Gradient(bad, set(_nonfinite_terms(out)) if bad else set(), sums, shown, xb.shape[0])


def _autograd_gradient(learner: Learner, batches, global_batch: int, step: int, tc: TrainConfig, prepare) -> _Gradient:
    """Forward passes of every batch, all but the last one's backward run (see ``loss``)."""
    net, W = learner.net, distributed.world_size()
    learner.opt.zero_grad(set_to_none=True)
    bad, bad_keys, sums, shown, n_local, loss = False, set(), {}, 0.0, 0, None
    for j, (s, xb) in enumerate(batches):
        xb = prepare(xb, shard_seed(tc.seed, step, s))
        final = j == len(batches) - 1
        # every process runs all its forwards, even after a bad one, so that the collectives
        # inside DDP's forward stay matched across processes
        with net.no_sync() if W > 1 and not final else contextlib.nullcontext():
            with autocast(xb.device, tc.amp, outputs_float32=tc.amp_outputs_float32):
                out = net(xb, step)
            loss = out["loss"].sum() * (W / global_batch)
            if not bool(torch.isfinite(loss)):
                bad = True
                bad_keys.update(_nonfinite_terms(out))
            elif not final and not bad:
                loss.backward()  # accumulates locally (no_sync); the final backward syncs
        shown += _terms(out, global_batch, sums)
        n_local += xb.shape[0]
    return _Gradient(bad, bad_keys, sums, shown, n_local, loss)


MOMENT_FLUSH_EVERY = 64  # optimiser steps between two flushes of subnormal Adam moments
FLOAT32_EXPONENT = 0x7F800000  # a float32's exponent bits: all zero for zeros and subnormals


@torch.no_grad()
def flush_subnormal_moments(opt: torch.optim.Optimizer) -> None:
    """Set to zero the float32 entries of Adam's moment estimates (``exp_avg``, ``exp_avg_sq``)
    that are subnormal (nonzero, below 2**-126 in magnitude: exponent bits all zero).

    A weight whose gradient stays exactly zero (a dead ReLU unit, a pixel that is always black) has
    its first moment shrink by beta1 = 0.9 a step, and after about 800 steps it is subnormal, where
    it stays for some 150 more. x86 CPUs compute on subnormals tens of times slower unless the
    thread runs flush-to-zero; ``torch.set_flush_denormal`` sets that on the calling thread, and
    under the intra-op pool it left half of such moments subnormal and the optimiser's kernel as
    slow (README, "Subnormal Adam moments"). Zeroing them changes no update: a subnormal first
    moment moves its weight by under lr * 1.2e-38 / eps, and a subnormal second moment changes
    sqrt(v) + eps by under 1e-11 of eps, both far under a float32's last bit. The mask reads the
    exponent bits as integers, so that finding subnormals does not itself compute on them."""
    for t in float32_moments(opt):
        t.masked_fill_(zero_exponent(t), 0.0)


def float32_moments(opt: torch.optim.Optimizer) -> Iterator[Tensor]:
    """The optimiser's float32 Adam moment estimates (``exp_avg``, ``exp_avg_sq``), in its state order."""
    for state in opt.state.values():
        for key in ("exp_avg", "exp_avg_sq"):
            t = state.get(key)
            if t is not None and t.dtype == torch.float32:
                yield t


def zero_exponent(t: Tensor) -> Tensor:
    """Where the float32 tensor ``t`` is zero or subnormal (exponent bits all zero), read as integers."""
    return (t.view(torch.int32) & FLOAT32_EXPONENT) == 0


def adam_step(opt: torch.optim.Optimizer) -> None:
    """``opt.step()``; for a fused AdamW whose state exists, the fused kernel called directly.

    ``Optimizer.step`` wraps the kernel in Python work (hooks, grouping tensors by device, scalar
    checks) that costs a large fraction of the kernel's own time for a small dense VAE at the batch
    of 20 of Burda et al. The direct call does what ``torch.optim.adam._fused_adam`` does for one
    device and dtype, on the optimiser's own state (checkpoints are unchanged); the first step,
    parameters without a gradient or state, and every other optimiser go through ``opt.step()``.
    """
    group = opt.param_groups[0] if isinstance(opt, torch.optim.Adam) and len(opt.param_groups) == 1 else None
    if group is None or not group["fused"] or group["amsgrad"] or group["maximize"] or group["capturable"]:
        opt.step()
        return
    params = group["params"]
    states = [opt.state.get(p) for p in params]
    if any(not st or p.grad is None for p, st in zip(params, states)):
        opt.step()
        return
    _shared_step_counter(states).add_(1)
    steps = [st["step"] for st in states]
    beta1, beta2 = group["betas"]
    kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
    kernel(
        params,
        [p.grad for p in params],
        [st["exp_avg"] for st in states],
        [st["exp_avg_sq"] for st in states],
        [],
        steps,
        amsgrad=False,
        lr=group["lr"],
        beta1=beta1,
        beta2=beta2,
        weight_decay=group["weight_decay"],
        eps=group["eps"],
        maximize=False,
        grad_scale=None,
        found_inf=None,
    )


def batch_preparer(
    transform: Callable[[Tensor, torch.Generator], Tensor] | None, channels_last: bool, device: torch.device
) -> Callable[[Tensor, int], Tensor]:
    """``prepare(x, seed)``: seed the device's generator (the model's noise) with ``seed`` and the
    transform's generator with a seed derived from it (``seeding.BATCH_TRANSFORM``), transform ``x``
    (dynamic binarisation) and set its memory layout. Two seeds, not one: under one seed the
    Gaussian noise of a step would be computed from the very uniforms that binarised its batch."""
    gen = torch.Generator(device=device)

    def prepare(x: Tensor, seed: int) -> Tensor:
        seed_device(seed, device)
        gen.manual_seed(derive_seed(seed, BATCH_TRANSFORM))
        if transform is not None:
            x = transform(x, gen)
        return channels_last_input(x, channels_last)

    return prepare


# --- logging -----------------------------------------------------------------------------------


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
                if isinstance(rec, dict) and rec.get("step", 0) <= resume_step:  # not a record: dropped too
                    keep.append(line)
            ckpt.atomic_write(path, lambda f: f.write("".join(l + "\n" for l in keep).encode()))
        self.f = open(path, "a")
        self.failed = False

    def write(self, record: dict) -> None:
        try:
            self.f.write(ckpt.json_text(record) + "\n")
            self.f.flush()
        except OSError as e:
            self.failed = True
            what = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            raise VaekitError(f"cannot write {self.path} ({what}); the run resumes from its last checkpoint") from None

    def close(self) -> None:
        try:
            self.f.close()
        except OSError:  # flushing what the failed write left: its error was raised already, and says more
            if not self.failed:
                raise


class LogWindow:
    """Metric sums of the steps since the last log line; saved in checkpoints so that a resumed
    run logs the same means. Under DDP each process holds its share of each sum, and a resumed
    window's (global) sums go to rank 0 alone."""

    def __init__(self, saved: dict | None = None):
        saved = saved or {}
        main = distributed.is_main()
        self.sums = {k: float(v) if main else 0.0 for k, v in (saved.get("sums") or {}).items()}
        self.n = int(saved.get("n", 0))
        self.examples, self.t0 = 0, time.perf_counter()  # examples_per_s counts from this process's start

    def add(self, sums: dict[str, float], global_batch: int) -> None:
        for k, v in sums.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1
        self.examples += global_batch

    def global_sums(self) -> dict[str, float]:
        """The sums over all processes (a collective: every process calls it)."""
        keys = sorted(self.sums)
        if distributed.world_size() == 1 or not keys:
            return dict(self.sums)
        tot = distributed.all_reduce_sum(torch.tensor([self.sums[k] for k in keys], dtype=torch.float64))
        return dict(zip(keys, tot.tolist()))

    def flush(self) -> dict[str, float]:
        """Global means and throughput of the window, which then starts afresh (a collective).

        ``seconds``: the wall-clock time of the window (its steps, and the evaluations and checkpoints
        between them), so that the sum over a run's log lines is its training time (``vaekit compare``).
        """
        sums, dt = self.global_sums(), time.perf_counter() - self.t0
        rec = {"examples_per_s": self.examples / max(dt, 1e-9), "seconds": dt}
        rec.update({k: v / self.n for k, v in sorted(sums.items())})
        self.sums, self.n, self.examples, self.t0 = {}, 0, 0, time.perf_counter()
        return rec


def _tensorboard(run_dir: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional: scalars still go to metrics.jsonl
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tb"))


def _epoch_bar(bar, epoch: int, i: int, steps_per_epoch: int, epochs: int, enabled: bool):
    """A fresh tqdm bar for ``epoch`` (closing the previous one), starting at its step ``i``."""
    if bar is not None:
        bar.close()
    return tqdm(
        total=steps_per_epoch,
        initial=i,
        desc=f"epoch {epoch + 1}/{epochs}",
        disable=not enabled,
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
    )


def epoch_line(epoch: int, epochs: int, step: int, losses: list[float], rec: dict | None, kind: str) -> str:
    """The one line printed at the end of an epoch, readable in a log file without a terminal.

    Args:
        epoch, epochs: the epoch just finished (1-based) and the run's number of epochs.
        step: the global step reached.
        losses: this process's mean training loss of each finite step of the epoch (nats per
            example); their mean is shown.
        rec: the end-of-epoch evaluation record of :func:`_epoch_eval` (``test_nll``,
            ``test_elbo``, ``test_kl`` in nats per example, None where undefined; ``test_k``,
            ``test_n``), or None when the run evaluates nothing.
        kind: the model's ``log_prob_kind``: ``exact`` NLLs are not importance-sampled, so no K is shown.

    Returns:
        e.g. ``epoch 2/20 step 72: train loss 151.20; test NLL 140.11 (K=100), ELBO -147.30, KL 18.20
        nats on 500 examples``.
    """
    loss = f"{sum(losses) / len(losses):.2f}" if losses else "n/a (no finite step)"
    line = f"epoch {epoch}/{epochs} step {step}: train loss {loss}"
    if rec is None:
        return line
    how = "exact" if kind == "exact" else f"K={rec['test_k']}"
    shown = [
        f"{name} {rec[key]:.2f}" + (f" ({how})" if key == "test_nll" else "")
        for name, key in (("NLL", "test_nll"), ("ELBO", "test_elbo"), ("KL", "test_kl"))
        if rec.get(key) is not None
    ]
    return f"{line}; test {', '.join(shown)} nats on {rec['test_n']} examples"


def _write_record(log: MetricsLog | None, tb, rec: dict) -> None:
    """A training record to ``metrics.jsonl`` and its scalars to TensorBoard (rank 0 holds both)."""
    if log is not None:
        log.write(rec)
    if tb is not None:
        for k, v in rec.items():
            if k not in ("step", "epoch"):
                tb.add_scalar(f"train/{k}", v, rec["step"])


@torch.no_grad()
def _epoch_eval(model, test_x: Tensor, tc: TrainConfig, step: int, epoch: int, log: MetricsLog | None, tb) -> dict:
    """Test ELBO and a quick IS-NLL on the ``eval_n`` test examples ``test_x``.

    The examples are split over the processes and the per-example results all-gathered, with
    noise seeded per chunk of examples, so every process count reports the same numbers; rank 0
    decides ``train.eval_amp``'s auto for all of them.
    """
    model.eval()
    seed = derive_seed(tc.seed, EPOCH_EVAL, step)
    amp = distributed.agree(resolve_amp, tc.eval_amp, test_x.device, "train.eval_amp")
    res = evaluate(model, test_x, k=tc.eval_k, progress=False, seed=seed, amp=amp)
    rec = {
        "step": step,
        "epoch": epoch,
        "test_nll": res["nll"],
        "test_elbo": res.get("elbo"),
        "test_kl": res.get("kl"),
        "test_k": tc.eval_k,
        "test_n": int(test_x.shape[0]),
        "test_precision": res["precision"],  # train.eval_amp's auto is decided per device, so curves say it
    }
    if not model.data_transform.identity and res["nll"] is not None:  # standardised features: + sum log std
        rec["test_nll_data_units"] = res["nll"] + model.data_transform.log_scale
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


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Run:
    """A gradient-trained run: what its loop needs and what its checkpoints save."""

    cfg: Config
    run_dir: Path
    data_shape: tuple[int, ...]
    learner: Learner
    data: ShardedData
    window: LogWindow
    step: int = 0
    bad_steps: int = 0
    bad_streak: int = 0  # the non-finite steps just before ``step``: max_bad_steps counts across resumes
    saved: int = 0  # the step of the newest checkpoint on disk (a new run's folder holds step 0's)
    finite: int = 0  # the last step at which the weights were checked and finite

    def state(self, log_window: dict | None = None) -> dict:
        """The checkpoint of the run at its current step."""
        learner = self.learner
        return ckpt.training_state(
            self.step,
            learner.model,
            self.cfg,
            self.data_shape,
            epoch=self.step // self.data.steps_per_epoch,
            bad_steps=self.bad_steps,
            bad_streak=self.bad_streak,
            optimizer=learner.opt,
            ema=learner.ema,
            shards=self.data.shards,
            world_size=distributed.world_size(),
            log_window=log_window,
        )

    def save(self) -> None:
        """Write a checkpoint (rank 0); every process calls it, for the log window's all-reduce."""
        log_window = {"sums": self.window.global_sums(), "n": self.window.n}
        distributed.agree(lambda: ckpt.save_checkpoint(self.run_dir, self.state(log_window)) and None)
        self.saved = self.step

    def check_finite(self) -> None:
        """Stop the run when its weights (or buffers, or the EMA's) hold a NaN or an infinity.

        The same on every process (DDP keeps the weights identical), so all stop together.
        """
        modules = [self.learner.model] + ([self.learner.ema.module] if self.learner.ema is not None else [])
        tensors = [t for m in modules for t in (*m.parameters(), *m.buffers()) if t.is_floating_point()]
        if not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):  # one sync
            self.finite = self.step
            return
        raise _everywhere(
            TrainingDiverged(
                f"the weights became NaN/inf between step {self.finite} and step {self.step}: training diverged "
                f"(try a lower train.lr than {self.cfg.train.lr:g}, or train.grad_clip); "
                f"the checkpoint of step {self.saved} holds finite weights"
            )
        )


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
    epoch_lines: bool | None = None,
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
        data_shape: the shape of one example (default ``train_x.shape[1:]``).
        shards: data shards of a new run (default: the number of processes); see the module
            docstring. A resumed run keeps its own.
        epoch_lines: print one line per epoch on stderr (:func:`epoch_line`); None: where
            ``progress`` is on. The CLI prints them also where it draws no bar (a log file).
    """
    with distributed.session():
        device = resolve_device(cfg.train.device)
        lines = progress if epoch_lines is None else epoch_lines
        run_dir = Path(run_dir)
        with contextlib.ExitStack() as held:  # rank 0's lock on the run folder, for the whole session
            return _train(
                cfg,
                run_dir,
                train_x,
                test_x,
                transform,
                resume,
                progress,
                max_steps,
                data_shape,
                shards,
                device,
                lines,
                held,
            )


def _train(
    cfg, run_dir, train_x, test_x, transform, resume, progress, max_steps, data_shape, shards, device, lines, held
) -> dict:
    data_shape = tuple(data_shape or train_x.shape[1:])
    if train_x.shape[0] == 0:
        raise VaekitError("the training set is empty")
    if transform is not None:  # binarisation and dequantisation draw from x in [0, 1] and would not notice
        lo, hi = float(train_x.min()), float(train_x.max())
        if not (0.0 <= lo and hi <= 1.0):
            raise VaekitError(
                f"the per-batch transform (binarisation or dequantisation) needs training data in [0, 1]; "
                f"found {lo:g}..{hi:g}"
            )
    state = _resume_state(run_dir, resume, held)
    cfg = _with_auto_resolved(cfg, state, device)
    tc = cfg.train
    if state is not None:
        _check_resume(cfg, state, run_dir, train_x.shape[0], max_steps)

    torch.manual_seed(tc.seed)
    model = build_model(cfg, data_shape).to(device)  # before the run folder exists: bad configs leave none
    if state is None:
        check_data_levels(model, train_x, training=True)
    to_channels_last(model, cfg.model.channels_last)
    compile_model(model, cfg.model.compile)
    if model.fitted_in_closed_form:  # EM: no gradient steps
        test_x = test_x.to(device) if test_x is not None else None
        return _fit_closed_form(model, cfg, run_dir, train_x.to(device), test_x, data_shape, progress)

    if state is None:  # a fresh run: data-dependent initialisation (a resumed one restores its weights)
        model.init_from_data(train_x.mean(0).to(device))
    run = _start_run(cfg, run_dir, model, train_x, data_shape, state, shards, device)
    del state
    distributed.agree(_open_run_folder, run, resume, held)
    eval_x = test_x[: tc.eval_n].to(device) if test_x is not None and tc.eval_k > 0 else None
    total = run.data.steps_per_epoch * tc.epochs
    last = min(total, max_steps) if max_steps is not None else total
    prepare = batch_preparer(transform, cfg.model.channels_last, device)
    return _loop(run, eval_x, prepare, last, progress, resume, lines)


def _loop(run: Run, eval_x: Tensor | None, prepare, last: int, progress: bool, resume: bool, lines: bool) -> dict:
    """Steps ``run.step + 1 .. last``: log every ``log_every``, evaluate at every epoch end,
    checkpoint at every epoch end, every ``ckpt_every`` steps and at ``last`` (:func:`_after_step`);
    ``progress`` draws the bar, ``lines`` prints :func:`epoch_line` at every epoch end.

    Ctrl-C stops the loop between two steps, after a checkpoint of the step reached
    (:class:`_StopRequest`), and raises :class:`~vaekit.errors.Interrupted`.
    """
    tc, main, spe = run.cfg.train, distributed.is_main(), run.data.steps_per_epoch
    log = MetricsLog(run.run_dir / "metrics.jsonl", run.step if resume else None) if main else None
    tb = _tensorboard(run.run_dir, tc.tensorboard) if main else None
    bar, summary, stop = None, {}, _StopRequest()
    losses: list[float] = []  # this epoch's step losses, for its end-of-epoch line
    try:
        stop.install()
        while run.step < last:
            if stop.requested:
                raise _interrupted(run, last)
            step = run.step
            epoch, i = divmod(step, spe)
            if bar is None or i == 0:
                bar = _epoch_bar(bar, epoch, i, spe, tc.epochs, progress and main)
            batches, global_batch = run.data.batches(step)
            lr = learning_rate(step, spe * tc.epochs, tc.lr, tc.schedule, tc.lr_warmup_steps, spe, tc.schedule_scale)
            res = train_step(run.learner, batches, global_batch, step, lr, tc, prepare)
            if res.ok:
                run.bad_streak = 0
            else:
                run.bad_steps, run.bad_streak = run.bad_steps + 1, run.bad_streak + 1
                if run.bad_streak >= tc.max_bad_steps:
                    raise _diverged(run.bad_streak, step, res.bad_terms)
            run.step = step + 1
            run.window.add(res.sums, global_batch)
            bar.update(1)
            if res.ok:
                bar.set_postfix(loss=f"{res.shown_loss:.2f}", refresh=False)  # this process's mean loss
                losses.append(res.shown_loss)
            rec = _after_step(run, epoch + 1, lr, res, last, eval_x, log, tb)
            summary = rec or summary
            if run.step % spe == 0:  # one line per epoch, also where no bar is drawn (a log file)
                if main and lines:
                    kind = run.learner.model.log_prob_kind
                    tqdm.write(epoch_line(epoch + 1, tc.epochs, run.step, losses, rec, kind), file=sys.stderr)
                losses = []
    finally:
        stop.restore()
        for handle in (bar, log, tb):
            if handle is not None:
                handle.close()
    if run.bad_streak and main:
        print(
            f"vaekit: warning: the last {run.bad_streak} steps were non-finite and skipped: the final weights, "
            f"those after step {run.step - run.bad_streak}, gave no finite loss since",
            file=sys.stderr,
        )
    # the last evaluation's record, then the run's own step (the evaluation may be older)
    return {**summary, "step": run.step, "bad_steps": run.bad_steps, "run_dir": str(run.run_dir)}


def _after_step(
    run: Run, epoch: int, lr: float, res: StepResult, last: int, eval_x: Tensor | None, log: MetricsLog | None, tb
) -> dict | None:
    """The bookkeeping due after step ``run.step`` (of ``epoch``, 1-based, at learning rate ``lr``,
    with result ``res``): a log line, the end-of-epoch evaluation (its record is returned), a
    checkpoint. The weights are checked first, so that non-finite weights are never logged as a
    result, evaluated or saved."""
    tc, step = run.cfg.train, run.step
    end_of_epoch = step % run.data.steps_per_epoch == 0
    due_log = step % tc.log_every == 0 or step == last
    due_save = end_of_epoch or step % tc.ckpt_every == 0 or step == last
    if not (due_log or due_save):
        return None
    run.check_finite()
    if due_log:
        rec = {"step": step, "epoch": epoch, "lr": lr, "grad_norm": res.grad_norm}
        _write_record(log, tb, {**rec, "bad_steps": run.bad_steps, **run.window.flush()})
    summary = None
    if end_of_epoch and eval_x is not None:
        summary = _epoch_eval(run.learner.eval_model, eval_x, tc, step, epoch, log, tb)
        bad = [k for k in ("test_nll", "test_elbo") if summary[k] is not None and not math.isfinite(summary[k])]
        if bad:
            raise _everywhere(
                TrainingDiverged(
                    f"the end-of-epoch {bad[0]} is {summary[bad[0]]} at step {step}: training diverged "
                    f"({run.bad_steps} non-finite steps skipped so far; try a lower train.lr than {tc.lr:g}, "
                    f"or train.grad_clip); the checkpoint of step {run.saved} is the last one"
                )
            )
    if due_save:
        run.save()
    return summary


class _StopRequest:
    """Ctrl-C (SIGINT) during the loop: the first asks the loop to stop after the step under way,
    since a step cut half-way would leave weights, optimiser and EMA out of step with one another;
    a second one interrupts at once (``KeyboardInterrupt``). :meth:`install` acts only in the main thread of a
    single process: under torchrun every process would have to agree on the step to stop at."""

    def __init__(self):
        self.requested, self._installed, self._previous = False, False, None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def install(self) -> None:
        if not distributed.active() and threading.current_thread() is threading.main_thread():
            self._previous, self._installed = signal.signal(signal.SIGINT, self._handle), True

    def restore(self) -> None:
        """Put back the SIGINT handler that was there before :meth:`install`."""
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)
            self._installed = False


def _interrupted(run: Run, last: int) -> Interrupted:
    """Save the step reached (unless it is on disk already) and say where the run stopped."""
    if run.saved != run.step:
        run.check_finite()
        run.save()
    where = ckpt.checkpoint_path(run.run_dir, run.step)
    return Interrupted(
        f"interrupted at step {run.step} of {last}; {where} holds it; "
        f"continue with `vaekit train --resume {run.run_dir}`"
    )


def _diverged(consecutive: int, step: int, bad_terms: list[str]) -> TrainingDiverged:
    e = TrainingDiverged(
        f"{consecutive} consecutive non-finite steps at step {step}: "
        f"{_blame(bad_terms)} blew up (try a lower lr, grad_clip, or check the data)"
    )
    return _everywhere(e)  # every process stops; rank 0 says why


def _with_auto_resolved(cfg: Config, state: dict | None, device: torch.device) -> Config:
    """``cfg`` (a copy when it changes) with ``model.dequantize: auto`` and ``train.amp: auto``
    decided, as the run's config records them. A fresh run resolves dequantisation from the data's
    levels and standardisation (as ``vaekit train`` does) and amp from ``device``
    (:func:`~vaekit.nets.resolve_amp`, which refuses an amp other than auto, true or false before
    the run folder exists); a resumed run takes what its checkpoint decided (dequantize ``false``
    for runs saved before the field existed), so an ``auto`` given to a resume continues what the
    run computed."""
    if cfg.model.dequantize != "auto" and (cfg.train.amp is True or cfg.train.amp is False):
        return cfg
    cfg = copy.deepcopy(cfg)
    saved = Config.from_dict(state["config"]) if state is not None else None
    if cfg.model.dequantize == "auto":
        cfg.model.dequantize = dequantize_of(cfg) if saved is None else saved.model.dequantize
    if cfg.train.amp is not True and cfg.train.amp is not False:  # auto, or refused before the run folder exists
        # rank 0 decides for every process, as it records the run
        cfg.train.amp = distributed.agree(resolve_amp, cfg.train.amp if saved is None else saved.train.amp, device)
    return cfg


def _check_resume(cfg: Config, state: dict, run_dir: Path, n_train: int, max_steps: int | None) -> None:
    """Refuse to resume ``state`` under another config than its own (up to ``ckpt.RESUMABLE``: the
    epochs, the device and the data folder) or to stop it short of the step it has reached; say so
    when there is nothing left to train. Every process runs it on the same state, so all raise alike."""
    diff = ckpt.config_differences(state["config"], cfg.to_dict())
    if diff:
        raise _everywhere(
            ConfigError(
                f"resuming {run_dir} continues its saved config; only "
                f"{', '.join(f'{s}.{n}' for s, n in ckpt.RESUMABLE)} may change, and these differ "
                f"(checkpoint vs given): {'; '.join(diff)}"
            )
        )
    spe = math.ceil(n_train / cfg.train.batch_size)  # as ShardedData
    done, total, epochs = int(state["step"]), spe * cfg.train.epochs, cfg.train.epochs
    if done > total:
        raise _everywhere(
            ConfigError(
                f"{run_dir} has already trained {done} steps ({done / spe:g} epochs of {spe} steps); "
                f"train.epochs={epochs} (--epochs) ends at step {total}, before that: give --epochs "
                f"{done // spe + 1} or more to extend the run, or leave it as it is"
            )
        )
    last = min(total, max_steps) if max_steps is not None else total
    if done >= last and distributed.is_main():
        if done == total:
            why = f"it is complete ({epochs} epochs); extend it with --epochs {epochs + 1} or more"
        else:
            why = f"max_steps is {max_steps}; give a larger --max-steps"
        print(f"vaekit: note: nothing to train: {run_dir} is at step {done} and {why}", file=sys.stderr)


def _start_run(cfg, run_dir, model, train_x, data_shape, state, shards, device) -> Run:
    """The learner and this process's data shards: of a new run, or of ``state`` (a resumed one)."""
    learner = build_learner(model, cfg.train, device)
    W = distributed.world_size()
    S, step, bad_steps, bad_streak, window = int(shards or W), 0, 0, 0, None
    if state is not None:
        ckpt.restore_training_state(state, model, learner.opt, learner.ema, run_dir)
        step, bad_steps, window = int(state["step"]), int(state.get("bad_steps", 0)), state.get("log_window")
        bad_streak = int(state.get("bad_streak", 0))  # absent from checkpoints written before it was kept
        S = int(state.get("shards", 1))
        if W > S:
            if distributed.is_main():
                print(
                    f"vaekit: note: the run has {S} data shard(s) and {W} processes resume it: re-sharding "
                    f"into {W}; the batch order from step {step} on differs from a {S}-process resume",
                    file=sys.stderr,
                )
            S = W
    data = ShardedData(train_x, S, cfg.train.batch_size, cfg.train.seed, device)
    distribute(learner, S, device)
    return Run(
        cfg, run_dir, data_shape, learner, data, LogWindow(window), step, bad_steps, bad_streak, saved=step, finite=step
    )


def _open_run_folder(run: Run, resume: bool, held: contextlib.ExitStack) -> None:
    """Rank 0: a new run's folder appears in one rename, holding its config, an empty log and the
    step-0 checkpoint, and is locked from then on (``checkpoint.run_lock``, kept in ``held``); a
    resumed run's ``config.yaml`` is rewritten (``--epochs`` may extend it)."""
    if resume:
        ckpt.write_config(run.run_dir, run.cfg)
    else:
        ckpt.create_run(run.run_dir, run.cfg, run.state())
        held.enter_context(ckpt.run_lock(run.run_dir))


def _resume_state(run_dir: Path, resume: bool, held: contextlib.ExitStack) -> dict | None:
    """The newest good checkpoint's state when resuming (read by rank 0, sent to all), else None.

    Also refuses to start a new run in a folder that holds one. Rank 0 locks a resumed run's folder
    (``checkpoint.run_lock``, kept in ``held``) before it touches a file there, and the refusal
    when another process holds it reaches every rank through ``distributed.agree``.
    """

    def locate():  # rank 0 only: the run folder lives there
        if not resume:
            if ckpt.list_checkpoints(run_dir):
                raise VaekitError(f"{run_dir} already holds a run; use --resume to continue it or another --out")
            return None
        held.enter_context(ckpt.run_lock(run_dir))
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


def _fit_closed_form(model, cfg: Config, run_dir: Path, train_x: Tensor, test_x, data_shape, progress: bool) -> dict:
    """Models fitted in closed form (EM for mixtures): fit, log the history, write one checkpoint.

    Every process fits the same model (EM is deterministic given the seed); rank 0 writes.
    """
    history = model.fit(train_x, progress=progress and distributed.is_main())
    lines = "".join(
        ckpt.json_text({"step": i, "train_mean_log_likelihood": float(ll)}) + "\n" for i, ll in enumerate(history, 1)
    )
    state = ckpt.training_state(len(history), model, cfg, data_shape)
    distributed.agree(ckpt.create_run, run_dir, cfg, state, lines)
    out = {"step": len(history), "bad_steps": 0, "run_dir": str(run_dir)}
    if test_x is not None:
        out["test_nll"] = float(-model.log_prob(test_x).mean())
    return out
