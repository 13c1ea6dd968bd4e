"""Shared test settings: one BLAS thread per test process, deterministic seeds.

The tests use tiny nets, for which one thread is faster than two, and pytest-xdist runs
two test processes on the two cores anyway.
"""

import os

import pytest
import torch

# plain asserts in the shared checks of tests/helpers.py report their values like those in test files
pytest.register_assert_rewrite("tests.helpers")
torch.set_num_threads(1)

SHARED_DATASETS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """vaekit's caches (the FID classifier) go to a temporary folder, never the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VAEKIT_CACHE", str(tmp_path_factory.mktemp("vaekit-cache")))
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_datasets():
    """Path of ../shared/datasets (real MNIST etc.); skips the test where it is absent."""
    path = os.path.abspath(os.environ.get("VAEKIT_SHARED_DATASETS", SHARED_DATASETS))
    if not os.path.isdir(path):
        pytest.skip("../shared/datasets not present")
    return path


@pytest.fixture
def bf16_cpu(monkeypatch):
    """``bf16_cpu(has)`` makes this CPU look as if it had (True: AVX512-BF16) or lacked (False) the bf16
    instructions that ``vaekit.nets.speed.cpu_bf16_units`` names, in that function's own return type."""
    import vaekit.nets.speed

    def pretend(has: bool) -> None:
        monkeypatch.setattr(vaekit.nets.speed, "cpu_bf16_units", lambda: ("AVX512-BF16",) if has else ())

    return pretend
