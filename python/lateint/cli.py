"""`lateint` command line.

    lateint demo [--docs N] [--queries N] [--k K] [--smoke]
    lateint train --train pairs.jsonl --output DIR [--model DIR] [--mini-batch-size N] ...

The demo (README command one) runs exact late-interaction retrieval end to end on an
embedded synthetic corpus: clustered, L2-normalized token embeddings, documents of 64-300
tokens, queries of 32 tokens drawn from the topics of a known relevant document. It checks
our kernel against the float64 reference, then reports recall@k / MRR@k of the known
relevant document and the search time beside PyLate's padded-einsum formula.
(The real-text demo with PLAID indexing is the subject of a later issue.)
"""
from __future__ import annotations

import argparse
import sys
import time


def _corpus(n_docs, nq, seed=0):
    from .synthetic import clustered_corpus
    # noise norm twice the centre's, and each query touches 2 of its document's 6 topics:
    # other documents sharing them compete, so exact search is not trivially perfect
    return clustered_corpus(n_docs, 64, 300, 128, nq=nq, lq=32, n_topics=512, topics_per_doc=6,
                            query_topics=2, noise=2.0, seed=seed)


def demo(args) -> int:
    import torch

    import lateint_kernels as lk
    from lateint_kernels.reference import pylate_colbert_scores_ref

    if args.smoke:
        args.docs, args.queries = 300, 8
    torch.set_num_threads(args.threads or torch.get_num_threads())
    print(f"lateint demo: backend {lk.backend_for('maxsim', 'cpu')} (cpu isa {lk.cpu_isa()}), "
          f"{torch.get_num_threads()} threads")
    q, tokens, offsets, relevant = _corpus(args.docs, args.queries)
    print(f"corpus: {args.docs} docs, {tokens.shape[0]} tokens (64-300 per doc), d=128; "
          f"{args.queries} queries x 32 tokens")
    if args.pool_factor > 1:
        n_before = tokens.shape[0]
        t = time.perf_counter()
        tokens, offsets = lk.token_pool(tokens, offsets, args.pool_factor)
        print(f"token pooling (pool_factor {args.pool_factor}, PyLate's Ward clustering): "
              f"{n_before} -> {tokens.shape[0]} tokens in {(time.perf_counter() - t) * 1e3:.0f} ms")
    t = time.perf_counter()
    scores = lk.maxsim(q, tokens, offsets)
    t_ours = time.perf_counter() - t
    ref = lk.reference.maxsim_ref(q[:2].double(), tokens.double(), offsets)
    err = float((scores[:2].double() - ref).abs().max() / ref.abs().max())
    print(f"check vs float64 reference (2 queries): max rel err {err:.2e}")
    if err > 1e-5:
        print("FAILED: kernel disagrees with the reference", file=sys.stderr)
        return 1
    k = min(args.k, args.docs)
    top = scores.topk(k, dim=1).indices
    hit = top == relevant[:, None]
    recall = float(hit.any(1).float().mean())
    rank = torch.where(hit.any(1), hit.float().argmax(1) + 1, torch.zeros_like(relevant))
    mrr = float(torch.where(rank > 0, 1.0 / rank.clamp_min(1).float(), torch.zeros(len(rank))).mean())
    # PyLate's formula on the same data, padded (what a PyLate user runs on CPU)
    padded, mask = lk.unpack(tokens, offsets)
    nq_b = min(args.queries, 8)
    t = time.perf_counter()
    base = pylate_colbert_scores_ref(q[:nq_b], padded, None, mask.float())
    t_base = (time.perf_counter() - t) * args.queries / nq_b
    # same semantics as PyLate (padding counts as a 0 similarity): mask_mode="zero"
    zero = lk.maxsim(q[:nq_b], tokens, offsets, mask_mode="zero", doc_padded=~mask.all(1))
    agree = float(((base - zero).abs() / base.abs().clamp_min(1e-6)).max())
    print(f"recall@{k} {recall:.3f}   MRR@{k} {mrr:.3f}   (known relevant document, exact MaxSim)")
    print(f"search time for {args.queries} queries: ours {t_ours * 1e3:.1f} ms, "
          f"PyLate einsum formula {t_base * 1e3:.1f} ms (x{t_base / t_ours:.1f}, timed on {nq_b} queries "
          f"and scaled); PyLate-mode scores agree to {agree:.1e} relative")
    return 0


class UsageError(Exception):
    """Bad arguments or input files: reported on stderr with exit code 2."""


def _read_pairs(path: str) -> list:
    import json
    import os
    if not os.path.isfile(path):
        raise UsageError(f"--train {path}: no such file")
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("query"), str) \
                    or not isinstance(rec.get("positive"), str):
                raise UsageError(f'{path}:{n}: expected {{"query": str, "positive": str, "negatives": [str, ...]}}')
            negs = rec.get("negatives", [])
            if not isinstance(negs, list) or not all(isinstance(x, str) for x in negs):
                raise UsageError(f"{path}:{n}: \"negatives\" must be a list of strings")
            out.append((rec["query"], rec["positive"], *negs))
    if not out:
        raise UsageError(f"{path}: no training pairs")
    return out


def train_cmd(args) -> int:
    import os

    import torch
    import torch.distributed as dist

    from .model import CONFIG_NAME, ColBERT, minilm_dir
    from .train import TrainConfig, train

    pairs = _read_pairs(args.train)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    src = args.model or minilm_dir()
    if not os.path.isdir(src):
        raise UsageError(f"--model {src}: not a directory")
    kw = {k: v for k, v in (("query_length", args.query_length), ("document_length", args.document_length))
          if v is not None}
    if os.path.isfile(os.path.join(src, CONFIG_NAME)):
        model = ColBERT.load(src, **kw)
    else:
        model = ColBERT(src, dim=args.dim, seed=args.seed, **kw)
    if torch.cuda.is_available():
        model.cuda()
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, mini_batch_size=args.mini_batch_size or None,
                      lr=args.lr, encoder_lr=args.encoder_lr, train_layers=args.train_layers,
                      temperature=args.temperature, seed=args.seed, max_steps=args.max_steps,
                      checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every)
    try:
        train(model, pairs, cfg)
    except ValueError as e:
        raise UsageError(str(e)) from None
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        model.save(args.output)
        print(f"saved the trained model to {args.output}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="lateint", description="late-interaction retrieval on lateint_kernels")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="exact MaxSim retrieval on an embedded synthetic corpus")
    d.add_argument("--docs", type=int, default=5000, help="documents in the corpus (default 5000)")
    d.add_argument("--queries", type=int, default=64, help="queries (default 64)")
    d.add_argument("--k", type=int, default=10, help="cut-off for recall/MRR (default 10)")
    d.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    d.add_argument("--pool-factor", type=int, default=1,
                   help="pool document tokens by this factor before searching (default 1: off)")
    d.add_argument("--smoke", action="store_true", help="tiny run (CI)")
    t = sub.add_parser("train", help="fine-tune a ColBERT model on (query, positive[, negatives]) pairs",
                       description="Contrastive fine-tuning (in-batch + hard negatives; GradCache with "
                                   "--mini-batch-size). Runs under torchrun for several processes (gloo on "
                                   "CPU, nccl on GPU): every query then sees all processes' documents.")
    t.add_argument("--train", required=True, metavar="FILE",
                   help='JSONL, one {"query": ..., "positive": ..., "negatives": [...]} per line '
                        "(every line the same number of negatives, possibly none)")
    t.add_argument("--output", required=True, metavar="DIR", help="where the trained model is saved")
    t.add_argument("--model", metavar="DIR", help="a transformers encoder directory or a saved lateint "
                                                  "ColBERT (default: all-MiniLM-L6-v2 from its package)")
    t.add_argument("--dim", type=int, default=128, help="projection size for a new model (default 128)")
    t.add_argument("--query-length", type=int, help="query tokens after [MASK] expansion (default 32)")
    t.add_argument("--document-length", type=int, help="document tokens kept (default 180)")
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--batch-size", type=int, default=32, help="examples per step and process (default 32)")
    t.add_argument("--mini-batch-size", type=int, default=0,
                   help="GradCache: embed in chunks of this size (memory of one chunk; default 0: off)")
    t.add_argument("--lr", type=float, default=3e-3, help="projection learning rate (default 3e-3)")
    t.add_argument("--encoder-lr", type=float, default=2e-5, help="encoder learning rate (default 2e-5)")
    t.add_argument("--train-layers", type=int, default=0,
                   help="last N encoder layers trained too (-1: all; default 0: projection only)")
    t.add_argument("--temperature", type=float, default=1.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--max-steps", type=int, help="stop after this many steps")
    t.add_argument("--checkpoint-dir", metavar="DIR", help="checkpoint here and resume from it when present")
    t.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints (default: end only)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "demo":
            return demo(args)
        if args.cmd == "train":
            return train_cmd(args)
    except UsageError as e:
        print(f"lateint {args.cmd}: {e}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
