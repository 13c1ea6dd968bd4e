"""Multi-process training on PyTorch's own engine (``torch.distributed``), and nothing home-made.

Launch with torchrun, which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` for every process::

    torchrun --nproc-per-node 2 -m vaekit train --preset dense-mnist --out runs/a

Without those variables everything here degrades to the single process: ``rank() == 0``,
``world_size() == 1`` and the collectives return their input. :func:`session` opens the
process group from the environment (``init_method="env://"``; NCCL for CUDA tensors and gloo
for CPU tensors where CUDA is available, gloo alone on CPU machines) and closes it again;
sessions nest, so ``vaekit.train.train`` called inside the CLI's session does not open a
second group.

The collectives move only tensors (no pickling, so nothing a peer sends is ever executed):
sums (:func:`all_reduce_sum`), rows of different lengths gathered onto every rank
(:func:`all_gather_rows`), bytes broadcast from rank 0 (:func:`broadcast_bytes`) and
:func:`agree`, which runs a step on rank 0 only (touching the run folder) and raises its
error, if any, on every rank so that no rank is left waiting in a collective.

Reference: https://pytorch.org/docs/stable/distributed.html (``init_process_group``,
environment-variable initialisation) and https://pytorch.org/docs/stable/elastic/run.html
(torchrun).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
from datetime import timedelta

import torch
from torch import Tensor

from . import errors
from .errors import VaekitError

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _dist():
    import torch.distributed as dist

    return dist


def launched() -> bool:
    """True when this process was started by torchrun (or any launcher setting WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def active() -> bool:
    """A process group with more than one process is open."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 without a process group; from ``RANK`` before one opens)."""
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


def world_size() -> int:
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main() -> bool:
    return rank() == 0


def backend() -> str:
    """``cpu:gloo,cuda:nccl`` where CUDA is available (NCCL moves the gradients of CUDA models,
    gloo the small control messages, which stay on the CPU), else ``gloo``."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def process_device(name: str) -> torch.device:
    """The device of this process: ``auto``/``cuda`` mean ``cuda:LOCAL_RANK`` under torchrun."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise VaekitError(f"unknown device '{name}' (auto, cpu, cuda, cuda:N)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise VaekitError(f"device '{name}' requested but MPS is not available on this machine")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise VaekitError(f"device '{name}' requested but CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device("cuda", local_rank() if launched() else torch.cuda.current_device())
        if dev.index >= torch.cuda.device_count():
            raise VaekitError(f"device {dev} requested but this machine has {torch.cuda.device_count()} GPU(s)")
    return dev


@contextlib.contextmanager
def session(timeout_s: float | None = None):
    """Open the process group from torchrun's environment for the duration of the block.

    Does nothing when not launched by torchrun, or when a group is already open (sessions
    nest). The backend is :func:`backend`; each process's GPU (if any) is ``cuda:LOCAL_RANK``.
    """
    dist = _dist()
    if not launched() or (dist.is_available() and dist.is_initialized()):
        yield
        return
    if not dist.is_available():
        raise VaekitError("this PyTorch build has no torch.distributed; run without torchrun")
    missing = [v for v in ENV_VARS if v not in os.environ]
    if missing:
        raise VaekitError(f"WORLD_SIZE is set but {', '.join(missing)} are not; launch with torchrun")
    if torch.cuda.is_available():
        if local_rank() < torch.cuda.device_count():  # else: more processes than GPUs, CPU training
            torch.cuda.set_device(local_rank())
    kw = {"timeout": timedelta(seconds=timeout_s)} if timeout_s else {}
    # torch.distributed.nn.functional binds ``group=group.WORLD`` as a default argument when it is
    # first imported, and DistributedDataParallel imports it. Imported after the group opens, it
    # would keep that group alive past destroy_process_group, and with it gloo's worker threads:
    # one that releases a tensor after the interpreter has begun to shut down aborts the process
    # ("terminate called without an active exception"). Imported first, it binds None.
    importlib.import_module("torch.distributed.nn.functional")
    dist.init_process_group(backend=backend(), init_method="env://", **kw)
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _comm_device() -> torch.device:
    """Where the helpers' tensors travel: the CPU (gloo); DDP itself moves CUDA gradients by NCCL."""
    return torch.device("cpu")


def all_reduce_sum(t: Tensor) -> Tensor:
    """The element-wise sum of ``t`` over all processes (a new tensor on ``t``'s device)."""
    if not active():
        return t
    buf = t.detach().to(_comm_device(), copy=True)
    _dist().all_reduce(buf)
    return buf.to(t.device)


def all_gather_rows(t: Tensor) -> list[Tensor]:
    """Every process's ``t`` (same trailing shape, any number of rows), in rank order."""
    if not active():
        return [t]
    dist = _dist()
    dev = _comm_device()
    n = torch.tensor([t.shape[0]], device=dev, dtype=torch.long)
    counts = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, n)
    counts = [int(c) for c in counts]
    rows = max(counts)
    buf = torch.zeros((rows, *t.shape[1:]), dtype=t.dtype, device=dev)
    buf[: t.shape[0]] = t.detach().to(dev)
    out = [torch.empty_like(buf) for _ in counts]
    dist.all_gather(out, buf)
    return [o[:c].to(t.device) for o, c in zip(out, counts)]


def broadcast_bytes(data: bytes | None) -> bytes:
    """Rank 0's ``data`` on every process (others pass ``None``)."""
    if not active():
        return data if data is not None else b""
    dist = _dist()
    dev = _comm_device()
    n = torch.tensor([len(data) if is_main() and data is not None else 0], dtype=torch.long, device=dev)
    dist.broadcast(n, 0)
    if is_main():
        buf = (
            torch.frombuffer(bytearray(data), dtype=torch.uint8).to(dev)
            if n.item()
            else torch.empty(0, dtype=torch.uint8, device=dev)
        )
    else:
        buf = torch.empty(int(n.item()), dtype=torch.uint8, device=dev)
    if n.item():
        dist.broadcast(buf, 0)
    return bytes(buf.cpu().numpy().tobytes())


def agree(fn, *args, **kwargs):
    """Run ``fn`` on rank 0 only; every rank returns its (JSON-able) result or raises its error.

    For steps that touch the run folder (only rank 0 reads and writes it). A
    :class:`VaekitError` raised on rank 0 is raised on every rank as the same class with the
    same message, marked ``shared`` so that only rank 0 prints it; any other exception on rank
    0 re-raises there and makes the other ranks raise a ``VaekitError`` saying rank 0 failed.
    """
    if not active():
        return fn(*args, **kwargs)
    if is_main():
        try:
            result = fn(*args, **kwargs)
            payload = {"ok": result}
        except VaekitError as e:
            payload = {"error": str(e), "type": type(e).__name__}
            broadcast_bytes(json.dumps(payload).encode())
            e.shared = True
            raise
        except BaseException as e:
            payload = {
                "error": f"rank 0 failed ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})",
                "type": "VaekitError",
            }
            broadcast_bytes(json.dumps(payload).encode())
            raise
        broadcast_bytes(json.dumps(payload).encode())
        return result
    payload = json.loads(broadcast_bytes(None).decode())
    if "error" in payload:
        cls = getattr(errors, payload["type"], None)
        if cls is None or not (isinstance(cls, type) and issubclass(cls, VaekitError)):
            cls = VaekitError
        e = cls(payload["error"])
        e.shared = True
        raise e
    return payload["ok"]


def broadcast_module_state(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every process's ``module`` (in place)."""
    if not active():
        return
    dist = _dist()
    dev = _comm_device()
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            buf = t.detach().to(dev, copy=True)
            dist.broadcast(buf, 0)
            t.copy_(buf.to(t.device))
