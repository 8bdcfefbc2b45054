import os

import torch

# Triton's interpreter must be chosen before any @triton.jit runs (i.e. before
# lateint_kernels is imported): without a GPU, Triton kernels run interpreted on CPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
