"""The distributions package: its public names, and the layering it sits in."""

import subprocess
import sys

import vaekit.distributions as D

# every public name of the single-module vaekit.distributions before it became a package
OLD_NAMES = [
    "LOG_STD_MIN",
    "N_LEVELS",
    "Likelihood",
    "LogitBernoulli",
    "BernoulliLikelihood",
    "GaussianLikelihood",
    "levels_of",
    "discretized_logistic_log_prob",
    "discretized_logistic_mean",
    "DiscretizedLogisticMixture",
    "Categorical256",
    "LogisticMixtureLikelihood",
    "CategoricalLikelihood",
    "StandardNormalPrior",
    "MixturePrior",
    "VampPrior",
    "diagonal_gaussian",
    "rsample_and_log_prob",
    "distribution_mean",
    "LIKELIHOODS",
    "PRIORS",
    "build_likelihood",
    "build_prior",
    "bits_per_dim",
    "image_bits_per_dim",
]


def test_every_old_public_name_is_still_exported():
    missing = [n for n in OLD_NAMES if not hasattr(D, n)]
    assert not missing
    assert set(OLD_NAMES) <= set(D.__all__)
    assert all(hasattr(D, n) for n in D.__all__)


def test_moved_names_are_the_same_objects():
    from vaekit.distributions.mixture import MixtureOfGaussians
    from vaekit.distributions.pixelcnn import PixelCNNLikelihood
    from vaekit.models.mixture import MixtureOfGaussians as FromModels

    assert D.PixelCNNLikelihood is PixelCNNLikelihood
    assert D.MixtureOfGaussians is MixtureOfGaussians is FromModels
    assert D.LIKELIHOODS["pixelcnn"] is PixelCNNLikelihood


def _loaded_after(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(m for m in sys.modules if m.startswith('vaekit')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_layers_nets_and_flows_below_distributions_below_models():
    for low in ("vaekit.nets", "vaekit.flows"):
        loaded = _loaded_after(low)
        assert not any(m.startswith(("vaekit.distributions", "vaekit.models")) for m in loaded), loaded
    loaded = _loaded_after("vaekit.distributions")
    assert not any(m.startswith(("vaekit.models", "vaekit.objectives", "vaekit.inference")) for m in loaded), loaded
