"""The shape of the encoder and decoder bodies: one small frozen record the builders read.

The model builder turns its configuration into a :class:`NetSpec` once; every body
constructor in ``vaekit.nets`` takes ``(shapes..., spec)`` and reads only the fields of
its own family, so the nets never see the model's configuration.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NetSpec:
    """Sizes and switches of the encoder/decoder bodies.

    Args:
        hidden: MLP widths, encoder side (the decoder mirrors them); ``()`` gives one linear map.
        activation: activation name (see ``vaekit.nets.mlp.ACTIVATIONS``).
        channels: conv/resnet stage widths, full resolution first; each stage halves H and W.
        resnet_blocks: pre-activation residual blocks per resnet stage.
        norm: conv/resnet normalisation: none | batch | weight.
        upsample: decoder up-sampling: transpose | nearest.
    """

    hidden: tuple[int, ...] = (400,)
    activation: str = "relu"
    channels: tuple[int, ...] = (32, 64)
    resnet_blocks: int = 2
    norm: str = "none"
    upsample: str = "transpose"
