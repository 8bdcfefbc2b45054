"""The one op registry: every family module (lateint_kernels/ops/<family>.py) hands it its
schema block, its references and its CUDA entries, and it

- defines each schema in the `lateint_kernels` namespace (the only place a schema is
  written: the C++ extension registers kernels for these names, never schemas);
- serves the CPU key with the C++ kernel the extension registered, or, when the extension
  is not built, every key with the pure-torch reference (the fallback);
- registers the CUDA entry (Triton, CUDA C++ or device-side torch) or the reference;
- marks outputs of ops without a gradient as non-differentiable;
- records which implementation serves each (op, device type) for `backend_for`.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch

from ._loader import NATIVE_LOADED

NS = "lateint_kernels"
_FORCE_ENV = "LATEINT_BACKEND"  # "reference" forces the pure-torch path everywhere
_BACKENDS: Dict[Tuple[str, str], str] = {}
_FAMILY_OF: Dict[str, str] = {}


def forced_reference() -> bool:
    return os.environ.get(_FORCE_ENV, "").lower() == "reference"


def has_kernel(op: str, key: str, ns: str = NS) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{ns}::{op}", key)


def define(name: str, schema: str, ns: str = NS) -> None:
    """Defines `ns::name` once (a second import of a family module is a no-op)."""
    if not _has_schema(ns, name):
        torch.library.define(f"{ns}::{name}", schema)


def _has_schema(ns: str, name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"{ns}::{name}", "")
        return True
    except RuntimeError:
        return False


def register_family(family: str, schemas: Mapping[str, str], refs: Mapping[str, Callable],
                    cuda: Optional[Mapping[str, Tuple[Callable, str]]] = None, *,
                    differentiable: Tuple[str, ...] = ()) -> None:
    """Registers the ops of one family. schemas: name -> "(args) -> returns"; refs: name ->
    reference in the op's calling convention; cuda: name -> (CUDA entry, backend name) for
    the ops with a device implementation. Ops not in `differentiable` get no gradient."""
    cuda = cuda or {}
    for name, schema in schemas.items():
        define(name, schema)
        if not NATIVE_LOADED:
            torch.library.impl(f"{NS}::{name}", "CompositeExplicitAutograd")(refs[name])
        impl, which = cuda.get(name, (refs[name], "reference"))
        torch.library.register_kernel(f"{NS}::{name}", "cuda", impl)
        _BACKENDS[(name, "cpu")] = "cpp" if NATIVE_LOADED else "reference"
        _BACKENDS[(name, "cuda")] = which
        _FAMILY_OF[name] = family
        if name not in differentiable:
            mark_non_differentiable(name)


def _no_grad_setup(ctx, inputs, output):
    outs = output if isinstance(output, (tuple, list)) else (output,)
    ctx.mark_non_differentiable(*[o for o in outs if isinstance(o, torch.Tensor)])


def _no_backward(ctx, *grads):
    raise RuntimeError("lateint_kernels: this op has no gradient")


def mark_non_differentiable(*names: str, ns: str = NS) -> None:
    """Outputs of these ops never require grad, whatever their inputs do: they have no
    gradient, and an output that claimed one would fail only later, in backward."""
    for name in names:
        torch.library.register_autograd(f"{ns}::{name}", _no_backward, setup_context=_no_grad_setup)


def known_ops() -> Tuple[str, ...]:
    return tuple(sorted(_FAMILY_OF))


def family_of(op: str) -> str:
    return _FAMILY_OF[op]


def backend_for(op: str, device) -> str:
    """Which implementation runs `op` on `device`: "cpp", "cuda", "triton", "torch"
    (device-side torch ops) or "reference"."""
    if op not in _FAMILY_OF:
        raise ValueError(f"unknown op {op!r}; known: {', '.join(known_ops())}")
    dev = torch.device(device).type
    if forced_reference():
        return "reference"
    return _BACKENDS.get((op, dev), "reference")
