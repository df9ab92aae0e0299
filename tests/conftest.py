import pytest


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
