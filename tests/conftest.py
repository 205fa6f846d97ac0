"""Shared test fixtures (helpers that tests import by name live beside this file, e.g. shared_data.py)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
