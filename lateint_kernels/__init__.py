"""lateint_kernels: kernels for late-interaction (ColBERT-style) retrieval.

    import lateint_kernels as lk
    scores = lk.maxsim(queries, doc_tokens, doc_offsets)      # [nq, nd] float32
    pooled, offsets = lk.token_pool(doc_tokens, doc_offsets, pool_factor=2)  # PyLate-exact pooling
    lk.backend_for("maxsim", "cpu")                           # "cpp" | "cuda" | "triton" | "reference"

Layout: one module per op family in lateint_kernels/ops/ (maxsim, pool, kmeans, codec,
plaid), its reference in lateint_kernels/reference/, its Triton kernels in
lateint_kernels/triton/, its C++ in csrc/<family>/; the registry in _registry.py.
"""
import torch  # noqa: F401  (load torch's libraries before the extension)

from . import reference
from ._loader import NATIVE_ERROR, NATIVE_LOADED
from ._registry import backend_for
from .isa import cpu_amx, cpu_isa
from .layout import PackedDocs, pack, pack_list, unpack
from .ops.codec import compress_residuals, decompress_residuals, residual_buckets
from .ops.kmeans import kmeans_assign
from .ops.maxsim import maxsim, maxsim_candidates
from .ops.plaid import approx_scores, centroid_scores, decompress_maxsim, ivf_candidates, lut_maxsim
from .ops.pool import token_pool, token_pool_labels, token_pool_list

__all__ = ["maxsim", "maxsim_candidates", "pack", "pack_list", "unpack", "PackedDocs", "backend_for",
           "cpu_isa", "cpu_amx", "token_pool", "token_pool_labels", "token_pool_list", "kmeans_assign",
           "compress_residuals", "decompress_residuals", "residual_buckets", "centroid_scores",
           "ivf_candidates", "approx_scores", "decompress_maxsim", "lut_maxsim", "reference", "NATIVE_LOADED",
           "NATIVE_ERROR"]
__version__ = "0.1.0"
