"""Fixtures shared by the test modules (pytest finds this file itself)."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """One thread, as the smoke profile uses: tiny models run as fast, and the numbers are machine-stable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def restore_threads():
    """For tests that run a recipe: the recipes set one thread on the CPU; put the count back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
