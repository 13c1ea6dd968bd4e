"""The likelihood contract: declared attributes per class, their defaults, and bits per dimension."""

import math
import sys

import pytest
import torch

from vaekit.distributions import (
    LIKELIHOODS,
    BernoulliLikelihood,
    CategoricalLikelihood,
    Encoder,
    GaussianLikelihood,
    Likelihood,
    LogisticMixtureLikelihood,
    PixelCNNLikelihood,
    bits_per_dim,
    build_likelihood,
    image_bits_per_dim,
)
from vaekit.distributions.base import N_LEVELS


def test_base_declares_the_contract_with_safe_defaults():
    assert (Likelihood.discrete, Likelihood.activation_factor, Likelihood.factorised) == (True, 1, False)
    assert Likelihood.chunks_per_thread == 0
    assert N_LEVELS == 256
    with pytest.raises(NotImplementedError):
        Encoder().base_posterior(torch.zeros(1, 2))


@pytest.mark.parametrize(
    "cls, discrete, factorised, chunks_per_thread",
    [
        (BernoulliLikelihood, True, True, 0),
        (GaussianLikelihood, False, True, 0),
        (LogisticMixtureLikelihood, True, False, 0),
        (CategoricalLikelihood, True, False, 0),
        (PixelCNNLikelihood, True, False, 2),
    ],
)
def test_each_likelihood_declares_its_attributes(cls, discrete, factorised, chunks_per_thread):
    assert issubclass(cls, Likelihood)
    assert (cls.discrete, cls.factorised, cls.chunks_per_thread) == (discrete, factorised, chunks_per_thread)


def test_factorised_means_per_dimension_terms_sum_to_the_log_prob():
    """``factorised``: p(x|z) is an Independent whose base_dist gives the per-dimension terms."""
    for name in LIKELIHOODS:
        kwargs = dict(channels=2, layers=1, cond_channels=1) if name == "pixelcnn" else {}
        lik = build_likelihood(name, (1, 3, 3), **kwargs)
        params = torch.randn(2, *lik.param_shape)
        px = lik(params)
        x = torch.randint(0, 2, (2, 1, 3, 3)).float()
        if lik.factorised:
            terms = px.base_dist.log_prob(x)
            assert terms.shape == (2, 1, 3, 3)
            torch.testing.assert_close(terms.flatten(1).sum(1), px.log_prob(x))
        else:
            assert not isinstance(px, torch.distributions.Independent)


def _heap_peak_floats(run) -> float:
    """Peak growth of glibc's heap (mallinfo2: allocated blocks plus mmapped ones) while ``run()``
    runs, sampled after every tensor operation, in float32 numbers."""
    import ctypes

    from torch.utils._python_dispatch import TorchDispatchMode

    class Info(ctypes.Structure):
        names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
        _fields_ = [(n, ctypes.c_size_t) for n in names.split()]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Info

    def used() -> int:
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd

    class Peak(TorchDispatchMode):
        peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.peak = max(self.peak, used())
            return out

    import gc

    gc.collect()
    base, mode = used(), Peak()
    with torch.no_grad(), mode:
        run()
    return (mode.peak - base) / 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads glibc's mallinfo2")
@pytest.mark.parametrize(
    "C, channels, layers, kernel, cond, size, B, output",
    [
        (1, 32, 6, 3, 16, 28, 40, "bernoulli"),  # pixelvae-mnist's net
        (1, 64, 1, 3, 4, 28, 40, "bernoulli"),
        (1, 32, 2, 13, 16, 3, 400, "bernoulli"),
        (3, 24, 2, 5, 8, 10, 64, "logistic_mixture"),
    ],
)
def test_activation_factor_bounds_the_live_memory_of_both_passes(C, channels, layers, kernel, cond, size, B, output):
    """The PixelCNN's factor bounds the floats alive per data element in one no-grad log_prob, by a
    heap trace, for the channels-last pass (distinct images and one image repeated) and for the
    NCHW pass that autocast keeps; a pointwise likelihood keeps 1."""
    assert BernoulliLikelihood((1, 4, 4)).activation_factor == 1
    torch.manual_seed(0)
    pix = PixelCNNLikelihood((C, size, size), output=output, channels=channels, layers=layers, kernel=kernel,
                             cond_channels=cond, n_mix=5)  # fmt: skip
    c = torch.randn(B, cond, size, size)
    x = torch.rand(B, C, size, size)
    x = x.round() if output == "bernoulli" else (x * 255).round() / 255
    per_element = B * x[0].numel()

    def nchw():
        out = pix.net.head(pix.net.features(x, c))
        pix.output_distribution(out.view(B, -1, C, size, size)).log_prob(x)

    for run in (lambda: pix(c).log_prob(x), lambda: pix(c).log_prob(x[:1].expand_as(x)), nchw):
        pix.net._scratch.clear()
        assert _heap_peak_floats(run) / per_element <= pix.activation_factor


def test_bits_per_dim():
    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0, abs=1e-9)


def test_image_bits_per_dim_adds_the_bin_width_for_densities_only():
    assert image_bits_per_dim(10 * math.log(2), 10, discrete=True) == pytest.approx(1.0)
    # a density of 1 on [0, 1]^D is the uniform pmf over 256^D values: 8 bits per dimension
    assert image_bits_per_dim(0.0, 10, discrete=False) == pytest.approx(8.0)
    assert image_bits_per_dim(0.0, 10, discrete=False, levels=2) == pytest.approx(1.0)


def test_bits_per_dim_are_defined_for_binary_and_8bit_data_only():
    from vaekit.distributions import BPD_LEVELS, data_bits_per_dim

    assert BPD_LEVELS == (2, 256)
    for levels in BPD_LEVELS:
        for discrete in (True, False):
            assert data_bits_per_dim(3.0, 10, discrete, levels) == pytest.approx(
                image_bits_per_dim(3.0, 10, discrete, levels)
            )
    for levels in (None, 17):  # continuous values; the digits' 17 levels
        assert data_bits_per_dim(-4.0, 10, False, levels) is None
        assert data_bits_per_dim(4.0, 10, True, levels) is None
