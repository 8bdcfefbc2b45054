"""Loads the native extension once. Without it the ops still work on the references."""
import os
import warnings

NATIVE_LOADED = False
NATIVE_ERROR = None

if os.environ.get("LATEINT_SKIP_EXT", "0") == "1":
    NATIVE_ERROR = "skipped: LATEINT_SKIP_EXT=1"
else:
    try:
        from . import _C  # noqa: F401  (runs the TORCH_LIBRARY static initializers)

        NATIVE_LOADED = True
    except ImportError as e:  # not built, or built against another torch
        NATIVE_ERROR = str(e)
if not NATIVE_LOADED:
    warnings.warn(
        "lateint_kernels: native extension not available "
        f"({NATIVE_ERROR}); every op runs on the pure-PyTorch reference (slow). "
        "Rebuild with `pip install --no-build-isolation -e .`.",
        RuntimeWarning, stacklevel=2)
