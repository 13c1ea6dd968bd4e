"""Speed switches of the net bodies, wired in by the training loop: compile, channels-last, autocast;
and :func:`fixed_parameters`, which evaluators declare.

None of them changes a number beyond float rounding or a ``state_dict`` key: ``torch.compile``
is applied to the tensor-to-tensor bodies in place, channels-last is a memory layout, and
autocast runs the nets' matrix products and convolutions in bf16 (on CUDA and on the CPU,
where oneDNN has bf16 kernels for CPUs with AVX512-BF16 or AMX) while the bodies return float32
(``NetBody``), so the likelihoods, log-determinants, logsumexps and loss terms stay float32.
Measure before switching one on (``bench/arch_speed.py``, ``bench/amp_speed.py``).
"""

from __future__ import annotations

import contextlib
import threading

import torch
from torch import Tensor, nn

from ..config import auto_or_bool
from ..errors import ConfigError
from ..precision import float32_outputs


def maybe_compile(module: nn.Module, enabled: bool, targets: tuple[type, ...], **kwargs) -> nn.Module:
    """``torch.compile`` in place every submodule of ``module`` that is one of ``targets`` when
    ``enabled``; returns ``module``.

    A model is driven through ``loss`` / ``log_prob`` / ``sample``, not ``forward``, and its
    encoder and decoder return distributions, so compiling the model itself would do nothing;
    instead its tensor-to-tensor modules (``models.COMPILED_MODULES``: the net bodies and the flows'
    coupling conditioners) are compiled in place (``Module.compile``), which keeps parameters,
    ``state_dict`` keys and the model contract. A model with none of them is refused rather than
    left uncompiled in silence. ``kwargs`` go to ``torch.compile`` (e.g. ``mode="max-autotune"``).
    Default off: see ``bench/arch_speed.py``.
    """
    if enabled:
        found = [m for m in module.modules() if isinstance(m, targets)]
        if not found:
            raise ConfigError(
                f"model.compile=true compiles net bodies and flow conditioners; this {type(module).__name__} has none"
            )
        for m in found:
            m.compile(**kwargs)
    return module


def to_channels_last(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Store the 4-D conv weights of ``module`` channels-last (NHWC) when ``enabled``.

    Inputs should then be converted with :func:`channels_last_input`; outputs are numerically
    the same. Helps cuDNN convolutions under mixed precision; on CPU measure first
    (``bench/arch_speed.py --channels-last``).
    """
    if enabled:
        module.to(memory_format=torch.channels_last)
    return module


def stored_channels_last(t: Tensor) -> bool:
    """Whether ``t`` [B, C, H, W] is laid out channels-last and not also plain contiguous (where
    both hold, e.g. one channel or 1 x 1 maps, the two layouts are the same memory); False for
    tensors of other ranks."""
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def channels_last_input(x: Tensor, enabled: bool = True) -> Tensor:
    """x [B, C, H, W] in channels-last memory format when ``enabled`` (other shapes untouched)."""
    if enabled and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


AUTOCAST_DEVICES = ("cuda", "cpu")  # device types whose autocast vaekit switches on


def cpu_bf16_units() -> tuple[str, ...]:
    """The bf16 instruction sets of this CPU that oneDNN's bf16 kernels run on, by name: AMX-BF16 tiles
    (Intel Sapphire Rapids on) and AVX512-BF16 dot products (AMD Zen 4 on); empty where it has neither
    (AVX2, or AVX-512 without BF16), where oneDNN emulates bf16 products in float32 and autocast
    only adds casts."""
    found = (("AMX-BF16", torch.cpu._is_amx_tile_supported()), ("AVX512-BF16", torch.cpu._is_avx512_bf16_supported()))
    return tuple(name for name, has in found if has)


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` has bf16 hardware for autocast's products: an NVIDIA GPU of compute
    capability 8.0 or later (Ampere on), or a CPU with :func:`cpu_bf16_units` (AMX-BF16 tiles or
    AVX512-BF16 dot products). ``bench/amp_speed.py`` and ``bench/arch_speed.py`` measured the
    speed-ups on an Intel Xeon with AMX and an AMD Zen 4 with AVX512-BF16; other CPUs with these
    instructions are assumed alike. Elsewhere (older GPUs, which emulate bf16; ROCm, unmeasured;
    CPUs without bf16 instructions) it says no."""
    device = torch.device(device)
    if device.type == "cuda":
        return (
            torch.cuda.is_available() and torch.version.hip is None and torch.cuda.get_device_capability(device)[0] >= 8
        )
    if device.type == "cpu":
        return bool(cpu_bf16_units())
    return False


def bf16_emulated(device: torch.device | str) -> bool:
    """Whether bf16 autocast on ``device`` would run without bf16 hardware: a CPU with no
    :func:`cpu_bf16_units` (AVX2, or AVX-512 without BF16). There oneDNN and torch compute bf16
    products in float32 after conversions, so autocast makes a step several times slower than
    float32 rather than faster (``bench/amp_speed.py``); the callers warn when asked for it there."""
    return torch.device(device).type == "cpu" and not cpu_bf16_units()


def resolve_amp(amp: bool | str, device: torch.device | str, name: str = "train.amp") -> bool:
    """The amp setting ``name`` (``train.amp``, ``train.eval_amp``) as a bool on ``device``: ``auto``
    is :func:`native_bf16`; true and false are themselves; anything else is refused
    (``vaekit.config.auto_or_bool``: a string "false" must not read as true)."""
    return native_bf16(device) if auto_or_bool(amp, name) == "auto" else amp


def autocast(
    device: torch.device | str,
    enabled: bool | str = True,
    dtype: torch.dtype = torch.bfloat16,
    outputs_float32: bool = False,
):
    """Mixed-precision context: ``torch.autocast(device.type, dtype)`` on CUDA and CPU devices when
    ``enabled`` (a bool, or ``auto``: :func:`resolve_amp`), else a no-op.

    Inside it, matrix products and convolutions run in ``dtype``; every net body returns float32
    (``NetBody``), flows keep their invertible data path and log-determinants in float32, and
    likelihoods compute their log-probabilities in float32 whatever the decoder's dtype. With
    ``outputs_float32`` (the evaluators') the bodies' last layers compute in float32 too
    (``vaekit.precision.float32_outputs``), so only the hidden layers are rounded to ``dtype``.
    """
    device = torch.device(device)
    if not (resolve_amp(enabled, device) and device.type in AUTOCAST_DEVICES):
        return contextlib.nullcontext()
    if not outputs_float32:
        return torch.autocast(device.type, dtype=dtype)
    return _autocast_float32_outputs(device.type, dtype)


@contextlib.contextmanager
def _autocast_float32_outputs(device_type: str, dtype: torch.dtype):
    """``torch.autocast`` with the output layers in float32 (``precision.float32_outputs``), entered at ``with``."""
    with torch.autocast(device_type, dtype=dtype), float32_outputs():
        yield


_FIXED = threading.local()  # this thread's innermost fixed_parameters() scope, or None


@contextlib.contextmanager
def fixed_parameters():
    """Declares that no parameter changes inside the block, for the calling thread.

    Evaluators that call a net many times on the same weights (importance sampling) open one;
    a net may then keep what it derives from its weights (rearranged or rescaled copies) for
    the scope, instead of rebuilding it on every call. Outside a scope nets rebuild: fused
    optimisers and ``.data`` writes change parameters without bumping their version counters,
    so no key on the parameters could tell a cache that it went stale. Calling a module with
    other parameters (``torch.func.functional_call``) inside a scope counts as a change, so do
    not. Nested scopes are one.
    """
    outer = getattr(_FIXED, "scope", None)
    try:
        _FIXED.scope = outer or object()  # inside the try: an interrupt cannot leave it set
        yield
    finally:
        _FIXED.scope = outer


def fixed_parameters_scope() -> object | None:
    """The calling thread's :func:`fixed_parameters` scope (an object unique to it), or None."""
    return getattr(_FIXED, "scope", None)
