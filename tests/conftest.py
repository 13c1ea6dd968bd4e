"""Shared test settings: one BLAS thread per pytest-xdist worker, deterministic seeds."""
import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

SHARED_DATASETS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets")


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
