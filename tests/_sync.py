"""A host-sync counter for code written for the GPU, usable on CPU tensors: counts the
operations that make a CUDA device wait for the host to read a value (item/bool/int of a
tensor, tolist, data-dependent output shapes: nonzero, unique, boolean indexing,
masked_select, repeat_interleave without output_size, bincount)."""
import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
_ALWAYS = {aten._local_scalar_dense.default, aten.nonzero.default, aten._unique2.default,
           aten.unique_dim.default, aten.unique_consecutive.default, aten.masked_select.default,
           aten.bincount.default, aten.equal.default}


def _syncs(func, args, kwargs) -> bool:
    if func in _ALWAYS:
        return True
    if func in (aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor):
        return kwargs.get("output_size") is None
    if func is aten.index.Tensor:
        return any(i is not None and i.dtype == torch.bool for i in args[1])
    return False


class SyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0
        self.where = []
        self._paused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self._paused and _syncs(func, args, kwargs):
            self.count += 1
            self.where.append(str(func))
        return func(*args, **kwargs)

    def __enter__(self):
        self._tolist = torch.Tensor.tolist
        counter = self

        def tolist(t):
            if not counter._paused:
                counter.count += 1
                counter.where.append("tolist")
            return counter._tolist(t)

        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)

    @contextlib.contextmanager
    def paused(self):
        """Not counted: what runs on the device without the host (a kernel launch)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1
