"""Normalizing flows: invertible maps with log-determinants, composed as objects.

Layers follow one contract (``base.Transform``): ``forward(x) -> (y, logabsdet)``,
``inverse(y) -> (x, logabsdet)``, logabsdet [B], ``forward`` in the normalising direction.

- base.py            Transform, Compose, Inverse; Reverse, Reshape, Shift, Logit
- coupling.py        additive (NICE) and affine (RealNVP) couplings, masks, diagonal scaling
- glow.py            ActNorm (data-dependent init), invertible 1x1 convolution (LU)
- planar.py          planar flows (Rezende & Mohamed 2015)
- autoregressive.py  MADE, the MADE-flow (MAF), IAF = Inverse(MADE-flow)
- multiscale.py      squeeze, factor-out, the RealNVP and Glow architectures
- distribution.py    FlowDistribution: a torch Distribution defined by a base and a flow
- latent.py          flows on latent codes for VAE posteriors and priors, by name
"""

from .autoregressive import IAF, MADE, MaskedAffineAutoregressive, iaf, maf
from .base import Compose, Inverse, Logit, Reshape, Reverse, Shift, Transform
from .coupling import AdditiveCoupling, AffineCoupling, DiagonalScaling, dense_realnvp, nice
from .distribution import FlowDistribution
from .glow import ActNorm, InvConv1x1
from .multiscale import FactorOut, Squeeze, dense_glow, glow, realnvp
from .planar import Planar, planar_flow

__all__ = [
    "Transform",
    "Compose",
    "Inverse",
    "Reverse",
    "Reshape",
    "Shift",
    "Logit",
    "AdditiveCoupling",
    "AffineCoupling",
    "DiagonalScaling",
    "nice",
    "dense_realnvp",
    "ActNorm",
    "InvConv1x1",
    "Planar",
    "planar_flow",
    "MADE",
    "MaskedAffineAutoregressive",
    "IAF",
    "maf",
    "iaf",
    "Squeeze",
    "FactorOut",
    "realnvp",
    "glow",
    "dense_glow",
    "FlowDistribution",
]
