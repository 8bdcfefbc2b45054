"""lateint_kernels: kernels for late-interaction (ColBERT-style) retrieval.

    import lateint_kernels as lk
    scores = lk.maxsim(queries, doc_tokens, doc_offsets)      # [nq, nd] float32
    lk.backend_for("maxsim", "cpu")                           # "cpp" | "cuda" | "triton" | "reference"
"""
import torch  # noqa: F401  (load torch's libraries before the extension)

from ._loader import NATIVE_ERROR, NATIVE_LOADED
from .ops import (PackedDocs, backend_for, cpu_isa, maxsim, maxsim_candidates, pack,
                  pack_list, unpack)
from . import reference

__all__ = ["maxsim", "maxsim_candidates", "pack", "pack_list", "unpack", "PackedDocs", "backend_for",
           "cpu_isa", "reference", "NATIVE_LOADED", "NATIVE_ERROR"]
__version__ = "0.1.0"
