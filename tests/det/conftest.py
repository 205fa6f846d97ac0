"""Detector tests run tiny models on 64 px images: one intra-op thread is as fast as several for them and keeps
parallel test processes on a small machine from oversubscribing the cores."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
