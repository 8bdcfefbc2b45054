"""Compile checks of Triton kernels for real GPU targets without a GPU: the script runs in a
subprocess outside the interpreter (TRITON_INTERPRET removed) and prints "NO-PTXAS ..."
when Triton has no ptxas here, which skips the test."""
import os
import subprocess
import sys

import pytest


def compile_for_gpu(script: str, *args, timeout: int = 300) -> str:
    """Runs `script` with `args` and returns its stdout; fails on a non-zero exit."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                         env=env, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    if "NO-PTXAS" in out.stdout:
        pytest.skip(f"Triton cannot compile for CUDA here: {out.stdout}")
    return out.stdout
