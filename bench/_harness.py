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
    """L2-normalized token embeddings around topic centres; each document draws its tokens
    from a few topics, lengths uniform in [lo, hi]. Returns (queries, tokens, offsets)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(n_topics, dim, generator=g), dim=-1)
    lens = torch.randint(lo, hi + 1, (n_docs,), generator=g)
    offsets = torch.zeros(n_docs + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lens, 0)
    T = int(offsets[-1])
    doc_topics = torch.randint(0, n_topics, (n_docs, 4), generator=g)
    tok_doc = torch.repeat_interleave(torch.arange(n_docs), lens)
    pick = doc_topics[tok_doc, torch.randint(0, 4, (T,), generator=g)]
    tokens = torch.nn.functional.normalize(centres[pick] + 0.6 * torch.randn(T, dim, generator=g) / dim ** 0.5 * 3,
                                           dim=-1)
    qt = doc_topics[torch.randint(0, n_docs, (nq,), generator=g)]
    qpick = qt[torch.arange(nq)[:, None], torch.randint(0, 4, (nq, lq), generator=g)]
    queries = torch.nn.functional.normalize(centres[qpick] + 0.6 * torch.randn(nq, lq, dim, generator=g) / dim ** 0.5 * 3,
                                            dim=-1)
    return queries, tokens, offsets


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
