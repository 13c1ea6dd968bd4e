"""Flows on latent codes, for VAE posteriors and priors, by name.

Each registry entry builds a transform over [B, latent_dim] in the normalising direction
(z -> u, see ``base``), chosen so that the direction the role uses often is cheap:

- a posterior q(z|x) = flow(q0(z|x)) draws z and needs log q of its *own* samples, so its
  sampling direction (``inverse``) must be cheap: planar runs its explicit formula there
  (``Inverse(Planar)``), IAF its one MADE pass (``Inverse(MADE-flow)``);
- a prior p(z) = flow(N(0, I)) evaluates log p(z) at codes the encoder drew, so its
  ``forward`` must be cheap: MAF's one MADE pass, planar's formula.

RealNVP is cheap both ways and serves either role. The posterior encoder is built in
``vaekit.models.flow_vae``, the prior p(z) = flow(N(0, I)) in ``vaekit.distributions.priors``.
"""

from __future__ import annotations

from .autoregressive import iaf, maf
from .base import Inverse
from .coupling import dense_realnvp
from .planar import planar_flow

# name -> constructor(dim, layers, hidden, n_hidden, context_dim) -> Transform (z -> u)
POSTERIOR_FLOWS = {
    "planar": lambda d, n, h, k, c: Inverse(planar_flow(d, n, c)),
    "iaf": lambda d, n, h, k, c: iaf(d, n, [h] * k, c),
    "realnvp": lambda d, n, h, k, c: dense_realnvp(d, n, h, k, c),
}

# name -> constructor(dim, layers, hidden, n_hidden) -> Transform (z -> u)
PRIOR_FLOWS = {
    "realnvp": lambda d, n, h, k: dense_realnvp(d, n, h, k),
    "maf": lambda d, n, h, k: maf(d, n, [h] * k),
    "planar": lambda d, n, h, k: planar_flow(d, n),
}
