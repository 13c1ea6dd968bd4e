"""vaekit: latent-variable generative models — Gaussian mixtures, VAEs, PixelVAE, flows.

>>> import vaekit
>>> model = vaekit.load("runs/a")          # any trained run folder or checkpoint file
>>> model.log_prob(x, k=5000)              # importance-sampled log p(x), nats per example
>>> model.sample(16)
"""

__version__ = "0.1.0"


def load(path, device="cpu"):
    """The trained model of a run folder (its newest good checkpoint), a checkpoint file or an export
    folder (``vaekit export``)."""
    from .checkpoint import load_model

    return load_model(path, device=device)[0]


__all__ = ["load", "__version__"]
