import os

import torch

# Triton's interpreter must be chosen before any @triton.jit runs (i.e. before
# lateint_kernels is imported): without a GPU, Triton kernels run interpreted on CPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402



@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _poison_uninitialized_memory():
    """Every torch.empty / at::empty (the kernels' outputs included) comes back filled with
    NaN (floats) or the max value (ints), so an output element a kernel forgets to write
    fails the comparison with the reference instead of passing on leftover memory."""
    import torch.utils.deterministic as det

    prev_alg = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_fill = det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    yield
    det.fill_uninitialized_memory = prev_fill
    torch.use_deterministic_algorithms(prev_alg, warn_only=prev_warn)
