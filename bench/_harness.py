"""Shared benchmark plumbing: realistic data, timing, machine facts, CSV rows."""
from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import statistics
import subprocess
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
try:  # the lateint package, also when run from a source tree that was not pip-installed
    import lateint  # noqa: F401
except ImportError:
    import sys

    sys.path.append(os.path.join(os.path.dirname(HERE), "python"))
CSV_COLUMNS = ["benchmark", "provider", "dtype", "shape", "metric", "value", "unit", "commit", "cpu",
               "torch", "triton", "date"]


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cpus)"
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return cpu_model()


def git_commit() -> str:
    if os.environ.get("LATEINT_COMMIT"):  # machines that get the tree without .git
        return os.environ["LATEINT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=HERE).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def triton_version() -> str:
    try:
        import triton
        return triton.__version__
    except Exception:
        return "-"


def clustered_corpus(n_docs: int, lo: int, hi: int, dim: int = 128, *, nq: int = 1, lq: int = 32,
                     n_topics: int = 256, seed: int = 0):
    """(queries, tokens, offsets): see lateint.synthetic.clustered_corpus (4 topics per
    document, queries from 4 topics of a document, noise norm 1.8)."""
    from lateint.synthetic import clustered_corpus as make
    q, tokens, offsets, _ = make(n_docs, lo, hi, dim, nq=nq, lq=lq, n_topics=n_topics, seed=seed)
    return q, tokens, offsets


def time_cpu(fn, *, repeats: int = 5, min_repeats_slow: int = 3) -> float:
    """Median seconds over repeats after one warm-up (>= 3 repeats for runs over a second)."""
    fn()
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    n = min_repeats_slow if first > 1.0 else repeats
    times = [first]
    for _ in range(n - 1):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def append_rows(name: str, rows: list[dict], overwrite: bool = False) -> str:
    """Append to bench/results/<name>.csv; the dedup key is (benchmark, provider, dtype, shape,
    metric, commit, cpu): an existing row with that key is kept unless overwrite."""
    path = os.path.join(HERE, "results", f"{name}.csv")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    key = lambda r: tuple(str(r[c]) for c in ("benchmark", "provider", "dtype", "shape", "metric", "commit", "cpu"))
    old = []
    if os.path.exists(path):
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
    new_keys = {key(r) for r in rows}
    if overwrite:
        old = [r for r in old if key(r) not in new_keys]
    else:
        have = {key(r) for r in old}
        rows = [r for r in rows if key(r) not in have]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in old + rows:
            w.writerow({c: r.get(c, "") for c in CSV_COLUMNS})
    return path


def row(benchmark, provider, dtype, shape, metric, value, unit, device="cpu"):
    return {"benchmark": benchmark, "provider": provider, "dtype": str(dtype).replace("torch.", ""),
            "shape": shape, "metric": metric, "value": f"{value:.6g}", "unit": unit, "commit": git_commit(),
            "cpu": device_name(device), "torch": torch.__version__, "triton": triton_version(),
            "date": _dt.date.today().isoformat()}
