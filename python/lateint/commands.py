"""The file-based CLI commands: encode, index (build / add / delete), search, evaluate, bench.

Files:
  texts        JSONL, one {"id": "...", "text": "..."} per line (ids unique strings or ints)
  embeddings   a directory: tokens.npy (float32 [T, dim]), offsets.npy (int64 [n + 1]),
               ids.json (the n ids, strings), info.json (model, queries or documents)
  index        a lateint PLAID index directory; the string ids are kept in its metadata
  run          TREC run file: "qid Q0 docid rank score tag" per line
  qrels        TREC qrels: "qid 0 docid relevance" per line (relevance > 0: relevant)
Every command exits 0 on success and 2 on bad arguments or input files (message on stderr).
"""
from __future__ import annotations

import json
import os
import time
import warnings
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ._atomic import NotOurs, atomic_directory, write_file_atomic


class UsageError(Exception):
    """Bad arguments or input files: reported on stderr with exit code 2."""


# ---------------------------------------------------------------------------------------
# models
def load_model(spec: Optional[str], doc_len: Optional[int] = None):
    """None: all-MiniLM-L6-v2's own token states (no projection, no markers, no expansion);
    a directory saved by `lateint train` / ColBERT.save: that model; another directory: that
    transformers encoder's token states."""
    from .model import CONFIG_NAME, ColBERT, minilm_dir
    kw = {} if doc_len is None else {"document_length": doc_len}
    check_model_dir(spec)
    if spec and os.path.isfile(os.path.join(spec, CONFIG_NAME)):
        return ColBERT.load(spec, **kw), os.path.abspath(spec)
    try:
        src = spec or minilm_dir()
    except FileNotFoundError as e:
        raise UsageError(f"{e} (scripts/install.sh installs it)") from None
    model = ColBERT(src, dim=None, query_prefix="", document_prefix="", do_query_expansion=False, **kw)
    return model, (os.path.abspath(spec) if spec else "all-MiniLM-L6-v2")


def check_model_dir(spec: Optional[str], arg: str = "--model") -> None:
    """A --model value must be a directory holding a model: a lateint ColBERT or a
    transformers encoder (its config.json)."""
    from .model import CONFIG_NAME
    if not spec:
        return
    if not os.path.isdir(spec):
        raise UsageError(f"{arg} {spec}: not a directory")
    if not any(os.path.isfile(os.path.join(spec, n)) for n in (CONFIG_NAME, "config.json")):
        raise UsageError(f"{arg} {spec}: not a model directory (no {CONFIG_NAME} of `lateint train`, "
                         "no config.json of a transformers encoder)")


# ---------------------------------------------------------------------------------------
# files
def _lines(path: str, what: str):
    """(line number, text) for every line of a UTF-8 text file; UsageError naming the file
    (and line) when it is missing, unreadable or not UTF-8."""
    if not os.path.isfile(path):
        raise UsageError(f"{what} {path}: no such file")
    try:
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    yield n, raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise UsageError(f"{path}:{n}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UsageError(f"{what} {path}: unreadable ({e.strerror or e})") from None


def _jsonl(path: str, what: str):
    """(line number, object) for every non-empty line of a JSONL file."""
    for n, line in _lines(path, what):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}:{n}: not JSON ({e.msg})") from None


def read_texts(path: str, what: str = "--input") -> Tuple[List[str], List[str]]:
    ids, texts, seen = [], [], set()
    for n, rec in _jsonl(path, what):
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str) or \
                not isinstance(rec.get("id"), (str, int)):
            raise UsageError(f'{path}:{n}: expected {{"id": str or int, "text": str}}')
        i = str(rec["id"])
        if i in seen:
            raise UsageError(f"{path}:{n}: duplicate id {i!r}")
        seen.add(i)
        ids.append(i)
        texts.append(rec["text"])
    if not ids:
        raise UsageError(f"{path}: no texts")
    return ids, texts


def read_pairs(path: str) -> list:
    """Training JSONL: {"query": str, "positive": str, "negatives": [str, ...]} per line."""
    out = []
    for n, rec in _jsonl(path, "--train"):
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


def write_embeddings(path: str, tokens: torch.Tensor, offsets: torch.Tensor, ids: List[str], info: dict) -> None:
    """Writes the embeddings directory atomically (lateint._atomic); an existing `path` is
    replaced only when it is an embeddings directory this command wrote."""
    path = os.path.abspath(path)
    if os.path.lexists(path) and not _is_embeddings_dir(path):
        raise UsageError(f"--output {path}: exists and is not an embeddings directory; not replacing it")
    try:
        with atomic_directory(path, replace_if=_is_embeddings_dir) as tmp:
            np.save(os.path.join(tmp, "tokens.npy"), tokens.float().cpu().numpy())
            np.save(os.path.join(tmp, "offsets.npy"), offsets.cpu().numpy().astype(np.int64))
            with open(os.path.join(tmp, "ids.json"), "w") as f:
                json.dump(ids, f)
            with open(os.path.join(tmp, "info.json"), "w") as f:
                json.dump(info, f, indent=1)
    except NotOurs:
        raise UsageError(f"--output {path}: exists and is not an embeddings directory; not replacing it") from None
    except OSError as e:
        raise UsageError(f"--output {path}: cannot write there ({e.strerror or e})") from None


_EMBEDDING_FILES = ("tokens.npy", "offsets.npy", "ids.json", "info.json")


def _is_embeddings_dir(path: str) -> bool:
    """A directory `write_embeddings` wrote: its four files and nothing else (only such a
    directory is ever replaced)."""
    if not os.path.isdir(path) or os.path.islink(path):
        return False
    entries = os.listdir(path)
    return set(entries) == set(_EMBEDDING_FILES) and all(os.path.isfile(os.path.join(path, e)) for e in entries)


def check_output_path(path: str, arg: str) -> None:
    """Refuses, before any work, an output file path that cannot be written: a directory, or
    one below a file."""
    if os.path.isdir(path):
        raise UsageError(f"{arg} {path}: is a directory (give a file path)")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise UsageError(f"{arg} {path}: cannot write there ({parent} is not a writable directory)")


def write_text_atomic(path: str, text: str, arg: str) -> None:
    """Writes a file atomically (lateint._atomic); UsageError naming `arg` when the path is a
    directory or cannot be written (nothing is left behind)."""
    check_output_path(path, arg)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_file_atomic(path, text)
    except OSError as e:
        raise UsageError(f"{arg} {path}: cannot write there ({e.strerror or e})") from None


def read_embeddings(path: str, mmap: bool = False):
    """-> (tokens, offsets, ids, info), validated. mmap: tokens memory-mapped, read-only
    (float32 or float16), not loaded."""
    need = ("tokens.npy", "offsets.npy", "ids.json", "info.json")
    if not os.path.isdir(path) or not all(os.path.isfile(os.path.join(path, n)) for n in need):
        raise UsageError(f"{path}: not an embeddings directory (needs {', '.join(need)}; see `lateint encode`)")
    try:
        tok = np.load(os.path.join(path, "tokens.npy"), allow_pickle=False, mmap_mode="r" if mmap else None)
        with warnings.catch_warnings():  # a read-only map: only read
            warnings.simplefilter("ignore", UserWarning)
            tokens = torch.from_numpy(tok)
        offsets = torch.from_numpy(np.load(os.path.join(path, "offsets.npy"), allow_pickle=False))
        with open(os.path.join(path, "ids.json"), encoding="utf-8") as f:
            ids = json.load(f)
        with open(os.path.join(path, "info.json"), encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: unreadable embeddings ({e})") from None
    if not isinstance(info, dict):
        raise UsageError(f"{path}: info.json must hold a JSON object, got {type(info).__name__}")
    if not isinstance(ids, list) or not all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in ids):
        raise UsageError(f"{path}: ids.json must hold a list of string (or integer) ids")
    if len(set(map(str, ids))) != len(ids):
        raise UsageError(f"{path}: ids.json holds duplicate ids")
    floats = (torch.float32, torch.float16) if mmap else (torch.float32,)
    ok = (tokens.dim() == 2 and tokens.dtype in floats and offsets.dim() == 1 and offsets.dtype == torch.int64
          and isinstance(ids, list) and len(ids) == offsets.numel() - 1 and offsets.numel() >= 2
          and int(offsets[0]) == 0 and int(offsets[-1]) == tokens.shape[0]
          and bool((offsets[1:] >= offsets[:-1]).all()))
    if not ok:
        raise UsageError(f"{path}: inconsistent embeddings (tokens {tuple(tokens.shape)} {tokens.dtype}, "
                         f"offsets {tuple(offsets.shape)}, {len(ids) if isinstance(ids, list) else '?'} ids)")
    return tokens, offsets, [str(i) for i in ids], info


def _whitespace_rows(path: str, n_fields: int, layout: str, what: str):
    """(line number, fields) for every non-empty line of a whitespace-separated file whose
    lines must have n_fields fields (`layout` names them in the error)."""
    for n, line in _lines(path, what):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != n_fields:
            raise UsageError(f"{path}:{n}: expected '{layout}'")
        yield n, parts


def read_trec_run(path: str) -> Dict[str, List[Tuple[str, float]]]:
    run: Dict[str, List[Tuple[int, str, float]]] = {}
    for n, parts in _whitespace_rows(path, 6, "qid Q0 docid rank score tag", "--run"):
        try:
            rank, score = int(parts[3]), float(parts[4])
        except ValueError:
            raise UsageError(f"{path}:{n}: rank and score must be numbers") from None
        if score != score:
            raise UsageError(f"{path}:{n}: score is nan")
        run.setdefault(parts[0], []).append((rank, parts[2], score))
    return {q: [(d, s) for _, d, s in sorted(rows)] for q, rows in run.items()}


def read_qrels(path: str) -> Dict[str, set]:
    qrels: Dict[str, set] = {}
    for n, parts in _whitespace_rows(path, 4, "qid 0 docid relevance", "--qrels"):
        try:
            rel = float(parts[3])
        except ValueError:
            raise UsageError(f"{path}:{n}: relevance must be a number") from None
        qrels.setdefault(parts[0], set())
        if rel > 0:
            qrels[parts[0]].add(parts[2])
    return qrels


# ---------------------------------------------------------------------------------------
# commands
def encode(args) -> int:
    ids, texts = read_texts(args.input)
    model, name = load_model(args.model, args.doc_len)
    is_query = args.kind == "queries"
    if is_query and args.pool_factor > 1:
        raise UsageError("--pool-factor applies to documents only")
    t = time.perf_counter()
    emb = model.encode(texts, is_query=is_query, batch_size=args.batch_size, pool_factor=args.pool_factor,
                       show_progress_bar=True)
    write_embeddings(args.output, emb.tokens, emb.offsets, ids,
                     {"model": name, "kind": args.kind, "dim": model.dim, "pool_factor": args.pool_factor,
                      "query_length": model.query_length, "document_length": model.document_length})
    print(f"encoded {len(ids)} {args.kind} ({emb.tokens.shape[0]:,} tokens, dim {model.dim}) in "
          f"{time.perf_counter() - t:.1f} s -> {args.output}")
    return 0


def train(args) -> int:
    import torch.distributed as dist

    from .model import CONFIG_NAME, ColBERT, minilm_dir
    from .train import TrainConfig, train as train_loop

    pairs = read_pairs(args.train)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    check_model_dir(args.model)
    try:
        src = args.model or minilm_dir()
    except FileNotFoundError as e:
        raise UsageError(f"{e} (scripts/install.sh installs it)") from None
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
        train_loop(model, pairs, cfg)
    except ValueError as e:
        raise UsageError(str(e)) from None
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        model.save(args.output)
        print(f"saved the trained model to {args.output}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def _load_index(path: str, ray_address: Optional[str] = None):
    from .plaid import IndexFormatError, PLAIDIndex
    try:
        if os.path.isfile(os.path.join(path, "SHARDS.json")):
            from .plaid_ray import ShardedIndex

            index = ShardedIndex.open(path, ray_address=ray_address)
            names = index.metadata.get("names")
            if not isinstance(names, list):
                raise UsageError(f"{path}: sharded index has no document id table (not built by `lateint index "
                                 "build`)")
            return index, names
        if ray_address is not None:
            raise UsageError(f"--ray: {path} is not a sharded index (build one with `lateint index build --shards N`)")
        index = PLAIDIndex.load(path)
    except IndexFormatError as e:
        raise UsageError(str(e)) from None
    names = index.metadata.get("names")
    top = int(index.ids.max()) + 1 if index.ids.numel() else 0
    if not isinstance(names, list) or len(names) < top or not all(isinstance(n, str) for n in names):
        raise UsageError(f"{path}: index has no document id table (not built by `lateint index build`)")
    return index, names


def _save_index(index, path: str) -> None:
    from .plaid import IndexFormatError
    try:
        index.save(path)
    except IndexFormatError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"--index {path}: cannot write there ({e.strerror or e})") from None


def _is_our_index(path: str) -> bool:
    """An index directory lateint wrote (CURRENT or SHARDS.json at its top): the only kind
    --overwrite replaces."""
    return os.path.isdir(path) and not os.path.islink(path) and (
        os.path.isfile(os.path.join(path, "CURRENT")) or os.path.isfile(os.path.join(path, "SHARDS.json")))


def _index_build(args) -> int:
    from .plaid import PLAIDIndex
    tokens, offsets, ids, info = read_embeddings(args.embeddings, mmap=True)
    if info.get("kind") == "queries":
        raise UsageError(f"{args.embeddings}: holds queries, not documents")
    if os.path.lexists(args.index) and not os.path.isdir(args.index):
        raise UsageError(f"--index {args.index}: exists and is not a directory")
    if _is_our_index(args.index) and not args.overwrite:
        raise UsageError(f"{args.index}: an index exists there (--overwrite replaces it)")
    if os.path.isdir(args.index) and os.listdir(args.index) and not _is_our_index(args.index):
        raise UsageError(f"--index {args.index}: a non-empty directory that is not an index; "
                         "not writing into it (give a new or empty directory)")
    if args.ray is not None and not args.shards:
        raise UsageError("--ray needs --shards N (a sharded index is built and searched on Ray)")
    meta = {"names": ids, "model": info.get("model"), "dim": info.get("dim"),
            "document_length": info.get("document_length")}
    source = args.embeddings  # streamed: read memory-mapped, a chunk at a time
    if args.pool_factor != 1:
        import lateint_kernels as lk
        pooled = lk.token_pool(tokens.float(), offsets, args.pool_factor)
        source = [(pooled[0], pooled[1])]
    del tokens
    budget = {"kmeans_niter": args.kmeans_niter, "max_points_per_centroid": args.max_points_per_centroid,
              "coarse_cells": args.coarse_cells, "nprobe": args.nprobe, "buckets": args.buckets}
    t = time.perf_counter()
    try:
        with atomic_directory(os.path.abspath(args.index), replace_if=_is_our_index) as tmp:
            if args.shards:
                from .plaid_ray import create_sharded
                create_sharded(tmp, source, args.shards, ray_address=args.ray, nbits=args.nbits, seed=args.seed,
                               chunk_tokens=args.chunk_tokens, metadata=meta, show_progress_bar=True, **budget)
                summary = f"{args.shards} shards"
            else:
                index = PLAIDIndex.create(tmp, source, nbits=args.nbits, seed=args.seed, metadata=meta,
                                          chunk_tokens=args.chunk_tokens, show_progress_bar=True, **budget)
                summary = f"{index.n_tokens:,} tokens, {index.bytes_per_token():.1f} bytes per token"
    except (ValueError, TypeError) as e:
        raise UsageError(f"{args.embeddings}: {e}") from None
    except NotOurs:
        raise UsageError(f"--index {args.index}: exists and is not an index; not replacing it") from None
    except OSError as e:
        raise UsageError(f"--index {args.index}: cannot write there ({e.strerror or e})") from None
    print(f"indexed {len(ids)} documents (nbits {args.nbits}, {summary}) in {time.perf_counter() - t:.1f} s "
          f"-> {args.index}")
    return 0


def index_cmd(args) -> int:
    from .plaid_store import SegmentedIndex
    if args.action == "build":
        return _index_build(args)
    index, names = _load_index(args.index)
    if not isinstance(index, SegmentedIndex) and not hasattr(index, "save"):
        raise UsageError(f"{args.index}: a sharded index; `lateint index {args.action}` works on one index "
                         "(use lateint.plaid_ray.ShardedIndex from Python)")
    store = isinstance(index, SegmentedIndex)
    if args.action == "add":
        tokens, offsets, ids, info = read_embeddings(args.embeddings, mmap=True)
        if info.get("kind") == "queries":
            raise UsageError(f"{args.embeddings}: holds queries, not documents")
        if tokens.shape[1] != index.centroids.shape[1]:
            raise UsageError(f"{args.embeddings}: tokens have dim {tokens.shape[1]}, the index "
                             f"{index.centroids.shape[1]} (encode them with the index's model)")
        live = {names[i] for i, dead in zip(index.ids.tolist(), index.deleted.tolist()) if not dead}
        clash = [i for i in ids if i in live]
        if clash:
            raise UsageError(f"ids already in the index: {clash[:5]} (delete them first)")
        new = list(range(len(names), len(names) + len(ids)))
        meta = dict(index.metadata, names=names + ids)
        try:
            if store:  # one new segment; the names in the same manifest swap
                index.add(tokens, offsets, new, metadata=meta)
            else:
                index.add(tokens.float(), offsets, new)
                index.metadata = meta
                _save_index(index, args.index)
        except (ValueError, TypeError) as e:
            raise UsageError(f"{args.embeddings}: {e}") from None
        print(f"added {len(ids)} documents; the index now holds {int((~index.deleted).sum())}")
        return 0
    if args.action == "merge":
        if store:
            before = index.n_segments
            index.merge()
            print(f"merged {before} segments into {index.n_segments}; the index holds {index.n_docs} documents")
        else:
            index.compact()
            _save_index(index, args.index)
            print(f"compacted; the index holds {index.n_docs} documents")
        return 0
    # delete
    wanted = list(args.ids or [])
    if args.ids_file:
        wanted += [ln.strip() for _, ln in _lines(args.ids_file, "--ids-file") if ln.strip()]
    wanted = list(dict.fromkeys(wanted))  # each id once, in the order given
    if not wanted:
        raise UsageError("index delete: give --ids or --ids-file")
    by_name = {names[i]: i for i, dead in zip(index.ids.tolist(), index.deleted.tolist()) if not dead}
    unknown = [w for w in wanted if w not in by_name]
    if unknown:
        raise UsageError(f"ids not in the index: {unknown[:5]}")
    index.delete([by_name[w] for w in wanted])
    if args.compact and store:
        index.merge()
    elif args.compact:
        index.compact()
    if not store:
        _save_index(index, args.index)
    print(f"deleted {len(wanted)} documents; the index now holds {int((~index.deleted).sum())}")
    return 0


def search(args) -> int:
    check_output_path(args.output, "--output")
    index, names = _load_index(args.index, getattr(args, "ray", None))
    if os.path.isdir(args.queries):
        tokens, offsets, qids, info = read_embeddings(args.queries)
    else:
        qids, texts = read_texts(args.queries, "--queries")
        model_spec = args.model
        recorded = index.metadata.get("model")
        if model_spec is None and recorded not in (None, "all-MiniLM-L6-v2"):
            model_spec = recorded
        model, _ = load_model(model_spec)
        emb = model.encode(texts, is_query=True, show_progress_bar=True)
        tokens, offsets = emb.tokens, emb.offsets
    import lateint_kernels as lk
    if tokens.shape[1] != index.dim:
        raise UsageError(f"queries have dim {tokens.shape[1]}, the index {index.dim} "
                         "(encode them with the documents' model)")
    q, mask = lk.unpack(tokens, offsets)
    qmask = None if bool(mask.all()) else mask
    settings = {k: v for k, v in (("ncells", args.ncells), ("ndocs", args.ndocs),
                                  ("centroid_score_threshold", args.threshold)) if v is not None}
    t = time.perf_counter()
    rows = []
    for s in range(0, q.shape[0], 32):
        ids, scores = index.search(q[s:s + 32], args.k, query_mask=None if qmask is None else qmask[s:s + 32],
                                   **settings)
        for qi, (r_ids, r_scores) in enumerate(zip(ids.tolist(), scores.tolist())):
            rank = 0
            for d, sc in zip(r_ids, r_scores):
                if d < 0:
                    continue
                rank += 1
                rows.append(f"{qids[s + qi]} Q0 {names[d]} {rank} {sc:.6f} {args.tag}")
    secs = time.perf_counter() - t
    write_text_atomic(args.output, "\n".join(rows) + ("\n" if rows else ""), "--output")
    print(f"searched {len(qids)} queries in {secs:.2f} s ({len(qids) / secs:.0f} queries/s) -> {args.output}")
    return 0


def evaluate(args) -> int:
    if args.json:
        check_output_path(args.json, "--json")
    run = read_trec_run(args.run)
    qrels = read_qrels(args.qrels)
    judged = [q for q in qrels if qrels[q]]
    if not judged:
        raise UsageError(f"{args.qrels}: no relevant documents")
    k = args.k
    mrr = rec = s1 = 0.0
    for q in judged:
        ranked = [d for d, _ in run.get(q, [])][:k]
        hits = [i for i, d in enumerate(ranked) if d in qrels[q]]
        mrr += 1.0 / (hits[0] + 1) if hits else 0.0
        rec += len({ranked[i] for i in hits}) / len(qrels[q])
        s1 += 1.0 if hits and hits[0] == 0 else 0.0
    n = len(judged)
    missing = sum(1 for q in judged if q not in run)
    result = {f"mrr@{k}": mrr / n, f"recall@{k}": rec / n, "success@1": s1 / n, "queries": n,
              "queries_without_results": missing}
    print(" ".join(f"{key} {val:.4f}" if isinstance(val, float) else f"{key} {val}" for key, val in result.items()))
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=1), "--json")
    return 0


def bench(args) -> int:
    """Kernel microbenchmarks on clustered synthetic data, each beside PyLate's own call
    when PyLate is installed (scripts/install.sh installs it)."""
    import lateint_kernels as lk

    from .plaid import PLAIDIndex
    from .synthetic import clustered_corpus

    def best_of(fn, repeats):
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    n_docs = 200 if args.smoke else args.docs
    reps = 1 if args.smoke else 3
    q, tokens, offsets, _ = clustered_corpus(n_docs, 64, 300, 128, nq=32, lq=32, n_topics=256, topics_per_doc=4,
                                             query_topics=2, noise=1.8, seed=0)
    padded, mask = lk.unpack(tokens, offsets)
    print(f"lateint bench: {n_docs} clustered docs (64-300 tokens, d=128, {tokens.shape[0]:,} tokens), 32 queries x "
          f"32 tokens; {torch.get_num_threads()} threads, cpu isa {lk.cpu_isa()}; best of {reps}")
    flops = 2 * 32 * 32 * tokens.shape[0] * 128
    t_ours = best_of(lambda: lk.maxsim(q, tokens, offsets), reps)
    try:
        from pylate import scores as pylate_scores
        from pylate.models import ColBERT as PyLateColBERT
    except ImportError:
        pylate_scores = PyLateColBERT = None
    if pylate_scores is not None:
        t_base = best_of(lambda: pylate_scores.colbert_scores(q, padded, None, mask.float()), reps)
        base = f"PyLate colbert_scores {t_base * 1e3:.1f} ms (x{t_base / t_ours:.1f})"
    else:
        base = "no baseline: PyLate not installed"
    print(f"{'maxsim (32 q x all docs)':<34} {t_ours * 1e3:>9.1f} ms  {flops / t_ours / 1e9:>6.0f} GFLOP/s   {base}")
    docs_list = [tokens[offsets[i]:offsets[i + 1]] for i in range(min(n_docs, 500))]
    t_pool = best_of(lambda: lk.token_pool_list(docs_list, 2), reps)
    if PyLateColBERT is not None:
        t_pool_base = best_of(lambda: PyLateColBERT.pool_embeddings_hierarchical(None, docs_list[:50], 2), 1)
        t_pool_base *= len(docs_list) / 50
        base = (f"PyLate pool_embeddings_hierarchical ~{t_pool_base * 1e3:.0f} ms (x{t_pool_base / t_pool:.1f}, "
                f"timed on 50 docs)")
    else:
        base = "no baseline: PyLate not installed"
    print(f"{'token_pool_list (pool_factor 2)':<34} {t_pool * 1e3:>9.1f} ms  {len(docs_list)} docs            {base}")
    t = time.perf_counter()
    index = PLAIDIndex.build(tokens, offsets, nbits=2, seed=0, kmeans_niter=4 if args.smoke else 20)
    t_build = time.perf_counter() - t
    t_search = best_of(lambda: index.search(q, 10), reps)
    t_one = best_of(lambda: index.search(q[:1], 10), reps)
    print(f"{'PLAID build (nbits 2)':<34} {t_build * 1e3:>9.1f} ms  {index.bytes_per_token('disk'):.1f} bytes/token")
    print(f"{'PLAID search, batch 32 / batch 1':<34} {t_search * 1e3:>9.1f} ms  {32 / t_search:>6.0f} q/s     "
          f"batch 1: {t_one * 1e3:.2f} ms; exact MaxSim above: {32 / t_ours:.0f} q/s")
    return 0
