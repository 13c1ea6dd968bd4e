"""Gaussian mixture models fitted by expectation-maximisation, in PyTorch (CPU or GPU).

    p(x) = sum_k pi_k N(x; mu_k, Sigma_k),     p(z=k|x) = pi_k N(x; mu_k, Sigma_k) / p(x)

The shallow latent-variable model: z is discrete and the E-step is exact. EM (Dempster,
Laird & Rubin 1977; Bishop 2006, Sec. 9.2) alternates the E-step (responsibilities
r_nk = p(z=k|x_n), in the log domain with logsumexp) and the M-step (closed-form weights,
means and covariances from the sufficient statistics sum_n r_nk, sum_n r_nk x_n and
sum_n r_nk x_n x_n^T). Each EM iteration never decreases the log-likelihood.

Implementation notes:

- One pass over the data per iteration: every chunk of rows is E-stepped and folded into
  the sufficient statistics at once, so data larger than one E-step's memory (or than the
  GPU's memory: chunks are moved to the model's device one at a time) is handled.
- The statistics are taken about a fixed shift (the data mean) to keep float32 raw moments
  accurate; covariances get ``reg_covar`` on their diagonal as in scikit-learn.
- Covariances are full, diagonal or spherical; each is stored with its precision Cholesky
  factor P (Sigma^-1 = P P^T), with which log N(x; mu, Sigma) = -D/2 log 2pi + log|P|
  - |(x - mu)^T P|^2 / 2 (the parameterisation of scikit-learn's ``GaussianMixture``, so
  fitted parameters can be compared one to one).
- Initialisation: k-means++ seeding (Arthur & Vassilvitskii 2007, with greedy local trials),
  optionally followed by Lloyd iterations ("kmeans"), then one M-step from the hard
  assignments; or random responsibilities. Several restarts keep the best log-likelihood.
- :func:`component_log_prob` / :class:`MixtureOfGaussians` (``vaekit.distributions.mixture``)
  are the single mixture density used both here and by the VAE mixture priors (a learnable
  mixture of diagonal Gaussians, and the VampPrior of Tomczak & Welling 2018).

Model selection: BIC = -2 log L + p log N (Schwarz 1978), p the number of free parameters.

Clustering: :func:`cluster` assigns examples to a fitted mixture's components;
:func:`cluster_features` fits one on standardised feature vectors (encode, then cluster);
:func:`agreement` scores assignments against labels by the adjusted Rand index (Hubert & Arabie,
"Comparing partitions", J. Classification 1985) and the normalised mutual information (Strehl &
Ghosh, "Cluster ensembles", JMLR 2002).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..checks import lookup
from ..data import Standardization, dequantize, levels_of
from ..distributions import N_LEVELS
from ..distributions.mixture import (
    COVARIANCE_TYPES,
    LOG_2PI,
    MixtureOfGaussians,
    component_log_prob,
    component_log_prob_t,
    mixture_log_prob,
    precision_cholesky,
)
from ..errors import ConfigError, DataError, VaekitError
from ..seeding import EM_DEQUANTIZE, EM_RESTART, derive_seed
from .base import GenerativeModel, check_temperature, refuse_sample_option

INITS = ("kmeans", "kmeans++", "random")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEFAULT_CHUNK_ELEMENTS = 1 << 23  # largest intermediate of one E-step chunk (numbers); a few MB, cache-friendly
DEFAULT_CACHE_ELEMENTS = 1 << 27  # keep [x, x^2] features of the whole data when this small


# --- EM --------------------------------------------------------------------------------------


def _sqdist(x: Tensor, c: Tensor, x_sq: Tensor | None = None) -> Tensor:
    """Squared Euclidean distances [N, M] between rows of x [N, D] and c [M, D]."""
    x_sq = (x * x).sum(-1, keepdim=True) if x_sq is None else x_sq
    return (x_sq - 2 * x @ c.T + (c * c).sum(-1)).clamp_min(0)


def kmeans_plusplus(
    x: Tensor, n_clusters: int, generator: torch.Generator, n_local_trials: int | None = None
) -> Tensor:
    """k-means++ seeds [K, D] (Arthur & Vassilvitskii 2007), greedy: the best of
    ``2 + log K`` candidates drawn with probability proportional to D(x)^2 at each step."""
    n = x.shape[0]
    trials = n_local_trials or 2 + int(math.log(n_clusters))
    x_sq = (x * x).sum(-1, keepdim=True)
    first = int(torch.randint(n, (1,), generator=generator, device=generator.device))
    centers = [x[first]]
    closest = _sqdist(x, x[first : first + 1], x_sq)[:, 0]
    for _ in range(1, n_clusters):
        pot = closest.sum()
        u = torch.rand(trials, generator=generator, device=generator.device, dtype=x.dtype) * pot
        ids = torch.searchsorted(closest.cumsum(0), u).clamp(max=n - 1)
        d2 = torch.minimum(closest, _sqdist(x, x[ids], x_sq).T)  # [trials, n]
        best = int(d2.sum(-1).argmin())
        centers.append(x[ids[best]])
        closest = d2[best]
    return torch.stack(centers)


def lloyd(x: Tensor, centers: Tensor, iters: int = 20) -> Tensor:
    """Lloyd's k-means iterations from ``centers``; empty clusters keep their centre."""
    x_sq = (x * x).sum(-1, keepdim=True)
    K = centers.shape[0]
    for _ in range(iters):
        labels = _sqdist(x, centers, x_sq).argmin(-1)
        counts = torch.bincount(labels, minlength=K).to(x.dtype)
        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        new = torch.where(counts.unsqueeze(-1) > 0, sums / counts.clamp_min(1).unsqueeze(-1), centers)
        if torch.equal(new, centers):
            break
        centers = new
    return centers


class GaussianMixtureModel(GenerativeModel):
    """A Gaussian mixture over flattened examples, fitted by EM, with the model contract.

    Args:
        n_components: K.
        data_shape: shape of one example (images are flattened to D = prod(data_shape)).
        covariance_type: full | diag | spherical.
        reg_covar: added to every covariance diagonal (as scikit-learn).
        tol: stop when the mean log-likelihood changes by less than this between iterations.
        max_iter: EM iterations per restart.
        n_init: restarts; the one with the best final mean log-likelihood is kept.
        init: kmeans (k-means++ then Lloyd) | kmeans++ (seeds only) | random (responsibilities).
        seed: seed of the initialisation (restart i uses seed + i).
        dtype: float32 | float64 (parameters and arithmetic).
        chunk_size: rows per E-step chunk (None: chosen from a memory budget).
        init_samples: rows (random subset) k-means sees; all if None.
        dequantize: the data are 8-bit levels x = k / 255: EM fits the mixture to one uniform
            dequantisation y = (255 x + u) / 256 of the training data (seeded by ``seed``), and
            ``log_prob`` is log p(y) - D log 256 at a fresh y, in expectation a lower bound on the
            log-probability of the levels (Theis et al. 2016; ``vaekit.data.dequantize``), as for
            flows. Clustering (``responsibilities``, ``predict``) reads x at its bin's centre, and
            draws and means come back on x's scale (``vaekit.data.levels_of``). Default off.
    """

    log_prob_kind = "exact"
    fitted_in_closed_form = True
    has_bic = True  # a maximum-likelihood fit with n_parameters() free parameters

    def __init__(
        self,
        n_components: int,
        data_shape: tuple[int, ...],
        covariance_type: str = "full",
        reg_covar: float = 1e-6,
        tol: float = 1e-3,
        max_iter: int = 100,
        n_init: int = 1,
        init: str = "kmeans",
        seed: int = 0,
        dtype: str | torch.dtype = "float32",
        chunk_size: int | None = None,
        init_samples: int | None = None,
        dequantize: bool = False,
    ):
        super().__init__()
        self.dequantize = dequantize
        lookup(dict.fromkeys(COVARIANCE_TYPES), covariance_type, "model.covariance")
        lookup(dict.fromkeys(INITS), init, "model.em_init")
        if isinstance(dtype, str):
            dtype = lookup(DTYPES, dtype, "mixture dtype")
        for name, v in (("components", n_components), ("max_iter", max_iter), ("n_init", n_init)):
            if v < 1:
                raise ConfigError(f"mixture {name} must be at least 1; got {v}")
        if reg_covar < 0 or tol < 0:
            raise ConfigError("mixture reg_covar and tol must be non-negative")
        self.data_shape = tuple(data_shape)
        self.K, self.D = n_components, math.prod(self.data_shape)
        self.covariance_type, self.reg_covar, self.tol = covariance_type, reg_covar, tol
        self.max_iter, self.n_init, self.init, self.seed = max_iter, n_init, init, seed
        self.chunk_size, self.init_samples = chunk_size, init_samples
        K, D = self.K, self.D
        cov_shape = {"full": (K, D, D), "diag": (K, D), "spherical": (K,)}[covariance_type]
        self.register_buffer("weights", torch.full((K,), 1.0 / K, dtype=dtype))
        self.register_buffer("means", torch.zeros(K, D, dtype=dtype))
        ones = (
            torch.eye(D, dtype=dtype).expand(K, D, D).clone()
            if covariance_type == "full"
            else torch.ones(cov_shape, dtype=dtype)
        )
        self.register_buffer("covariances", ones)
        self.register_buffer("precisions_cholesky", ones.clone())
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("converged", torch.zeros((), dtype=torch.bool))
        self.register_buffer("n_iter", torch.zeros((), dtype=torch.long))
        self.register_buffer("lower_bound", torch.full((), -math.inf, dtype=torch.float64))

    @property
    def density(self) -> bool:
        """Gaussian densities of the data; with ``dequantize`` a bound on the probability of their levels."""
        return not self.dequantize

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    @property
    def device(self) -> torch.device:
        return self.means.device

    # --- parameters ------------------------------------------------------------------------
    def set_parameters(self, weights: Tensor, means: Tensor, covariances: Tensor) -> None:
        """Set pi, mu, Sigma (any array-likes; shapes as the buffers); precisions follow."""
        as_t = lambda a: torch.as_tensor(a, dtype=self.dtype, device=self.device)  # noqa: E731
        weights, means, covariances = as_t(weights), as_t(means), as_t(covariances)
        if (
            weights.shape != self.weights.shape
            or means.shape != self.means.shape
            or covariances.shape != self.covariances.shape
        ):
            raise DataError(
                f"mixture parameters have shapes {tuple(weights.shape)}, {tuple(means.shape)}, "
                f"{tuple(covariances.shape)}; expected {tuple(self.weights.shape)}, "
                f"{tuple(self.means.shape)}, {tuple(self.covariances.shape)}"
            )
        self.weights.copy_(weights / weights.sum())
        self.means.copy_(means)
        self.covariances.copy_(covariances)
        self.precisions_cholesky.copy_(precision_cholesky(covariances, self.covariance_type))
        self.fitted.fill_(True)

    def distribution(self) -> MixtureOfGaussians:
        """The fitted p(x) over flattened examples, as a torch Distribution."""
        return MixtureOfGaussians(
            self.weights.log(), self.means, self.precisions_cholesky, self.covariance_type, covariances=self.covariances
        )

    def n_parameters(self) -> int:
        """Free parameters: K-1 weights, K*D means, and the covariances."""
        K, D = self.K, self.D
        cov = {"full": K * D * (D + 1) // 2, "diag": K * D, "spherical": K}[self.covariance_type]
        return K - 1 + K * D + cov

    # --- data handling -------------------------------------------------------------------------
    def _flat(self, x) -> Tensor:
        x = torch.as_tensor(x)
        if x.dim() == 2 and x.shape[1] == self.D:
            flat = x
        elif tuple(x.shape[1:]) == self.data_shape:
            flat = x.reshape(x.shape[0], self.D)
        else:
            raise DataError(
                f"mixture expects data of shape [N, {self.D}] or [N, *{self.data_shape}]; got {tuple(x.shape)}"
            )
        if flat.shape[0] == 0:
            raise DataError("mixture got no examples")
        return flat

    def _rows_per_chunk(self, n: int) -> int:
        if self.chunk_size:
            return max(1, self.chunk_size)
        per_row = self.K * self.D if self.covariance_type == "full" else 2 * self.D + 4 * self.K
        return max(1, min(n, DEFAULT_CHUNK_ELEMENTS // per_row))

    def _chunks(self, x: Tensor, shift: Tensor, cache: list | None = None):
        """Yield (x - shift, (x - shift)^2 or None) chunks on the model's device and dtype.

        With ``cache`` (a list), the chunks of the first call are kept and replayed."""
        if cache:
            yield from cache
            return
        step = self._rows_per_chunk(x.shape[0])
        for i in range(0, x.shape[0], step):
            xs = x[i : i + step].to(device=self.device, dtype=self.dtype) - shift
            item = (xs, xs * xs if self.covariance_type != "full" else None)
            if cache is not None:
                cache.append(item)
            yield item

    def _use_cache(self, x: Tensor) -> bool:
        factor = 1 if self.covariance_type == "full" else 2
        return x.shape[0] * self.D * factor <= DEFAULT_CACHE_ELEMENTS

    # --- EM ------------------------------------------------------------------------------------
    def _m_step(self, nk: Tensor, s1: Tensor, s2: Tensor, n: int) -> dict[str, Tensor]:
        """Parameters (in shifted coordinates) from the sufficient statistics."""
        nk = nk + 10 * torch.finfo(self.dtype).eps  # as scikit-learn: no empty component
        means = s1 / nk.unsqueeze(-1)
        if self.covariance_type == "full":
            cov = s2 / nk.view(-1, 1, 1) - means.unsqueeze(-1) * means.unsqueeze(-2)
            cov = 0.5 * (cov + cov.mT)
            cov.diagonal(dim1=-2, dim2=-1).add_(self.reg_covar)
        elif self.covariance_type == "diag":
            cov = (s2 / nk.unsqueeze(-1) - means**2).clamp_min(0) + self.reg_covar
        else:
            cov = (s2 / nk - (means**2).sum(-1)).clamp_min(0) / self.D + self.reg_covar
        return {
            "weights": nk / nk.sum(),
            "means": means,
            "covariances": cov,
            "prec_chol": precision_cholesky(cov, self.covariance_type),
        }

    def _estep_pass(
        self, x: Tensor, shift: Tensor, params: dict, cache=None, hard_centers: Tensor | None = None, generator=None
    ) -> tuple[float, tuple]:
        """One pass over the data: E-step per chunk folded into sufficient statistics.

        Returns (mean log-likelihood under ``params``, (nk, s1, s2)). With ``hard_centers``
        the responsibilities are the one-hot nearest centre (k-means init); with
        ``generator`` and no params, random responsibilities (random init)."""
        K, D = self.K, self.D
        nk = torch.zeros(K, dtype=self.dtype, device=self.device)
        s1 = torch.zeros(K, D, dtype=self.dtype, device=self.device)
        s2 = torch.zeros(
            (K, D, D) if self.covariance_type == "full" else (K, D) if self.covariance_type == "diag" else (K,),
            dtype=self.dtype,
            device=self.device,
        )
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for xs, xs_sq in self._chunks(x, shift, cache):
            if hard_centers is not None:
                r = nn.functional.one_hot(_sqdist(xs, hard_centers).argmin(-1), K).to(self.dtype)
            elif params is None:
                r = torch.rand(xs.shape[0], K, generator=generator, device=self.device, dtype=self.dtype)
                r = r / r.sum(-1, keepdim=True)
            else:  # [K, n] layout throughout (see component_log_prob_t)
                logp = component_log_prob_t(
                    xs, params["means"], params["prec_chol"], self.covariance_type, x_sq=xs_sq
                ) + params["weights"].log().unsqueeze(-1)
                lse = torch.logsumexp(logp, 0, keepdim=True)
                total += lse.sum(dtype=torch.float64)
                r_t = (logp - lse).exp_()
            if hard_centers is not None or params is None:
                r_t = r.T
            nk += r_t.sum(1)
            s1 += r_t @ xs
            if self.covariance_type == "full":
                rx = (r_t.T.unsqueeze(-1) * xs.unsqueeze(1)).reshape(xs.shape[0], K * D)  # [n, K*D]
                s2 += (rx.T @ xs).view(K, D, D)
            elif self.covariance_type == "diag":
                s2 += r_t @ xs_sq
            else:
                s2 += r_t @ xs_sq.sum(-1)
        return (total / x.shape[0]).item(), (nk, s1, s2)

    def _initial_params(self, x: Tensor, shift: Tensor, generator: torch.Generator, cache) -> dict:
        n = x.shape[0]
        if self.K > n:
            raise DataError(f"mixture has {self.K} components but only {n} examples")
        if self.init == "random":
            _, stats = self._estep_pass(x, shift, None, cache, generator=generator)
            return self._m_step(*stats, n)
        m = min(n, self.init_samples or n)
        idx = torch.randperm(n, generator=generator, device=generator.device)[:m].to(x.device)
        sub = x[idx].to(device=self.device, dtype=self.dtype) - shift
        centers = kmeans_plusplus(sub, self.K, generator)
        if self.init == "kmeans":
            centers = lloyd(sub, centers)
        _, stats = self._estep_pass(x, shift, None, cache, hard_centers=centers)
        return self._m_step(*stats, n)

    def fit(self, x, progress: Callable | bool | None = None, init_params: dict | None = None) -> list[float]:
        """Fit by EM (``n_init`` restarts, keep the best); returns the best restart's history.

        Args:
            x: data [N, *data_shape] or [N, D] (tensor or array; any device: chunks are moved).
            progress: ``progress(iteration, mean_log_lik)`` called after each E-step, or ``True``
                for a progress bar (on stderr), or None / False.
            init_params: optional ``{"weights", "means", "covariances"}`` to start from (then one
                run, no restarts), e.g. for comparisons with scikit-learn.

        Returns:
            the mean log-likelihood (nats per example) at each iteration's E-step, i.e. under
            the parameters before that iteration's M-step (scikit-learn's ``lower_bounds_``); with
            ``dequantize`` that of the dequantised training data minus D log 256, the scale of
            ``log_prob``.
        """
        x = self._flat(x)
        n = x.shape[0]
        if n < 2:
            raise DataError("mixture needs at least 2 examples")
        if self.dequantize:  # one draw for the whole fit: EM's monotone ascent needs fixed data
            gen = torch.Generator(device=x.device).manual_seed(derive_seed(self.seed, EM_DEQUANTIZE))
            x = dequantize(x.to(self.dtype), generator=gen, levels=N_LEVELS)
        shift = torch.zeros(self.D, dtype=torch.float64, device=x.device)
        for i in range(0, n, 1 << 16):
            shift += x[i : i + (1 << 16)].double().sum(0)
        if not bool(torch.isfinite(shift).all()):  # the same pass finds NaN / inf anywhere in x
            raise DataError("mixture data contains NaN or infinite values")
        shift = (shift / n).to(device=self.device, dtype=self.dtype)
        cache = [] if self._use_cache(x) else None
        bar = None
        if progress is True:
            import sys

            from tqdm.auto import tqdm

            bar = tqdm(
                total=self.max_iter * (1 if init_params is not None else self.n_init),
                desc="EM",
                unit="it",
                leave=False,
                dynamic_ncols=True,
                file=sys.stderr,
            )

            def progress(it, ll):
                bar.update(1)
                bar.set_postfix(mean_log_lik=f"{ll:.3f}", refresh=False)
        elif not callable(progress):
            progress = None
        # with dequantize, EM's log p(y) and the reported log P(x) >= log p(y) - D log 256 differ by a
        # constant: the history, the progress and lower_bound report the latter, as log_prob does
        offset = -self.D * math.log(N_LEVELS) if self.dequantize else 0.0
        if progress is not None and offset:
            on_iteration = progress
            progress = lambda it, ll: on_iteration(it, ll + offset)  # noqa: E731
        try:
            best = self._fit_restarts(x, shift, cache, progress, init_params)
        finally:
            if bar is not None:
                bar.close()
        params, history, converged = best
        history = [ll + offset for ll in history]
        self.set_parameters(params["weights"], params["means"] + shift, params["covariances"])
        self.converged.fill_(converged)
        self.n_iter.fill_(len(history))
        self.lower_bound.fill_(history[-1])
        return history

    def _fit_restarts(self, x, shift, cache, progress, init_params):
        n = x.shape[0]
        best = None
        for restart in range(1 if init_params is not None else self.n_init):
            gen = torch.Generator(device=self.device).manual_seed(derive_seed(self.seed, EM_RESTART, restart))
            if init_params is not None:
                as_t = lambda a: torch.as_tensor(a, dtype=self.dtype, device=self.device)  # noqa: E731
                cov = as_t(init_params["covariances"])
                params = {
                    "weights": as_t(init_params["weights"]),
                    "means": as_t(init_params["means"]) - shift,
                    "covariances": cov,
                    "prec_chol": precision_cholesky(cov, self.covariance_type),
                }
            else:
                params = self._initial_params(x, shift, gen, cache)
            history, prev, converged = [], -math.inf, False
            for it in range(self.max_iter):
                ll, stats = self._estep_pass(x, shift, params, cache)
                if not math.isfinite(ll):
                    raise VaekitError("EM produced a non-finite log-likelihood; increase reg_covar")
                history.append(ll)
                params = self._m_step(*stats, n)
                if progress is not None:
                    progress(it + 1, ll)
                if abs(ll - prev) < self.tol:
                    converged = True
                    break
                prev = ll
            if best is None or history[-1] > best[1][-1]:
                best = (params, history, converged)
        return best

    # --- the model contract --------------------------------------------------------------------
    def _check_fitted(self):
        if not bool(self.fitted):
            raise VaekitError("the mixture is not fitted yet; call fit(x) (vaekit train --model mixture)")

    def _chunked(self, x, fn) -> Tensor:
        flat = self._flat(x)
        step = self._rows_per_chunk(flat.shape[0])
        return torch.cat(
            [fn(flat[i : i + step].to(device=self.device, dtype=self.dtype)) for i in range(0, flat.shape[0], step)]
        )

    def component_log_prob(self, x) -> Tensor:
        """log pi_k + log N(x; mu_k, Sigma_k): [N, K]."""
        self._check_fitted()
        return self._chunked(
            x,
            lambda c: (
                component_log_prob(c, self.means, self.precisions_cholesky, self.covariance_type) + self.weights.log()
            ),
        )

    @torch.no_grad()
    def log_prob(self, x, **kw) -> Tensor:
        """Exact log p(x) [N] in nats (data of the model's dtype and device); with ``dequantize`` the
        one-draw estimate log p(y) - D log 256 at y dequantised afresh from torch's generator, exact
        as a density of y and in expectation a lower bound on log P(x) (class docstring)."""
        if not self.dequantize:
            return torch.logsumexp(self.component_log_prob(x), -1)
        y = dequantize(self._flat(x).to(device=self.device, dtype=self.dtype), levels=N_LEVELS)
        return torch.logsumexp(self.component_log_prob(y), -1) - self.D * math.log(N_LEVELS)

    def _at_levels(self, x):
        """Where the mixture is read for x without noise: x itself, or with ``dequantize`` the centres
        (255 x + 1/2) / 256 of the levels' bins, where the fitted y live (x = k/255 is a bin's edge)."""
        if not self.dequantize:
            return x
        return (self._flat(x).to(device=self.device, dtype=self.dtype) * (N_LEVELS - 1) + 0.5) / N_LEVELS

    @torch.no_grad()
    def responsibilities(self, x) -> Tensor:
        """p(z=k|x) [N, K]; each row sums to one (with ``dequantize``, at the levels' bin centres)."""
        return torch.softmax(self.component_log_prob(self._at_levels(x)), -1)

    @torch.no_grad()
    def predict(self, x) -> Tensor:
        """The most probable component of each example [N] (long), read as :meth:`responsibilities`."""
        return self.component_log_prob(self._at_levels(x)).argmax(-1)

    def loss(self, x: Tensor, step: int = 0) -> dict[str, Tensor]:
        """Per-example ``loss`` = -log p(x) and ``log_px`` (exact, nats)."""
        lp = self.log_prob(x)
        return {"loss": -lp, "log_px": lp}

    @torch.no_grad()
    def sample(self, n: int, mean: bool = False, temperature: float = 1.0, return_labels: bool = False):
        """x ~ p(x): [n, *data_shape] (and the components [n] with ``return_labels``);
        ``mean=True`` gives the means of the drawn components instead. Only ``temperature=1``. With
        ``dequantize`` draws come back as the levels k/255 of their bins and means on that scale."""
        if check_temperature(temperature) != 1.0:
            refuse_sample_option(
                self,
                f"temperature={temperature:g}",
                "a mixture has no single spread to scale; use --mean for its means",
            )
        self._check_fitted()
        x, k = self.distribution().sample_with_components((n,))
        if mean:
            x = self.means[k]
        if self.dequantize:
            x = levels_of(x, mean)
        x = x.view(n, *self.data_shape)
        return (x, k) if return_labels else x

    @torch.no_grad()
    def score(self, x) -> float:
        """Mean log-likelihood per example (nats)."""
        return self.log_prob(x).double().mean().item()

    @torch.no_grad()
    def bic(self, x) -> float:
        """Bayesian information criterion -2 log L + p log N (lower is better)."""
        n = self._flat(x).shape[0]
        return -2 * self.score(x) * n + self.n_parameters() * math.log(n)

    @torch.no_grad()
    def aic(self, x) -> float:
        """Akaike information criterion -2 log L + 2 p (lower is better)."""
        n = self._flat(x).shape[0]
        return -2 * self.score(x) * n + 2 * self.n_parameters()


@torch.no_grad()
def cluster(model: GaussianMixtureModel, x) -> tuple[Tensor, Tensor]:
    """Soft and hard assignments: (p(z=k|x) [N, K], argmax_k [N]) (``vaekit cluster``)."""
    soft = model.responsibilities(x)
    return soft, soft.argmax(-1)


def cluster_features(
    x, k: int, covariance: str = "full", restarts: int = 3, seed: int = 0, reg_covar: float = 1e-6
) -> tuple[Tensor, Tensor, GaussianMixtureModel]:
    """Cluster feature vectors (e.g. a VAE's posterior means) with a Gaussian mixture fitted by EM on
    the standardised features (each feature centred and scaled to unit variance, so that no feature
    dominates the distances of the k-means++ seeding or the covariances by its units alone).

    Args:
        x: features [N, D] (tensor or array).
        k: mixture components K (at most N).
        covariance: full | diag | spherical.
        restarts: EM restarts; the best log-likelihood is kept.
        seed: seed of the initialisation.
        reg_covar: added to every covariance diagonal (in standardised units).

    Returns:
        (p(z=k|x) [N, K], argmax_k [N], the fitted mixture over the standardised features).
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.dim() != 2 or x.shape[0] < 2:
        raise DataError(f"features must be [N, D] with N >= 2; got shape {tuple(x.shape)}")
    if not 1 <= k <= x.shape[0]:
        raise VaekitError(f"the number of components must be between 1 and the {x.shape[0]} examples; got {k}")
    z = Standardization.fit(x).apply(x)
    model = GaussianMixtureModel(
        k, (x.shape[1],), covariance_type=covariance, reg_covar=reg_covar, n_init=restarts, seed=seed, dtype="float64"
    )
    model.fit(z)
    soft, hard = cluster(model, z)
    return soft, hard, model


def agreement(labels, assignments) -> dict[str, float]:
    """How well clusters match known labels (both [N] integers): the adjusted Rand index (Hubert &
    Arabie 1985; 1 for identical partitions, about 0 for chance) and the normalised mutual
    information (arithmetic normalisation, as scikit-learn), both invariant to renaming the clusters."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    y, h = np.asarray(labels), np.asarray(assignments)
    return {"ari": float(adjusted_rand_score(y, h)), "nmi": float(normalized_mutual_info_score(y, h))}


def build_mixture(cfg, data_shape: tuple[int, ...], train_cfg=None) -> GaussianMixtureModel:
    """Registry constructor: a ``GaussianMixtureModel`` from ``ModelConfig`` fields (``dequantize`` as
    ``models.build_model`` resolves it: "auto" reads as false here)."""
    return GaussianMixtureModel(
        n_components=cfg.components,
        data_shape=data_shape,
        covariance_type=cfg.covariance,
        reg_covar=cfg.reg_covar,
        tol=cfg.em_tol,
        max_iter=cfg.em_max_iter,
        n_init=cfg.em_restarts,
        init=cfg.em_init,
        seed=train_cfg.seed if train_cfg is not None else 0,
        dtype=cfg.mixture_dtype,
        chunk_size=cfg.em_chunk or None,
        init_samples=cfg.em_init_samples or None,
        dequantize=cfg.dequantize is True,
    )


__all__ = [
    # the mixture density, defined in vaekit.distributions.mixture and re-exported here
    "COVARIANCE_TYPES",
    "LOG_2PI",
    "MixtureOfGaussians",
    "component_log_prob",
    "component_log_prob_t",
    "mixture_log_prob",
    "precision_cholesky",
    # EM
    "GaussianMixtureModel",
    "agreement",
    "build_mixture",
    "cluster",
    "cluster_features",
    "kmeans_plusplus",
    "lloyd",
]
