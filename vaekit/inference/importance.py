"""Importance-sampled marginal likelihood (Burda et al. 2015, Sec. 5; Rezende et al. 2014):

    log p(x) ~= log (1/K) sum_k p(x, z_k) / q(z_k|x),   z_k ~ q(z|x),

computed with logsumexp, vectorised over examples *and* samples, in chunks so memory
stays bounded whatever K: each chunk evaluates the decoder on (examples x samples)
codes at once and folds its log-weights into a running logsumexp per example. K = 1
is the ELBO; the estimate increases in expectation with K and is consistent as K grows.

The chunk size comes from a budget of numbers per chunk and the decoder's numbers per code,
never from the hardware, so the samples drawn for an example do not depend on it. Where the
likelihood declares ``chunks_per_thread`` n > 0 (the PixelCNN, whose chunks hold a few codes: 2)
one CPU decoder pass evaluates n T consecutive chunks on T intra-op threads, drawn one after the
other as if each had its own pass: the same samples, and operations large enough for the
threads to split.

The effective sample size (sum w)^2 / sum w^2 of the weights (Kong 1992; Owen 2013, Sec. 9.3)
diagnoses the proposal: near K when q(z|x) is close to the posterior, near 1 when one sample
dominates.

Precision: with ``amp`` the encoder's and decoder's net bodies run under bf16 autocast
(``vaekit.nets.autocast``; oneDNN's bf16 kernels on CPUs with AVX512-BF16 or AMX, tensor cores on
CUDA). The hidden layers of a body compute in bf16; its last layer, which gives the likelihood's
or the posterior's parameters (``vaekit.precision.OutputLayer``), computes in float32 from the hidden
layers' output cast up, so no parameter of a density is rounded to bf16's 8 significant bits
(a logit of 10 would move by up to 0.03). From there every
log p(x|z), log p(z), log q(z|x) and log-weight is float32 and the running logsumexp is float64.
A PixelCNN likelihood rounds less: its evaluation pass keeps float32 tensors and, on a CPU, rounds
the operands of two kinds of product only (``vaekit.nets.pixelcnn.GatedPixelCNN.forward``).
That moves the estimate by the hidden layers' rounding, not by the arithmetic of the estimator;
``bench/arch_speed.py --eval-amp`` measures by how much on a trained model.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import heap
from ..nets import autocast, fixed_parameters
from ..objectives import log_importance_weights

DEFAULT_ELEMENT_BUDGET = 1 << 22  # numbers per chunk in the decoder's widest tensor (~16 MiB of float32)
MAX_CHUNKS_PER_PASS = 16  # a pass of chunks_per_thread x threads chunks: at most ~256 MiB on many cores


def chunk_sizes(n_examples: int, k: int, data_numel: int, budget: int = DEFAULT_ELEMENT_BUDGET) -> tuple[int, int]:
    """(examples per batch, samples per chunk) with batch * chunk * data_numel <= budget.

    Args:
        n_examples: examples to evaluate; k: importance samples per example.
        data_numel: numbers the decoder keeps alive per code (see :func:`decoder_numel`).
        budget: numbers allowed per chunk.
    """
    per_code = max(1, data_numel)
    codes = max(1, budget // per_code)  # decoder evaluations per chunk
    samples = min(k, codes)
    examples = max(1, min(n_examples, codes // samples))
    return examples, samples


def default_chunks_per_pass(model, device: torch.device | str) -> int:
    """Chunks of samples one decoder pass of ``model`` evaluates on ``device``: on a CPU, the
    likelihood's ``chunks_per_thread`` times the intra-op threads (``torch.get_num_threads()``),
    at most ``MAX_CHUNKS_PER_PASS``, where it declares some, else 1 (module docstring)."""
    per_thread = model.decoder.likelihood.chunks_per_thread if torch.device(device).type == "cpu" else 0
    return min(per_thread * torch.get_num_threads(), MAX_CHUNKS_PER_PASS) or 1


def decoder_numel(model, data_shape: tuple[int, ...]) -> int:
    """Numbers the decoder of ``model`` keeps alive per code for one example of ``data_shape``.

    The widest of its output times the likelihood's ``activation_factor`` (more than 1 for
    decoders that are deep nets over x itself, PixelCNN) and its body's widest hidden activation
    (a conv decoder's 32 x 28 x 28 feature maps are 32 times its 784 logits): chunks of codes sized
    by the widest tensor keep every intermediate within the budget, and in cache, instead of
    hundreds of megabytes per tensor."""
    output = math.prod(data_shape) * model.decoder.likelihood.activation_factor
    return max(output, widest_activation(model.decoder, model.prior.event_shape[0]))


@torch.no_grad()
def widest_activation(decoder, latent_dim: int) -> int:
    """The most elements any module of ``decoder.body`` outputs when the decoder decodes one code
    [1, latent_dim] (one forward pass in eval mode, with hooks; outputs that are not tensors are
    skipped)."""
    widest = 0

    def hook(mod, args, out):
        nonlocal widest
        if isinstance(out, Tensor):
            widest = max(widest, out.numel())

    body: nn.Module = decoder.body
    p = next(body.parameters(), None)
    kw = {} if p is None else {"device": p.device, "dtype": p.dtype}
    handles = [m.register_forward_hook(hook) for m in body.modules()]
    training = body.training
    body.eval()  # the probe must not move batch-norm statistics
    try:
        decoder(torch.zeros(1, latent_dim, **kw))
    finally:
        body.train(training)
        for h in handles:
            h.remove()
    return widest


def effective_sample_size(log_w: Tensor, dim: int = 0) -> Tensor:
    """(sum_j w_j)^2 / sum_j w_j^2 over ``dim`` of log-weights (e.g. [K, B] -> [B]), in [1, K]."""
    return (2 * torch.logsumexp(log_w, dim) - torch.logsumexp(2 * log_w, dim)).exp()


@torch.no_grad()
def importance_sampled_log_prob(
    model,
    x: Tensor,
    k: int = 1000,
    batch_size: int | None = None,
    sample_chunk: int | None = None,
    element_budget: int = DEFAULT_ELEMENT_BUDGET,
    progress=None,
    data_numel: int | None = None,
    amp: bool = False,
    chunks_per_pass: int | None = None,
) -> dict[str, Tensor]:
    """log p(x) by importance sampling with q(z|x) as proposal.

    Args:
        model: exposes ``encoder``, ``decoder`` (with ``likelihood`` and ``log_likelihood``) and
            ``prior``: a model with ``has_latents`` or a :class:`~vaekit.inference.variational.PosteriorModel`.
        x: data [N, *data_shape] on the model's device.
        k: importance samples per example (K in the formula above).
        batch_size, sample_chunk: examples per pass and samples per chunk; by default chosen so
            that one chunk's decoder output holds at most ``element_budget`` numbers.
        progress: optional callable(n_done_examples) for progress bars.
        data_numel: numbers the decoder keeps alive per code (:func:`decoder_numel`, computed when
            not given and needed): callers that evaluate chunk after chunk pass it once.
        amp: run the hidden layers of the encoder and decoder bodies under bf16 autocast (module
            docstring); their output layers and the log-weights [s, b] stay float32 and their
            logsumexp float64. Default off.
        chunks_per_pass: chunks of ``sample_chunk`` samples each decoder pass evaluates, drawn
            chunk by chunk (default :func:`default_chunks_per_pass`): the same samples whatever its
            value where the likelihood's ``log_prob`` draws no random numbers (every likelihood that
            declares ``chunks_per_thread``; a dequantised Gaussian draws its u after all the z's).

    Returns:
        dict of [N] tensors in nats, in the model's dtype (float32 at least; sums are float64):
        ``log_px`` (the K-sample estimate), ``elbo`` (mean log-weight, an unbiased ELBO estimate
        from the same samples) and ``ess`` (effective sample size (sum w)^2 / sum w^2, a
        diagnostic of the proposal).
    """
    if x.device.type == "cpu":  # each chunk's tensors are megabytes: reuse the heap's pages
        heap.prime()
    N = x.shape[0]
    if batch_size and sample_chunk:
        B, S = batch_size, min(k, sample_chunk)
    else:
        numel = data_numel or decoder_numel(model, x.shape[1:])
        auto_b, auto_s = chunk_sizes(N, k, numel, element_budget)
        if batch_size:  # the samples per chunk then fit the budget beside the caller's batch
            auto_s = min(k, max(1, element_budget // (max(1, numel) * batch_size)))
        B, S = batch_size or auto_b, min(k, sample_chunk or auto_s)
    # the results, allocated once: small tensors kept per example between the chunks' transient
    # megabytes would pin glibc's heap from shrinking, and a long evaluation's memory would grow
    out = {key: torch.empty(N, device=x.device, dtype=torch.float64) for key in ("log_px", "elbo", "ess")}
    G = max(1, chunks_per_pass or default_chunks_per_pass(model, x.device))
    dtype = torch.float32
    with fixed_parameters():  # one set of weights for every chunk: nets may keep what they derive
        for i in range(0, N, B):
            rows = {key: v[i : i + B] for key, v in out.items()}
            dtype = _examples(model, x[i : i + B], k, S, G, amp, rows, progress)
    return {key: v.to(dtype) for key, v in out.items()}


def _examples(model, xb: Tensor, k: int, S: int, G: int, amp: bool, out: dict, progress) -> torch.dtype:
    """The K-sample estimates of the examples xb [b, *data_shape], drawn in chunks of S samples and
    evaluated G chunks per decoder pass, written into ``out``'s float64 rows [b] (see
    :func:`importance_sampled_log_prob`); returns the dtype the results are reported in (the
    model's, float32 at least)."""
    with autocast(xb.device, amp, outputs_float32=True):
        q = model.encoder(xb)
    # running logsumexp of w and of w^2 and the sum of log w, per example, in float64
    lse = torch.full((xb.shape[0],), -math.inf, device=xb.device, dtype=torch.float64)
    lse2 = torch.full_like(lse, -math.inf)
    total = torch.zeros_like(lse)
    done, dtype = 0, torch.float32
    while done < k:
        s = min(S * G, k - done)
        with autocast(xb.device, amp, outputs_float32=True):  # hidden layers in bf16
            log_w = log_importance_weights(model, xb, s, q=q, draw=S)  # [s, b]
        dtype = torch.promote_types(log_w.dtype, torch.float32)  # the model's dtype, at least float32
        log_w = log_w.double()
        lse = torch.logaddexp(lse, torch.logsumexp(log_w, 0).to(lse.dtype))
        lse2 = torch.logaddexp(lse2, torch.logsumexp(2 * log_w, 0).to(lse.dtype))
        total += log_w.sum(0).to(total.dtype)
        done += s
    out["log_px"].copy_(lse - math.log(k))
    out["elbo"].copy_(total / k)
    out["ess"].copy_((2 * lse - lse2).exp())  # effective_sample_size from the running sums
    if progress is not None:
        progress(xb.shape[0])
    return dtype


def mean_and_stderr(values: Tensor) -> tuple[float, float]:
    """Mean over examples of ``values`` (any shape, flattened) and its standard error std / sqrt(n)."""
    v = values.double()
    n = v.numel()
    se = v.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan")
    return v.mean().item(), se
