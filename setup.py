"""Builds lateint_kernels._C from csrc/ and installs lateint_kernels and lateint.

LATEINT_USE_CUDA=auto|0|1  auto: build the .cu sources when torch has CUDA and CUDA_HOME is set
LATEINT_DEBUG=1            -O0 -g
LATEINT_SKIP_BUILD=1       install the Python packages only (ops fall back to the references)
"""
import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _torch_from_outer_env():
    """Inside pip's isolated build environment the installed torch is hidden, but the
    extension must compile against exactly that torch. Ask the same interpreter, without
    the isolation's environment, where torch lives, and import it from there."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME")}
    try:
        out = subprocess.run([sys.executable, "-c", "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))"],
                             capture_output=True, text=True, env=env, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    site = out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else ""
    if not site or not os.path.isdir(site):
        return None
    sys.path.append(site)
    try:
        import torch
    except ImportError:
        return None
    print(f"lateint_kernels: building against the installed torch {torch.__version__} ({site})")
    return torch


def _ext_modules():
    if os.environ.get("LATEINT_SKIP_BUILD", "0") == "1":
        return [], {}
    try:
        import torch
    except ImportError:
        torch = _torch_from_outer_env()
    if torch is None:
        raise SystemExit(
            "lateint_kernels: building the extension needs the torch you will run it with, "
            "importable at build time. Install torch first, then build without pip's isolated "
            "build environment:  pip install --no-build-isolation .  (scripts/install.sh does "
            "this; LATEINT_SKIP_BUILD=1 installs the pure-PyTorch fallback only).")
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    mode = os.environ.get("LATEINT_USE_CUDA", "auto").lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"LATEINT_USE_CUDA must be auto, 0 or 1, got {mode!r}")
    use_cuda = mode == "1" or (mode == "auto" and torch.version.cuda is not None and CUDA_HOME)
    if mode == "1" and not (torch.version.cuda and CUDA_HOME):
        raise SystemExit("LATEINT_USE_CUDA=1 but torch has no CUDA or CUDA_HOME is not set")
    debug = os.environ.get("LATEINT_DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # torch's headers need C++20 from torch 2.15 on (C++17 before): the standard follows
    # the installed torch
    std = "-std=c++20" if tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 15) \
        else "-std=c++17"
    cxx = opt + [std, "-Wno-psabi", "-fopenmp"]
    # one folder per op family (csrc/<family>/): its torch-free core and its CPU binding
    sources = [p for p in _sources("csrc/*/*.cpp") if not p.startswith(os.path.join("csrc", "tests"))]
    # -fopenmp: at::parallel_for is an inline OpenMP region in torch's headers; without the flag
    # it silently runs on one thread.
    kwargs = dict(name="lateint_kernels._C", sources=sources, include_dirs=[os.path.join(ROOT, "csrc")],
                  extra_link_args=["-fopenmp"])
    if use_cuda:
        sources += _sources("csrc/*/*.cu")
        arch = os.environ.get("LATEINT_CUDA_ARCH", "80;90")
        gencode = []
        for a in arch.split(";"):
            gencode += [f"-gencode=arch=compute_{a},code=sm_{a}"]
        ext = CUDAExtension(**kwargs, extra_compile_args={"cxx": cxx + ["-DLATEINT_WITH_CUDA"],
                                                            "nvcc": opt + [std, "-lineinfo"] + gencode})
    else:
        ext = CppExtension(**kwargs, extra_compile_args={"cxx": cxx})
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _ext_modules()

setup(
    name="lateint_kernels",
    version="0.1.0",
    description="Kernels for late-interaction (ColBERT-style) retrieval: MaxSim, PLAID, token pooling",
    packages=find_packages(include=["lateint_kernels", "lateint_kernels.*"]) + ["lateint"],
    package_dir={"lateint": "python/lateint"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    python_requires=">=3.10",
    install_requires=["torch>=2.6", "numpy", "tqdm"],
    extras_require={
        "test": ["pytest>=8", "pytest-benchmark", "triton>=3.2", "scipy"],
        "train": ["transformers>=4.45", "safetensors"],
        "bench": ["pytest-benchmark", "maxsim-cpu==0.1.0"],
        "ray": ["ray>=2.9"],
    },
    entry_points={"console_scripts": ["lateint=lateint.cli:main"]},
)
