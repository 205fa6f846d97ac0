"""Fixtures for the engine tests (all of tests/engine)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared 2-core machine two spinning OpenMP threads per process make tiny
    steps 5-20x slower; the subprocess tests set OMP_NUM_THREADS=1 for the same reason. Module scope: the
    shared reference run must use the same thread count as the runs compared with it (bit-exact floats)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
