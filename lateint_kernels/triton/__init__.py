"""Triton kernels. Importing this package needs `triton`; lateint_kernels works without it."""
