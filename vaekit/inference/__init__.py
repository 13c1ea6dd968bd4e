"""Inference for trained latent-variable models.

- :mod:`~vaekit.inference.importance`: the importance-sampled log p(x) (Burda et al. 2015), chunked
  to a memory budget, with the effective sample size and standard errors over examples;
- :mod:`~vaekit.inference.variational`: per-datapoint SVI and the approximation / amortisation gap
  decomposition (Cremer et al. 2018), and :class:`PosteriorModel`, a given q(z) with a trained
  decoder (optionally masked to observed dimensions) for the objectives and the sampler;
- :mod:`~vaekit.inference.streamed`: the decoder log-likelihood computed block by block on the CPU.

Every public name is re-exported here.
"""

from .importance import (
    DEFAULT_ELEMENT_BUDGET,
    chunk_sizes,
    decoder_numel,
    default_chunks_per_pass,
    effective_sample_size,
    importance_sampled_log_prob,
    mean_and_stderr,
    widest_activation,
)
from .streamed import streamed_log_likelihood
from .variational import (
    GAP_TERMS,
    SVI_INITS,
    MaskedDecoder,
    MaskedLikelihood,
    PosteriorModel,
    format_gap_table,
    frozen,
    gap_decomposition,
    posterior_log_prob,
    proposal_log_prob,
    svi,
)

__all__ = [
    "DEFAULT_ELEMENT_BUDGET",
    "GAP_TERMS",
    "SVI_INITS",
    "MaskedDecoder",
    "MaskedLikelihood",
    "PosteriorModel",
    "chunk_sizes",
    "decoder_numel",
    "default_chunks_per_pass",
    "widest_activation",
    "effective_sample_size",
    "format_gap_table",
    "frozen",
    "gap_decomposition",
    "importance_sampled_log_prob",
    "mean_and_stderr",
    "posterior_log_prob",
    "proposal_log_prob",
    "streamed_log_likelihood",
    "svi",
]
