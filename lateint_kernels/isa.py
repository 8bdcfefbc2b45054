"""The CPU instruction-set layer (csrc/common/isa.h) seen from Python: which level the CPU
kernels of every family run at, and the cap (`LATEINT_CPU_ISA` or `cpu_isa(set=...)`)."""
from __future__ import annotations

from typing import Optional

from ._loader import NATIVE_LOADED

ISA_NAMES = ("scalar", "avx2", "avx512", "avx512bf16", "amx")


def _native():
    from . import _C

    return _C


def cpu_isa(set: Optional[str] = None) -> str:
    """The instruction set the CPU kernels use; `set` forces a lower one ("scalar", "avx2",
    "avx512", "avx512bf16", "amx") or restores the best ("best"). Also: env LATEINT_CPU_ISA.
    The level caps every kernel of every family. "amx" is reported only where the tiles are
    usable: the CPU has AMX-TILE, AMX-BF16 and AMX-INT8, the OS enables the tile state and
    granted it to this process (see `cpu_amx`)."""
    if not NATIVE_LOADED:
        return "reference"
    if set is None:
        return ISA_NAMES[_native().cpu_isa(-1)]
    if set == "best":
        return ISA_NAMES[_native().cpu_isa(-2)]
    if set not in ISA_NAMES:
        raise ValueError(f"cpu_isa: `set` must be one of {ISA_NAMES + ('best',)}, got {set!r}")
    return ISA_NAMES[_native().cpu_isa(ISA_NAMES.index(set))]


def cpu_best_isa() -> str:
    """The best level this processor has ("reference" without the native extension)."""
    return ISA_NAMES[_native().cpu_best_isa()] if NATIVE_LOADED else "reference"


def cpu_amx() -> dict:
    """What the processor and the OS say about AMX: CPUID's AMX-TILE / AMX-BF16 / AMX-INT8 /
    AMX-FP16 bits, whether XCR0 enables the tile state, and whether Linux granted it to this
    process (requested once, at the first use of the ISA layer). All False without the
    native extension."""
    keys = ("tile", "bf16", "int8", "fp16", "os_enabled", "permitted")
    if not NATIVE_LOADED:
        return dict.fromkeys(keys, False)
    return dict(zip(keys, _native().cpu_amx()))
