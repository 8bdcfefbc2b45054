"""Pure-PyTorch references of every op, one module per family: the test oracle (run them
in float64) and the fallback backend when the native extension is unavailable.
Differentiable with autograd."""
from .codec import compress_residuals_ref, decompress_residuals_ref
from .kmeans import kmeans_assign_ref
from .maxsim import maxsim_argmax_ref, maxsim_candidates_ref, maxsim_ref, pylate_colbert_scores_ref
from .plaid import approx_scores_ref, decompress_maxsim_ref, ivf_candidates_ref, lut_maxsim_ref
from .pool import token_pool_labels_ref, token_pool_ref

__all__ = ["maxsim_ref", "maxsim_candidates_ref", "maxsim_argmax_ref", "pylate_colbert_scores_ref",
           "token_pool_ref", "token_pool_labels_ref", "kmeans_assign_ref", "compress_residuals_ref",
           "decompress_residuals_ref", "ivf_candidates_ref", "approx_scores_ref", "decompress_maxsim_ref",
           "lut_maxsim_ref"]
