"""Shared pytest setup: every test starts from a fixed seed and leaves torch's global state as
it found it (default dtype, grad mode), so tests cannot leak float64 or no_grad into others."""

import contextlib
import warnings

import pytest
import torch

from spikelfp.core import fused

# snntorch 1.0 calls the deprecated torch.jit.script at import time; the warning is not ours.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)


@pytest.fixture(autouse=True)
def _isolate_torch_state():
    dtype, grad = torch.get_default_dtype(), torch.is_grad_enabled()
    torch.manual_seed(0)
    yield
    leaked = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    torch.set_grad_enabled(grad)
    assert leaked == dtype, f"test changed the default dtype to {leaked} and did not restore it"


@contextlib.contextmanager
def _intra_op_threads(n: int):
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def single_thread():
    """One intra-op thread for tests on tiny tensors: on a busy 2-core machine two threads per
    process oversubscribe the CPU and make such tests several times slower (values unchanged)."""
    with _intra_op_threads(1):
        yield


@pytest.fixture(scope="module")
def single_thread_module():
    """:func:`single_thread` for a whole module (its module-scoped fixtures included)."""
    with _intra_op_threads(1):
        yield


@pytest.fixture
def path_switch():
    """Run a block on one path: ``with path_switch(True): ...``; restores the setting."""
    class _Switch:
        def __init__(self, on):
            self.on = on

        def __enter__(self):
            self.prev = fused.set_enabled(self.on)

        def __exit__(self, *exc):
            fused.set_enabled(self.prev)

    return _Switch
