"""Protocol shared by the PLAID benchmark drivers (each runs in its library's own Python):
read the corpus file, build, time searches over a sweep of settings, write a JSON report.
Stdlib + torch + numpy only, so it runs in any of the venvs."""
from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time

import torch


def load_corpus(path):
    d = torch.load(path)
    return d["tokens"], d["offsets"], d["queries"]


def doc_list(tokens, offsets):
    """The packed corpus as the list of [n_i, dim] documents the other libraries take."""
    return [tokens[offsets[i]:offsets[i + 1]] for i in range(offsets.shape[0] - 1)]


def fresh_dir(work, name):
    """work/name, emptied (the index a driver builds there)."""
    import shutil

    path = os.path.join(work, name)
    shutil.rmtree(path, ignore_errors=True)
    return path


def timed_build(make, n_tokens):
    """Seconds of the fastest of a few builds (3 below a million tokens, where one build takes
    seconds and the machine's noise is a large share of it; 1 above), and the last index.
    `make()` builds and writes the index to disk, as fast-plaid's `create` does."""
    times, index = [], None
    for _ in range(3 if n_tokens < 1_000_000 else 1):
        t = time.perf_counter()
        index = make()
        times.append(time.perf_counter() - t)
    return min(times), index


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_searches(search, queries, settings, k=10):
    """search(queries [b, Lq, d], k, **setting) -> ids [b, k]. Batch 1: every query alone
    (p50/p95 latency); batch 32: queries/s, the median of passes over all queries repeated
    until 2 s have passed (at most 7, at least 1: a single pass of a fast setting lasts tens
    of milliseconds, within the host's noise). Returns one record per setting."""
    out = []
    for s in settings:
        search(queries[:1], k, **s)  # warm-up
        lat, ids = [], []
        for i in range(queries.shape[0]):
            t = time.perf_counter()
            r = search(queries[i:i + 1], k, **s)
            lat.append(time.perf_counter() - t)
            ids.append(r[0])
        rates, spent = [], 0.0
        while not rates or (spent < 2.0 and len(rates) < 7):
            t = time.perf_counter()
            for i in range(0, queries.shape[0], 32):
                search(queries[i:i + 32], k, **s)
            dt = time.perf_counter() - t
            rates.append(queries.shape[0] / dt)
            spent += dt
        qps = statistics.median(rates)
        lat.sort()
        out.append({"setting": s, "p50_ms": 1e3 * statistics.median(lat),
                    "p95_ms": 1e3 * lat[min(len(lat) - 1, int(0.95 * len(lat)))], "qps_batch32": qps,
                    "ids": [list(map(int, x)) for x in ids]})
    return out


def write(report, path):
    report["peak_rss_mb"] = peak_rss_mb()
    with open(path, "w") as f:
        json.dump(report, f)


def args():
    # corpus.pt work_dir nbits report.json
    return sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
