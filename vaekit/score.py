"""Per-example log-likelihood scores, for anomaly and out-of-distribution detection.

A density model ranks examples by log p(x): a low value flags an example the model finds unlikely.
:func:`score` gives, per example, log p(x) in nats and bits per dimension where they are defined,
with the evaluator's own estimator (:func:`vaekit.evaluate.per_example_log_prob`): exact for flows
and Gaussian mixtures, importance-sampled with K samples from q(z|x) for VAEs (Burda et al. 2015;
a stochastic lower bound whose mean equals ``vaekit evaluate``'s -NLL for the same data, K and
seed).

A caveat that every user of these scores should know (Nalisnick et al. 2019): likelihood models
can assign *higher* likelihood to out-of-distribution data than to their own test data. On
MNIST-trained models, Fashion-MNIST gets lower likelihood and the two separate well, but models
trained on Fashion-MNIST give MNIST digits higher likelihood (the same holds for CIFAR-10 against
SVHN): simple, low-variance images score well under any of these models. ``bench/ood.py``
measures the MNIST-trained case.

References:
    Burda, Grosse & Salakhutdinov, "Importance weighted autoencoders", ICLR 2016.
    Nalisnick, Matsukawa, Teh, Gorur & Lakshminarayanan, "Do deep generative models know what
        they don't know?", ICLR 2019.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from .errors import VaekitError
from .evaluate import per_example_log_prob
from .inference import mean_and_stderr

SCORE_COLUMNS = ("log_px", "bits_per_dim")  # the columns of score()'s array, in order


def score(
    model,
    x: Tensor,
    k: int = 5000,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    amp: bool = False,
    journal_dir: str | Path | None = None,
    log_every: float | None = None,
) -> Tensor:
    """Per-example scores of ``x`` [N, *data_shape] under ``model``.

    Args:
        k: importance samples per example (VAEs); exact models ignore it.
        batch_size: examples per pass (default: memory-bounded, as ``evaluate``).
        seed: seeds the importance samples per chunk of examples; the scores are a pure function
            of (model, x, k, seed) and the caller's random state is left alone.
        amp: the nets' hidden layers in bf16, output layers and log-densities in float32
            (``evaluate.per_example_log_prob``).
        journal_dir: a folder that makes the scoring resumable after a kill; the caller deletes it once
            the scores are kept (``evaluate.evaluate``).
        progress, log_every: a progress bar, else a progress line every ``log_every`` seconds
            (``evaluate.evaluate``).

    Returns:
        [N, 2] float64 on the CPU, columns ``SCORE_COLUMNS``: log p(x) in nats, of the data in their
        own units (for a run that standardised its features, the model's log p'(x') of the
        standardised x' plus the map's Jacobian, -sum_d log std_d: ``Standardization.log_scale``), and
        bits per dimension -log2 p(x) / D with the model's own discretisation term
        (``model.bits_per_dim``), NaN where bits per dimension are undefined (data neither binary
        nor 8-bit, or a density at the data's values: ``GenerativeModel.density``).
    """
    if model.log_prob_kind == "none":
        raise VaekitError(f"a {type(model).__name__} defines no density p(x), so it gives no likelihood scores")
    log_px = per_example_log_prob(
        model,
        x,
        k=k,
        batch_size=batch_size,
        progress=progress,
        seed=seed,
        amp=amp,
        journal_dir=journal_dir,
        log_every=log_every,
    ).cpu()
    if not model.data_transform.identity:
        log_px = log_px - model.data_transform.log_scale
    bpd = model.bits_per_dim(-log_px)
    bpd = torch.full_like(log_px, math.nan) if bpd is None else bpd.double()
    return torch.stack([log_px, bpd], 1)


def scores_csv(scores: Tensor, labels: Tensor | None = None) -> str:
    """``scores`` [N, 2] (:func:`score`) as CSV text with a header: ``index``, the score columns
    (an empty ``bits_per_dim`` where undefined) and ``label`` when ``labels`` [N] are given."""
    header = ["index", *SCORE_COLUMNS] + (["label"] if labels is not None else [])
    lines = [",".join(header)]
    for i, (lp, bpd) in enumerate(scores.tolist()):
        row = [str(i), repr(lp), "" if math.isnan(bpd) else repr(bpd)]
        if labels is not None:
            row.append(str(int(labels[i])))
        lines.append(",".join(row))
    return "\n".join(lines) + "\n"


def format_summary(scores: Tensor, kind: str, k: int | None, precision: str | None = None) -> str:
    """One line: examples, mean log p(x) ± its standard error over examples, mean bits/dim, and
    how log p(x) was obtained (``kind``: the model's ``log_prob_kind``; ``k`` for sampled ones;
    ``precision``: how the nets computed, ``vaekit.evaluate.precision``)."""
    mean, se = mean_and_stderr(scores[:, 0])
    how = f"importance-sampled, K={k}" if kind == "importance-sampled" else kind
    how += f"; {precision}" if precision else ""
    spread = "" if math.isnan(se) else f" ± {se:.3f}"
    line = f"{scores.shape[0]} examples: mean log p(x) {mean:.3f}{spread} nats ({how})"
    bpd = scores[:, 1]
    if not bool(bpd.isnan().any()):
        line += f", mean {float(bpd.mean()):.4f} bits/dim"
    return line
