"""Derived seeds: every random stream of a run is a pure function of (root seed, where it is used).

Training step ``t`` of shard ``s``, the batch order of epoch ``e`` and evaluation chunk ``c`` each
draw from a generator seeded by :func:`derive_seed` of the run's seed and a path naming that
place, so a resumed or re-sharded run, or an evaluation split into other chunks, replays exactly
the same noise. The mixing is SplitMix64's finaliser (Steele, Lea & Flood, "Fast splittable
pseudorandom number generators", OOPSLA 2014), applied once per path element.

Distinct paths give distinct 63-bit seeds (SplitMix's finaliser is a bijection), but torch's CPU
generator (a Mersenne Twister) keeps only the low 32 bits of a seed, so on the CPU two streams
coincide with probability 2^-32 per pair: over the 9.8 million steps of Burda et al.'s protocol
some thousands of pairs of steps share their noise. Those draws meet different batches and
weights, so no estimate is biased; what must never happen is two generators seeded with the same
number on purpose, which the stream constants below prevent.
"""

from __future__ import annotations

MASK64 = (1 << 64) - 1

# the first path element names the stream, so streams never collide for equal indices
STEP, EPOCH, EVAL_CHUNK, EPOCH_EVAL = 1, 2, 3, 4
POSTERIOR_MOMENTS = 5  # the fixed noise of Monte-Carlo posterior moments (flow posteriors' encode)
FID_CLASSIFIER, FID_SAMPLES = 6, 7  # the FID classifier's initialisation and batch order; its samples
# Draws that must not share a stream with the model's noise drawn under the same seed: with equal
# seeds torch.rand and torch.randn read the same Mersenne-Twister words, so the Gaussian noise
# would be a function of the binarisation's (or the mask's) uniforms.
BATCH_TRANSFORM, RANDOM_MASK = 8, 9  # a training batch's dynamic binarisation; `complete`'s random:P mask
EM_RESTART = 10  # the initialisation of each EM restart (seed s and s + 1 share none)
EM_DEQUANTIZE = 11  # the uniform dequantisation of a mixture's 8-bit training data


def _splitmix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def derive_seed(seed: int, *path: int) -> int:
    """A seed in [0, 2^63) from ``seed`` and integers ``path`` (any sign); equal inputs give equal seeds."""
    x = _splitmix(seed & MASK64)
    for p in path:
        x = _splitmix(x ^ (p & MASK64))
    return x >> 1
