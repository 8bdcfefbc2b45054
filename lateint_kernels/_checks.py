"""Input checks shared by the op families, the Python counterpart of csrc/common/checks.h.

The device (CUDA) entries and the reference path check shape, dtype and device at once;
the data-dependent conditions (ids in range, offsets, NaN/Inf) are gathered as 0-d bool
tensors and read back in one host sync (`Checks.run`), then raised as a ValueError naming
the argument, worded like the C++ op's: "<op>: `<argument>` must ..."."""
from __future__ import annotations

import torch



def offsets_flags(doc_offsets: torch.Tensor, n_rows: int) -> list:
    """The data-dependent conditions on packed offsets, as 0-d bool tensors (fuse them with
    other checks into one host sync): [first != 0, last != n_rows, decreasing somewhere]."""
    return [doc_offsets[:1].ne(0).any(), doc_offsets[-1:].ne(n_rows).any(),
            (doc_offsets[1:] < doc_offsets[:-1]).any()]


def raise_bad_offsets(op: str, doc_offsets: torch.Tensor, n_rows: int, flags) -> None:
    """Raises the error naming `doc_offsets` for the first set flag of offsets_flags."""
    if flags[0] or flags[1]:
        raise ValueError(f"{op}: `doc_offsets` must start at 0 and end at len(doc_tokens) = {n_rows}, "
                         f"got {int(doc_offsets[0])} ... {int(doc_offsets[-1])}")
    if flags[2]:
        i = int((doc_offsets[1:] < doc_offsets[:-1]).nonzero()[0])
        raise ValueError(f"{op}: `doc_offsets` must be non-decreasing, but doc_offsets[{i + 1}] = "
                         f"{int(doc_offsets[i + 1])} < doc_offsets[{i}] = {int(doc_offsets[i])}")


def check_offsets(op: str, doc_offsets: torch.Tensor, n_rows: int) -> None:
    """offsets_flags + raise_bad_offsets, for callers with nothing to fuse them with."""
    raise_bad_offsets(op, doc_offsets, n_rows, torch.stack(offsets_flags(doc_offsets, n_rows)).tolist())

FLOATS = (torch.float32, torch.float16, torch.bfloat16)


class Checks:
    def __init__(self, op: str, device: torch.device, validate: bool = True):
        self.op = op
        self.device = device
        self.validate = validate  # False: no data-dependent check (inputs known good)
        self._later = []  # (0-d bool tensor: True = bad, message or callable raising)

    def fail(self, msg: str):
        raise ValueError(f"{self.op}: {msg}")

    def tensor(self, t, name: str, dim: int, layout: str, dtypes=None):
        if not isinstance(t, torch.Tensor) or t.dim() != dim:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            self.fail(f"`{name}` must be a {dim}-D tensor {layout}, got {got}")
        if dtypes is not None and t.dtype not in dtypes:
            self.fail(f"`{name}` must be {' or '.join(str(d).replace('torch.', '') for d in dtypes)}, got {t.dtype}")
        if self.device is None:
            self.device = t.device
        if t.device != self.device:
            self.fail(f"`{name}` must be on {self.device} like the other inputs, got {t.device}")
        return t

    def nbits(self, nbits, dim: int):
        if isinstance(nbits, bool) or nbits not in (1, 2, 4, 8):
            self.fail(f"`nbits` must be 1, 2, 4 or 8, got {nbits!r}")
        if dim * nbits % 8:
            self.fail(f"dim * nbits must be a multiple of 8, got dim {dim}, nbits {nbits}")

    def later(self, bad: torch.Tensor, msg):
        self._later.append((bad, msg))

    def wants_data_checks(self) -> bool:
        return self.validate and not torch.compiler.is_compiling()

    def ids(self, t, name: str, lo: int, hi: int, what: str):
        """t's values must lie in [lo, hi)."""
        if t.numel() and self.wants_data_checks():
            self.later((t < lo).any() | (t >= hi).any(),
                       lambda: self.fail(f"`{name}` must hold {what} in [{lo}, {hi}), got values in "
                                         f"[{int(t.min())}, {int(t.max())}]"))

    def finite(self, t, name: str, where: str = ""):
        if t.numel() and t.is_floating_point() and self.wants_data_checks():
            self.later(~torch.isfinite(t).all(), f"`{name}` contains NaN or Inf{where}")

    def offsets(self, off, name: str, n_rows: int):
        self.tensor(off, name, 1, "[n + 1]", (torch.int64,))
        if off.shape[0] < 1:
            self.fail(f"`{name}` must hold n + 1 >= 1 entries (it starts with 0)")
        if not self.wants_data_checks():
            return
        flags = offsets_flags(off, n_rows)
        self.later(torch.stack(flags).any(), lambda: raise_bad_offsets(self.op, off, n_rows,
                                                                        torch.stack(flags).tolist()))

    def run(self):
        if not self._later or torch.compiler.is_compiling():
            return
        bad = torch.stack([b for b, _ in self._later]).tolist()
        for flag, (_, msg) in zip(bad, self._later):
            if flag:
                if callable(msg):
                    msg()
                self.fail(msg)
