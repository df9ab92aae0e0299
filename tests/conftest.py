import gc
import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one torch thread per xdist worker: several workers each spinning up a full OpenMP
    # pool on the same cores slows float64 convolutions down a hundredfold
    torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true",
                     help="also run the slow sweeps over the whole torchvision zoo")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--full") or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="full-zoo sweep: run with --full")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _collect_cycles():
    """Free each test's networks before the next: a GraphModule and its graph refer to each
    other, so its tensors wait for the cycle collector, and the zoo sweeps' float64
    networks pile up past CI's memory between its rare full collections."""
    yield
    gc.collect()
