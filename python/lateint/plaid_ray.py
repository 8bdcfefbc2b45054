"""A PLAID index sharded over Ray: one codec, several segmented indexes (shards), each served
by a Ray actor that opens it memory-mapped from shared storage.

    path/SHARDS.json       {"format": "lateint-plaid-shards", "version": 1, "shards": ["shard-0", ...]}
    path/shard-<i>/        a segmented index (lateint.plaid_store), every one with the same codec

Build (`create_sharded`): the codec is trained once, in the driver, on a sample of the whole
corpus; then each shard's documents (a contiguous run of the source's chunks) are compressed
into its segment by a Ray task, in parallel. Search (`ShardedIndex.search`): the query batch
goes to every shard actor at once; each returns its top-k with global ids; the driver merges
them (score, then shard order, then rank: deterministic). `search_local` runs the very same
per-shard searches and merge in this process, without Ray: the two give identical answers, as
the shards share the codec and Ray only carries the arrays. A shard that fails is an error
naming it (ShardError), unless the caller asks for partial results; with `max_restarts` > 0
Ray restarts a dead actor, which reopens its shard from disk, and the call is retried.

Multi-node: start Ray on every machine (`ray start --head` on one, `ray start
--address=HEAD:6379` on the others), put the index on storage every node mounts at the same
path, and pass `ray_address="HEAD:6379"` (or call ray.init(address=...) first).
"""
from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ._atomic import write_file_atomic
from . import plaid_source as _source
from . import plaid_store as _store
from .plaid import IndexFormatError, _int_ids, _positive_int

SHARDS_FORMAT = "lateint-plaid-shards"


class ShardError(RuntimeError):
    """A shard's actor failed (died, or raised) during a call; names the shard."""

    def __init__(self, shard: int, path: str, cause: BaseException):
        super().__init__(f"shard {shard} ({path}) failed: {type(cause).__name__}: {cause}")
        self.shard, self.path, self.cause = shard, path, cause


def _ray():
    try:
        import ray
    except ImportError:
        raise ImportError("lateint.plaid_ray needs Ray: pip install 'ray>=2.9' (scripts/install.sh installs it)") \
            from None
    return ray


def _ensure_ray(address: Optional[str], num_cpus: Optional[int] = None):
    ray = _ray()
    if not ray.is_initialized():
        kw = {"address": address} if address else {"num_cpus": num_cpus}
        ray.init(include_dashboard=False, log_to_driver=False, **kw)
    return ray


def _read_shards(path: str) -> Tuple[List[str], dict]:
    f = os.path.join(path, "SHARDS.json")
    try:
        with open(f, encoding="utf-8") as fh:
            meta = json.load(fh)
    except FileNotFoundError:
        raise IndexFormatError(f"{path}: not a sharded lateint index (no SHARDS.json)") from None
    except (OSError, ValueError) as e:
        raise IndexFormatError(f"{path}: SHARDS.json unreadable: {e}") from None
    if (not isinstance(meta, dict) or meta.get("format") != SHARDS_FORMAT or meta.get("version") != 1
            or not isinstance(meta.get("shards"), list) or not meta["shards"]
            or not all(isinstance(s, str) and s.startswith("shard-") and "/" not in s for s in meta["shards"])
            or not isinstance(meta.get("dim"), int) or not isinstance(meta.get("user"), dict)):
        raise IndexFormatError(f"{path}: SHARDS.json is not a lateint shard list of version 1")
    return [os.path.join(path, s) for s in meta["shards"]], meta


# -------------------------------------------------------------------------------------
# per shard, the same code in an actor and in process
class _Shard:
    def __init__(self, path: str):
        self.path = path
        self.index = _store.SegmentedIndex.open(path)

    def search(self, queries, k, kwargs):
        if _store._read_current(self.path)[0] != self.index.generation:  # changed by another process
            self.index.refresh(verify=False)
        return self.index.search(queries, k, **kwargs)

    def holds(self, ids: torch.Tensor) -> torch.Tensor:
        st = self.index._state
        return torch.isin(ids, st.ids[~st.deleted])

    def add(self, tokens, offsets, ids, merge_factor):
        # the shards share one codec: no shard appends centroids on its own
        self.index.add(tokens, offsets, ids, merge_factor=merge_factor, expand=False)
        return self.index.n_docs

    def delete(self, ids):
        self.index.delete(ids)

    def merge(self):
        self.index.merge()

    def n_live(self) -> int:
        return int((~self.index.deleted).sum())

    def exit_during_next_search(self) -> None:
        """For tests: the next search ends this process halfway (an actor dying mid-search)."""
        def dying(*args, **kwargs):
            os._exit(1)

        self.index.search = dying


def _merge_topk(parts: Sequence[Tuple[torch.Tensor, torch.Tensor]], k: int):
    """Top-k of several shards' (ids, scores) [nq, k]: by score, ties to the earlier shard
    and rank; -1 / -inf padding last."""
    ids = torch.cat([p[0] for p in parts], 1)
    scores = torch.cat([p[1] for p in parts], 1)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.gather(ids, 1, order), torch.gather(scores, 1, order)


class ShardedIndex:
    """Shards of one codec, searched together. `ShardedIndex.open(path, ray_address=...)`
    starts one actor per shard; `search_local` searches the same shards in this process."""

    def __init__(self, path: str, shard_paths: List[str], actors, max_restarts: int, meta: dict):
        self.path = path
        self.shard_paths = shard_paths
        self.dim = meta["dim"]
        self.metadata = meta["user"]
        self._actors = actors
        self.max_restarts = max_restarts

    @classmethod
    def open(cls, path: str, *, ray_address: Optional[str] = None, num_cpus: Optional[int] = None,
             max_restarts: int = 0, actor_cpus: float = 0) -> "ShardedIndex":
        """One Ray actor per shard (each opens its shard memory-mapped). max_restarts > 0:
        Ray restarts a dead actor from disk and retries the call that failed."""
        path = os.fspath(path)
        shard_paths, meta = _read_shards(path)
        ray = _ensure_ray(ray_address, num_cpus)
        actor_cls = ray.remote(_Shard).options(max_restarts=max_restarts, max_task_retries=max_restarts,
                                                num_cpus=actor_cpus)
        actors = [actor_cls.remote(p) for p in shard_paths]
        index = cls(path, shard_paths, actors, max_restarts, meta)
        index._call_all("n_live")  # opened (or the error naming the shard)
        return index

    @property
    def n_shards(self) -> int:
        return len(self.shard_paths)

    def _call_all(self, method: str, *args, partial: bool = False, only: Optional[Sequence[int]] = None):
        ray = _ray()
        which = list(range(self.n_shards)) if only is None else list(only)
        refs = [getattr(self._actors[i], method).remote(*args) for i in which]
        out, failed = {}, []
        for i, ref in zip(which, refs):
            try:
                out[i] = ray.get(ref)
            except Exception as e:  # a dead actor or an error raised in it
                cause = getattr(e, "cause", None) or e
                if not partial:
                    raise ShardError(i, self.shard_paths[i], cause) from e
                failed.append(i)
        return out, failed

    def search(self, queries: torch.Tensor, k: int = 10, *, partial: bool = False, **kwargs):
        """(ids, scores) [nq, k] over every shard, as PLAIDIndex.search takes them. A shard
        that fails raises ShardError naming it; with partial=True the others' answer comes
        back as (ids, scores, failed shard numbers)."""
        k = _positive_int("ShardedIndex.search", "k", k)
        out, failed = self._call_all("search", queries, k, kwargs, partial=partial)
        if not out:
            raise ShardError(failed[0], self.shard_paths[failed[0]], RuntimeError("every shard failed"))
        ids, scores = _merge_topk([out[i] for i in sorted(out)], k)
        return (ids, scores, failed) if partial else (ids, scores)

    def search_local(self, queries: torch.Tensor, k: int = 10, **kwargs):
        """The same per-shard searches and merge, in this process (no Ray)."""
        k = _positive_int("ShardedIndex.search_local", "k", k)
        return _merge_topk([_Shard(p).search(queries, k, kwargs) for p in self.shard_paths], k)

    def add(self, doc_tokens: torch.Tensor, doc_offsets: torch.Tensor, ids: Sequence[int], *,
            shard: Optional[int] = None, merge_factor: Optional[int] = 8) -> int:
        """Adds documents to one shard (default: the one holding the fewest live
        documents) as a new segment there; ids must be new to every shard. Returns the shard."""
        op = "ShardedIndex.add"
        ids_t = _int_ids(op, "ids", ids)
        held, _ = self._call_all("holds", ids_t)
        clash = torch.stack([held[i] for i in sorted(held)]).any(0)
        if bool(clash.any()):
            raise ValueError(f"{op}: ids already in the index: {ids_t[clash][:5].tolist()}")
        if shard is None:
            sizes, _ = self._call_all("n_live")
            shard = min(sizes, key=lambda i: (sizes[i], i))
        elif isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < self.n_shards:
            raise ValueError(f"{op}: `shard` must be in [0, {self.n_shards}), got {shard!r}")
        self._call_all("add", doc_tokens, doc_offsets, ids_t, merge_factor, only=[shard])
        return shard

    def delete(self, ids: Sequence[int]) -> None:
        """Tombstones documents in the shards holding them (all ids must be known)."""
        op = "ShardedIndex.delete"
        ids_t = _int_ids(op, "ids", ids, nonnegative=False)
        held, _ = self._call_all("holds", ids_t)
        found = torch.stack([held[i] for i in sorted(held)]).any(0)
        if not bool(found.all()):
            raise KeyError(f"{op}: ids not in the index: {ids_t[~found][:5].tolist()}")
        for i in sorted(held):
            if bool(held[i].any()):
                self._call_all("delete", ids_t[held[i]], only=[i])

    def merge(self) -> None:
        self._call_all("merge")

    def close(self) -> None:
        ray = _ray()
        for a in self._actors:
            ray.kill(a)
        self._actors = []


# -------------------------------------------------------------------------------------
def _build_shard(path: str, codec, spec, dim: int, chunk_tokens: int) -> int:
    """A Ray task: one shard (its copy of the codec, one segment, a manifest). spec:
    ("dir", embeddings directory, first document, end document, ids) read memory-mapped
    where the task runs, or ("chunks", [(tokens, offsets, ids), ...])."""
    if spec[0] == "dir":
        _, d, d0, d1, ids = spec
        tok = np.load(os.path.join(d, "tokens.npy"), mmap_mode="r", allow_pickle=False)
        off = np.asarray(np.load(os.path.join(d, "offsets.npy"), mmap_mode="r", allow_pickle=False)[d0:d1 + 1],
                         dtype=np.int64)
        parts, j = [], 0
        for t, o in _source.split(tok[int(off[0]):int(off[-1])], off - off[0], chunk_tokens):
            m = o.shape[0] - 1
            parts.append((t, o, ids[j:j + m]))
            j += m
    else:
        parts = spec[1]
    _store.create_from_codec(path, parts, codec, dim)
    return len(parts)


def create_sharded(path: str, source, n_shards: int, *, ray_address: Optional[str] = None,
                   num_cpus: Optional[int] = None, nbits: int = 4, seed: int = 0, n_centroids: Optional[int] = None,
                   kmeans_niter: int = 20, max_points_per_centroid: Optional[int] = 256,
                   sample_docs: Optional[int] = None, chunk_tokens: int = 1 << 18,
                   show_progress_bar: bool = False, metadata: Optional[dict] = None,
                   coarse_cells: Optional[int] = None, nprobe: int = 8, codec_from: Optional[str] = None,
                   buckets: str = "lloyd") -> None:
    """Builds `n_shards` shards of one codec under `path` (new or empty): the codec from a
    sample of the whole source (as PLAIDIndex.create), then each shard's run of chunks
    compressed by a Ray task. Shard i holds chunks [i*C/n, (i+1)*C/n) of the C chunks.
    Document ids: the chunks' ids, or running numbers over the whole source. `codec_from`:
    an index path whose codec the shards share, instead of training one."""
    op = "create_sharded"
    n_shards = _positive_int(op, "n_shards", n_shards)
    _source.check_buckets(op, buckets)
    path = os.fspath(path)
    if os.path.lexists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise FileExistsError(f"{op}: {path} exists and is not an empty directory; nothing was changed")
    src = _source.Source(source, op, chunk_tokens=chunk_tokens)
    lengths, ids = _source.scan(src, True, show_progress_bar)
    if ids is None:
        ids = torch.arange(lengths.shape[0], dtype=torch.int64)
    codec = (_store.codec_of(codec_from, src.dim, op) if codec_from is not None else
             _source.train_codec(src, lengths, nbits=nbits, seed=seed, n_centroids=n_centroids,
                                 kmeans_niter=kmeans_niter, sample_docs=sample_docs,
                                 max_points_per_centroid=max_points_per_centroid, progress=show_progress_bar,
                                 coarse_cells=coarse_cells, nprobe=nprobe, buckets=buckets))
    n_chunks = len(src._shape)
    if n_chunks < n_shards:
        raise ValueError(f"{op}: the source has {n_chunks} chunks for {n_shards} shards; cut it finer "
                         "(chunk_tokens) or use fewer shards")
    ray = _ensure_ray(ray_address, num_cpus)
    task = ray.remote(_build_shard)
    shared = ray.put(codec)
    bounds = [n_chunks * i // n_shards for i in range(n_shards + 1)]
    os.makedirs(path, exist_ok=True)
    specs = []
    if src._dir is not None:  # each task maps its own run of documents from shared storage
        starts = np.cumsum([0] + [m for m, _ in src._shape])
        for i in range(n_shards):
            d0, d1 = int(starts[bounds[i]]), int(starts[bounds[i + 1]])
            specs.append(("dir", os.path.abspath(src._dir), d0, d1, ids[d0:d1]))
    else:  # chunks given in memory travel through Ray's object store
        per = [[] for _ in range(n_shards)]
        for c in src.passes():
            s = next(i for i in range(n_shards) if bounds[i] <= c.no < bounds[i + 1])
            per[s].append((c.tokens, c.offsets, ids[c.doc0:c.doc0 + c.n_docs]))
        specs = [("chunks", p) for p in per]
    refs = [task.remote(os.path.join(path, f"shard-{s}"), shared, spec, src.dim, chunk_tokens)
            for s, spec in enumerate(specs)]
    ray.get(refs)
    write_file_atomic(os.path.join(path, "SHARDS.json"), json.dumps(
        {"format": SHARDS_FORMAT, "version": 1, "shards": [f"shard-{s}" for s in range(n_shards)], "dim": src.dim,
         "user": {} if metadata is None else metadata}, indent=1))
