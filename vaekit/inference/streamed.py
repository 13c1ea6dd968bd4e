"""Streamed log-likelihoods for the evaluation hot path: log p(x|z) without materialising p(x|z).

Importance sampling with K = 5000 (Burda et al. 2015, Sec. 5) spends nearly all its time in the
decoder's log-likelihood: for a dense Bernoulli VAE on MNIST that is, per test image,
5000 x 784 logits l = W h + b and

    log p(x|z) = sum_d  x_d l_d - softplus(l_d),    softplus(l) = max(l, 0) + log1p(exp(-|l|)),

(the Bernoulli log-mass with logits, exact for x in [0, 1]). Computed the plain way, every
intermediate is a fresh 16 MB tensor: the CPU spends its time in page faults and memory
traffic, not arithmetic (glibc hands such blocks out by mmap). This module evaluates
the decoder body and the likelihood *block by block* (``BLOCK`` codes at a time) into scratch
buffers that are allocated once and reused, so each block's hidden units, logits and terms stay
in cache and the loop allocates nothing. The result is the same number as
``decoder(z).log_prob(x)`` up to float32 rounding.

Used only where no gradient is needed and on the CPU (on CUDA the caching allocator already
makes allocation free and small blocks would only add kernel launches). Supported pairs: a
dense body (``nets.mlp.MLP``) with a Bernoulli likelihood; anything else returns ``None`` and
the caller falls back to the distribution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributions import BernoulliLikelihood
from ..nets.mlp import dense_layers

BLOCK = 256  # codes per block: a block's logits and terms (3 x 256 x 784 floats) fit in L2/L3

# activations applied in place on a scratch buffer (others allocate their output)
_INPLACE = {
    nn.ReLU: lambda m, t: t.relu_(),
    nn.Tanh: lambda m, t: t.tanh_(),
    nn.Sigmoid: lambda m, t: t.sigmoid_(),
    nn.ELU: lambda m, t: F.elu(t, m.alpha, inplace=True),
    nn.SiLU: lambda m, t: F.silu(t, inplace=True),
    nn.LeakyReLU: lambda m, t: F.leaky_relu(t, m.negative_slope, inplace=True),
}


class Workspace:
    """Named scratch matrices, grown on demand and reused across calls (never shrunk)."""

    def __init__(self):
        self._buffers: dict[str, Tensor] = {}

    def get(self, name: str, rows: int, cols: int, like: Tensor) -> Tensor:
        """A [rows, cols] scratch view with the dtype and device of ``like`` (contents undefined)."""
        buf = self._buffers.get(name)
        if (
            buf is None
            or buf.shape[0] < rows
            or buf.shape[1] != cols
            or buf.dtype != like.dtype
            or buf.device != like.device
        ):
            buf = torch.empty(max(rows, BLOCK), cols, dtype=like.dtype, device=like.device)
            self._buffers[name] = buf
        return buf[:rows]


_WORKSPACE = Workspace()


def dense_forward_into(layers, z: Tensor, ws: Workspace) -> Tensor:
    """The MLP ``layers`` applied to a block of codes z [n, D] in workspace buffers: [n, out]."""
    h = z
    for i, (lin, act) in enumerate(layers):
        out = ws.get(f"h{i}", h.shape[0], lin.out_features, h)
        if lin.bias is not None:
            torch.addmm(lin.bias, h, lin.weight.t(), out=out)
        else:
            torch.mm(h, lin.weight.t(), out=out)
        h = out
        if act is not None:
            inplace = _INPLACE.get(type(act))
            h = inplace(act, h) if inplace is not None else act(h)
    return h


def bernoulli_log_prob_(logits: Tensor, x: Tensor, ws: Workspace, out: Tensor) -> Tensor:
    """out[i] = sum_d x_id l_id - softplus(l_id) for logits l [n, D] and x [n, D] (x may be a
    stride-0 repeat of one row). Overwrites ``logits``; returns ``out`` [n]."""
    t = torch.abs(logits, out=ws.get("t", *logits.shape, logits))
    t.neg_().exp_().log1p_()  # log1p(exp(-|l|))
    if x.stride(0) == 0:  # one image repeated over the samples: x.l as one matrix-vector product
        xl = torch.mv(logits, x[0].to(logits.dtype), out=ws.get("xv", logits.shape[0], 1, logits)[:, 0])
        torch.sum(logits.clamp_min_(0).add_(t), dim=-1, out=out)
        return out.neg_().add_(xl)
    terms = torch.mul(logits, x, out=ws.get("xl", *logits.shape, logits))
    terms.sub_(logits.clamp_min_(0)).sub_(t)
    return torch.sum(terms, dim=-1, out=out)


def streamed_log_likelihood(decoder, z: Tensor, x: Tensor, block: int = BLOCK) -> Tensor | None:
    """log p(x|z) [N] for codes z [N, D] and data x [N, *data_shape], block by block, or
    ``None`` when this decoder (body, likelihood, device, grad mode) has no streamed kernel.

    Args:
        decoder: a ``vaekit.models.vae.Decoder`` (``body``: z -> likelihood parameters, ``likelihood``).
        block: codes per block (memory of the scratch buffers: block x widest layer floats each).
    """
    # exact types, not isinstance: a subclass may change forward or log_prob, which the kernel re-implements
    if torch.is_grad_enabled() or z.device.type != "cpu" or type(decoder.likelihood) is not BernoulliLikelihood:
        return None
    if torch.is_autocast_enabled("cpu"):  # the kernel's out= products bypass autocast: bf16 was asked for
        return None
    layers = dense_layers(decoder.body)
    if layers is None or z.dim() != 2:
        return None
    N = z.shape[0]
    xf = x.reshape(N, -1)
    if xf.shape[1] != layers[-1][0].out_features:
        return None
    out = torch.empty(N, dtype=z.dtype, device=z.device)
    for i in range(0, N, block):
        logits = dense_forward_into(layers, z[i : i + block], _WORKSPACE)
        bernoulli_log_prob_(logits, xf[i : i + block], _WORKSPACE, out[i : i + block])
    return out
