"""Shared test fixtures: every test starts from the same seeds (STYLE principle 7)."""

from __future__ import annotations

import random
import socket

import pytest
import torch

from tabom.models import TinyModelConfig, build_tiny, save_model

SMALL = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64)
"""The small random tiny model of the command tests (one layer, width 32)."""


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Seed Python's and torch's global RNGs before each test."""
    random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One torch thread for the test (tiny batches; a second thread only contends)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> str:
    """A saved random :data:`SMALL` tiny model (seed 0), shared by the command tests."""
    path = tmp_path_factory.mktemp("model") / "m"
    save_model(build_tiny(SMALL, seed=0), path)
    return str(path)


@pytest.fixture
def free_port() -> int:
    """A free local TCP port (``accelerate launch --main_process_port``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` on a machine without CUDA (STYLE principle 10)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
