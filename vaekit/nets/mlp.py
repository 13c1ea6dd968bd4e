"""Dense (fully connected) bodies for encoders and decoders.

The architectures of Kingma & Welling (2014) and Burda et al. (2015): an MLP of
the given hidden widths; an empty list gives a single linear map (with an empty
list and a Gaussian likelihood the VAE is probabilistic PCA, Tipping & Bishop 1999).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..checks import lookup
from ..precision import FeedsOutput, OutputLinear
from .body import NetBody
from .spec import NetSpec

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}


INPLACE = {"relu", "elu", "silu", "leaky_relu"}  # the ACTIVATIONS whose module can overwrite its input
# the ACTIVATIONS whose bf16 result, cast up, equals their float32 result on the bf16 input cast up
EXACT_IN_BF16 = {"relu"}


def activation(name: str, inplace: bool = False, feeds_output: bool = False) -> nn.Module:
    """A fresh activation module by name (see ``ACTIVATIONS``).

    ``inplace``: overwrite the input where the activation can (``INPLACE``), saving a fresh output
    tensor; only for inputs that nothing else reads, and whose producer's backward does not need
    them (a convolution's or linear map's output, a batch norm's output).
    ``feeds_output``: the activation is the one a net's output layer reads; one that is exact in
    bf16 (``EXACT_IN_BF16``) is wrapped in :class:`~vaekit.precision.FeedsOutput`, which casts its
    input instead of leaving the cast of its output to the output layer (the same numbers; faster on
    the Xeon measured, whose float32 ReLU is cheaper than its bf16 one). The others are left as they are: in
    float32 they would give other numbers.
    """
    cls = lookup(ACTIVATIONS, name, "activation")
    act = cls(inplace=True) if inplace and name in INPLACE else cls()
    return FeedsOutput(act) if feeds_output and name in EXACT_IN_BF16 else act


class MLP(NetBody):
    """x [B, *in_shape] -> y [B, *out_shape] through Linear-activation layers.

    Args:
        in_shape: shape of one input example (flattened internally).
        hidden: widths of the hidden layers; ``[]`` gives one linear map.
        out_shape: shape of one output example.
        act: activation name (see ``ACTIVATIONS``).
    """

    def __init__(self, in_shape: tuple[int, ...], hidden: list[int], out_shape: tuple[int, ...], act: str = "relu"):
        super().__init__()
        self.out_shape = tuple(out_shape)
        widths = [math.prod(in_shape)] + list(hidden)
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), activation(act)]
        layers.append(OutputLinear(widths[-1], math.prod(out_shape)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).view(x.shape[0], *self.out_shape)

    @torch.no_grad()
    def set_output_bias(self, bias: Tensor) -> None:
        """The last linear layer's bias := ``bias`` [prod(out_shape)]."""
        out = self.net[-1]
        out.bias.copy_(bias.to(out.bias))


def dense_layers(body: nn.Module) -> list[tuple[nn.Linear, nn.Module | None]] | None:
    """An :class:`MLP` ``body`` as [(linear, activation or None)] (the last pair has no activation),
    or None if it is not exactly an MLP (a subclass may change ``forward``): for kernels that
    re-implement its forward pass (``inference.streamed``, ``models.dense_step``)."""
    if type(body) is not MLP:
        return None
    mods = list(body.net)
    if not mods or not isinstance(mods[0], nn.Flatten):
        return None
    layers, i = [], 1
    while i < len(mods):
        lin = mods[i]
        if type(lin) not in (nn.Linear, OutputLinear):
            return None
        act = mods[i + 1] if i + 1 < len(mods) else None
        if act is not None and isinstance(act, nn.Linear):
            return None
        layers.append((lin, act))
        i += 2
    return layers if layers and layers[-1][1] is None else None


def mlp_encoder(data_shape: tuple[int, ...], out_features: int, spec: NetSpec) -> nn.Module:
    """x [B, *data_shape] -> [B, out_features] (e.g. 2*latent_dim for mean and log-variance);
    reads ``spec.hidden`` and ``spec.activation``."""
    return MLP(data_shape, list(spec.hidden), (out_features,), spec.activation)


def mlp_decoder(latent_dim: int, param_shape: tuple[int, ...], spec: NetSpec) -> nn.Module:
    """z [B, latent_dim] -> likelihood parameters [B, *param_shape]; widths mirror the encoder."""
    return MLP((latent_dim,), list(reversed(spec.hidden)), param_shape, spec.activation)
