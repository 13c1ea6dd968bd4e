"""The model contract: what the training loop, the evaluator and the command line may ask of a model.

Every model is a :class:`GenerativeModel`. The class attributes declare what it offers, so
callers test a declared flag instead of probing with ``hasattr``:

- ``log_prob_kind``: ``"exact"`` (flows, mixtures), ``"importance-sampled"`` (VAEs) or
  ``"none"`` (autoencoders, which define no density).
- ``fitted_in_closed_form``: trained by :meth:`fit` on the whole training set (EM) instead of
  gradient steps on :meth:`loss`.
- ``has_latents``: the model has ``encoder(x) -> q(z|x)``, ``decoder(z) -> p(x|z)`` and ``prior``
  (VAEs); inference verbs (``gap``, ``complete``) need them.
- ``has_codes``: the model maps x to a code and back (``encode``, ``decode_to_x``,
  ``reconstruct``): VAEs and autoencoders; the latent pictures need them.
- ``density``: ``log_prob`` is a density at the data's values (True: Gaussian likelihoods and
  mixtures of continuous data, flows without dequantisation) or the log of a probability, or of
  a lower bound on it (False: discrete likelihoods, and densities of uniformly dequantised 8-bit
  data, which subtract D log 256).
- ``dequantize``: ``log_prob`` and ``loss`` are of the uniform dequantisation of 8-bit levels
  k/255 (``vaekit.data.dequantize``): the data must be such levels (``vaekit.data.on_levels``),
  which training and evaluation check.
- ``data_levels``: values per data dimension of the data the model is for (256 8-bit, 2 binary,
  None continuous), set by ``build_model`` from ``DataConfig.levels``; ``bits_per_dim`` follows
  it and is None where bits per dimension mean nothing: for data that are neither binary nor
  8-bit, and for a density, whose value at a level says nothing of the level's probability
  (Theis, van den Oord & Bethge 2016): the models of 8-bit data dequantise instead.
- ``has_bic``: a maximum-likelihood fit with ``n_parameters()`` free parameters (mixtures): the
  evaluator reports BIC = -2 log L + p log N.
- ``data_transform``: the per-feature standardisation the model's data went through
  (``vaekit.data.Standardization``; the identity unless the run standardised), set by
  ``build_model`` from the config: the model sees and outputs x' = (x - mean) / std, and
  ``data_transform.invert`` turns its outputs back into data units. It is not model state (the
  config records it), so ``state_dict`` is the same either way.

Sampling has one signature for every model, ``sample(n, mean=False, temperature=1.0)``; a model
refuses a value it cannot honour with a one-line :class:`~vaekit.errors.VaekitError` (raised by
:func:`refuse_sample_option`), so callers pass what the user asked for and never inspect
signatures. ``mean=True`` shows E[x|z] (models with a decoder) or the drawn component's mean
(mixtures). ``temperature`` T >= 0 scales the spread of the latent or base distribution: for
a standard-normal prior z ~ N(0, T^2 I) (Kingma & Dhariwal 2018, Sec. 5; Vahdat & Kautz 2020,
NVAE, Sec. 5), and T = 0 is the deterministic draw (the prior's mean, decoded to its mean).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from ..data import Standardization, on_levels
from ..distributions import N_LEVELS, data_bits_per_dim
from ..errors import DataError, VaekitError


class GenerativeModel(nn.Module):
    """Base of every model; ``data_shape`` is the shape of one example, e.g. (1, 28, 28)."""

    data_shape: tuple[int, ...]
    log_prob_kind: str = "none"
    fitted_in_closed_form: bool = False
    has_latents: bool = False
    has_codes: bool = False
    density: bool = False
    dequantize: bool = False
    data_levels: int | None = N_LEVELS
    has_bic: bool = False
    data_transform: Standardization = Standardization()

    def loss(self, x: Tensor, step: int = 0) -> dict[str, Tensor]:
        """Per-example terms [B] in nats: ``loss`` (minimised) and, where they exist, ``elbo``, ``rec``, ``kl``."""
        raise NotImplementedError

    def log_prob(self, x: Tensor, **kw) -> Tensor:
        """log p(x) [B] in nats, exact or estimated as ``log_prob_kind`` says."""
        raise NotImplementedError(f"{type(self).__name__} defines no density p(x)")

    def sample(self, n: int, mean: bool = False, temperature: float = 1.0) -> Tensor:
        """n draws x ~ p(x): [n, *data_shape]. ``mean``: the mean of p(x|z) instead of a draw;
        ``temperature`` T >= 0: the latent (or base) spread scaled by T (module docstring)."""
        raise NotImplementedError

    def fit(self, x: Tensor, progress=None) -> list[float]:
        """Closed-form fitting (``fitted_in_closed_form``): returns the per-iteration mean log-likelihood."""
        raise NotImplementedError(f"{type(self).__name__} is trained by gradient steps, not fit()")

    def init_from_data(self, mean_x: Tensor) -> None:
        """Data-dependent initialisation from the training set's mean example ``mean_x`` [*data_shape]
        (e.g. a decoder's output bias); called once by the training loop for a fresh run, never on
        resume. The default does nothing."""

    def bits_per_dim(self, nll: float) -> float | None:
        """Negative log-likelihood in nats per example -> bits per dimension, nll / (D ln 2); None for a
        ``density`` and unless the data are binary or 8-bit (``data_levels``;
        ``vaekit.distributions.data_bits_per_dim``)."""
        if self.density:
            return None
        return data_bits_per_dim(nll, math.prod(self.data_shape), True, self.data_levels)

    def n_parameters(self) -> int:
        """Free parameters of a maximum-likelihood fit (``has_bic``), for BIC."""
        raise NotImplementedError(f"{type(self).__name__} declares no BIC")


def check_temperature(temperature: float) -> float:
    """``temperature`` as a float once it is a finite number >= 0; a one-line error otherwise."""
    t = float(temperature)
    if not (math.isfinite(t) and t >= 0):
        raise VaekitError(f"sampling temperature must be a finite number >= 0; got {temperature}")
    return t


def check_data_levels(model: GenerativeModel, x: Tensor, training: bool = False) -> None:
    """A one-line :class:`~vaekit.errors.DataError` when ``model`` models the dequantisation of 8-bit
    levels (``dequantize``) and ``x`` [N, ...] are not such levels: its numbers would then be of
    data it does not describe (noise added to continuous values, D log 256 taken off). ``training``:
    the data a run is about to train on (the advice is then a setting), else data to score."""
    if not model.dequantize or on_levels(x):
        return
    if training:
        what, advice = "the training data", "for continuous data set data.levels=null (flows: flow_dequantize=none)"
    else:
        what = "the data"
        advice = "it scores only levels (round the data to k/255, or train a model of continuous data)"
    raise DataError(
        f"{what} are not 8-bit levels k/255 in [0, 1], but this {type(model).__name__} models their "
        f"dequantisation; {advice}"
    )


def refuse_sample_option(model: GenerativeModel, option: str, why: str) -> None:
    """The one-line error for a ``sample`` option (``mean=True``, ``temperature=T``) the model cannot
    honour: names the option, its command-line flag, the model and ``why``."""
    flag = "--" + option.split("=")[0]
    raise VaekitError(f"sampling with {option} ({flag}) is not defined for a {type(model).__name__}: {why}")
