"""The op families, one module each: maxsim, pool, kmeans, codec, plaid. Each holds its
schema block, references in the op calling convention, CUDA entries, fake kernels,
autograd, input checks and public wrappers, and registers itself with
lateint_kernels._registry on import."""
from . import codec, kmeans, maxsim, plaid, pool  # noqa: F401  (registration)
