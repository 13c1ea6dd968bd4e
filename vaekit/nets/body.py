"""The base class of every tensor -> tensor body in ``vaekit.nets``.

A model's encoder and decoder return distributions and the model is driven through
``loss`` / ``log_prob`` / ``sample``, so what can be compiled (``vaekit.nets.speed``) are
the bodies inside it. A body declares itself by deriving from :class:`NetBody`; nothing
else about it changes (no parameters, buffers or ``state_dict`` keys of its own).

Precision: under mixed-precision autocast (``vaekit.nets.speed.autocast``) a body's hidden
layers compute in bf16, but what it returns is float32 (``vaekit.precision.full_precision``), so
the likelihoods, posteriors and priors it parameterises, and every loss term, stay float32.
A body's last layer, the one whose outputs are the parameters of a likelihood or a posterior,
is a ``vaekit.precision.OutputLayer``: inside ``float32_outputs()`` (the evaluators' autocast) it
computes in float32 from its input cast up, so only the hidden layers' rounding reaches the density.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..precision import full_precision


class NetBody(nn.Module):
    """Base of the encoder/decoder bodies and the gated PixelCNN: tensors in, tensors out.

    Calling a body returns its ``forward`` output in full precision (:func:`full_precision`):
    float32 even when autocast ran its layers in bf16.
    """

    def __call__(self, *args, **kwargs) -> Tensor:
        return full_precision(super().__call__(*args, **kwargs))

    def set_output_bias(self, bias: Tensor) -> None:
        """Set the bias of the output layer to ``bias`` [out_features] (outputs flattened), e.g. a
        decoder's logits of the training-set mean; only bodies with one bias per output have it."""
        raise NotImplementedError(f"{type(self).__name__} has no bias per output")
