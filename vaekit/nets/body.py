"""The base class of every tensor -> tensor body in ``vaekit.nets``.

A model's encoder and decoder return distributions and the model is driven through
``loss`` / ``log_prob`` / ``sample``, so what can be compiled (``vaekit.nets.speed``) are
the bodies inside it. A body declares itself by deriving from :class:`NetBody`; nothing
else about it changes (no parameters, buffers or ``state_dict`` keys of its own).

Precision: under mixed-precision autocast (``vaekit.nets.speed.autocast``) a body's hidden
layers compute in bf16, but what it returns is float32 (:func:`full_precision`), so the
likelihoods, posteriors and priors it parameterises, and every loss term, stay float32.
A body's last layer, the one whose outputs are the parameters of a likelihood or a posterior,
is an :class:`OutputLayer`: inside :func:`float32_outputs` (the evaluators' autocast) it computes
in float32 from its input cast up, so only the hidden layers' rounding reaches the density.
"""

from __future__ import annotations

import contextlib
import threading

import torch
from torch import Tensor, nn

LOW_PRECISION = (torch.bfloat16, torch.float16)  # the dtypes autocast computes in


def full_precision(t: Tensor) -> Tensor:
    """``t`` in float32 when it is a bf16/fp16 tensor (an output of autocast), else ``t`` itself
    (float32 and float64 tensors keep their dtype)."""
    return t.float() if t.dtype in LOW_PRECISION else t


class NetBody(nn.Module):
    """Base of the encoder/decoder bodies and the gated PixelCNN: tensors in, tensors out.

    Calling a body returns its ``forward`` output in full precision (:func:`full_precision`):
    float32 even when autocast ran its layers in bf16.
    """

    def __call__(self, *args, **kwargs) -> Tensor:
        return full_precision(super().__call__(*args, **kwargs))

    def set_output_bias(self, bias: Tensor) -> None:
        """Set the bias of the output layer to ``bias`` [out_features] (outputs flattened), e.g. a
        decoder's logits of the training-set mean; only bodies with one bias per output have it."""
        raise NotImplementedError(f"{type(self).__name__} has no bias per output")


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


class OutputLayer(nn.Module):
    """Mixin of a body's last layer (the likelihood's or posterior's parameters): ``class
    OutputLinear(OutputLayer, nn.Linear)``. Outside :func:`float32_outputs`, or without autocast,
    it is the layer it extends; inside both, its input is cast to float32 and it runs with autocast
    off. Parameters and ``state_dict`` keys are those of the layer it extends."""

    def __call__(self, x: Tensor, *args, **kwargs) -> Tensor:
        if float32_outputs_active() and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return super().__call__(full_precision(x), *args, **kwargs)
        return super().__call__(x, *args, **kwargs)


class OutputLinear(OutputLayer, nn.Linear):
    """``nn.Linear`` as a body's last layer (:class:`OutputLayer`)."""
