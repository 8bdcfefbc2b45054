"""PLAID past one machine's memory: a million-document build from a float16 corpus on disk,
its search, appends, merges, 4 Ray shards, drift, and WordNet as real text at scale.

    python bench/bench_scale.py                     # everything, ~1.5 h on 2 cores
    python bench/bench_scale.py --steps build,search
    python bench/bench_scale.py --steps build,search --nbits 4   # 4 bits per dimension
    python bench/bench_scale.py --smoke             # tiny shapes, every step, for CI

Each measured step runs in a child process of its own, so that its peak anonymous memory
(RssAnon of /proc/self/status, sampled every 50 ms: heap, not the page cache of the
memory-mapped corpus and index) is its own. The corpus (`lateint.synthetic.
write_clustered_corpus`: 4,096 topics, noise 0.7, 20-100 tokens, float16) and the indexes
live outside the repository (~/.cache/lateint/ unless --work); the exact top-10 of the
queries is computed once by chunked `lk.maxsim` over the memory-mapped corpus and cached.
Rows go to bench/results/scale.csv (not in --smoke)."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _harness as H  # noqa: E402

import lateint_kernels as lk  # noqa: E402
from lateint import synthetic  # noqa: E402
from lateint.plaid import PLAIDIndex  # noqa: E402
from lateint_kernels.ops.codec import BUCKET_METHODS  # noqa: E402

STEPS = ("build", "search", "add", "merge", "ray", "drift", "wordnet", "budget")
K = 10


# ---------------------------------------------------------------------------------------
# measuring
class AnonPeak:
    """Samples this process's RssAnon (bytes) in a thread; .peak after stop()."""

    def __init__(self, every: float = 0.05):
        self.every, self.peak, self._stop = every, self.now(), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no RssAnon in /proc/self/status")

    def _run(self):
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.now())

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.now())


def gib(b: float) -> float:
    return b / 2 ** 30


def pct(xs, p):
    return float(np.percentile(np.asarray(xs), p))


def recall_vs(found: torch.Tensor, truth: torch.Tensor, k: int = K) -> float:
    hits = sum(len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth))
    return hits / (truth.shape[0] * k)


def corpus_source(corpus: str, n_docs: int, chunk_docs: int = 20000):
    """The first n_docs documents of an embeddings directory: the directory itself when that
    is all of it, else a function returning chunks sliced from the memory-mapped arrays."""
    offsets = np.load(os.path.join(corpus, "offsets.npy"))
    if n_docs >= offsets.shape[0] - 1:
        return corpus

    def chunks():
        tokens = np.load(os.path.join(corpus, "tokens.npy"), mmap_mode="r")
        for d0 in range(0, n_docs, chunk_docs):
            d1 = min(n_docs, d0 + chunk_docs)
            t0, t1 = int(offsets[d0]), int(offsets[d1])
            yield torch.from_numpy(np.array(tokens[t0:t1])), torch.from_numpy(offsets[d0:d1 + 1] - t0)
    return chunks


def docs_slice(corpus: str, d0: int, d1: int):
    """(tokens float32, offsets) of documents [d0, d1) of an embeddings directory."""
    offsets = np.load(os.path.join(corpus, "offsets.npy"))
    tokens = np.load(os.path.join(corpus, "tokens.npy"), mmap_mode="r")
    t0, t1 = int(offsets[d0]), int(offsets[d1])
    return torch.from_numpy(np.asarray(tokens[t0:t1], dtype=np.float32)), torch.from_numpy(offsets[d0:d1 + 1] - t0)


def doc_ranges(offsets: np.ndarray, n: int, chunk_tokens: int):
    """Document ranges [d0, d1) covering the first n documents, each of about chunk_tokens
    tokens (at least one document)."""
    d0 = 0
    while d0 < n:
        d1 = int(np.searchsorted(offsets, offsets[d0] + chunk_tokens, side="right")) - 1
        d1 = min(n, max(d1, d0 + 1))
        yield d0, d1
        d0 = d1


def merge_top(best_s: torch.Tensor, best_i: torch.Tensor, scores: torch.Tensor, d0: int, k: int = K):
    """The running top-k (scores, ids) [nq, k] merged with `scores` [nq, m] of documents
    d0 .. d0 + m - 1; ties to the lower id, as the index does."""
    s = torch.cat([best_s, scores], 1)
    i = torch.cat([best_i, torch.arange(d0, d0 + scores.shape[1]).expand(scores.shape[0], -1)], 1)
    order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k]
    return s.gather(1, order), i.gather(1, order)


def exact_top(corpora, queries: torch.Tensor, k: int = K, chunk_tokens: int = 1 << 21,
              query_mask=None) -> torch.Tensor:
    """Exact MaxSim top-k ids over the concatenation of embeddings directories (each a path
    or (path, n_docs)), ids running over them in order; chunked, corpus memory-mapped."""
    nq = queries.shape[0]
    best_s = torch.full((nq, k), -float("inf"))
    best_i = torch.full((nq, k), -1, dtype=torch.int64)
    base = 0
    for c in corpora:
        path, n_docs = c if isinstance(c, tuple) else (c, None)
        offsets = np.load(os.path.join(path, "offsets.npy"))
        tokens = np.load(os.path.join(path, "tokens.npy"), mmap_mode="r")
        n = offsets.shape[0] - 1 if n_docs is None else n_docs
        for d0, d1 in doc_ranges(offsets, n, chunk_tokens):
            t0, t1 = int(offsets[d0]), int(offsets[d1])
            tok = torch.from_numpy(np.asarray(tokens[t0:t1], dtype=np.float32))
            sc = lk.maxsim(queries, tok, torch.from_numpy(offsets[d0:d1 + 1] - t0), query_mask=query_mask)
            best_s, best_i = merge_top(best_s, best_i, sc, base + d0, k)
        base += n
    return best_i


# ---------------------------------------------------------------------------------------
# child steps: each prints one JSON line last
def child_build(a):
    src = corpus_source(a["corpus"], a["n_docs"])
    shutil.rmtree(a["index"], ignore_errors=True)
    with AnonPeak() as m:
        t = time.perf_counter()
        idx = PLAIDIndex.create(a["index"], src, nbits=a["nbits"], n_centroids=a["centroids"],
                                coarse_cells=a["coarse_cells"], nprobe=a["nprobe"], kmeans_niter=a["niter"],
                                max_points_per_centroid=a["mppc"], show_progress_bar=a["progress"],
                                buckets=a["buckets"])
        wall = time.perf_counter() - t
    return {"wall_s": wall, "peak_anon": m.peak, "bytes_per_token": idx.bytes_per_token(),
            "n_docs": idx.n_docs, "n_tokens": idx.n_tokens, "centroids": int(idx._state.centroids.shape[0])}


def _search_all(idx, q, batch, kw):
    out = []
    for s in range(0, q.shape[0], batch):
        out.append(idx.search(q[s:s + batch], K, **kw)[0])
    return torch.cat(out)


def _time_search(idx, q, ids_true, kw):
    """Batch-1 latencies (p50, p95 ms), the best of 3 batch-32 passes (q/s), recall@10 vs the
    exact ids, and the batch-1 and batch-32 ids, after a warm-up of 4 queries."""
    _search_all(idx, q[:4], 1, kw)
    lat, found = [], []
    for i in range(q.shape[0]):
        t = time.perf_counter()
        found.append(idx.search(q[i:i + 1], K, **kw)[0])
        lat.append(time.perf_counter() - t)
    found = torch.cat(found)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        got = _search_all(idx, q, 32, kw)
        times.append(time.perf_counter() - t)
    return {"p50_ms": 1e3 * pct(lat, 50), "p95_ms": 1e3 * pct(lat, 95), "qps32": q.shape[0] / min(times),
            "recall10": recall_vs(found, ids_true)}, found, got


def child_search(a):
    truth = torch.load(a["truth"])
    q, ids_true, rel = truth["queries"], truth["exact"], truth["relevant"]
    base = AnonPeak.now()
    with AnonPeak() as m:
        idx = PLAIDIndex.open(a["index"])
        torch.set_num_threads(a["threads"])
        opened = AnonPeak.now()
        rows = []
        for name, kw in a["settings"]:
            r, found, got = _time_search(idx, q, ids_true, kw)
            hit = (found == rel[:, None]).any(1)[rel >= 0].float().mean().item()
            rows.append({"setting": name, **r, "relevant10": hit, "same_batched": bool(torch.equal(got, found))})
    return {"rows": rows, "anon_before_open": base, "anon_opened": opened, "peak_anon": m.peak}


def child_add(a):
    idx = PLAIDIndex.open(a["index"])
    times = []
    for r, (d0, d1) in enumerate(a["slices"]):
        tok, off = docs_slice(a["corpus"], d0, d1)
        ids = torch.arange(a["id0"] + d0, a["id0"] + d1)
        t = time.perf_counter()
        idx.add(tok, off, ids)
        times.append(time.perf_counter() - t)
    return {"add_s": times, "segments": len(idx._state.segments), "n_docs": idx.n_docs}


def child_merge(a):
    idx = PLAIDIndex.open(a["index"])
    truth = torch.load(a["truth"])
    q = truth["queries"][:32]
    before = idx.search(q, K)[0]
    n_seg = len(idx._state.segments)
    t = time.perf_counter()
    idx.merge()
    wall = time.perf_counter() - t
    after = idx.search(q, K)[0]
    return {"merge_s": wall, "segments_before": n_seg, "segments_after": len(idx._state.segments),
            "same_results": bool(torch.equal(before, after))}


def child_ray(a):
    import ray

    from lateint import plaid_ray

    truth = torch.load(a["truth"])
    q, ids_true = truth["queries"], truth["exact"]
    ray.init(num_cpus=a["ray_cpus"], include_dashboard=False, log_to_driver=False)
    shutil.rmtree(a["shards"], ignore_errors=True)
    t = time.perf_counter()
    plaid_ray.create_sharded(a["shards"], a["corpus"] if a["n_docs"] is None else corpus_source(a["corpus"], a["n_docs"]),
                             4, codec_from=a["index"], chunk_tokens=a["chunk_tokens"])
    build = time.perf_counter() - t
    sh = plaid_ray.ShardedIndex.open(a["shards"])
    single = PLAIDIndex.open(a["index"])
    torch.set_num_threads(a["threads"])
    rows = []
    for which, idx in (("single", single), ("ray-4", sh)):
        rows.append({"which": which, **_time_search(idx, q, ids_true, {})[0]})
    same_local = bool(torch.equal(sh.search(q[:32], K)[0], sh.search_local(q[:32], K)[0]))
    sh.close()
    ray.shutdown()
    return {"build_s": build, "rows": rows, "ray_equals_local": same_local}


def child_drift(a):
    base_n, new_dir = a["base_docs"], a["new_corpus"]
    truth = torch.load(a["truth"])
    q, ids_true, rel = truth["queries"], truth["exact"], truth["relevant"]
    new_off = np.load(os.path.join(new_dir, "offsets.npy"))
    n_new = new_off.shape[0] - 1
    new_tok = torch.from_numpy(np.load(os.path.join(new_dir, "tokens.npy")).astype(np.float32))
    new_ids = torch.arange(base_n, base_n + n_new)
    out = {}
    root = a["work"]
    base = os.path.join(root, "drift-base")
    shutil.rmtree(base, ignore_errors=True)
    t = time.perf_counter()
    budget = {"nbits": a["nbits"], "kmeans_niter": a["niter"], "max_points_per_centroid": a["mppc"],
              "coarse_cells": a["coarse_cells"], "show_progress_bar": a["progress"]}
    PLAIDIndex.create(base, corpus_source(a["corpus"], base_n), **budget)
    out["base_build_s"] = time.perf_counter() - t

    def measure(idx):
        found = _search_all(idx, q, 32, {})
        hit = (found == rel[:, None]).any(1).float().mean().item()
        return {"recall10_vs_exact": recall_vs(found, ids_true), "relevant_in_top10": hit}

    for name, expand in (("no-expansion", False), ("expansion", True)):
        path = os.path.join(root, f"drift-{name}")
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(base, path)
        idx = PLAIDIndex.open(path)
        t = time.perf_counter()
        # the new centroids' k-means under the build's budget
        rep = idx.add(new_tok, torch.from_numpy(new_off), new_ids, expand=expand, kmeans_niter=a["niter"],
                      max_points_per_centroid=a["mppc"])
        out[name] = {"add_s": time.perf_counter() - t, **rep, **measure(idx)}
    rebuilt = os.path.join(root, "drift-rebuilt")
    shutil.rmtree(rebuilt, ignore_errors=True)
    base_src = corpus_source(a["corpus"], base_n)

    def both():
        yield from (base_src() if callable(base_src) else [docs_slice(a["corpus"], 0, base_n)])
        yield new_tok, torch.from_numpy(new_off)
    t = time.perf_counter()
    idx = PLAIDIndex.create(rebuilt, both, **budget)
    out["rebuild"] = {"build_s": time.perf_counter() - t, **measure(idx)}
    return out


def child_wordnet(a):
    from lateint.evaluate import retrieval_metrics

    emb = a["emb"]
    qd = torch.load(os.path.join(emb, "queries.pt"))
    q, qmask, rel = qd["queries"], qd["mask"], qd["relevant"]
    shutil.rmtree(a["index"], ignore_errors=True)
    with AnonPeak() as m:
        t = time.perf_counter()
        idx = PLAIDIndex.create(a["index"], emb, nbits=a["nbits"], kmeans_niter=a["niter"],
                                max_points_per_centroid=a["mppc"], coarse_cells=a["coarse_cells"],
                                show_progress_bar=a["progress"])
        build = time.perf_counter() - t
    t = time.perf_counter()
    exact = exact_top([emb], q, query_mask=qmask)
    exact_s = time.perf_counter() - t
    found, lat = [], []
    for s in range(0, q.shape[0], 32):
        t = time.perf_counter()
        found.append(idx.search(q[s:s + 32], K, query_mask=qmask[s:s + 32])[0])
        lat.append(time.perf_counter() - t)
    found = torch.cat(found)
    return {"build_s": build, "peak_anon": m.peak, "bytes_per_token": idx.bytes_per_token(),
            "n_docs": idx.n_docs, "n_tokens": idx.n_tokens, "nq": int(q.shape[0]),
            "plaid": retrieval_metrics(found, rel.tolist(), K), "exact": retrieval_metrics(exact, rel.tolist(), K),
            "recall10_vs_exact": recall_vs(found, exact), "plaid_qps32": q.shape[0] / sum(lat),
            "exact_qps": q.shape[0] / exact_s}


def child_budget(a):
    truth = torch.load(a["truth"])
    q, ids_true = truth["queries"], truth["exact"]
    out = []
    for mppc, niter in a["configs"]:
        path = os.path.join(a["work"], f"budget-{mppc}-{niter}")
        shutil.rmtree(path, ignore_errors=True)
        t = time.perf_counter()
        idx = PLAIDIndex.create(path, corpus_source(a["corpus"], a["n_docs"]), nbits=a["nbits"], kmeans_niter=niter,
                                max_points_per_centroid=mppc, coarse_cells=a["coarse_cells"])
        build = time.perf_counter() - t
        rec = {name: recall_vs(_search_all(idx, q, 32, kw), ids_true) for name, kw in a["settings"]}
        out.append({"mppc": mppc, "niter": niter, "build_s": build, "recall": rec,
                    "centroids": int(idx._state.centroids.shape[0])})
        del idx
        shutil.rmtree(path, ignore_errors=True)
    return out


CHILDREN = {"build": child_build, "search": child_search, "add": child_add, "merge": child_merge,
            "ray": child_ray, "drift": child_drift, "wordnet": child_wordnet, "budget": child_budget}


def run_child(step: str, args: dict) -> dict:
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", step, json.dumps(args)],
                       stdout=subprocess.PIPE, text=True)
    if r.returncode:
        raise SystemExit(f"bench_scale: step {step} failed (exit {r.returncode})")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------
# WordNet glosses -> embeddings directory (cached)
def wordnet_pairs(root: str = "/usr/share/wordnet"):
    """(glosses, [(example sentence, synset row)]): every synset's definition (its gloss
    without the quoted examples) and each quoted example with its synset."""
    docs, examples = [], []
    for pos in ("noun", "verb", "adj", "adv"):
        with open(os.path.join(root, f"data.{pos}"), encoding="latin-1") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:
                    continue
                gloss = line.split("|", 1)[1].strip()
                parts = [p.strip() for p in gloss.split(";")]
                quoted = [p for p in parts if p.startswith('"')]
                definition = "; ".join(p for p in parts if not p.startswith('"')).strip()
                if not definition:
                    continue
                for ex in quoted:
                    ex = ex.strip('"').strip()
                    if len(ex.split()) >= 3:
                        examples.append((ex, len(docs)))
                docs.append(definition)
    return docs, examples


def wordnet_embeddings(cache: str, nq: int, smoke: bool) -> str:
    from lateint.commands import load_model

    if os.path.isfile(os.path.join(cache, "queries.pt")):
        return cache
    docs, examples = wordnet_pairs()
    if smoke:
        docs = docs[:400]
        examples = [e for e in examples if e[1] < 400]
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(examples), generator=g)[:nq].tolist()
    model, name = load_model(None)
    t = time.perf_counter()
    emb = model.encode(docs, batch_size=128, show_progress_bar=True)
    enc_s = time.perf_counter() - t
    tmp = cache + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    np.save(os.path.join(tmp, "tokens.npy"), emb.tokens.half().numpy())
    np.save(os.path.join(tmp, "offsets.npy"), emb.offsets.numpy().astype(np.int64))
    qe = model.encode([examples[i][0] for i in pick], is_query=True, batch_size=128)
    qq, qm = qe.padded()
    torch.save({"queries": qq, "mask": qm, "relevant": torch.tensor([examples[i][1] for i in pick]),
                "encode_docs_s": enc_s, "n_examples": len(examples), "model": name}, os.path.join(tmp, "queries.pt"))
    shutil.rmtree(cache, ignore_errors=True)
    os.rename(tmp, cache)
    return cache


# ---------------------------------------------------------------------------------------
def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "--child":
        torch.set_num_threads(os.cpu_count() or 1)
        print(json.dumps(CHILDREN[sys.argv[2]](json.loads(sys.argv[3]))), flush=True)
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes in a temporary folder, no CSV rows")
    p.add_argument("--steps", default=",".join(STEPS))
    p.add_argument("--docs", type=int, default=1_000_000)
    p.add_argument("--work", default=os.path.expanduser("~/.cache/lateint"))
    p.add_argument("--queries", type=int, default=128)
    p.add_argument("--centroids", type=int, default=65536)
    p.add_argument("--coarse-cells", type=int, default=256)
    p.add_argument("--nprobe", type=int, default=8)
    p.add_argument("--niter", type=int, default=10)
    p.add_argument("--mppc", type=int, default=48, help="max_points_per_centroid of the build")
    p.add_argument("--nbits", type=int, choices=(2, 4), default=2,
                   help="residual bits per dimension (4: its own index folder and rows)")
    p.add_argument("--buckets", choices=BUCKET_METHODS, default="lloyd",
                   help="residual buckets of the build (quantile: PLAID's; its own index folder and rows)")
    p.add_argument("--drift-docs", type=int, default=100_000, help="base documents of the drift run (+50%% new)")
    p.add_argument("--wordnet-queries", type=int, default=2000)
    p.add_argument("--budget-docs", type=int, default=50_000, help="documents of the k-means budget sweep")
    p.add_argument("--budget-configs", default="256:20,64:10,48:10,16:10,64:4",
                   help="max_points_per_centroid:kmeans_niter pairs of the sweep")
    args = p.parse_args()
    steps = [s for s in args.steps.split(",") if s]
    for s in steps:
        if s not in STEPS:
            p.error(f"--steps: unknown step {s!r} (known: {', '.join(STEPS)})")
    torch.set_num_threads(os.cpu_count() or 1)
    if args.smoke:
        import tempfile

        work = tempfile.mkdtemp(prefix="lateint-scale-smoke-")
        args.docs, args.queries, args.centroids, args.coarse_cells = 3000, 16, 512, 16
        args.niter, args.mppc, args.drift_docs, args.wordnet_queries = 4, 64, 1000, 16
        args.budget_docs = 1000
    else:
        work = args.work
    tag = "smoke" if args.smoke else f"{args.docs // 1000}k"
    corpus = os.path.join(work, "scale1m" if not args.smoke else "corpus")
    index = os.path.join(work, f"scale-index-{tag}" + ("" if args.nbits == 2 else f"-nbits{args.nbits}")
                         + ("" if args.buckets == "lloyd" else f"-{args.buckets}"))
    truth_path = os.path.join(work, f"scale-truth-{tag}-{args.queries}.pt")
    print(f"# bench_scale: {H.cpu_model()}, isa {lk.cpu_isa()}, torch {torch.__version__}, commit {H.git_commit()}, "
          f"{args.docs:,} documents, work {work}", flush=True)
    rows = []

    def row(shape, metric, value, unit, provider="lateint"):
        rows.append(H.row("scale", provider, "float16", shape, metric, value, unit))
        print(f"{provider:>12} {shape:<44} {metric:<28} {value:>12.4g} {unit}", flush=True)

    if not os.path.isfile(os.path.join(corpus, "tokens.npy")):
        free = shutil.disk_usage(work).free
        need = int(args.docs * 60 * 128 * 2 * 1.05)
        if need > free:
            raise SystemExit(f"bench_scale: the corpus needs {gib(need):.1f} GiB, {gib(free):.1f} GiB free in {work}")
        t = time.perf_counter()
        synthetic.write_clustered_corpus(corpus, args.docs, 20, 100, 128, n_topics=4096, noise=0.7, seed=0,
                                         progress=True)
        print(f"# corpus written in {time.perf_counter() - t:.0f} s")
    n_total = int(np.load(os.path.join(corpus, "offsets.npy"), mmap_mode="r").shape[0] - 1)
    n_docs = min(args.docs, n_total)
    shape = f"{n_docs} docs nbits{args.nbits}" + ("" if args.buckets == "lloyd" else f" {args.buckets}")
    base = {"corpus": corpus, "n_docs": n_docs, "index": index, "truth": truth_path, "nbits": args.nbits,
            "progress": not args.smoke, "threads": os.cpu_count() or 1}

    if "build" in steps:
        r = run_child("build", {**base, "centroids": args.centroids, "coarse_cells": args.coarse_cells,
                                "nprobe": args.nprobe, "niter": args.niter, "mppc": args.mppc,
                                "buckets": args.buckets})
        bshape = f"{shape} k{r['centroids']} cells{args.coarse_cells} mppc{args.mppc} it{args.niter}"
        row(bshape, "build_wall", r["wall_s"] / 60, "min")
        row(bshape, "build_peak_anon", gib(r["peak_anon"]), "GiB")
        row(bshape, "bytes_per_token", r["bytes_per_token"], "B")
        row(bshape, "tokens", r["n_tokens"], "tokens")
    if not os.path.isfile(truth_path) and any(s in steps for s in ("search", "merge", "ray")):
        q, relevant = synthetic.queries_for(corpus, args.queries, 32, seed=1)
        relevant = torch.where(relevant < n_docs, relevant, torch.full_like(relevant, -1))
        t = time.perf_counter()
        exact = exact_top([(corpus, n_docs)], q)
        print(f"# exact top-{K} of {args.queries} queries in {time.perf_counter() - t:.0f} s", flush=True)
        torch.save({"queries": q, "exact": exact, "relevant": relevant}, truth_path)
    if "search" in steps:
        settings = [("ncells1-ndocs256", {"ncells": 1, "ndocs": 256}),
                    ("ncells2-ndocs1024", {"ncells": 2, "ndocs": 1024}),
                    ("ncells4-ndocs4096", {"ncells": 4, "ndocs": 4096}),
                    ("ncells4-ndocs4096-exact256", {"ncells": 4, "ndocs": 4096, "ndocs_exact": 256}),
                    ("ncells4-ndocs3072-exact128", {"ncells": 4, "ndocs": 3072, "ndocs_exact": 128}),
                    ("ncells8-ndocs16384-exact4096", {"ncells": 8, "ndocs": 16384, "ndocs_exact": 4096})]
        r = run_child("search", {**base, "settings": settings})
        for s in r["rows"]:
            sshape = f"{shape} {s['setting']}"
            row(sshape, "p50_batch1", s["p50_ms"], "ms")
            row(sshape, "p95_batch1", s["p95_ms"], "ms")
            row(sshape, "qps_batch32", s["qps32"], "q/s")
            row(sshape, "recall10_vs_exact", s["recall10"], "")
            row(sshape, "relevant_in_top10", s["relevant10"], "")
            if not s["same_batched"]:
                print(f"# note: {s['setting']}: batch 32 ids differ from batch 1 ids")
        row(shape, "search_anon_after_open", gib(r["anon_opened"]), "GiB")
        row(shape, "search_peak_anon", gib(r["peak_anon"]), "GiB")
    if "add" in steps or "merge" in steps:
        # the 1M index copied by hard links (segments are immutable, the manifest is replaced
        # by rename), and a 10,000-document index under the same codec
        big = index + "-add"
        shutil.rmtree(big, ignore_errors=True)
        subprocess.run(["cp", "-al", index, big], check=True)
        small_n = min(10_000, n_docs // 4)
        small = os.path.join(work, f"scale-index-{small_n}")
        shutil.rmtree(small, ignore_errors=True)
        from lateint import plaid_store

        plaid_store.create(small, corpus_source(corpus, small_n), codec_from=index)
        add_n = min(1000, n_docs // 10)
        slices = [(n_docs - (j + 1) * add_n, n_docs - j * add_n) for j in range(3)]
        for name, path in (("1M" if n_docs >= 1_000_000 else f"{n_docs}", big), (f"{small_n}", small)):
            r = run_child("add", {**base, "index": path, "slices": slices, "id0": 10 ** 9})
            row(f"add {add_n} docs to {name}-doc index", "add_median", 1e3 * float(np.median(r["add_s"])), "ms")
        if "merge" in steps:
            r = run_child("merge", {**base, "index": big})
            row(f"merge {r['segments_before']} segments ({n_docs + 3 * add_n} docs)", "merge_wall", r["merge_s"], "s")
            if not r["same_results"]:
                raise SystemExit("bench_scale: results changed across merge")
        shutil.rmtree(big, ignore_errors=True)
        shutil.rmtree(small, ignore_errors=True)
    if "ray" in steps:
        r = run_child("ray", {**base, "shards": index + "-shards4", "ray_cpus": os.cpu_count() or 1,
                              "chunk_tokens": 1 << (20 if not args.smoke else 14),
                              "n_docs": None if n_docs == n_total else n_docs})
        row(f"{shape} 4 shards", "ray_distributed_build", r["build_s"] / 60, "min")
        for s in r["rows"]:
            row(f"{shape} {s['which']}", "p50_batch1", s["p50_ms"], "ms", provider=f"lateint-{s['which']}")
            row(f"{shape} {s['which']}", "qps_batch32", s["qps32"], "q/s", provider=f"lateint-{s['which']}")
            row(f"{shape} {s['which']}", "recall10_vs_exact", s["recall10"], "", provider=f"lateint-{s['which']}")
        if not r["ray_equals_local"]:
            raise SystemExit("bench_scale: the Ray search differs from the same shards in one process")
        shutil.rmtree(index + "-shards4", ignore_errors=True)
    if "drift" in steps:
        dn = min(args.drift_docs, n_total)
        new_dir = os.path.join(work, f"scale-drift-new-{dn // 2}")
        if not os.path.isfile(os.path.join(new_dir, "tokens.npy")):
            synthetic.write_clustered_corpus(new_dir, dn // 2, 20, 100, 128, n_topics=4096, noise=0.7, seed=0,
                                             topic_offset=4096, doc_seed=11)
        dtruth = os.path.join(work, f"scale-drift-truth-{dn}-{args.queries}.pt")
        if not os.path.isfile(dtruth):
            q, rel = synthetic.queries_for(new_dir, args.queries, 32, seed=2)
            torch.save({"queries": q, "relevant": rel + dn, "exact": exact_top([(corpus, dn), new_dir], q)}, dtruth)
        r = run_child("drift", {**base, "base_docs": dn, "new_corpus": new_dir, "truth": dtruth, "work": work,
                                "niter": args.niter, "mppc": args.mppc, "coarse_cells": 16 if args.smoke else 128})
        dshape = f"{dn} docs + {dn // 2} new-topic docs"
        row(dshape, "base_build", r["base_build_s"], "s")
        for name in ("no-expansion", "expansion", "rebuild"):
            row(f"{dshape} {name}", "recall10_vs_exact", r[name]["recall10_vs_exact"], "")
            row(f"{dshape} {name}", "relevant_in_top10", r[name]["relevant_in_top10"], "")
        for name in ("no-expansion", "expansion"):
            row(f"{dshape} {name}", "add_wall", r[name]["add_s"], "s")
            for key in ("outlier_fraction", "new_centroids"):
                if r[name].get(key) is not None:
                    row(f"{dshape} {name}", key, r[name][key], "")
        row(f"{dshape} rebuild", "build_wall", r["rebuild"]["build_s"], "s")
        for name in ("drift-base", "drift-no-expansion", "drift-expansion", "drift-rebuilt"):
            shutil.rmtree(os.path.join(work, name), ignore_errors=True)
    if "budget" in steps:
        bn = min(args.budget_docs, n_total)
        btruth = os.path.join(work, f"scale-budget-truth-{bn}-{args.queries}.pt")
        if not os.path.isfile(btruth):
            q, _ = synthetic.queries_for(corpus, args.queries, 32, seed=3)
            torch.save({"queries": q, "exact": exact_top([(corpus, bn)], q)}, btruth)
        configs = [tuple(int(v) for v in c.split(":")) for c in args.budget_configs.split(",")]
        settings = [("ncells1-ndocs256", {"ncells": 1, "ndocs": 256}),
                    ("ncells2-ndocs1024", {"ncells": 2, "ndocs": 1024})]
        r = run_child("budget", {**base, "n_docs": bn, "truth": btruth, "work": work, "configs": configs,
                                 "settings": settings, "coarse_cells": 16 if args.smoke else 64})
        for c in r:
            cshape = f"{bn} docs k{c['centroids']} cells{16 if args.smoke else 64} mppc{c['mppc']} it{c['niter']}"
            row(cshape, "build_wall", c["build_s"], "s")
            for name, v in c["recall"].items():
                row(f"{cshape} {name}", "recall10_vs_exact", v, "")
    if "wordnet" in steps:
        if not os.path.isfile("/usr/share/wordnet/data.noun"):
            print("# wordnet: skipped (apt-get install wordnet-base)")
        else:
            emb = wordnet_embeddings(os.path.join(work, "wordnet-minilm" + ("-smoke" if args.smoke else "")),
                                     args.wordnet_queries, args.smoke)
            cells = 16 if args.smoke else 64
            r = run_child("wordnet", {**base, "emb": emb, "index": os.path.join(work, "wordnet-index"),
                                      "niter": args.niter, "mppc": 64, "coarse_cells": cells})
            wshape = f"wordnet {r['n_docs']} glosses {r['nq']} examples minilm nbits2 cells{cells} mppc64"
            row(wshape, "build_wall", r["build_s"], "s")
            row(wshape, "build_peak_anon", gib(r["peak_anon"]), "GiB")
            row(wshape, "bytes_per_token", r["bytes_per_token"], "B")
            for who in ("plaid", "exact"):
                row(wshape, f"{who}_mrr10", r[who][f"mrr@{K}"], "", provider=f"lateint-{who}")
                row(wshape, f"{who}_recall10", r[who][f"recall@{K}"], "", provider=f"lateint-{who}")
            row(wshape, "recall10_vs_exact", r["recall10_vs_exact"], "")
            row(wshape, "plaid_qps_batch32", r["plaid_qps32"], "q/s")
            row(wshape, "exact_qps", r["exact_qps"], "q/s", provider="lateint-exact")
            shutil.rmtree(os.path.join(work, "wordnet-index"), ignore_errors=True)
    if args.smoke:
        shutil.rmtree(work, ignore_errors=True)
    else:
        H.append_rows("scale", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
