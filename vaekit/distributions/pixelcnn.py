"""The PixelCNN likelihood of a PixelVAE: p(x|z) = prod_i p(x_i | x_<i, z), a gated PixelCNN over x
conditioned on the decoder body's map c(z).

It plugs into the one VAE class as a *likelihood*: the decoder body (conv, resnet or mlp) maps z
to a conditioning map c(z) = ``param_shape`` = (cond_channels, H, W), and
:class:`PixelCNNLikelihood` turns it into a distribution whose ``log_prob(x)`` is one parallel
masked pass of the network (``vaekit.nets.pixelcnn.GatedPixelCNN``) over x and whose
``sample()`` is the network's autoregressive loop.

Output heads (``output``): ``bernoulli`` (one logit per sub-pixel, binarised data),
``logistic_mixture`` (a discretised logistic mixture *per sub-pixel*; colour channels are
ordered by the masks, so no PixelCNN++ channel coefficients are needed) and ``categorical``
(256-way softmax per sub-pixel).

References: Gulrajani, Kumar, Ahmed, Taiga, Visin, Vazquez & Courville, "PixelVAE: A Latent
Variable Model for Natural Images", ICLR 2017; van den Oord, Kalchbrenner, Vinyals, Espeholt,
Graves & Kavukcuoglu, "Conditional Image Generation with PixelCNN Decoders", NeurIPS 2016;
Salimans, Karpathy, Chen & Kingma, "PixelCNN++", ICLR 2017 (discretised logistic mixture).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, Independent, constraints

from ..checks import image_shape, lookup
from ..errors import ConfigError
from ..nets.pixelcnn import GatedPixelCNN
from .base import N_LEVELS, Likelihood
from .image import Categorical256, DiscretizedLogisticMixture


# --- output heads: name -> (parameters per sub-pixel, params [B, n_out, C, H, W] -> Distribution)
def _bernoulli_head(n_mix: int):
    return 1, lambda p: Independent(Bernoulli(logits=p[:, 0], validate_args=False), 3, validate_args=False)


def _logistic_head(n_mix: int):
    def to_dist(p: Tensor) -> Distribution:
        logits, means, log_scales = p.split(n_mix, dim=1)
        return DiscretizedLogisticMixture(logits, means, log_scales)

    return 3 * n_mix, to_dist


def _categorical_head(n_mix: int):
    return N_LEVELS, Categorical256


OUTPUT_HEADS = {
    "bernoulli": _bernoulli_head,  # binarised data
    "logistic_mixture": _logistic_head,  # 8-bit data, n_mix components per sub-pixel
    "categorical": _categorical_head,  # 8-bit data, 256-way softmax per sub-pixel
}
BINARY_HEADS = ("bernoulli",)  # heads over x in {0, 1}: the PixelCNN likelihood is then ``binary``


class PixelCNNDistribution(Distribution):
    """p(x|z) of a PixelVAE: batch [B], event [C, H, W]; ``log_prob`` is one parallel masked pass.

    Args:
        likelihood: the :class:`PixelCNNLikelihood` that holds the network and the head.
        cond: conditioning map c(z) [B, cond, H, W].
    """

    arg_constraints: dict = {}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(self, likelihood: PixelCNNLikelihood, cond: Tensor):
        self.likelihood, self.cond = likelihood, cond
        super().__init__(batch_shape=cond.shape[:1], event_shape=likelihood.data_shape, validate_args=False)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x|z) [B] in nats, x [B, C, H, W]."""
        out = self.likelihood.net(x, self.cond)
        return self.likelihood.output_distribution(out).log_prob(x)

    def sample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        """x [*sample_shape, B, C, H, W] by the autoregressive loop (all draws as one batch)."""
        n = math.prod(sample_shape)
        cond = self.cond if n == 1 else self.cond.repeat(n, *([1] * (self.cond.dim() - 1)))
        x = self.likelihood.net.sample(self.likelihood.data_shape, self.likelihood.sample_pixel, cond)
        return x.view(*sample_shape, *self.batch_shape, *self.event_shape)

    @property
    def mean(self) -> Tensor:
        raise NotImplementedError("a PixelCNN has no closed-form mean; draw a sample")


class PixelCNNLikelihood(Likelihood):
    """p(x|z) = gated PixelCNN conditioned on the decoder body's map c(z) = [B, cond, H, W].

    Args:
        data_shape: (C, H, W).
        output: output head name (see ``OUTPUT_HEADS``).
        channels, layers, kernel: of the gated PixelCNN.
        cond_channels: channels of c(z); ``param_shape = (cond_channels, H, W)``.
        n_mix: components of the logistic mixture head.
    """

    discrete = True
    factorised = False  # each sub-pixel depends on the ones before it
    chunks_per_thread = 2  # about 18 live maps per position cap a chunk at a few codes

    def __init__(
        self,
        data_shape: tuple[int, ...],
        output: str = "bernoulli",
        channels: int = 32,
        layers: int = 6,
        kernel: int = 3,
        cond_channels: int = 16,
        n_mix: int = 10,
    ):
        super().__init__()
        C, H, W = image_shape(data_shape, "likelihood 'pixelcnn'")
        head = lookup(OUTPUT_HEADS, output, "model.pixelcnn_output")
        if cond_channels < 1:
            raise ConfigError(f"model.pixelcnn_cond must be positive; got {cond_channels}")
        if n_mix < 1:
            raise ConfigError(f"model.n_mix must be positive; got {n_mix}")
        self.data_shape = (C, H, W)
        self.param_shape = (cond_channels, H, W)
        self.output = output
        self.binary = self.binary_for(output=output)
        n_out, self._to_dist = head(n_mix)
        self.net = GatedPixelCNN(C, n_out, channels, layers, kernel, cond_channels)
        # peak of floats alive per data element in one no-grad log_prob, for memory budgets that
        # count decoder outputs (the chunking of importance sampling): the larger of the two
        # passes' counts per position. The NCHW pass (with autograd) keeps the conditioning of
        # all layers, a layer's stacks and their padded copies, and the head; the channels-last
        # pass keeps the conditioning, two product-input buffers ((k//2 + 1) F taps, the 2F link,
        # the conditioning), the pre-activations of two layers, the zero-bordered inputs of the
        # vertical convolutions (C and F channels over the padded (H + r) x (W + 2r) grid: many
        # floats per position on a small image with a wide kernel), the first layer's products and
        # the head. The counts cover heap traces of both passes (tests/test_distributions_base.py).
        r = kernel // 2
        padded = (H + r) * (W + 2 * r) / (H * W)  # padded grid points per position
        nchw = 2 * cond_channels + 4 * channels * layers + 12 * channels
        nhwc = (
            2 * (cond_channels + 1)
            + 2 * ((r + 1) * channels + 3 * channels + cond_channels + 1)
            + padded * (channels + C)
            + 14 * channels
        )
        self.activation_factor = math.ceil((max(nchw, nhwc) + n_out * C) / C)

    @classmethod
    def binary_for(cls, output: str = "bernoulli", **kwargs) -> bool:
        """Binary data exactly when the output head is over {0, 1} (``BINARY_HEADS``)."""
        return output in BINARY_HEADS

    def output_distribution(self, out: Tensor) -> Distribution:
        """Head parameters [B, n_out, C, H, W] -> per-sub-pixel distribution (float32), event [C, H, W]."""
        return self._to_dist(out.float())

    def sample_pixel(self, params: Tensor) -> Tensor:
        """Parameters of one pixel [B, n_out, C, 1, 1] -> a draw [B, C, 1, 1]."""
        return self.output_distribution(params).sample()

    def forward(self, params: Tensor) -> Distribution:
        """c(z) [B, cond, H, W] -> p(x|z)."""
        return PixelCNNDistribution(self, params)
