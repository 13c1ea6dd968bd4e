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
  replays the same steps as an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import yaml
from torch import Tensor

from . import checkpoint as ckpt
from .config import Config
from .errors import CheckpointError, VaekitError
from .models import build_model


class TrainingDiverged(VaekitError):
    """The loss or gradients stayed NaN/inf for ``max_bad_steps`` consecutive steps."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise VaekitError(f"unknown device '{name}' (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VaekitError(f"device '{name}' requested but CUDA is not available on this machine")
    return dev


def learning_rate(step: int, total_steps: int, lr: float, schedule: str = "constant",
                  warmup_steps: int = 0) -> float:
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


def epoch_permutation(n: int, seed: int, epoch: int, device) -> Tensor:
    """The batch order of ``epoch``: a permutation of range(n), a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed(step_seed(seed, -1 - epoch))
    return torch.randperm(n, generator=g).to(device)


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
        self.f.write(json.dumps(record) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def _nonfinite_terms(out: dict) -> list[str]:
    return [k for k, v in out.items() if isinstance(v, Tensor) and not torch.isfinite(v).all()]


def _tensorboard(run_dir: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: scalars still go to metrics.jsonl
        return None
    return SummaryWriter(str(run_dir / "tb"))


def train(cfg: Config, run_dir: str | Path, train_x: Tensor, test_x: Tensor | None = None,
          transform: Callable[[Tensor, torch.Generator], Tensor] | None = None,
          resume: bool = False, progress: bool = True, max_steps: int | None = None,
          data_shape: tuple[int, ...] | None = None) -> dict:
    """Train the model that ``cfg`` describes on ``train_x``; returns a summary dict.

    Args:
        cfg: the resolved config (saved into every checkpoint and ``config.yaml``).
        run_dir: the run folder; created if missing.
        train_x: training data [N, *data_shape], float32 (kept on the device as one tensor).
        test_x: optional held-out data [M, *data_shape] for the end-of-epoch evaluation.
        transform: ``f(batch, generator) -> batch`` applied to every batch (dynamic
            binarisation); the generator is seeded per step so resumes replay it exactly.
        resume: continue from the newest good checkpoint in ``run_dir``.
        max_steps: stop after this global step (for tests and time-boxed runs).
    """
    run_dir = Path(run_dir)
    tc = cfg.train
    device = resolve_device(tc.device)
    data_shape = tuple(data_shape or train_x.shape[1:])
    if train_x.shape[0] == 0:
        raise VaekitError("the training set is empty")

    found = ckpt.latest_checkpoint(run_dir) if resume else None
    if resume and found is None:
        raise CheckpointError(f"nothing to resume: {run_dir} has no checkpoint")
    if not resume and ckpt.list_checkpoints(run_dir):
        raise VaekitError(f"{run_dir} already holds a run; use --resume to continue it or another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write(run_dir / "config.yaml", lambda f: f.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode()))

    torch.manual_seed(tc.seed)
    model = build_model(cfg, data_shape).to(device)
    train_x = train_x.to(device)
    test_x = test_x.to(device) if test_x is not None else None

    if hasattr(model, "fit"):  # closed-form fitting (EM), no SGD
        return _fit_closed_form(model, cfg, run_dir, train_x, test_x, data_shape, progress)

    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    ema = None
    if tc.ema > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema), use_buffers=True)

    N = train_x.shape[0]
    steps_per_epoch = math.ceil(N / tc.batch_size)
    total_steps = steps_per_epoch * tc.epochs
    step, bad_total = 0, 0
    if found is not None:
        path, state = found
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.module.load_state_dict(state["ema"])
            ema.n_averaged.fill_(int(state.get("ema_n", 1)))
        step, bad_total = int(state["step"]), int(state.get("bad_steps", 0))
        print(f"vaekit: resuming {run_dir} from {path.name} (step {step})", file=sys.stderr)
    log = MetricsLog(run_dir / "metrics.jsonl", step if found is not None else None)
    tb = _tensorboard(run_dir, tc.tensorboard)

    def save() -> None:
        state = {
            "step": step, "epoch": step // steps_per_epoch, "bad_steps": bad_total,
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,
            "ema_n": int(ema.n_averaged) if ema is not None else 0,
            "config": cfg.to_dict(), "data_shape": list(data_shape),
            "vaekit_version": __import__("vaekit").__version__,
        }
        ckpt.save_checkpoint(run_dir, state)

    last = min(total_steps, max_steps) if max_steps is not None else total_steps
    if step == 0:
        save()  # step 0: a run killed before its first checkpoint still resumes
    consecutive_bad = 0
    window: dict[str, float] = {}
    window_n, t0, summary = 0, time.perf_counter(), {}
    gen = torch.Generator(device=device)
    bar = None
    try:
        while step < last:
            epoch, i = divmod(step, steps_per_epoch)
            if bar is None or i == 0:
                if bar is not None:
                    bar.close()
                from tqdm.auto import tqdm
                bar = tqdm(total=steps_per_epoch, initial=i, desc=f"epoch {epoch + 1}/{tc.epochs}",
                           disable=not progress, leave=False, dynamic_ncols=True, file=sys.stderr)
                perm = epoch_permutation(N, tc.seed, epoch, device)
            idx = perm[i * tc.batch_size:(i + 1) * tc.batch_size]
            seed = step_seed(tc.seed, step)
            torch.manual_seed(seed)
            gen.manual_seed(seed)
            xb = train_x[idx]
            if transform is not None:
                xb = transform(xb, gen)

            lr = learning_rate(step, total_steps, tc.lr, tc.schedule, tc.lr_warmup_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            model.train()
            out = model.loss(xb, step=step)
            loss = out["loss"].mean()
            opt.zero_grad(set_to_none=True)
            ok = bool(torch.isfinite(loss))
            grad_norm = float("nan")
            if ok:
                loss.backward()
                gn = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                    tc.grad_clip if tc.grad_clip > 0 else float("inf"))
                grad_norm = float(gn)
                ok = math.isfinite(grad_norm)
            if ok:
                opt.step()
                if ema is not None:
                    ema.update_parameters(model)
                consecutive_bad = 0
            else:
                bad_total += 1
                consecutive_bad += 1
                if consecutive_bad >= tc.max_bad_steps:
                    terms = _nonfinite_terms(out) or ["gradient"]
                    raise TrainingDiverged(
                        f"{consecutive_bad} consecutive non-finite steps at step {step}: "
                        f"{', '.join(terms)} blew up (try a lower lr, grad_clip, or check the data)")
            step += 1
            bar.update(1)
            for k, v in out.items():
                if isinstance(v, Tensor) and v.dim() == 1:
                    window[k] = window.get(k, 0.0) + float(v.detach().mean())
            window_n += 1
            if ok:
                bar.set_postfix(loss=f"{loss.item():.2f}", refresh=False)

            if step % tc.log_every == 0 or step == last:
                dt = time.perf_counter() - t0
                rec = {"step": step, "epoch": epoch + 1, "lr": lr, "grad_norm": grad_norm,
                       "bad_steps": bad_total,
                       "examples_per_s": window_n * tc.batch_size / max(dt, 1e-9)}
                rec.update({k: v / window_n for k, v in window.items()})
                log.write(rec)
                if tb is not None:
                    for k, v in rec.items():
                        if k not in ("step", "epoch"):
                            tb.add_scalar(f"train/{k}", v, step)
                window, window_n, t0 = {}, 0, time.perf_counter()

            end_of_epoch = step % steps_per_epoch == 0
            if end_of_epoch and test_x is not None and tc.eval_k > 0:
                summary = _epoch_eval(ema.module if ema is not None else model, test_x, tc, step,
                                      epoch + 1, log, tb)
            if end_of_epoch or step % tc.ckpt_every == 0 or step == last:
                save()
    finally:
        if bar is not None:
            bar.close()
        log.close()
        if tb is not None:
            tb.close()
    return {"step": step, "bad_steps": bad_total, "run_dir": str(run_dir), **summary}


@torch.no_grad()
def _epoch_eval(model, test_x: Tensor, tc, step: int, epoch: int, log: MetricsLog, tb) -> dict:
    """Test ELBO and a quick IS-NLL on the first ``eval_n`` test examples."""
    from .evaluate import evaluate

    model.eval()
    x = test_x[: tc.eval_n]
    res = evaluate(model, x, k=tc.eval_k, progress=False)
    rec = {"step": step, "epoch": epoch, "test_nll": res["nll"], "test_elbo": res.get("elbo"),
           "test_kl": res.get("kl"), "test_k": tc.eval_k, "test_n": int(x.shape[0])}
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
    """Models with ``fit`` (EM for mixtures): fit, log the history, write one checkpoint."""
    history = model.fit(train_x, progress=progress)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for i, ll in enumerate(history, 1):
            f.write(json.dumps({"step": i, "train_mean_log_likelihood": float(ll)}) + "\n")
    state = {"step": len(history), "epoch": 1, "bad_steps": 0, "model": model.state_dict(),
             "optimizer": None, "ema": None, "config": cfg.to_dict(), "data_shape": list(data_shape),
             "vaekit_version": __import__("vaekit").__version__}
    ckpt.save_checkpoint(run_dir, state)
    out = {"step": len(history), "bad_steps": 0, "run_dir": str(run_dir)}
    if test_x is not None:
        out["test_nll"] = float(-model.log_prob(test_x).mean())
    return out
