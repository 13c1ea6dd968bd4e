"""Deterministic and denoising autoencoders: the non-probabilistic baselines of the VAE.

    z = f(x~),   x~ = x (autoencoder) or a corrupted copy of x (denoising autoencoder),
    loss = -log p(x | z)  (the reconstruction term of the ELBO, without the KL term)

Built from the *same* encoder/decoder bodies and likelihoods as the VAE (the encoder
outputs z itself instead of (mu, log sigma^2)), so the comparison isolates what the KL
term does: nothing ties the codes of an autoencoder to N(0, I), so decoding z ~ N(0, I)
(``sample``) or walking between codes (``vaekit interpolate``) can leave the region the
decoder was trained on, and the latent map (``vaekit latent-map``) is whatever shape the
codes happen to take. The denoising variant (Vincent et al. 2008, "Extracting and Composing
Robust Features with Denoising Autoencoders", ICML) reconstructs x from a corrupted input,
with additive Gaussian noise or masking noise (each input dimension zeroed with
probability p); corruption is applied in training mode only.

An autoencoder defines no density p(x): ``log_prob`` raises, ``log_prob_kind`` is ``none``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import lookup
from ..errors import ConfigError, VaekitError
from ..nets import build_decoder, build_encoder
from .base import GenerativeModel, check_temperature
from .vae import Decoder, DecodeViews, likelihood_from_config, net_spec

NOISE_TYPES = ("gaussian", "mask")


class Autoencoder(DecodeViews, GenerativeModel):
    """x -> z = encoder(x) -> p(x|z); denoising when ``noise > 0``.

    Args:
        encoder: module, x [B, *data_shape] -> z [B, D].
        decoder: module, z [B, D] -> p(x|z) (a ``vaekit.models.vae.Decoder``).
        data_shape: shape of one example.
        latent_dim: D.
        noise: corruption level (std of Gaussian noise, or masking probability); 0 = plain AE.
        noise_type: gaussian | mask.
    """

    log_prob_kind = "none"
    has_codes = True

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        data_shape: tuple[int, ...],
        latent_dim: int,
        noise: float = 0.0,
        noise_type: str = "gaussian",
    ):
        super().__init__()
        lookup(dict.fromkeys(NOISE_TYPES), noise_type, "model.ae_noise_type")
        if noise < 0 or (noise_type == "mask" and noise >= 1):
            raise ConfigError(f"ae_noise must be >= 0 (and < 1 for masking noise); got {noise}")
        self.encoder, self.decoder = encoder, decoder
        self.data_shape, self.noise, self.noise_type = tuple(data_shape), noise, noise_type
        self._latent_dim = latent_dim

    @property
    def latent_dim(self) -> int:
        return self._latent_dim

    @property
    def denoising(self) -> bool:
        return self.noise > 0

    def corrupt(self, x: Tensor) -> Tensor:
        """x~: x with Gaussian noise added, or with each dimension zeroed with prob. ``noise``."""
        if not self.denoising:
            return x
        if self.noise_type == "gaussian":
            return x + self.noise * torch.randn_like(x)
        return x * (torch.rand_like(x) >= self.noise).to(x.dtype)

    # --- the model contract -------------------------------------------------------------------
    def loss(self, x: Tensor, step: int = 0) -> dict[str, Tensor]:
        """Per-example ``loss`` = -log p(x | encoder(x~)) and ``rec`` = log p(x | z) (nats);
        x~ is corrupted in training mode only."""
        z = self.encoder(self.corrupt(x) if self.training else x)
        rec = self.decoder(z).log_prob(x)
        return {"loss": -rec, "rec": rec}

    def log_prob(self, x: Tensor, **kw) -> Tensor:
        raise VaekitError(
            "an autoencoder defines no density p(x); its loss is a reconstruction "
            "log-likelihood log p(x|z=f(x)), not log p(x)"
        )

    @torch.no_grad()
    def sample(self, n: int, mean: bool = False, temperature: float = 1.0) -> Tensor:
        """Decode z ~ N(0, T^2 I): [n, *data_shape] (what an unregularised latent space gives);
        T = 0 decodes z = 0 to its mean."""
        t = check_temperature(temperature)
        p = next(self.parameters())
        z = t * torch.randn(n, self.latent_dim, device=p.device, dtype=p.dtype)
        return self.decode_to_x(z, mean or t == 0)

    # --- the VAE vocabulary, so latent maps / interpolation / reconstruction work -------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(z, log_var) with log_var = -inf: a deterministic code (a point mass)."""
        z = self.encoder(x)
        return z, torch.full_like(z, float("-inf"))


def build_autoencoder(cfg, data_shape: tuple[int, ...], train_cfg=None) -> Autoencoder:
    """Registry constructor: the VAE's nets (``encoder``, ``decoder``, ``hidden``, ``latent_dim``,
    ``likelihood``) with a D-dimensional code; ``ae_noise`` > 0 makes it denoising. An autoencoder
    defines no density, so its Gaussian reconstruction term stays at the data (``models.DEQUANTIZABLE``)."""
    data_shape = tuple(data_shape)
    spec = net_spec(cfg)
    likelihood = likelihood_from_config(cfg, data_shape)  # dequantize: false for an autoencoder (resolved)
    encoder = build_encoder(cfg.encoder, data_shape, cfg.latent_dim, spec)
    decoder = Decoder(build_decoder(cfg.decoder, cfg.latent_dim, likelihood.param_shape, spec), likelihood)
    return Autoencoder(encoder, decoder, data_shape, cfg.latent_dim, noise=cfg.ae_noise, noise_type=cfg.ae_noise_type)
