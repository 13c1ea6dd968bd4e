"""Mixtures of Gaussians as a density: p(x) = sum_k pi_k N(x; mu_k, Sigma_k).

The one mixture density of vaekit, shared by the EM mixture model (``vaekit.models.mixture``)
and the VAE priors (a learnable mixture of diagonal Gaussians, and the VampPrior of Tomczak &
Welling 2018, ``vaekit.distributions.priors``).

Covariances are full, diagonal or spherical; each is given by its precision Cholesky factor P
(Sigma^-1 = P P^T), with which log N(x; mu, Sigma) = -D/2 log 2pi + log|P| - |(x - mu)^T P|^2 / 2
(the parameterisation of scikit-learn's ``GaussianMixture``, so fitted parameters can be
compared one to one).

References: Bishop, "Pattern Recognition and Machine Learning", 2006, Sec. 9.2; Tomczak &
Welling, "VAE with a VampPrior", AISTATS 2018.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution, constraints

from ..checks import lookup
from ..errors import VaekitError
from ..flows.base import full_precision_region

COVARIANCE_TYPES = ("full", "diag", "spherical")
LOG_2PI = math.log(2 * math.pi)


def component_log_prob(
    x: Tensor, means: Tensor, prec_chol: Tensor, covariance_type: str, x_sq: Tensor | None = None
) -> Tensor:
    """log N(x_n; mu_k, Sigma_k) for every row and component: x [N, D] -> [N, K].

    ``prec_chol`` is the Cholesky factor of the precision: [K, D, D] (full, upper triangular
    with Sigma^-1 = P P^T), [K, D] (diag: 1/sigma) or [K] (spherical: 1/sigma).
    ``x_sq`` (optional) is ``x * x``, precomputed by callers that evaluate the same x often.
    """
    return component_log_prob_t(x, means, prec_chol, covariance_type, x_sq).T


def component_log_prob_t(
    x: Tensor, means: Tensor, prec_chol: Tensor, covariance_type: str, x_sq: Tensor | None = None
) -> Tensor:
    """:func:`component_log_prob` transposed, [K, N]: the layout EM works in (products of a
    [K, D] matrix with x^T run about twice as fast as x times a [D, K] one on CPUs).

    The products run with autocast off: |x|^2 - 2 mu.x + |mu|^2 cancels, so bf16 products would
    cost the density its precision (a mixture or VampPrior's log p(z) in mixed-precision training)."""
    with full_precision_region(x):
        return _component_log_prob_t(x, means, prec_chol, covariance_type, x_sq)


def _component_log_prob_t(x, means, prec_chol, covariance_type, x_sq):
    D = x.shape[-1]
    if covariance_type == "full":
        log_det = torch.diagonal(prec_chol, dim1=-2, dim2=-1).log().sum(-1)  # [K]
        maha = torch.stack([((x @ P - m @ P) ** 2).sum(-1) for m, P in zip(means, prec_chol)])
    elif covariance_type == "diag":
        log_det = prec_chol.log().sum(-1)
        prec = prec_chol**2  # [K, D]
        if x.shape[0] * means.shape[0] * D <= (1 << 20):  # small: direct, most accurate
            maha = (((x.unsqueeze(-2) - means) ** 2) * prec).sum(-1).T
        else:  # |x|^2_P - 2 mu.P x + |mu|^2_P as two matrix products
            x_sq = x * x if x_sq is None else x_sq
            maha = prec @ x_sq.T - 2 * ((means * prec) @ x.T) + (means**2 * prec).sum(-1, keepdim=True)
    elif covariance_type == "spherical":
        log_det = D * prec_chol.log()
        prec = prec_chol**2  # [K]
        x_sq = x * x if x_sq is None else x_sq
        maha = (x_sq.sum(-1) - 2 * (means @ x.T) + (means**2).sum(-1, keepdim=True)) * prec.unsqueeze(-1)
    else:
        lookup(dict.fromkeys(COVARIANCE_TYPES), covariance_type, "covariance type")
    return -0.5 * (D * LOG_2PI + maha) + log_det.unsqueeze(-1)


def mixture_log_prob(x: Tensor, log_weights: Tensor, means: Tensor, prec_chol: Tensor, covariance_type: str) -> Tensor:
    """log p(x) = logsumexp_k (log pi_k + log N(x; mu_k, Sigma_k)): x [N, D] -> [N]."""
    return torch.logsumexp(component_log_prob(x, means, prec_chol, covariance_type) + log_weights, -1)


def precision_cholesky(covariances: Tensor, covariance_type: str) -> Tensor:
    """Precision Cholesky factors from covariances (see :func:`component_log_prob`)."""
    if covariance_type == "full":
        L, info = torch.linalg.cholesky_ex(covariances)
        if bool((info > 0).any()):
            raise VaekitError(
                "a mixture covariance is not positive definite (collapsed component); "
                "increase reg_covar or use fewer components"
            )
        eye = torch.eye(covariances.shape[-1], dtype=covariances.dtype, device=covariances.device)
        return torch.linalg.solve_triangular(L, eye.expand_as(L), upper=False).mT
    if bool((covariances <= 0).any()):
        raise VaekitError("a mixture variance is not positive; increase reg_covar")
    return covariances.rsqrt()


class MixtureOfGaussians(Distribution):
    """p(x) = sum_k pi_k N(mu_k, Sigma_k) as a torch Distribution with event shape [D].

    ``log_prob`` accepts any leading shape [..., D] and returns [...]; ``sample`` draws
    component then point (not reparameterisable in the component choice).
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(
        self,
        logits: Tensor,
        means: Tensor,
        prec_chol: Tensor,
        covariance_type: str = "diag",
        covariances: Tensor | None = None,
    ):
        lookup(dict.fromkeys(COVARIANCE_TYPES), covariance_type, "covariance type")
        self.log_weights = logits - torch.logsumexp(logits, -1)
        self.means, self.prec_chol, self.covariance_type = means, prec_chol, covariance_type
        self._covariances = covariances
        super().__init__(batch_shape=torch.Size(), event_shape=means.shape[-1:], validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        lead = value.shape[:-1]
        flat = value.reshape(-1, value.shape[-1])
        return mixture_log_prob(flat, self.log_weights, self.means, self.prec_chol, self.covariance_type).reshape(lead)

    def component_log_prob(self, value: Tensor) -> Tensor:
        """log pi_k + log N(value; mu_k, Sigma_k): [..., D] -> [..., K]."""
        flat = value.reshape(-1, value.shape[-1])
        out = component_log_prob(flat, self.means, self.prec_chol, self.covariance_type) + self.log_weights
        return out.reshape(*value.shape[:-1], -1)

    def responsibilities(self, value: Tensor) -> Tensor:
        """p(z=k|value): [..., D] -> [..., K], rows sum to one."""
        return torch.softmax(self.component_log_prob(value), -1)

    @property
    def mean(self) -> Tensor:
        return (self.log_weights.exp().unsqueeze(-1) * self.means).sum(0)

    def _scale_tril(self) -> Tensor:
        if self.covariance_type == "full":
            if self._covariances is not None:
                return torch.linalg.cholesky(self._covariances)
            eye = torch.eye(self.means.shape[-1], dtype=self.means.dtype, device=self.means.device)
            # P = (L^-1)^T  =>  L = (P^T)^-1, P^T lower triangular
            return torch.linalg.solve_triangular(self.prec_chol.mT, eye.expand_as(self.prec_chol), upper=False)
        return 1.0 / self.prec_chol

    @torch.no_grad()
    def sample_with_components(self, sample_shape=torch.Size()) -> tuple[Tensor, Tensor]:
        """(x, k): points [*sample_shape, D] and the components [*sample_shape] they came from."""
        shape = torch.Size(sample_shape)
        k = Categorical(logits=self.log_weights).sample(shape)
        eps = torch.randn(*shape, self.means.shape[-1], dtype=self.means.dtype, device=self.means.device)
        scale = self._scale_tril()
        if self.covariance_type == "full":
            noise = (scale[k] @ eps.unsqueeze(-1)).squeeze(-1)
        elif self.covariance_type == "diag":
            noise = scale[k] * eps
        else:
            noise = scale[k].unsqueeze(-1) * eps
        return self.means[k] + noise, k

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        return self.sample_with_components(sample_shape)[0]
