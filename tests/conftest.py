"""Shared test fixtures: every test starts from the same seeds (STYLE principle 7)."""

from __future__ import annotations

import random

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Seed Python's and torch's global RNGs before each test."""
    random.seed(0)
    torch.manual_seed(0)
