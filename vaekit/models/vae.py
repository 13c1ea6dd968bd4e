"""The variational autoencoder, composed from parts (Kingma & Welling 2014; Rezende et al. 2014).

    encoder(x)  -> q(z|x)   amortised inference, a torch Distribution with batch [B], event [D]
    decoder(z)  -> p(x|z)   a torch Distribution with batch [B], event data_shape
    prior       -> p(z)     a torch Distribution with event [D]

Every architecture (dense, conv, ResNet, PixelCNN decoder) and every posterior or prior
flow plugs into this one class; the ELBO, the IWAE bound and the importance-sampled
log-likelihood are written once in ``vaekit.objectives`` / ``vaekit.inference`` on top of
these three distributions. ``encode / reparameterize / decode`` keep the vocabulary of
pytorch/examples.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from .. import objectives
from ..distributions import build_likelihood, build_prior, diagonal_gaussian, distribution_mean, image_bits_per_dim
from ..nets import build_decoder, build_encoder
from ..streamed import streamed_log_likelihood
from .base import GenerativeModel
from .flow_vae import build_flow_encoder


class GaussianEncoder(nn.Module):
    """q(z|x) = N(mu(x), diag(sigma^2(x))): ``body`` outputs [B, 2*D] = (mu, log sigma^2)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Distribution:
        mean, log_var = self.body(x).chunk(2, dim=-1)
        return diagonal_gaussian(mean, log_var)


class Decoder(nn.Module):
    """p(x|z) = likelihood(body(z)); ``body`` maps z [B, D] to the likelihood's parameters."""

    def __init__(self, body: nn.Module, likelihood: nn.Module):
        super().__init__()
        self.body = body
        self.likelihood = likelihood

    def forward(self, z: Tensor) -> Distribution:
        return self.likelihood(self.body(z))

    def log_likelihood(self, z: Tensor, x: Tensor) -> Tensor:
        """log p(x|z) [N] for codes z [N, D] and data x [N, *data_shape]: ``self(z).log_prob(x)``,
        streamed block by block without materialising p(x|z) where ``vaekit.streamed`` has a
        kernel for this body and likelihood (no grad, CPU)."""
        out = streamed_log_likelihood(self, z, x)
        return self(z).log_prob(x) if out is None else out


class DecodeViews:
    """What users do with a code, shared by every model with ``encode`` and ``decoder``:
    ``decode(z) -> p(x|z)``, ``decode_to_x`` (its mean or a sample) and ``reconstruct``
    (decode the code ``encode(x)[0]``: a posterior mean, or an autoencoder's point code)."""

    def decode(self, z: Tensor) -> Distribution:
        return self.decoder(z)

    @torch.no_grad()
    def decode_to_x(self, z: Tensor, mean: bool = True) -> Tensor:
        px = self.decoder(z)
        return distribution_mean(px) if mean else px.sample()

    @torch.no_grad()
    def reconstruct(self, x: Tensor, mean: bool = True) -> Tensor:
        """E[x|z] (or a sample) at z = encode(x)[0]."""
        code, _ = self.encode(x)
        return self.decode_to_x(code, mean)


class VAE(DecodeViews, GenerativeModel):
    """A VAE with the uniform model contract: ``loss``, ``log_prob``, ``sample``.

    Args:
        encoder: module, x [B, *data_shape] -> q(z|x).
        decoder: module, z [B, D] -> p(x|z).
        prior: module, () -> p(z).
        data_shape: shape of one example, e.g. (1, 28, 28).
        objective, k, beta, warmup_steps, free_bits: training objective (see ``vaekit.objectives``).
    """

    log_prob_kind = "importance-sampled"
    has_latents = True
    has_codes = True

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        prior: nn.Module,
        data_shape: tuple[int, ...],
        objective: str = "elbo",
        k: int = 1,
        beta: float = 1.0,
        warmup_steps: int = 0,
        free_bits: float = 0.0,
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.prior_module = prior
        self.data_shape = tuple(data_shape)
        self.objective = dict(objective=objective, k=k, beta=beta, warmup_steps=warmup_steps, free_bits=free_bits)

    @property
    def prior(self) -> Distribution:
        return self.prior_module()

    @property
    def latent_dim(self) -> int:
        return self.prior.event_shape[0]

    # --- the model contract -------------------------------------------------------------
    def loss(self, x: Tensor, step: int = 0) -> dict[str, Tensor]:
        """Per-example ``loss``, ``elbo``, ``rec``, ``kl`` (nats) under the configured objective."""
        return objectives.vae_loss(self, x, step=step, **self.objective)

    @torch.no_grad()
    def log_prob(self, x: Tensor, k: int = 1000, **kw) -> Tensor:
        """Importance-sampled log p(x) [B] with k samples from q(z|x) (an estimate, not exact)."""
        from ..inference import importance_sampled_log_prob

        return importance_sampled_log_prob(self, x, k=k, **kw)["log_px"]

    @torch.no_grad()
    def sample(self, n: int, mean: bool = False) -> Tensor:
        """x ~ p(x|z), z ~ p(z): [n, *data_shape]; ``mean=True`` returns E[x|z] instead."""
        z = self.prior.sample((n,))
        return self.decode_to_x(z, mean)

    def bits_per_dim(self, nll: float) -> float:
        """nats per example -> bits per dimension, with the 8-bit term for continuous likelihoods."""
        import math

        return image_bits_per_dim(nll, math.prod(self.data_shape), getattr(self.decoder.likelihood, "discrete", True))

    # --- pytorch/examples vocabulary ------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance [B, D] each (the features of ``vaekit encode``)."""
        q = self.encoder(x)
        g = getattr(q, "base", q)  # flow posteriors expose their Gaussian q0(z|x) as ``.base``
        return g.mean, 2 * g.stddev.log()

    @staticmethod
    def reparameterize(mu: Tensor, log_var: Tensor) -> Tensor:
        return mu + (0.5 * log_var).exp() * torch.randn_like(mu)


def build_vae(cfg, data_shape: tuple[int, ...], train_cfg=None) -> VAE:
    """Build a VAE from a ``ModelConfig`` (and the objective from a ``TrainConfig``)."""
    likelihood = build_likelihood(data_shape, cfg)
    if getattr(cfg, "posterior_flow", None) not in (None, "none"):  # q(z|x) = flow(q0(z|x)), see flow_vae.py
        encoder = build_flow_encoder(data_shape, cfg)
    else:
        encoder = GaussianEncoder(build_encoder(data_shape, 2 * cfg.latent_dim, cfg))
    decoder = Decoder(build_decoder(cfg.latent_dim, likelihood.param_shape, cfg), likelihood)
    prior = build_prior(cfg.latent_dim, cfg)
    if hasattr(prior, "bind"):  # priors defined through the encoder (VampPrior)
        prior.bind(encoder, data_shape)
    obj = {}
    if train_cfg is not None:
        obj = dict(
            objective=train_cfg.objective,
            k=train_cfg.k,
            beta=train_cfg.beta,
            warmup_steps=train_cfg.warmup_steps,
            free_bits=train_cfg.free_bits,
        )
    return VAE(encoder, decoder, prior, data_shape, **obj)
