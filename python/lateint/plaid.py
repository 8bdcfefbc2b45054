"""PLAID index on lateint_kernels' ops: build, search, save, load.
Updates: `add` assigns new documents to the existing centroids and buckets (no k-means);
`delete` marks tombstones that search skips and `compact` drops.

Build: sample documents -> spherical k-means (lateint.kmeans.fit) -> every token's code
(kmeans_assign) -> residual buckets from a held-out sample -> packed residuals
(compress_residuals) -> IVF lists (centroid -> documents).
Search, batched over queries: centroid scores -> IVF candidates (ncells per query token)
-> approximate scores with centroid pruning -> the best ndocs -> approximate scores without
pruning -> the best ndocs // 4 (PLAID's stage 3) -> exact MaxSim on their decompressed
tokens (decompress_maxsim: each decompressed once for the batch, in cache) -> top-k.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

import lateint_kernels as lk
from lateint_kernels._checks import check_offsets, offsets_flags

from ._atomic import atomic_directory, write_file_atomic

from . import plaid_source as _source


FORMAT = "lateint-plaid"
FORMAT_VERSION = 2
# Stored arrays. The IVF (centroid -> documents) is not stored: it is derived from the codes
# at load (one sort), which keeps it off the disk budget (4 bytes per (centroid, document)
# pair, ~3.5 bytes per token). Centroids are stored in float16 (the index computes with the
# float16-rounded values from the build on, so a load gives back the same index); codes in
# uint16 when there are at most 65,536 centroids.
_ARRAYS = ("centroids", "codes", "packed", "doc_offsets", "bucket_cutoffs", "bucket_weights", "ids", "deleted")


class IndexFormatError(ValueError):
    """An index directory that is not a complete, intact index of a supported version."""


class _VersionGone(Exception):
    """A file of the version being loaded is absent: a save replaced that version meanwhile
    (or the file is lost). Carries the file's name."""


_LOAD_ATTEMPTS = 20


def _save_step(step: int) -> None:
    """Called by `save` before each of its steps: step i < len(_ARRAYS) before writing array
    i, len(_ARRAYS) before the rename, len(_ARRAYS) + 1 before CURRENT. Does nothing; fault-
    injection tests replace it (in their own process) to stop a save at a given step."""
# Names a save writes in an index directory; nothing else there is ever removed.
_VERSION_RE = re.compile(r"v([0-9]{1,18})")
_TMP_DIR_RE = re.compile(r"\.v[0-9]{1,18}\.tmp-([0-9]+)")
_TMP_CURRENT_RE = re.compile(r"\.CURRENT\.tmp-([0-9]+)|CURRENT\.tmp")
# CURRENT: the version's name and its meta.json's SHA-256, or the name alone (an index of
# format 1 may hold either; both load).
_CURRENT_RE = re.compile(r"(v[0-9]{1,18})(?: ([0-9a-f]{64}))?\n")
_VERSION_FILES = tuple(f"{key}.npy" for key in _ARRAYS) + ("meta.json",)
_META_KEYS = {"format", "version", "nbits", "arrays", "user"}
_ARRAY_INFO_KEYS = {"dtype", "shape", "sha256"}


def _read_current(path: str) -> Tuple[str, Optional[str]]:
    """(version directory name, meta.json SHA-256 or None) from path/CURRENT."""
    cur = os.path.join(path, "CURRENT")
    try:
        with open(cur, "rb") as f:
            raw = f.read(256)
    except FileNotFoundError:
        if os.path.isdir(path):
            raise IndexFormatError(f"{path}: not a lateint PLAID index (no CURRENT file)") from None
        raise IndexFormatError(f"{path}: no such index directory") from None
    except OSError as e:
        raise IndexFormatError(f"{path}: CURRENT unreadable: {e}") from None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        text = None
    m = _CURRENT_RE.fullmatch(text) if text is not None else None
    if m is None:
        raise IndexFormatError(f"{path}: CURRENT is damaged (expected 'v<N> <sha256>', got {raw[:80]!r})")
    return m.group(1), m.group(2)


def _parse_meta(path: str, name: str, raw: bytes) -> dict:
    """meta.json's content, checked key by key; IndexFormatError naming what is wrong."""
    where = f"{path}: {name}/meta.json"
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise IndexFormatError(f"{where} is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise IndexFormatError(f"{where} must hold a JSON object")
    if meta.get("format") != FORMAT:
        raise IndexFormatError(f"{where}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version") != FORMAT_VERSION or isinstance(meta.get("version"), bool):
        raise IndexFormatError(f"{where}: format version {meta.get('version')!r}; this lateint reads "
                               f"version {FORMAT_VERSION}")
    if set(meta) != _META_KEYS:
        raise IndexFormatError(f"{where}: expected the keys {sorted(_META_KEYS)}, got {sorted(meta)}")
    if meta["nbits"] not in (1, 2, 4, 8) or isinstance(meta["nbits"], bool):
        raise IndexFormatError(f"{where}: nbits {meta['nbits']!r}, expected 1, 2, 4 or 8")
    arrays = meta["arrays"]
    if not isinstance(arrays, dict) or set(arrays) != set(_ARRAYS):
        raise IndexFormatError(f"{where}: 'arrays' must describe exactly {list(_ARRAYS)}")
    for key, info in arrays.items():
        ok = (isinstance(info, dict) and set(info) == _ARRAY_INFO_KEYS and isinstance(info["dtype"], str)
              and isinstance(info["shape"], list)
              and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in info["shape"])
              and isinstance(info["sha256"], str) and re.fullmatch(r"[0-9a-f]{64}", info["sha256"]))
        if not ok:
            raise IndexFormatError(f"{where}: the entry of array {key!r} must be "
                                   "{\"dtype\": str, \"shape\": [int, ...], \"sha256\": hex}")
    if not isinstance(meta["user"], dict):
        raise IndexFormatError(f"{where}: the 'user' entry must be an object")
    return meta


def _is_own_version_dir(d: str) -> bool:
    """A directory (not a link to one) holding nothing but files a save writes into a
    version directory."""
    if os.path.islink(d) or not os.path.isdir(d):
        return False
    try:
        entries = os.listdir(d)
    except OSError:
        return False
    return all(e in _VERSION_FILES and os.path.isfile(os.path.join(d, e)) for e in entries)


def _delete_own_dir(d: str) -> None:
    """Deletes a directory _is_own_version_dir accepted: its files, then itself."""
    for e in os.listdir(d):
        os.remove(os.path.join(d, e))
    os.rmdir(d)


def _remove_own_dir(d: str) -> None:
    """Removes a version (or temporary) directory that holds only the files a save writes;
    leaves it, and says so, when it holds anything else."""
    if not os.path.lexists(d):
        return
    if not _is_own_version_dir(d):
        raise IndexFormatError(f"{d}: in the way of a save and not written by one (holds other files); "
                               "not removing it")
    _delete_own_dir(d)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_leftover(path: str, entry: str) -> None:
    """After a save: removes `entry` of the index directory when a save wrote it (an older
    version, a crashed save's temporary directory or CURRENT) and no live save still owns
    it; anything else stays."""
    full = os.path.join(path, entry)
    tmp_dir, tmp_cur = _TMP_DIR_RE.fullmatch(entry), _TMP_CURRENT_RE.fullmatch(entry)
    if tmp_dir or (tmp_cur and tmp_cur.group(1)):
        pid = int((tmp_dir or tmp_cur).group(1))
        if pid != os.getpid() and _pid_alive(pid):
            return  # another process's save in progress
    elif not (_VERSION_RE.fullmatch(entry) or tmp_cur):
        return
    try:
        if tmp_cur:
            if os.path.isfile(full) and not os.path.islink(full):
                os.remove(full)
        elif _is_own_version_dir(full):
            _delete_own_dir(full)
    except FileNotFoundError:
        pass


def _prepare_index_dir(path: str) -> Optional[str]:
    """Makes sure `path` can take a save: creates it, or checks that it is empty or an index.
    Returns the live version's name (None for a new index)."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise IndexFormatError(f"PLAIDIndex.save: {path} exists and is not a directory")
    os.makedirs(path, exist_ok=True)
    if os.path.exists(os.path.join(path, "CURRENT")):
        return _read_current(path)[0]
    if os.listdir(path):
        raise IndexFormatError(f"PLAIDIndex.save: {path} is a non-empty directory that is not a lateint index; "
                               "not writing into it (nothing was changed). Save into a new or empty directory.")
    return None


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _ivf(codes: torch.Tensor, doc_offsets: torch.Tensor, k: int):
    """CSR centroid -> sorted unique documents having a token with that code."""
    n = doc_offsets.shape[0] - 1
    doc_of = torch.repeat_interleave(torch.arange(n), doc_offsets[1:] - doc_offsets[:-1])
    pairs = torch.unique(codes.long() * max(n, 1) + doc_of)  # sorted by (centroid, document)
    ivf_docs = pairs % max(n, 1)
    ivf_offsets = torch.zeros(k + 1, dtype=torch.int64)
    ivf_offsets[1:] = torch.cumsum(torch.bincount(pairs // max(n, 1), minlength=k), 0)
    return ivf_offsets, ivf_docs


def _no_results(nq: int, k: int, device=None):
    return (torch.full((nq, k), -1, dtype=torch.int64, device=device),
            torch.full((nq, k), float("-inf"), device=device))


_TENSORS = ("centroids", "codes", "packed", "doc_offsets", "ivf_offsets", "ivf_docs", "bucket_cutoffs",
            "bucket_weights", "ids", "deleted")


def _int_ids(op: str, arg: str, ids, *, nonnegative: bool = True) -> torch.Tensor:
    """ids (a tensor, array or sequence of integers) as int64 [n], or TypeError / ValueError
    naming the argument: floats, strings and booleans are refused, not truncated."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{op}: `{arg}` must be a sequence of integer ids, got a string")
    if isinstance(ids, torch.Tensor):
        kind = "i" if not (ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool) else "f"
        arr = ids.detach().cpu()
        if kind != "i":
            raise TypeError(f"{op}: `{arg}` must hold integers, got a {ids.dtype} tensor")
        t = arr.to(torch.int64)
    else:
        try:
            a = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids))
        except (TypeError, ValueError) as e:
            raise TypeError(f"{op}: `{arg}` must be a sequence of integer ids ({e})") from None
        if a.size == 0:
            a = a.astype(np.int64)
        if a.dtype.kind not in "iu":
            raise TypeError(f"{op}: `{arg}` must hold integers, got {a.dtype} values "
                            f"(e.g. {a.reshape(-1)[:3].tolist()})")
        if a.dtype.kind == "u" and a.size and int(a.max()) > np.iinfo(np.int64).max:
            raise ValueError(f"{op}: `{arg}` holds ids past the int64 range")
        t = torch.from_numpy(a.astype(np.int64))
    if t.dim() != 1:
        raise ValueError(f"{op}: `{arg}` must be one-dimensional, got shape {tuple(t.shape)}")
    if nonnegative and t.numel() and int(t.min()) < 0:
        raise ValueError(f"{op}: `{arg}` must be >= 0 (-1 marks 'no result' in search output), got "
                         f"{int(t.min())}")
    return t


def _positive_int(op: str, arg: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{op}: `{arg}` must be an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{op}: `{arg}` must be >= 1, got {value}")
    return int(value)


def _check_tokens(op: str, doc_tokens, doc_offsets, dim: Optional[int] = None) -> None:
    if not isinstance(doc_tokens, torch.Tensor) or doc_tokens.dim() != 2:
        raise ValueError(f"{op}: `doc_tokens` must be a 2-D tensor [T, dim]")
    if not doc_tokens.is_floating_point():
        raise TypeError(f"{op}: `doc_tokens` must be float32, float16 or bfloat16, got {doc_tokens.dtype}")
    if dim is not None and doc_tokens.shape[1] != dim:
        raise ValueError(f"{op}: `doc_tokens` must be [T, {dim}] (the index's dim), got {tuple(doc_tokens.shape)}")
    if not isinstance(doc_offsets, torch.Tensor) or doc_offsets.dim() != 1 or doc_offsets.dtype != torch.int64:
        raise ValueError(f"{op}: `doc_offsets` must be an int64 tensor [n + 1]")
    if doc_offsets.shape[0] < 1:
        raise ValueError(f"{op}: `doc_offsets` must hold n + 1 >= 1 entries (it starts with 0)")
    check_offsets(op, doc_offsets, doc_tokens.shape[0])
    if not bool(torch.isfinite(doc_tokens).all()):
        raise ValueError(f"{op}: `doc_tokens` contains NaN or Inf")


def _defaults_for_k(k: int) -> Tuple[int, float, int]:
    """(ncells, centroid_score_threshold, ndocs) as PLAID picks them from k."""
    if k <= 10:
        return 1, 0.5, 256
    if k <= 100:
        return 2, 0.45, 1024
    return 4, 0.4, max(k * 4, 4096)


def _check_search(dim: int, device, queries, k, query_mask, ncells, centroid_score_threshold, ndocs, ndocs_exact,
                  scorer) -> int:
    """Checks search's arguments (ValueError / TypeError naming the argument); returns k."""
    if scorer not in ("exact", "lut"):
        raise ValueError(f"PLAIDIndex.search: `scorer` must be 'exact' or 'lut', got {scorer!r}")
    if scorer == "lut" and device.type != "cpu":
        raise ValueError(f"PLAIDIndex.search: scorer 'lut' has a CPU kernel only; on {device} it would run "
                         f"the float64 reference. Use scorer='exact' (fused on the GPU) or a CPU index")
    if queries.dim() != 3 or queries.shape[2] != dim:
        raise ValueError(f"PLAIDIndex.search: `queries` must be [n_queries, query_len, "
                         f"{dim}], got {tuple(queries.shape)}")
    op = "PLAIDIndex.search"
    k = _positive_int(op, "k", k)
    for arg, v in (("ncells", ncells), ("ndocs", ndocs), ("ndocs_exact", ndocs_exact)):
        if v is not None:
            _positive_int(op, arg, v)
    if centroid_score_threshold is not None:
        if isinstance(centroid_score_threshold, bool) or not isinstance(
                centroid_score_threshold, (int, float, np.integer, np.floating)):
            raise TypeError(f"{op}: `centroid_score_threshold` must be a number, got {centroid_score_threshold!r}")
        if math.isnan(centroid_score_threshold):
            raise ValueError(f"{op}: `centroid_score_threshold` must be a number, got nan")
    if queries.device != device:
        raise ValueError(f"PLAIDIndex.search: `queries` must be on the index's device ({device}), got "
                         f"{queries.device} (PLAIDIndex.to moves the index)")
    if query_mask is not None and (not isinstance(query_mask, torch.Tensor) or query_mask.dtype != torch.bool
                                   or query_mask.shape != queries.shape[:2]
                                   or query_mask.device != queries.device):
        raise ValueError(f"PLAIDIndex.search: `query_mask` must be a bool tensor [n_queries, query_len] = "
                         f"{list(queries.shape[:2])} on {queries.device}")
    bad = ~torch.isfinite(queries).all(-1)
    if bool((bad if query_mask is None else bad & query_mask).any()):  # one host sync
        raise ValueError("PLAIDIndex.search: `queries` contains NaN or Inf (in an unmasked token)")
    return k


class _Segment:
    """One run of documents of an index under its codec: codes int32 [T], packed residuals,
    doc_offsets int64 [n + 1], the IVF (ivf_offsets int64 [k + 1], ivf_docs int64, documents
    numbered within the segment) and `base`, the global number of its first document."""
    __slots__ = ("codes", "packed", "doc_offsets", "ivf_offsets", "ivf_docs", "base", "n_docs")

    def __init__(self, codes, packed, doc_offsets, ivf_offsets, ivf_docs, base: int):
        self.codes, self.packed, self.doc_offsets = codes, packed, doc_offsets
        self.ivf_offsets, self.ivf_docs, self.base = ivf_offsets, ivf_docs, base
        self.n_docs = doc_offsets.shape[0] - 1


def _top_positions(values: torch.Tensor, keep: int) -> torch.Tensor:
    """Positions int64 [nq, keep], ascending, of the `keep` largest values of each row, ties
    going to the lower position. Deterministic (torch.topk's choice among ties is not), so
    that a search over several segments selects what one segment of the same documents
    selects. No host sync."""
    nq, w = values.shape
    if keep >= w:
        return torch.arange(w, device=values.device).expand(nq, w)
    kth = values.topk(keep, dim=1).values[:, -1:]
    gt = values > kth
    eq = values == kth
    need = keep - gt.sum(1, keepdim=True)
    sel = gt | (eq & (torch.cumsum(eq, 1) <= need))
    rank = torch.where(sel, torch.cumsum(sel, 1) - 1, keep)
    out = torch.empty(nq, keep + 1, dtype=torch.int64, device=values.device)
    out.scatter_(1, rank, torch.arange(w, device=values.device).expand(nq, w))
    return out[:, :keep]


def _per_segment(segs, best: torch.Tensor, fn) -> torch.Tensor:
    """fn(segment, local candidates) over every segment, combined: float32 [nq, m] with each
    global candidate of `best` (-1: none) scored by the segment that holds it, -inf for none."""
    if len(segs) == 1:
        return fn(segs[0], best)
    out = torch.full(best.shape, float("-inf"), device=best.device)
    for seg in segs:
        inside = (best >= seg.base) & (best < seg.base + seg.n_docs)
        local = torch.where(inside, best - seg.base, torch.full_like(best, -1))
        out = torch.where(inside, fn(seg, local), out)
    return out


_WORKSPACE = threading.local()
# the largest scores buffer a thread keeps between searches (larger batches allocate theirs
# for the call only)
_WORKSPACE_MAX_BYTES = 1 << 29


def _scores_workspace(queries: torch.Tensor, centroids: torch.Tensor) -> Optional[torch.Tensor]:
    """The calling thread's buffer for the centroid scores of a CPU search (grown to the
    largest batch it has searched, up to _WORKSPACE_MAX_BYTES, kept between searches): a
    batch of 32 queries of 32 tokens against 65,536 centroids writes 268 MB of scores, and
    fresh pages for that much cost as long as the matmul itself."""
    if queries.device.type != "cpu":
        return None
    n = queries.shape[0] * queries.shape[1] * centroids.shape[0]
    if 4 * n > _WORKSPACE_MAX_BYTES:
        return None
    buf = getattr(_WORKSPACE, "scores", None)
    if buf is None or buf.numel() < n:
        buf = _WORKSPACE.scores = None  # the old buffer goes before the new one is allocated
        buf = _WORKSPACE.scores = torch.empty(n)
    return buf


def _search_segments(segs, centroids, bucket_weights, nbits: int, ids: torch.Tensor, allowed, queries, k: int, *,
                     query_mask, ncells, centroid_score_threshold, ndocs, ndocs_exact, scorer):
    """PLAID's search over the segments of one codec (arguments checked by _check_search);
    `allowed`: None or bool [1 or nq, n_docs + 1] (global numbering; last slot the -1
    padding). Per segment: IVF candidates and pruned centroid scores, its best `ndocs`; across
    segments the best `ndocs` of those (the same documents one segment holding them all
    selects, ties to the lower document number), then stage 3 and the exact scores, each
    candidate scored by its segment."""
    d_cells, d_thr, d_ndocs = _defaults_for_k(k)
    ncells = d_cells if ncells is None else ncells
    thr = d_thr if centroid_score_threshold is None else centroid_score_threshold
    ndocs = max(k, d_ndocs if ndocs is None else ndocs)
    ndocs_exact = max(k, ndocs // 4) if ndocs_exact is None else max(k, min(ndocs_exact, ndocs))
    q = queries.float()
    nq = q.shape[0]
    s = lk.centroid_scores(q, centroids, workspace=_scores_workspace(q, centroids))
    # the arrays were validated when the index came to be, the queries by _check_search:
    # the stages run with validation off
    bests, vals = [], []
    for seg in segs:
        cand = lk.ivf_candidates(s, seg.ivf_offsets, seg.ivf_docs, seg.n_docs, ncells, query_mask=query_mask,
                                 validate=False)
        if allowed is not None:
            rows = torch.cat([allowed[:, seg.base:seg.base + seg.n_docs], allowed[:, -1:]], 1)
            idx = cand.clamp(min=-1) % (seg.n_docs + 1)
            ok = torch.gather(rows.expand(nq, -1), 1, idx) & (cand >= 0)
            cand = torch.where(ok, cand, torch.full_like(cand, -1))
        if cand.shape[1] == 0:
            continue
        approx = lk.approx_scores(s, seg.codes, seg.doc_offsets, cand, threshold=thr, query_mask=query_mask,
                                  validate=False)
        pos = _top_positions(approx, min(ndocs, cand.shape[1]))
        best = torch.gather(cand, 1, pos)
        bests.append(torch.where(best >= 0, best + seg.base, best))
        vals.append(torch.gather(approx, 1, pos))
    if not bests:
        return _no_results(nq, k, q.device)
    best, val = (bests[0], vals[0]) if len(bests) == 1 else (torch.cat(bests, 1), torch.cat(vals, 1))
    if len(bests) > 1:
        pos = _top_positions(val, min(ndocs, best.shape[1]))
        best, val = torch.gather(best, 1, pos), torch.gather(val, 1, pos)
    best = torch.where(torch.isfinite(val), best, torch.full_like(best, -1))
    if ndocs_exact < best.shape[1]:  # PLAID's stage 3: centroid-only scores, no pruning
        full = _per_segment(segs, best, lambda seg, c: lk.approx_scores(
            s, seg.codes, seg.doc_offsets, c, query_mask=query_mask, validate=False))
        pos = _top_positions(full, ndocs_exact)
        best = torch.gather(best, 1, pos)
        best = torch.where(torch.isfinite(torch.gather(full, 1, pos)), best, torch.full_like(best, -1))
    if scorer == "exact":
        # exact MaxSim on the decompressed candidates, each decompressed once for the batch
        # and scored in cache (lk.decompress_maxsim: the corpus is never decompressed)
        exact = _per_segment(segs, best, lambda seg, c: lk.decompress_maxsim(
            q, seg.codes, seg.packed, seg.doc_offsets, centroids, bucket_weights, nbits, c, query_mask=query_mask,
            validate=False))
    else:  # compressed domain, unnormalized reconstructions (WARP's implicit decompression)
        exact = _per_segment(segs, best, lambda seg, c: lk.lut_maxsim(
            q, s, seg.codes, seg.packed, seg.doc_offsets, bucket_weights, nbits, c, query_mask=query_mask,
            validate=False))
    kk = min(k, exact.shape[1])
    pos = _top_positions(exact, kk)
    top = torch.sort(torch.gather(exact, 1, pos), dim=1, descending=True, stable=True)
    doc_idx = torch.gather(torch.gather(best, 1, pos), 1, top.indices)
    out_ids = torch.where(doc_idx >= 0, ids[doc_idx.clamp(min=0)], torch.full_like(doc_idx, -1))
    out_scores = torch.where(doc_idx >= 0, top.values, torch.full_like(top.values, float("-inf")))
    if kk < k:
        pad_ids, pad_scores = _no_results(nq, k - kk, q.device)
        out_ids, out_scores = torch.cat([out_ids, pad_ids], 1), torch.cat([out_scores, pad_scores], 1)
    return out_ids, out_scores


class PLAIDIndex:
    def __init__(self, centroids, codes, packed, doc_offsets, ivf_offsets, ivf_docs, bucket_cutoffs,
                 bucket_weights, nbits, ids, deleted=None):
        self.centroids = centroids
        self.codes = codes
        self.packed = packed
        self.doc_offsets = doc_offsets
        self.ivf_offsets = ivf_offsets
        self.ivf_docs = ivf_docs
        self.bucket_cutoffs = bucket_cutoffs
        self.bucket_weights = bucket_weights
        self.nbits = nbits
        self.ids = ids
        self.deleted = torch.zeros(ids.shape[0], dtype=torch.bool) if deleted is None else deleted
        # free-form JSON saved with the index (in meta.json, so in the same atomic write):
        # adapters keep their own document keys here, e.g. PyLate's string ids
        self.metadata: dict = {}
        self._check_arrays()

    def _check_arrays(self) -> None:
        """Validates the arrays the search stages read, once (one host sync on a GPU):
        offsets, code and IVF ranges, shapes. Every way an index comes to be (build, load,
        to, add, compact) ends here, so `search` calls its stages with validation off."""
        k, dim = self.centroids.shape
        n_tok, nd = self.codes.shape[0], self.doc_offsets.shape[0] - 1
        shapes = (self.packed.shape == (n_tok, dim * self.nbits // 8) and self.codes.dtype == torch.int32
                  and self.ids.shape == (nd,) and self.deleted.shape == (nd,)
                  and self.ivf_offsets.shape == (k + 1,) and self.bucket_weights.shape == (1 << self.nbits,))
        if not shapes:
            raise IndexFormatError("PLAIDIndex: arrays of inconsistent shapes or dtypes")
        if self.codes.is_meta:  # shapes only: no data to check
            self._any_deleted = False
            return
        flags = (offsets_flags(self.doc_offsets, n_tok) + offsets_flags(self.ivf_offsets, self.ivf_docs.shape[0])
                 + [self.deleted.any()])
        if n_tok:
            flags.append((self.codes < 0).any() | (self.codes >= k).any())
        if self.ivf_docs.numel():
            flags.append((self.ivf_docs < 0).any() | (self.ivf_docs >= nd).any())
        got = torch.stack(flags).tolist()
        self._any_deleted = got[6]
        if any(got[:6]) or any(got[7:]):
            raise IndexFormatError("PLAIDIndex: invalid arrays (offsets out of order or past the tokens, or codes "
                                   "or IVF entries out of range)")

    @property
    def n_docs(self) -> int:
        return self.doc_offsets.shape[0] - 1

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def to(self, device) -> "PLAIDIndex":
        """The index with its arrays on `device` (self when they are there already). On a
        CUDA device `search` runs there end to end: centroid scores by torch's matmul, the
        PLAID stages by the ops' CUDA kernels (Triton; the CPU search's top-10 on an H100,
        bench/RESULTS.md). The arrays are checked on the new device (one host sync); `add`,
        `delete`, `compact` and `build` work on CPU indexes; `save` takes either."""
        device = torch.device(device)
        if all(getattr(self, key).device == device for key in _TENSORS):
            return self
        out = PLAIDIndex(*[getattr(self, key).to(device) for key in _TENSORS[:8]], self.nbits,
                         self.ids.to(device), self.deleted.to(device))
        out.metadata = json.loads(json.dumps(self.metadata))
        return out

    def _require_cpu(self, op: str) -> None:
        if self.device.type != "cpu":
            raise ValueError(f"PLAIDIndex.{op}: updates work on a CPU index; this one is on {self.device} "
                             f"(index.to('cpu'), update, then .to('{self.device}') again)")

    @property
    def n_tokens(self) -> int:
        return self.codes.shape[0]

    @property
    def dim(self) -> int:
        return self.centroids.shape[1]

    # -----------------------------------------------------------------------------------
    @classmethod
    def build(cls, doc_tokens: torch.Tensor, doc_offsets: torch.Tensor, ids: Optional[Sequence[int]] = None, *,
              nbits: int = 4, seed: int = 0, n_centroids: Optional[int] = None, kmeans_niter: int = 20,
              sample_docs: Optional[int] = None, show_progress_bar: bool = False,
              pool_factor: int = 1, max_points_per_centroid: Optional[int] = 256,
              buckets: str = "lloyd") -> "PLAIDIndex":
        """Index packed documents (doc_tokens [T, dim] float, L2-normalized; doc_offsets
        int64 [n + 1]). Centroid count and k-means sample follow PLAID's rules unless given:
        sample = min(n, 1 + 16 * sqrt(120 * n)) documents, centroids =
        2 ** floor(log2(16 * sqrt(tokens of the sample scaled to the corpus))). pool_factor > 1
        first pools each document's tokens (lk.token_pool, PyLate's hierarchical pooling).
        buckets: "lloyd" (default) fits the residual buckets for the least squared error,
        "quantile" as PLAID does (lk.residual_buckets); same bytes and search either way."""
        op = "PLAIDIndex.build"
        _check_tokens(op, doc_tokens, doc_offsets)
        n = doc_offsets.shape[0] - 1
        if n < 1 or doc_tokens.shape[0] < 1:
            raise ValueError(f"{op}: no documents (or no tokens) to index")
        if nbits not in (1, 2, 4, 8) or isinstance(nbits, bool):
            raise ValueError(f"{op}: `nbits` must be 1, 2, 4 or 8, got {nbits!r}")
        if doc_tokens.shape[1] * nbits % 8:
            raise ValueError(f"{op}: dim * nbits must be a multiple of 8")
        _positive_int(op, "pool_factor", pool_factor)
        _positive_int(op, "kmeans_niter", kmeans_niter)
        _source.check_buckets(op, buckets)
        for arg, v in (("n_centroids", n_centroids), ("sample_docs", sample_docs),
                       ("max_points_per_centroid", max_points_per_centroid)):
            if v is not None:
                _positive_int(op, arg, v)
        if ids is None:
            ids_t = torch.arange(n, dtype=torch.int64)
        else:
            ids_t = _int_ids(op, "ids", ids)
            if ids_t.shape != (n,) or torch.unique(ids_t).numel() != n:
                raise ValueError(f"{op}: `ids` must be {n} distinct integers (one per document), got "
                                 f"{ids_t.numel()} with {torch.unique(ids_t).numel()} distinct")
        if pool_factor != 1:
            doc_tokens, doc_offsets = lk.token_pool(doc_tokens, doc_offsets, pool_factor)
        src = _source.Source(_source.split(doc_tokens, doc_offsets), op)
        lengths, _ = _source.scan(src, False, False)
        codec = _source.train_codec(src, lengths, nbits=nbits, seed=seed, n_centroids=n_centroids,
                                    kmeans_niter=kmeans_niter, sample_docs=sample_docs,
                                    max_points_per_centroid=max_points_per_centroid,
                                    progress=show_progress_bar, buckets=buckets)
        centroids, cutoffs, weights = codec.centroids, codec.bucket_cutoffs, codec.bucket_weights
        codes = torch.empty(doc_tokens.shape[0], dtype=torch.int32)
        packed = torch.empty(doc_tokens.shape[0], doc_tokens.shape[1] * nbits // 8, dtype=torch.uint8)
        for c in src.passes():
            end = c.tok0 + c.tokens.shape[0]
            codes[c.tok0:end], packed[c.tok0:end] = _source.encode_chunk(c.tokens, codec)
        ivf_offsets, ivf_docs = _ivf(codes, doc_offsets, centroids.shape[0])
        return cls(centroids, codes, packed, doc_offsets.clone(), ivf_offsets, ivf_docs, cutoffs, weights,
                   nbits, ids_t)

    # -----------------------------------------------------------------------------------
    def add(self, doc_tokens: torch.Tensor, doc_offsets: torch.Tensor, ids: Sequence[int]) -> None:
        """Appends documents under new ids: their tokens go to the existing centroids and
        buckets (no k-means), the IVF is rebuilt from the codes."""
        self._require_cpu("add")
        op = "PLAIDIndex.add"
        _check_tokens(op, doc_tokens, doc_offsets, self.centroids.shape[1])
        m = doc_offsets.shape[0] - 1
        ids_t = _int_ids(op, "ids", ids)
        if ids_t.shape != (m,) or torch.unique(ids_t).numel() != m:
            raise ValueError(f"{op}: `ids` must be {m} distinct integers (one per document)")
        clash = torch.isin(ids_t, self.ids)
        if clash.any():
            raise ValueError(f"{op}: ids already in the index: {ids_t[clash][:5].tolist()}")
        x = doc_tokens.float().contiguous()
        codes = lk.kmeans_assign(x, self.centroids)
        packed = lk.compress_residuals(x, self.centroids, codes, self.bucket_cutoffs, self.nbits)
        self.codes = torch.cat([self.codes, codes])
        self.packed = torch.cat([self.packed, packed])
        self.doc_offsets = torch.cat([self.doc_offsets, self.doc_offsets[-1] + doc_offsets[1:]])
        self.ids = torch.cat([self.ids, ids_t])
        self.deleted = torch.cat([self.deleted, torch.zeros(m, dtype=torch.bool)])
        self.ivf_offsets, self.ivf_docs = _ivf(self.codes, self.doc_offsets, self.centroids.shape[0])
        self._check_arrays()

    def delete(self, ids: Sequence[int]) -> None:
        """Tombstones documents by id (search skips them; `compact` removes them)."""
        self._require_cpu("delete")
        ids_t = _int_ids("PLAIDIndex.delete", "ids", ids, nonnegative=False)
        live = self.ids[~self.deleted]
        unknown = ids_t[~torch.isin(ids_t, live)]
        if unknown.numel():
            raise KeyError(f"PLAIDIndex.delete: ids not in the index: {unknown[:5].tolist()}")
        self.deleted = self.deleted | torch.isin(self.ids, ids_t)
        self._any_deleted = bool(self.deleted.any())

    def compact(self) -> None:
        """Drops tombstoned documents from the arrays (ids of the others stay)."""
        self._require_cpu("compact")
        keep = ~self.deleted
        lens = self.doc_offsets[1:] - self.doc_offsets[:-1]
        tok_keep = torch.repeat_interleave(keep, lens)
        self.codes = self.codes[tok_keep]
        self.packed = self.packed[tok_keep]
        self.doc_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lens[keep], 0)])
        self.ids = self.ids[keep]
        self.deleted = torch.zeros(self.ids.shape[0], dtype=torch.bool)
        self.ivf_offsets, self.ivf_docs = _ivf(self.codes, self.doc_offsets, self.centroids.shape[0])
        self._check_arrays()

    # -----------------------------------------------------------------------------------
    def search(self, queries: torch.Tensor, k: int = 10, *, query_mask: Optional[torch.Tensor] = None,
               ncells: Optional[int] = None, centroid_score_threshold: Optional[float] = None,
               ndocs: Optional[int] = None, ndocs_exact: Optional[int] = None, subset=None,
               scorer: str = "exact"):
        """queries [nq, Lq, dim] -> (ids int64 [nq, k], scores float32 [nq, k]); -1 / -inf
        where fewer than k documents qualify. PLAID's stages: candidates from the `ncells`
        best centroids of each query token; the `ndocs` best by centroid-only scores with
        centroids under `centroid_score_threshold` pruned; the `ndocs_exact` (default
        max(k, ndocs // 4), as PLAID) best of those by centroid-only scores without pruning;
        those scored exactly. `subset`: ids every query is restricted to, or
        one list of ids per query. `scorer`: "exact" (default: MaxSim on the decompressed,
        normalized candidates, as ColBERTv2/PLAID) or "lut" (scored in the compressed domain
        through per-query lookup tables, against unnormalized reconstructions, as WARP does;
        see bench/RESULTS.md for when it is faster)."""
        k = _check_search(self.centroids.shape[1], self.device, queries, k, query_mask, ncells,
                          centroid_score_threshold, ndocs, ndocs_exact, scorer)
        return _search_segments(self._segments(), self.centroids, self.bucket_weights, self.nbits, self.ids,
                                self._allowed_rows(subset, queries.shape[0])
                                if subset is not None or self._any_deleted else None,
                                queries, k, query_mask=query_mask, ncells=ncells,
                                centroid_score_threshold=centroid_score_threshold, ndocs=ndocs,
                                ndocs_exact=ndocs_exact, scorer=scorer)

    def _segments(self):
        return [_Segment(self.codes, self.packed, self.doc_offsets, self.ivf_offsets, self.ivf_docs, 0)]

    def _allowed_rows(self, subset, nq: int) -> torch.Tensor:
        """Which documents each query may return: live ones, within `subset` (one list of
        ids for every query, or one list per query)."""
        live = ~self.deleted
        if subset is None:
            rows = live[None]
        else:
            if isinstance(subset, (str, bytes)) or not hasattr(subset, "__len__"):
                raise TypeError(f"PLAIDIndex.search: `subset` must be a sequence of ids or one per query, "
                                f"got {type(subset).__name__}")
            first = subset[0] if not isinstance(subset, torch.Tensor) and len(subset) > 0 else None
            per_query = isinstance(first, (list, tuple, range, np.ndarray, set)) or (
                isinstance(first, torch.Tensor) and first.dim() >= 1)
            if isinstance(subset, torch.Tensor) and subset.dim() == 2:
                per_query, subset = True, list(subset)
            if per_query:
                if len(subset) != nq:
                    raise ValueError(f"PLAIDIndex.search: per-query `subset` needs one id list per query "
                                     f"({nq}), got {len(subset)}")
                rows = torch.stack([torch.isin(self.ids, self._id_tensor(s_)) & live for s_ in subset])
            else:
                rows = (torch.isin(self.ids, self._id_tensor(subset)) & live)[None]
        return torch.cat([rows, torch.zeros(rows.shape[0], 1, dtype=torch.bool, device=rows.device)], 1)

    def _id_tensor(self, ids) -> torch.Tensor:
        """A subset's ids as int64 on the index's device; ids never in the index are refused."""
        t = _int_ids("PLAIDIndex.search", "subset", ids, nonnegative=False)
        unknown = t[~torch.isin(t, self.ids.cpu())]
        if unknown.numel():
            raise ValueError(f"PLAIDIndex.search: `subset` names ids that are not in the index: "
                             f"{unknown[:5].tolist()}")
        return t.to(self.ids.device)

    # -----------------------------------------------------------------------------------
    # On disk: path/CURRENT names the live version directory path/v<N>/ (meta.json + one .npy
    # per array) and the SHA-256 of its meta.json ("v<N> <hex>\n"); meta.json holds each
    # array's dtype, shape and SHA-256, so CURRENT's one line vouches for every byte of the
    # version. A save writes v<N+1> completely (fsync), then replaces CURRENT atomically
    # (os.replace of a file), then removes the old version: a crash at any point leaves
    # CURRENT naming a complete index. A save goes only into an empty directory or an index,
    # and removes only the files and directories it names itself.
    def save(self, path: str) -> None:
        try:
            json.dumps(self.metadata)
        except (TypeError, ValueError) as e:
            raise TypeError(f"PLAIDIndex.save: `metadata` must be JSON-serializable: {e}") from None
        old = _prepare_index_dir(path)
        n = int(old[1:]) + 1 if old else 1
        name = f"v{n}"
        tmp = os.path.join(path, f".{name}.tmp-{os.getpid()}")
        final = os.path.join(path, name)
        _remove_own_dir(tmp)
        _remove_own_dir(final)  # leftover of a crash after its rename: never named by CURRENT
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "nbits": self.nbits, "arrays": {},
                "user": self.metadata}
        with atomic_directory(final, tmp=tmp):
            for i, key in enumerate(_ARRAYS):
                _save_step(i)
                arr = self._disk_array(key)
                fpath = os.path.join(tmp, f"{key}.npy")
                with open(fpath, "wb") as f:
                    np.save(f, arr, allow_pickle=False)
                meta["arrays"][key] = {"dtype": str(arr.dtype), "shape": list(arr.shape), "sha256": _sha256(fpath)}
            meta_bytes = json.dumps(meta, indent=1, sort_keys=True).encode()
            with open(os.path.join(tmp, "meta.json"), "wb") as f:
                f.write(meta_bytes)
            _save_step(len(_ARRAYS))
        _save_step(len(_ARRAYS) + 1)
        write_file_atomic(os.path.join(path, "CURRENT"), f"{name} {hashlib.sha256(meta_bytes).hexdigest()}\n",
                          tmp=os.path.join(path, f".CURRENT.tmp-{os.getpid()}"))
        for entry in os.listdir(path):  # older versions and what crashed saves left
            if entry != name:
                _remove_leftover(path, entry)

    def _disk_array(self, key: str) -> np.ndarray:
        arr = getattr(self, key).contiguous().cpu().numpy()
        if key == "centroids":
            return arr.astype(np.float16)
        if key == "codes" and self.centroids.shape[0] <= 65536:
            return arr.astype(np.uint16)
        return arr

    @classmethod
    def create(cls, path: str, source, **kwargs):
        """Builds an index from `source` straight into the directory `path` (new or empty)
        in bounded memory and returns it opened (lateint.plaid_store.SegmentedIndex, arrays
        memory-mapped). `source`: an embeddings directory (tokens.npy float32/float16 +
        offsets.npy, read memory-mapped), a list of chunks (tokens [t, dim] float32 /
        float16 / bfloat16, offsets int [m + 1] from 0[, ids]) or a function returning an
        iterator of chunks; it is read three times (count, sample, compress), a chunk at a
        time, and never copied whole. Peak memory is set by `chunk_tokens` (default 2^18),
        the k-means sample and the centroids, not by the corpus. Keywords: nbits, seed,
        n_centroids, kmeans_niter (20), max_points_per_centroid (256: at most that many
        k-means points per centroid), buckets ("lloyd" or "quantile", as `build`),
        sample_docs, chunk_tokens, show_progress_bar,
        metadata, verify, coarse_cells and nprobe (a two-level codec: centroids grouped
        under `coarse_cells` coarse centres, each token compared with the centroids of its
        `nprobe` nearest cells only), codec_from (the path of an index whose codec to
        share, instead of training one; its nbits comes with it). Same documents and seed
        -> bit-identical files, however the corpus is cut into chunks, and the arrays
        `build` computes."""
        from . import plaid_store

        return plaid_store.create(path, source, **kwargs)

    @classmethod
    def open(cls, path: str, *, verify: bool = True):
        """Opens an index `create` wrote (lateint.plaid_store.SegmentedIndex)."""
        from . import plaid_store

        return plaid_store.SegmentedIndex.open(path, verify=verify)

    @classmethod
    def load(cls, path: str) -> "PLAIDIndex":
        """Loads an index saved by `save`, arrays memory-mapped (copy-on-write). Refuses, with
        IndexFormatError naming the file, a directory that is not a complete, intact index of
        this format version. A load racing a save of the same index returns the old or the
        new version, never a mix or an error: when the version it started on is removed under
        it, it starts over on the one CURRENT names then."""
        from . import plaid_store

        if plaid_store.is_store(path):
            return plaid_store.SegmentedIndex.open(path)
        seen, missing = None, "?"
        for _ in range(_LOAD_ATTEMPTS):
            name, meta_sha = _read_current(path)
            try:
                return cls._load_version(path, name, meta_sha)
            except _VersionGone as gone:
                missing = str(gone)
                if (name, meta_sha) == seen:  # gone twice without a new CURRENT: not a race
                    break
                seen = (name, meta_sha)
        raise IndexFormatError(f"{path}: {name}/{missing} (of the version CURRENT names) is missing")

    @classmethod
    def _load_version(cls, path: str, name: str, meta_sha: Optional[str]) -> "PLAIDIndex":
        vdir = os.path.join(path, name)
        mpath = os.path.join(vdir, "meta.json")
        try:
            with open(mpath, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise _VersionGone("meta.json") from None
        except OSError as e:
            raise IndexFormatError(f"{path}: {name}/meta.json unreadable: {e}") from None
        if meta_sha is not None and hashlib.sha256(raw).hexdigest() != meta_sha:
            raise IndexFormatError(f"{path}: {name}/meta.json is damaged (its SHA-256 does not match CURRENT's)")
        meta = _parse_meta(path, name, raw)
        arrays = {}
        for key in _ARRAYS:
            info = meta["arrays"][key]
            fpath = os.path.join(vdir, f"{key}.npy")
            try:
                digest = _sha256(fpath)
            except FileNotFoundError:
                raise _VersionGone(f"{key}.npy") from None
            except OSError as e:
                raise IndexFormatError(f"{path}: {name}/{key}.npy unreadable: {e}") from None
            if digest != info["sha256"]:
                raise IndexFormatError(f"{path}: {name}/{key}.npy is damaged (checksum mismatch)")
            try:
                arr = np.load(fpath, mmap_mode="c", allow_pickle=False)
            except FileNotFoundError:
                raise _VersionGone(f"{key}.npy") from None
            except (OSError, ValueError) as e:
                raise IndexFormatError(f"{path}: {name}/{key}.npy unreadable: {e}") from e
            if str(arr.dtype) != info["dtype"] or list(arr.shape) != info["shape"]:
                raise IndexFormatError(f"{path}: {name}/{key}.npy is {arr.dtype} {list(arr.shape)}, recorded "
                                       f"{info['dtype']} {info['shape']}")
            arrays[key] = torch.from_numpy(arr)
        nbits = meta["nbits"]
        if arrays["centroids"].dim() != 2 or arrays["packed"].dim() != 2:
            raise IndexFormatError(f"{path}: arrays of inconsistent shapes or dtypes")
        k, dim = arrays["centroids"].shape
        n_tok = arrays["codes"].shape[0]
        consistent = (arrays["packed"].shape == (n_tok, dim * nbits // 8)
                      and arrays["centroids"].dtype == torch.float16
                      and arrays["codes"].dtype in (torch.uint16, torch.int32) and arrays["codes"].dim() == 1
                      and arrays["doc_offsets"].dtype == torch.int64 and arrays["doc_offsets"].dim() == 1
                      and arrays["doc_offsets"].shape[0] >= 1
                      and arrays["ids"].dtype == torch.int64 and arrays["deleted"].dtype == torch.bool
                      and arrays["ids"].shape == (arrays["doc_offsets"].shape[0] - 1,)
                      and arrays["deleted"].shape == arrays["ids"].shape
                      and arrays["bucket_cutoffs"].shape == ((1 << nbits) - 1,)
                      and arrays["bucket_weights"].shape == (1 << nbits,)
                      and int(arrays["doc_offsets"][-1]) == n_tok)
        if not consistent:
            raise IndexFormatError(f"{path}: arrays of inconsistent shapes or dtypes")
        doc_offsets = arrays["doc_offsets"]
        if int(doc_offsets[0]) != 0 or bool((doc_offsets[1:] < doc_offsets[:-1]).any()):
            raise IndexFormatError(f"{path}: doc_offsets.npy is not a valid offsets array (0, non-decreasing)")
        codes = arrays["codes"].to(torch.int32)
        if n_tok and (int(codes.max()) >= k or int(codes.min()) < 0):
            raise IndexFormatError(f"{path}: codes refer to centroids past the {k} stored (or negative)")
        ivf_offsets, ivf_docs = _ivf(codes, doc_offsets, k)
        index = cls(arrays["centroids"].float(), codes, arrays["packed"], doc_offsets, ivf_offsets, ivf_docs,
                    arrays["bucket_cutoffs"], arrays["bucket_weights"], nbits, arrays["ids"], arrays["deleted"])
        index.metadata = meta["user"]
        return index

    def bytes_per_token(self, where: str = "disk") -> float:
        """Bytes per token of the index: "disk" = the arrays `save` writes (residuals, codes,
        float16 centroids and the per-document arrays amortized); "memory" = what a loaded
        index holds (codes as int32, float32 centroids, plus the derived IVF)."""
        if where == "disk":
            total = sum(self._disk_array(key).nbytes for key in _ARRAYS)
        elif where == "memory":
            total = sum(getattr(self, key).numel() * getattr(self, key).element_size()
                        for key in _ARRAYS + ("ivf_offsets", "ivf_docs"))
        else:
            raise ValueError(f'bytes_per_token: `where` must be "disk" or "memory", got {where!r}')
        return total / max(1, self.n_tokens)
