"""The base class of every tensor -> tensor body in ``vaekit.nets``.

A model's encoder and decoder return distributions and the model is driven through
``loss`` / ``log_prob`` / ``sample``, so what can be compiled (``vaekit.nets.speed``) are
the bodies inside it. A body declares itself by deriving from :class:`NetBody`; nothing
else about it changes (no parameters, buffers or ``state_dict`` keys of its own).
"""

from __future__ import annotations

from torch import Tensor, nn


class NetBody(nn.Module):
    """Base of the encoder/decoder bodies and the gated PixelCNN: tensors in, tensors out."""

    def set_output_bias(self, bias: Tensor) -> None:
        """Set the bias of the output layer to ``bias`` [out_features] (outputs flattened), e.g. a
        decoder's logits of the training-set mean; only bodies with one bias per output have it."""
        raise NotImplementedError(f"{type(self).__name__} has no bias per output")
