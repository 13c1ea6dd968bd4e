"""Precision of the nets under mixed-precision autocast: which layers may round to bf16.

Autocast (``torch.autocast``; ``vaekit.nets.autocast`` switches it on) runs matrix products and
convolutions in bf16. A net's *output layer*, whose outputs are the parameters of a density (a
likelihood's logits, a posterior's mean and log-variance, a flow conditioner's shift and log-scale),
is an :class:`OutputLayer`. Inside :func:`float32_outputs`, which the evaluators open (importance
sampling, ``vaekit evaluate``), an output layer computes in float32 from its input cast up, so only
the hidden layers' rounding reaches a log-density; training's autocast rounds it like any layer.
:func:`onednn_bf16_products` is the finer tool for a pass that rounds chosen products only: their
operands round to bf16, their sums and results stay float32 (the PixelCNN's evaluation pass).
This module sits below the nets and the flows, which both declare their output layers with it.
"""

from __future__ import annotations

import contextlib
import functools
import threading

import torch
from torch import Tensor, nn

LOW_PRECISION = (torch.bfloat16, torch.float16)  # the dtypes autocast computes in
# Revision of what the evaluators' bf16 computes: raised whenever a change moves its numbers on
# purpose (an evaluation journal keys on it, so chunks of two revisions never mix). 2: the
# PixelCNN's pass rounds only the operands of its vertical convolutions and horizontal products.
BF16_REVISION = 2


def full_precision(t: Tensor) -> Tensor:
    """``t`` in float32 when it is a bf16/fp16 tensor (an output of autocast), else ``t`` itself
    (float32 and float64 tensors keep their dtype)."""
    return t.float() if t.dtype in LOW_PRECISION else t


_OUTPUTS = threading.local()  # this thread's float32_outputs() depth


@contextlib.contextmanager
def float32_outputs():
    """Inside the block, on the calling thread, every :class:`OutputLayer` computes in float32 even
    under autocast: autocast then rounds the hidden layers only. Nested blocks are one."""
    depth = getattr(_OUTPUTS, "depth", 0)
    try:
        _OUTPUTS.depth = depth + 1  # inside the try: an interrupt cannot leave it raised
        yield
    finally:
        _OUTPUTS.depth = depth


def float32_outputs_active() -> bool:
    """Whether the calling thread is inside :func:`float32_outputs` (for passes that compute an
    output layer without calling it as a module)."""
    return bool(getattr(_OUTPUTS, "depth", 0))


def _float32_inside_outputs(fn, x: Tensor, *args, **kwargs) -> Tensor:
    """``fn(x, ...)``; inside :func:`float32_outputs` under autocast, with autocast off on ``x`` cast up."""
    if float32_outputs_active() and torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return fn(full_precision(x), *args, **kwargs)
    return fn(x, *args, **kwargs)


class OutputLayer(nn.Module):
    """Mixin of a net's output layer (the parameters of a density): ``class
    OutputLinear(OutputLayer, nn.Linear)``. Outside :func:`float32_outputs`, or without autocast,
    it is the layer it extends; inside both, its input is cast to float32 and it runs with autocast
    off. Parameters and ``state_dict`` keys are those of the layer it extends."""

    def __call__(self, x: Tensor, *args, **kwargs) -> Tensor:
        return _float32_inside_outputs(super().__call__, x, *args, **kwargs)


class FeedsOutput(nn.Module):
    """The activation whose output a net's :class:`OutputLayer` reads: ``FeedsOutput(nn.ReLU())``.
    Inside :func:`float32_outputs` under autocast it runs in float32 on its input cast up, so the
    output layer receives float32 and casts nothing: the one cast moves from the activation's output
    to its input. For ReLU the numbers are the same (max(x, 0) of a bf16 number is exact), and a conv
    decoder runs faster: the passes over its widest tensor are as many as before, but on the Xeon
    measured a float32 ReLU costs less than a bf16 one; other activations would compute other, more
    precise numbers (``nets.activation(..., feeds_output=True)`` wraps ReLU only). Outside, or without
    autocast, it is the activation itself. It holds no parameters, so ``state_dict`` keys do not
    change around it."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        return _float32_inside_outputs(self.act, x)


class OutputConv2d(OutputLayer, nn.Conv2d):
    """``nn.Conv2d`` as a net's output layer (:class:`OutputLayer`)."""


class OutputLinear(OutputLayer, nn.Linear):
    """``nn.Linear`` as a net's output layer (:class:`OutputLayer`)."""


def onednn_bf16_available() -> bool:
    """Whether oneDNN has bf16 kernels on this CPU (AVX512-BF16 or AMX), which autocast's bf16
    convolutions and products run on. Whether its bf16 *math mode* rounds float32 products is
    another matter: :func:`onednn_bf16_rounding`."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class OneDNNBF16Pass:
    """Mixin of a module whose evaluation pass opens :func:`onednn_bf16_products` around chosen
    operations (the PixelCNN's), so that its numbers depend on :func:`onednn_bf16_rounding` too:
    ``class GatedPixelCNN(OneDNNBF16Pass, NetBody)``. An evaluation journal's key records that
    rounding for a model holding one."""


def onednn_bf16_rounding() -> tuple[str, ...]:
    """The kinds of float32 CPU operation, of ``("conv", "matmul")``, that oneDNN's bf16 math mode
    (:func:`onednn_bf16_products`) really computes from bf16-rounded operands on this machine;
    the others compute in float32 inside the block. Measured once per process on operands 1 + 2^-10,
    which bf16 rounds to 1, laid out as the PixelCNN's pass lays out its own (a channels-last
    convolution, a product of row-major matrices), in float32 on the CPU with autocast off, whatever
    the caller's state; the answer is kept for the process, except while oneDNN is switched off
    (``torch.backends.mkldnn.enabled``), when nothing rounds and ``()`` is the answer for now. torch 2.13's
    oneDNN honours the mode on the Intel Xeons with AMX measured here, and ignores it for both
    kinds on the AMD EPYC (Zen 4), whose AVX512-BF16 runs autocast's bf16 kernels all the same
    (:func:`onednn_bf16_available`). The probe's convolution has 32 input channels; a kernel that
    oneDNN picks for other shapes (the PixelCNN's first layer reads one channel) is assumed to
    follow the mode as it does."""
    if not torch.backends.mkldnn.enabled:
        return ()
    return _probed_onednn_bf16_rounding()


@functools.cache
def _probed_onednn_bf16_rounding() -> tuple[str, ...]:
    if not onednn_bf16_available():
        return ()
    f32 = dict(dtype=torch.float32, device="cpu")
    a, b = torch.full((64, 96), 1 + 2**-10, **f32), torch.ones(96, 32, **f32)
    x = torch.full((2, 32, 10, 12), 1 + 2**-10, **f32).contiguous(memory_format=torch.channels_last)
    w = torch.ones(64, 32, 2, 3, **f32).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", enabled=False), onednn_bf16_products():
        product, conv = a @ b, torch.nn.functional.conv2d(x, w)
    kinds = {"conv": bool((conv == 32 * 6).all()), "matmul": bool((product == 96).all())}
    return tuple(kind for kind, rounds in kinds.items() if rounds)


_ONEDNN = threading.RLock()  # one block at a time switches the process-wide oneDNN setting


@contextlib.contextmanager
def onednn_bf16_products(enabled: bool = True):
    """Inside the block, CPU convolutions and matrix products of float32 tensors compute from their
    inputs and weights rounded to bf16, with float32 sums and float32 results: oneDNN's bf16 math
    mode (``torch.backends.mkldnn.{conv,matmul}.fp32_precision = "bf16"``), where oneDNN honours it
    (:func:`onednn_bf16_rounding`: on the AMX Xeons measured, not on the Zen 4); elsewhere they
    compute in float32. Unlike autocast it rounds no output, so a pass can choose its rounded products one by
    one and keep everything else, sums included, in float32.

    The setting is process-wide in torch, not per thread: while a block is open, float32 CPU
    convolutions and products that *other* threads run round too. So vaekit opens it only around
    single operations of the PixelCNN's evaluation pass, under a lock that serialises those blocks,
    and restores the previous setting on exit (also on an exception). ``enabled=False``: a no-op.

    torch's settings form a tree (global, then ``mkldnn``, then ``conv`` and ``matmul``), where
    ``"none"`` on a node means "as its parent", and reading a node gives its effective value. A
    node that reads as its parent is restored to ``"none"``, so that it keeps following a global
    setting (``torch.backends.fp32_precision = "tf32"``) rather than staying pinned to the value
    the global had during the block. torch offers no way to read a node's own setting, so a leaf
    set explicitly to the value its parent has at that moment comes back as ``"none"``: the same
    precision now, but it follows a later change of the parent.
    """
    if not enabled:
        yield
        return
    mkldnn = torch.backends.mkldnn
    with _ONEDNN:
        saved = [_own_fp32_precision(node, mkldnn.fp32_precision) for node in (mkldnn.conv, mkldnn.matmul)]
        try:
            mkldnn.conv.fp32_precision = mkldnn.matmul.fp32_precision = "bf16"
            yield
        finally:
            mkldnn.conv.fp32_precision, mkldnn.matmul.fp32_precision = saved


def _own_fp32_precision(node, inherited: str) -> str:
    """What to write back to a node of torch's precision tree: ``"none"`` (follow the parent)
    where it reads as its parent's effective value ``inherited``, else its own value."""
    value = node.fp32_precision
    return "none" if value == inherited else value
