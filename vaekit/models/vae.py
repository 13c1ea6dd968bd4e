"""The variational autoencoder, composed from parts (Kingma & Welling 2014; Rezende et al. 2014).

    encoder(x)  -> q(z|x)   amortised inference, a torch Distribution with batch [B], event [D]
    decoder(z)  -> p(x|z)   a torch Distribution with batch [B], event data_shape
    prior       -> p(z)     a torch Distribution with event [D]

Every architecture (dense, conv, ResNet, PixelCNN decoder), every posterior or prior
flow and stacks of stochastic layers (``model.stochastic_layers``: q(z|x) and p(z) are chains
over z = (z_1, ..., z_L) from ``vaekit.distributions.hierarchy``, the decoder reads z_1) plug into
this one class; the ELBO, the IWAE bound and the importance-sampled
log-likelihood are written once in ``vaekit.objectives`` / ``vaekit.inference`` on top of
these three distributions. ``encode / reparameterize / decode`` keep the vocabulary of
pytorch/examples.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from .. import objectives
from ..checks import lookup
from ..distributions import (
    LIKELIHOODS,
    Encoder,
    Likelihood,
    Prior,
    build_likelihood,
    build_prior,
    diagonal_gaussian,
    distribution_mean,
)
from ..distributions.hierarchy import ConditionalGaussian, HierarchicalEncoder, HierarchicalPrior
from ..inference.streamed import streamed_log_likelihood
from ..nets import NetSpec, build_decoder, build_encoder
from .base import GenerativeModel, check_temperature, refuse_sample_option
from .flow_vae import build_flow_encoder

BIAS_INIT_EPS = 1e-3  # the data-mean bias init keeps pixel means in [eps, 1 - eps]: finite logits


class GaussianEncoder(Encoder):
    """q(z|x) = N(mu(x), diag(sigma^2(x))): ``body`` outputs [B, 2*D] = (mu, log sigma^2)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def variational_params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, log sigma^2) [B, D] each."""
        mean, log_var = self.body(x).chunk(2, dim=-1)
        return mean, log_var

    def posterior(self, mean: Tensor, log_var: Tensor) -> Distribution:
        return diagonal_gaussian(mean, log_var)

    def base_posterior(self, x: Tensor) -> Distribution:
        """q(z|x) itself: the Gaussian encoder has no flow on top."""
        return self(x)


class Decoder(nn.Module):
    """p(x|z) = likelihood(body(z)); ``body`` maps z [B, D] to the likelihood's parameters.

    ``reads``: the decoder sees only the first ``reads`` coordinates of z, the bottom stochastic
    layer z_1 of a hierarchical VAE (``None``: all of z)."""

    def __init__(self, body: nn.Module, likelihood: Likelihood, reads: int | None = None):
        super().__init__()
        self.body = body
        self.likelihood = likelihood
        self.reads = reads

    def _input(self, z: Tensor) -> Tensor:
        return z if self.reads is None else z[..., : self.reads]

    def forward(self, z: Tensor) -> Distribution:
        return self.likelihood(self.body(self._input(z)))

    def log_likelihood(self, z: Tensor, x: Tensor) -> Tensor:
        """log p(x|z) [N] for codes z [N, D] and data x [N, *data_shape]: ``self(z).log_prob(x)``,
        streamed block by block without materialising p(x|z) where ``vaekit.inference.streamed`` has a
        kernel for this body and likelihood (no grad, CPU)."""
        out = streamed_log_likelihood(self, self._input(z), x)
        return self(z).log_prob(x) if out is None else out

    def init_output_bias(self, logits: Tensor) -> None:
        """Set the body's output bias to ``logits`` [*param_shape] (see ``NetBody.set_output_bias``)."""
        self.body.set_output_bias(logits.reshape(-1))


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
        encoder: an :class:`~vaekit.distributions.Encoder`, x [B, *data_shape] -> q(z|x).
        decoder: a :class:`Decoder`, z [B, D] -> p(x|z).
        prior: a :class:`~vaekit.distributions.Prior`, () -> p(z).
        data_shape: shape of one example, e.g. (1, 28, 28).
        objective, k, beta, warmup_steps, free_bits, gradient: training objective and its gradient
            estimator (see ``vaekit.objectives``).
        latent_layers: sizes (D_1, ..., D_L) of the stochastic layers z = (z_1, ..., z_L) of a
            hierarchical VAE (``vaekit.distributions.hierarchy``); default one layer of all of z.
        decoder_bias_init: ``zero`` (the nets' own init) or ``data_mean``: :meth:`init_from_data`
            sets the decoder's output logits to those of the training-set mean (Bernoulli decoders).
    """

    log_prob_kind = "importance-sampled"
    has_latents = True
    has_codes = True

    def __init__(
        self,
        encoder: Encoder,
        decoder: Decoder,
        prior: Prior,
        data_shape: tuple[int, ...],
        objective: str = "elbo",
        k: int = 1,
        beta: float = 1.0,
        warmup_steps: int = 0,
        free_bits: float = 0.0,
        gradient: str = "reparam",
        latent_layers: tuple[int, ...] | None = None,
        decoder_bias_init: str = "zero",
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.prior_module = prior
        self.data_shape = tuple(data_shape)
        self.objective = dict(
            objective=objective, k=k, beta=beta, warmup_steps=warmup_steps, free_bits=free_bits, gradient=gradient
        )
        self._latent_layers = tuple(latent_layers) if latent_layers else None
        self.decoder_bias_init = decoder_bias_init

    @property
    def prior(self) -> Distribution:
        return self.prior_module()

    @property
    def latent_dim(self) -> int:
        return self.prior.event_shape[0]

    @property
    def latent_layers(self) -> tuple[int, ...]:
        """(D_1, ..., D_L), the sizes of the stochastic layers of z = (z_1, ..., z_L); (D,) for one."""
        return self._latent_layers or (self.latent_dim,)

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
    def sample(self, n: int, mean: bool = False, temperature: float = 1.0) -> Tensor:
        """x ~ p(x|z), z ~ p_T(z) (:meth:`sample_latents`): [n, *data_shape]; ``mean=True`` returns
        E[x|z] instead, and so does T = 0, where nothing is random: E[x | z = the prior's mean]."""
        z = self.sample_latents(n, temperature)
        return self.decode_to_x(z, mean or temperature == 0)

    @torch.no_grad()
    def sample_latents(self, n: int, temperature: float = 1.0) -> Tensor:
        """z ~ p(z) at temperature T: [n, D]. For the standard-normal prior z ~ N(0, T^2 I), as NVAE
        samples (Vahdat & Kautz 2020); a flow prior tempers its base, stochastic layers each layer's
        standard deviation (``Prior.at_temperature``). A prior without ``has_temperature``
        (mixtures, the VampPrior) refuses T != 1 in one line."""
        t = check_temperature(temperature)
        if t == 1.0:
            return self.prior.sample((n,))
        if not self.prior_module.has_temperature:
            refuse_sample_option(
                self,
                f"temperature={temperature:g}",
                f"its {type(self.prior_module).__name__} has no single spread to scale",
            )
        return self.prior_module.at_temperature(t).sample((n,))

    @property
    def dequantize(self) -> bool:
        """Its likelihood models dequantised 8-bit levels (``Likelihood.dequantize``)."""
        return self.decoder.likelihood.dequantize

    @property
    def density(self) -> bool:
        """A density at the data (``Likelihood.discrete`` False): no bits/dim. A Gaussian of dequantised
        8-bit data is discrete in this sense: its log_prob bounds the levels' probability."""
        return not self.decoder.likelihood.discrete

    @torch.no_grad()
    def init_from_data(self, mean_x: Tensor) -> None:
        """With ``decoder_bias_init='data_mean'``: the decoder's output bias := logit(mean_x clamped
        to [BIAS_INIT_EPS, 1 - BIAS_INIT_EPS]), so the untrained decoder predicts the mean image
        (Burda et al. 2015's initialisation). ``mean_x`` [*data_shape]: the training-set mean."""
        if self.decoder_bias_init == "data_mean":
            p = mean_x.clamp(BIAS_INIT_EPS, 1 - BIAS_INIT_EPS)
            self.decoder.init_output_bias(torch.logit(p))

    # --- pytorch/examples vocabulary ------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """E_q[z|x] and log Var_q[z|x] [B, D] each, of the posterior q(z|x) itself: the code of
        ``reconstruct``, ``interpolate`` and ``latent-map`` and the features of ``vaekit encode``.

        In closed form for a Gaussian encoder; for a flow posterior a Monte-Carlo estimate from
        ``vaekit.distributions.base.MOMENT_SAMPLES`` draws with a fixed seed, deterministic and the same
        for an example whatever batch it is in (``self.encoder.exact_moments`` says which)."""
        return self.encoder.moments(*self.encoder.variational_params(x))

    @staticmethod
    def reparameterize(mu: Tensor, log_var: Tensor) -> Tensor:
        return mu + (0.5 * log_var).exp() * torch.randn_like(mu)


# --- the model builder: the only code here that reads the ModelConfig ---------------------------

# likelihood name -> the keyword arguments of its constructor, from the ModelConfig (whose dequantize
# build_model resolves to a bool: "auto" reads as false here)
LIKELIHOOD_ARGS = {
    "bernoulli": lambda cfg: {},
    "gaussian": lambda cfg: dict(variance=cfg.variance, fixed_std=cfg.fixed_std, dequantize=cfg.dequantize is True),
    "logistic_mixture": lambda cfg: dict(n_mix=cfg.n_mix),
    "categorical": lambda cfg: {},
    "pixelcnn": lambda cfg: dict(
        output=cfg.pixelcnn_output,
        channels=cfg.pixelcnn_channels,
        layers=cfg.pixelcnn_layers,
        kernel=cfg.pixelcnn_kernel,
        cond_channels=cfg.pixelcnn_cond,
        n_mix=cfg.n_mix,
    ),
}

# prior name -> the keyword arguments of its constructor, from the ModelConfig
PRIOR_ARGS = {
    "normal": lambda cfg: {},
    "flow": lambda cfg: dict(
        flow=cfg.prior_flow, layers=cfg.prior_flow_layers, hidden=cfg.flow_hidden, blocks=cfg.flow_blocks
    ),
    "mixture": lambda cfg: dict(n_components=cfg.components),
    "vamp": lambda cfg: dict(n_pseudo_inputs=cfg.components),
}


def net_spec(cfg) -> NetSpec:
    """The encoder/decoder body fields of a ``ModelConfig``."""
    return NetSpec(
        hidden=tuple(cfg.hidden),
        activation=cfg.activation,
        channels=tuple(cfg.channels),
        resnet_blocks=cfg.resnet_blocks,
        norm=cfg.norm,
        upsample=cfg.upsample,
    )


def likelihood_from_config(cfg, data_shape: tuple[int, ...]) -> Likelihood:
    """The likelihood ``cfg.likelihood`` with its own fields of the ``ModelConfig``."""
    args = lookup(LIKELIHOOD_ARGS, cfg.likelihood, "likelihood")(cfg)
    return build_likelihood(cfg.likelihood, data_shape, **args)


def likelihood_is_binary(cfg) -> bool:
    """Whether the likelihood ``cfg.likelihood`` with its fields is over x in {0, 1}, so that its data
    are binarised (``Likelihood.binary_for``; e.g. pixelcnn only with pixelcnn_output=bernoulli)."""
    args = lookup(LIKELIHOOD_ARGS, cfg.likelihood, "likelihood")(cfg)
    return lookup(LIKELIHOODS, cfg.likelihood, "likelihood").binary_for(**args)


def prior_from_config(cfg) -> Prior:
    """The prior ``cfg.prior`` over ``cfg.latent_dim`` dimensions with its own fields of the ``ModelConfig``."""
    args = lookup(PRIOR_ARGS, cfg.prior, "prior")(cfg)
    return build_prior(cfg.prior, cfg.latent_dim, **args)


def encoder_from_config(cfg, data_shape: tuple[int, ...], spec: NetSpec) -> Encoder:
    """q(z|x): a Gaussian encoder, or a flow posterior when ``cfg.posterior_flow`` names one."""
    if cfg.posterior_flow in (None, "none"):
        return GaussianEncoder(build_encoder(cfg.encoder, data_shape, 2 * cfg.latent_dim, spec))
    return build_flow_encoder(  # q(z|x) = flow(q0(z|x)), see flow_vae.py
        data_shape,
        cfg.latent_dim,
        cfg.encoder,
        spec,
        flow=cfg.posterior_flow,
        layers=cfg.posterior_flow_layers,
        hidden=cfg.flow_hidden,
        blocks=cfg.flow_blocks,
        context=cfg.posterior_flow_context,
    )


def layer_sizes(cfg) -> tuple[int, ...]:
    """(D_1, ..., D_L): ``cfg.stochastic_layers``, or one layer of ``cfg.latent_dim`` when it is empty."""
    return tuple(cfg.stochastic_layers) or (cfg.latent_dim,)


def upper_layers(cfg, sizes: tuple[int, ...]) -> tuple[list[ConditionalGaussian], list[ConditionalGaussian]]:
    """The conditional Gaussians between stochastic layers, MLPs of ``cfg.layer_hidden`` widths:
    q(z_{l+1}|z_l) bottom-up and p(z_l|z_{l+1}) top-down (their widths mirrored)."""
    spec = NetSpec(hidden=tuple(cfg.layer_hidden), activation=cfg.activation)
    pairs = list(zip(sizes[:-1], sizes[1:]))  # (D_l, D_{l+1})
    up = [ConditionalGaussian(build_encoder("mlp", (lo,), 2 * hi, spec), hi) for lo, hi in pairs]
    down = [ConditionalGaussian(build_decoder("mlp", hi, (2 * lo,), spec), lo) for lo, hi in reversed(pairs)]
    return up, down


def build_vae(cfg, data_shape: tuple[int, ...], train_cfg=None) -> VAE:
    """Build a VAE from a ``ModelConfig`` (and the objective from a ``TrainConfig``).

    With several ``cfg.stochastic_layers`` (Burda et al. 2015's two-layer net) q(z|x) and p(z) are
    the chains of ``vaekit.distributions.hierarchy`` over z = (z_1, ..., z_L) and the decoder reads z_1.
    """
    data_shape = tuple(data_shape)
    spec = net_spec(cfg)
    sizes = layer_sizes(cfg)
    likelihood = likelihood_from_config(cfg, data_shape)
    if len(sizes) > 1:
        up, down = upper_layers(cfg, sizes)
        encoder = HierarchicalEncoder(build_encoder(cfg.encoder, data_shape, 2 * sizes[0], spec), up, sizes)
    else:
        encoder = encoder_from_config(cfg, data_shape, spec)
    body = build_decoder(cfg.decoder, sizes[0], likelihood.param_shape, spec)
    decoder = Decoder(body, likelihood, reads=sizes[0] if len(sizes) > 1 else None)
    prior = HierarchicalPrior(down, sizes) if len(sizes) > 1 else prior_from_config(cfg)
    if prior.needs_encoder:  # priors defined through the encoder (VampPrior)
        prior.bind(encoder, data_shape)
    obj = {}
    if train_cfg is not None:
        obj = dict(
            objective=train_cfg.objective,
            k=train_cfg.k,
            beta=train_cfg.beta,
            warmup_steps=train_cfg.warmup_steps,
            free_bits=train_cfg.free_bits,
            gradient=train_cfg.gradient,
        )
    return VAE(encoder, decoder, prior, data_shape, latent_layers=sizes, decoder_bias_init=cfg.decoder_bias_init, **obj)
