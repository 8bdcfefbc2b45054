"""Token pooling on CPU: lk.token_pool vs PyLate's ColBERT.pool_embeddings_hierarchical
(the baseline of ../shared/BENCH.md), same documents, same run.

Corpus: 2,000 clustered, L2-normalized documents of 64-300 tokens, d=128
(lateint.synthetic.clustered_corpus). Before timing, both outputs are compared document by
document (same rows, same bits): a speedup on a different answer is not reported as one. PyLate is called the way PyLate calls it (a list of [L, d] tensors);
ours gets the packed tensor PyLate's list becomes, and is also timed from the list.

    python bench/bench_pool.py            # full (about a minute)
    python bench/bench_pool.py --smoke    # 200 documents, CI-sized
Appends rows to bench/results/pooling.csv.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

import lateint_kernels as lk  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="200 documents, one repeat")
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--overwrite", action="store_true", help="replace rows with the same key")
    args = ap.parse_args(argv)
    n_docs = 200 if args.smoke else args.docs
    try:
        from pylate.models.colbert import ColBERT
        pylate_pool = ColBERT.pool_embeddings_hierarchical
    except ImportError:
        pylate_pool = None
        print("pylate is not installed (bash scripts/install_bench.sh): timing ours only")

    _, tokens, offsets = H.clustered_corpus(n_docs, 64, 300, 128, seed=0)
    docs = list(torch.split(tokens, (offsets[1:] - offsets[:-1]).tolist()))
    shape = f"{n_docs} docs 64-300 tok d128"
    print(f"{shape}: {tokens.shape[0]:,} tokens, {torch.get_num_threads()} threads, "
          f"{H.cpu_model()}, cpu isa {lk.cpu_isa()}")
    rows, table = [], []
    reps = dict(repeats=1, min_repeats_slow=1) if args.smoke else {}
    for pf in (2, 4):
        ours_out = lk.token_pool(tokens, offsets, pf)
        t_ours = H.time_cpu(lambda: lk.token_pool(tokens, offsets, pf), **reps)
        t_list = H.time_cpu(lambda: lk.token_pool_list(docs, pf), **reps)
        label = f"{shape} pf{pf}"
        rows.append(H.row("token_pool", "lateint", torch.float32, label, "seconds", t_ours, "s"))
        rows.append(H.row("token_pool", "lateint_list", torch.float32, label, "seconds", t_list, "s"))
        out_rows = int(ours_out[1][-1])
        line = [f"pool_factor {pf}", f"{tokens.shape[0]:,} -> {out_rows:,} tokens",
                f"ours {t_ours * 1e3:8.1f} ms (from a list {t_list * 1e3:7.1f} ms)"]
        if pylate_pool is not None:
            theirs = pylate_pool(None, docs, pool_factor=pf)
            ours = torch.split(ours_out[0], (ours_out[1][1:] - ours_out[1][:-1]).tolist())
            same = sum(1 for a, b in zip(ours, theirs) if a.shape == b.shape and torch.equal(a, b))
            same_list = sum(1 for a, b in zip(lk.token_pool_list(docs, pf), theirs)
                            if a.shape == b.shape and torch.equal(a, b))
            t_py = H.time_cpu(lambda: pylate_pool(None, docs, pool_factor=pf),
                              **(reps or dict(repeats=3, min_repeats_slow=3)))
            rows.append(H.row("token_pool", "pylate", torch.float32, label, "seconds", t_py, "s"))
            rows.append(H.row("token_pool", "lateint", torch.float32, label, "speedup_vs_pylate",
                              t_py / t_ours, "x"))
            rows.append(H.row("token_pool", "lateint_list", torch.float32, label, "speedup_vs_pylate",
                              t_py / t_list, "x"))
            rows.append(H.row("token_pool", "lateint", torch.float32, label, "docs_identical_to_pylate",
                              same / n_docs, "fraction"))
            rows.append(H.row("token_pool", "lateint_list", torch.float32, label, "docs_identical_to_pylate",
                              same_list / n_docs, "fraction"))
            line += [f"PyLate {t_py * 1e3:8.1f} ms",
                     f"speedup {t_py / t_ours:5.1f}x (from a list {t_py / t_list:5.1f}x)",
                     f"bit-identical docs {same}/{n_docs} (from a list {same_list}/{n_docs})"]
        table.append(" | ".join(line))
    print("\n".join(table))
    if not args.smoke:
        path = H.append_rows("pooling", rows, overwrite=args.overwrite)
        print(f"rows -> {path}")


if __name__ == "__main__":
    main()
