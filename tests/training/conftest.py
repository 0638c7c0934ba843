"""Training tests: one torch thread (the machine's cores are shared), deterministic kernels."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the training tests need torch (the `train` extra)")


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
