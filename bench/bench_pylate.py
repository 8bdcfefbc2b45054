"""PyLate's own API with the drop-in off and on (`lateint.pylate.enable()`), same data, same run.

    python bench/bench_pylate.py            # a few minutes on 2 cores
    python bench/bench_pylate.py --smoke    # tiny shapes (CI)

Calls, all through PyLate's public functions (so the switch is the only difference):
  colbert_scores      32 queries x 32 tokens against 1,000 padded documents (64-300 tokens, masks)
  rerank              pylate.rank.rerank, 16 queries x 100 candidate documents each
  ColBERTScores f+b   the contrastive losses' scoring step: 128 queries against 128 x 2 documents,
                      forward and backward (what a training step spends outside the encoder)
  pooling             ColBERT.pool_embeddings_hierarchical(pool_factor=2) on 500 documents
Data: clustered, L2-normalized (lateint.synthetic.clustered_corpus), d=128. Outputs are
compared before timing (scores to 1e-4 relative, pooled vectors bit for bit). Appends rows
to bench/results/pylate_dropin.csv.
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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--no-csv", action="store_true")
    args = ap.parse_args(argv)
    try:
        import pylate
        from pylate import rank, scores
        from pylate.models import ColBERT as PyLateColBERT
    except ImportError:
        print("PyLate is not installed (scripts/install.sh installs it); nothing to compare")
        return 0
    import lateint.pylate as lp
    from lateint.synthetic import clustered_corpus

    n_docs, n_cand, n_train, n_pool = (120, 20, 16, 40) if args.smoke else (1000, 100, 128, 500)
    q, tokens, offsets, _ = clustered_corpus(max(n_docs, 2 * n_train), 64, 300, 128, nq=max(32, n_train), lq=32,
                                             n_topics=256, topics_per_doc=4, query_topics=2, noise=1.8, seed=0)
    padded, mask = lk.unpack(tokens, offsets)
    docs_p, docs_m = padded[:n_docs], mask[:n_docs].float()
    doc_list = [tokens[offsets[i]:offsets[i + 1]] for i in range(n_docs)]
    gen = torch.Generator().manual_seed(1)
    cand = [torch.randperm(n_docs, generator=gen)[:n_cand].tolist() for _ in range(16)]
    rr_ids = [[str(i) for i in c] for c in cand]
    rr_docs = [[doc_list[i] for i in c] for c in cand]
    tq = q[:n_train].clone()
    tdocs = padded[:2 * n_train].reshape(n_train, 2, padded.shape[1], 128)
    tmask = mask[:2 * n_train].reshape(n_train, 2, padded.shape[1]).float()

    def train_scoring():
        qq = tq.clone().requires_grad_()
        dd = tdocs.clone().requires_grad_()
        s = scores.ColBERTScores()(qq, dd, None, tmask)
        torch.nn.functional.cross_entropy(s, torch.arange(n_train) * 2).backward()
        return s.detach()

    calls = {
        "colbert_scores": lambda: scores.colbert_scores(q[:32], docs_p, None, docs_m),
        "rerank": lambda: rank.rerank(documents_ids=rr_ids, queries_embeddings=q[:16], documents_embeddings=rr_docs),
        "ColBERTScores f+b": train_scoring,
        "pooling": lambda: PyLateColBERT.pool_embeddings_hierarchical(None, doc_list[:n_pool], 2),
    }
    print(f"PyLate {pylate.__version__}, {torch.get_num_threads()} threads, cpu isa {lk.cpu_isa()}")
    print(f"{'call':<20} {'PyLate':>10} {'drop-in':>10} {'speedup':>8}")
    rows = []
    for name, fn in calls.items():
        lp.disable()
        ref = fn()
        t_off = H.time_cpu(fn, repeats=1 if args.smoke else 3)
        lp.enable()
        got = fn()
        t_on = H.time_cpu(fn, repeats=1 if args.smoke else 3)
        lp.disable()
        if name == "rerank":
            for a, b in zip(ref, got):
                assert [x["id"] for x in a][:10] == [x["id"] for x in b][:10], "rerank order differs"
        elif name == "pooling":
            assert all(torch.equal(a, b) for a, b in zip(ref, got)), "pooled vectors differ"
        else:
            err = float(((got - ref).abs() / ref.abs().clamp_min(1e-6)).max())
            assert err < 1e-4, f"{name}: relative difference {err:.1e}"
        print(f"{name:<20} {t_off * 1e3:>8.1f}ms {t_on * 1e3:>8.1f}ms {t_off / t_on:>7.1f}x")
        shape = {"colbert_scores": f"32q x {n_docs} docs", "rerank": f"16q x {n_cand} cand",
                 "ColBERTScores f+b": f"{n_train}q x {2 * n_train} docs", "pooling": f"{n_pool} docs pf2"}[name]
        rows += [H.row("pylate_dropin", "pylate", "float32", f"{name}: {shape}", "time", t_off * 1e3, "ms"),
                 H.row("pylate_dropin", "lateint.pylate", "float32", f"{name}: {shape}", "time", t_on * 1e3, "ms")]
    if not (args.smoke or args.no_csv):
        print("rows ->", H.append_rows("pylate_dropin", rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
