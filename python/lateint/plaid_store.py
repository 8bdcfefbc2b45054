"""The segmented on-disk PLAID index: one codec, immutable segments, tombstones, a manifest.

    path/CURRENT                  "manifest-<N>.json <sha256 of that file>\\n"
    path/manifest-<N>.json        format, nbits, dim, the codec and the segments (each file's
                                  dtype, shape and SHA-256), the tombstones, user metadata
    path/codec-<C>/               centroids.npy (float16), bucket_cutoffs.npy, bucket_weights.npy
    path/seg-<S>/                 codes.npy (uint16 up to 65,536 centroids, else int32),
                                  packed.npy, doc_offsets.npy, ids.npy, and the IVF:
                                  ivf_docs.npy (uint16: each document's number within the
                                  segment modulo 65,536) and ivf_offsets.npy (int64
                                  [k * B + 1]: the start of each (centroid, block) run, B =
                                  ceil(documents / 65,536) blocks of 65,536 documents), so an
                                  entry costs 2 bytes and its block comes from its run.
                                  (Segments whose ivf_docs.npy is int32 hold the documents'
                                  numbers whole and ivf_offsets [k + 1]; they still load.)
    path/tombstones-<N>.npy       int64 [m, 2]: (segment number, row) of deleted documents
    path/LOCK                     taken (flock) by the one process that writes at a time

Nothing is ever rewritten in place. A change (create, add, delete, merge) writes its new
files under temporary names, fsyncs and renames them, then writes manifest-<N+1>.json and
replaces CURRENT (write-temp, fsync, rename): a crash at any point leaves CURRENT naming a
complete state. Files the new state no longer names are removed afterwards; a reader that
had opened them keeps its memory maps (POSIX), and an open racing the removal starts over on
the state CURRENT names then. Only names this module writes are ever removed.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ._atomic import fsync_dir, write_file_atomic
from . import plaid_source as _source
from .plaid import (FORMAT, IndexFormatError, _check_search, _int_ids, _positive_int, _search_segments,
                    _Segment, _sha256)

STORE_VERSION = 3
_CURRENT_RE = re.compile(r"(manifest-([0-9]{1,18})\.json) ([0-9a-f]{64})\n")
_SEG_FILES = ("codes", "packed", "doc_offsets", "ids", "ivf_offsets", "ivf_docs")
_CODEC_FILES = ("centroids", "bucket_cutoffs", "bucket_weights")
_CELL_FILES = ("coarse", "cell_offsets")  # two-level codecs only
_OWN_ENTRY_RE = re.compile(r"manifest-[0-9]{1,18}\.json|tombstones-[0-9]{1,18}\.npy|(seg|codec)-[0-9]{1,18}"
                           r"|\.tmp-.*")
_OPEN_ATTEMPTS = 20


def _step(name: str) -> None:
    """Called before each step of a change (the name says which); does nothing. Fault-
    injection tests replace it in their own process to stop a change there."""


class _Gone(Exception):
    """A file of the state being opened is absent: a change replaced that state meanwhile."""


def is_store(path: str) -> bool:
    try:
        with open(os.path.join(path, "CURRENT"), "rb") as f:
            return f.read(9) == b"manifest-"
    except OSError:
        return False


# -------------------------------------------------------------------------------------
# files
def _write_npy(path: str, arr: np.ndarray) -> dict:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
    return {"dtype": str(arr.dtype), "shape": list(arr.shape), "sha256": _sha256(path)}


def _fsync_files(d: str) -> None:
    for e in sorted(os.listdir(d)):
        with open(os.path.join(d, e), "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(d)


def _describe(path: str) -> dict:
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    return {"dtype": str(arr.dtype), "shape": list(arr.shape), "sha256": _sha256(path)}


def _publish_dir(tmp: str, final: str) -> None:
    _fsync_files(tmp)
    os.rename(tmp, final)
    fsync_dir(os.path.dirname(final))


def _load_array(root: str, rel: str, info: dict, verify: bool) -> np.ndarray:
    fpath = os.path.join(root, rel)
    try:
        if verify and _sha256(fpath) != info["sha256"]:
            raise IndexFormatError(f"{root}: {rel} is damaged (its SHA-256 does not match the manifest's)")
        arr = np.load(fpath, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise _Gone(rel) from None
    except (OSError, ValueError) as e:
        raise IndexFormatError(f"{root}: {rel} unreadable: {e}") from None
    if str(arr.dtype) != info["dtype"] or list(arr.shape) != info["shape"]:
        raise IndexFormatError(f"{root}: {rel} is {arr.dtype} {list(arr.shape)}, the manifest says "
                               f"{info['dtype']} {info['shape']}")
    return arr


def _t(arr: np.ndarray) -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():  # read-only memory maps: the index never writes to them
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def _check_manifest(root: str, name: str, m) -> dict:
    where = f"{root}: {name}"
    if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("version") != STORE_VERSION:
        raise IndexFormatError(f"{where}: not a lateint segmented index manifest of version {STORE_VERSION}")
    need = {"format", "version", "generation", "nbits", "dim", "codec", "segments", "tombstones", "next",
            "drift", "user"}
    if set(m) != need:
        raise IndexFormatError(f"{where}: expected the keys {sorted(need)}, got {sorted(m)}")

    def files_ok(files, keys):
        return isinstance(files, dict) and set(files) == set(keys) and all(
            isinstance(v, dict) and set(v) == {"dtype", "shape", "sha256"} and isinstance(v["dtype"], str)
            and isinstance(v["shape"], list) and all(isinstance(x, int) and x >= 0 for x in v["shape"])
            and isinstance(v["sha256"], str) and re.fullmatch(r"[0-9a-f]{64}", v["sha256"]) for v in files.values())

    c = m["codec"]
    two = isinstance(c, dict) and "nprobe" in c
    if not (isinstance(c, dict) and isinstance(c.get("dir"), str) and re.fullmatch(r"codec-[0-9]+", c["dir"])
            and set(c) == ({"dir", "files", "nprobe"} if two else {"dir", "files"})
            and files_ok(c.get("files"), _CODEC_FILES + (_CELL_FILES if two else ()))
            and (not two or (isinstance(c["nprobe"], int) and c["nprobe"] >= 1))):
        raise IndexFormatError(f"{where}: a malformed 'codec' entry")
    if not isinstance(m["segments"], list):
        raise IndexFormatError(f"{where}: 'segments' must be a list")
    for s in m["segments"]:
        if not (isinstance(s, dict) and isinstance(s.get("dir"), str) and re.fullmatch(r"seg-[0-9]+", s["dir"])
                and files_ok(s.get("files"), _SEG_FILES)):
            raise IndexFormatError(f"{where}: a malformed segment entry")
    t = m["tombstones"]
    if t is not None and not (isinstance(t, dict) and isinstance(t.get("file"), str)
                              and re.fullmatch(r"tombstones-[0-9]+\.npy", t["file"])
                              and files_ok({"t": t.get("info")}, ["t"])):
        raise IndexFormatError(f"{where}: a malformed 'tombstones' entry")
    d = m["drift"]
    if d is not None and not (isinstance(d, dict) and set(d) == {"outlier_score", "quantile"}
                              and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in d.values())):
        raise IndexFormatError(f"{where}: a malformed 'drift' entry")
    if m["nbits"] not in (1, 2, 4, 8) or not isinstance(m["dim"], int) or not isinstance(m["user"], dict):
        raise IndexFormatError(f"{where}: bad nbits, dim or user entries")
    return m


# -------------------------------------------------------------------------------------
class _State:
    """One immutable, opened state of the index: what a search reads (taken once per search)."""

    def __init__(self, root: str, manifest: dict, verify: bool, reuse: Optional["_State"] = None):
        """reuse: a state of the same index whose segments (immutable) are taken over
        instead of opened again, so a change costs what it writes, not the index's size."""
        self.manifest = manifest
        nbits = manifest["nbits"]
        c = manifest["codec"]
        arr = {k: _load_array(root, f"{c['dir']}/{k}.npy", c["files"][k], verify) for k in _CODEC_FILES}
        if (arr["centroids"].dtype != np.float16 or arr["centroids"].ndim != 2
                or arr["centroids"].shape[1] != manifest["dim"]
                or arr["bucket_cutoffs"].shape != ((1 << nbits) - 1,)
                or arr["bucket_weights"].shape != (1 << nbits,)):
            raise IndexFormatError(f"{root}: {c['dir']}: arrays of inconsistent shapes or dtypes")
        self.centroids = _t(arr["centroids"]).float()
        self.bucket_cutoffs = _t(arr["bucket_cutoffs"])
        self.bucket_weights = _t(arr["bucket_weights"])
        self.nbits = nbits
        k, dim = self.centroids.shape
        self.coarse = self.cell_offsets = self.nprobe = None
        if "nprobe" in c:
            cells = {key: _load_array(root, f"{c['dir']}/{key}.npy", c["files"][key], verify) for key in _CELL_FILES}
            co, off = cells["coarse"], cells["cell_offsets"]
            if (co.dtype != np.float32 or co.ndim != 2 or co.shape[1] != dim or off.dtype != np.int64
                    or off.shape != (co.shape[0] + 1,) or int(off[0]) != 0 or int(off[-1]) > k
                    or bool((np.diff(off) < 0).any())):
                raise IndexFormatError(f"{root}: {c['dir']}: coarse centroids or cell offsets of inconsistent shapes")
            self.coarse, self.cell_offsets, self.nprobe = _t(co), _t(off), c["nprobe"]
        self.segments: List[_Segment] = []
        self.seg_numbers: List[int] = []
        ids, base = [], 0
        old = {} if reuse is None else {f"seg-{num}": (seg, i) for num, seg, i in
                                        zip(reuse.seg_numbers, reuse.segments, reuse.seg_ids)}
        self.seg_ids: List[torch.Tensor] = []
        for s in manifest["segments"]:
            if s["dir"] in old:
                prev, seg_ids = old[s["dir"]]
                ivf_off = prev.ivf_offsets
                if ivf_off.shape[0] < k + 1:  # centroids were appended
                    ivf_off = torch.cat([ivf_off, ivf_off[-1:].expand(k + 1 - ivf_off.shape[0])])
                seg = _Segment(prev.codes, prev.packed, prev.doc_offsets, ivf_off, prev.ivf_docs, base)
            else:
                a = {key: _load_array(root, f"{s['dir']}/{key}.npy", s["files"][key], verify) for key in _SEG_FILES}
                seg = self._segment(root, s["dir"], a, k, dim, nbits, base)
                seg_ids = _t(a["ids"])
            self.segments.append(seg)
            self.seg_numbers.append(int(s["dir"][4:]))
            self.seg_ids.append(seg_ids)
            ids.append(seg_ids)
            base += seg.n_docs
        self.n_docs = base
        self.ids = torch.cat(ids) if ids else torch.empty(0, dtype=torch.int64)
        self.bases = {num: seg.base for num, seg in zip(self.seg_numbers, self.segments)}
        self.deleted = torch.zeros(base, dtype=torch.bool)
        self.tombstones = np.empty((0, 2), dtype=np.int64)
        t = manifest["tombstones"]
        if t is not None:
            tomb = _load_array(root, t["file"], t["info"], verify)
            if tomb.dtype != np.int64 or tomb.ndim != 2 or tomb.shape[1] != 2:
                raise IndexFormatError(f"{root}: {t['file']} must be int64 [m, 2]")
            self.tombstones = np.asarray(tomb)
            for num, row in self.tombstones.tolist():
                if num not in self.bases or not 0 <= row < self.segments[self.seg_numbers.index(num)].n_docs:
                    raise IndexFormatError(f"{root}: {t['file']} names a document that no segment holds")
                self.deleted[self.bases[num] + row] = True
        self.any_deleted = bool(self.deleted.any())
        if self.ids.numel() and torch.unique(self.ids[~self.deleted]).numel() != int((~self.deleted).sum()):
            raise IndexFormatError(f"{root}: two live documents share an id")

    @staticmethod
    def _segment(root, name, a, k, dim, nbits, base) -> _Segment:
        n_tok = a["codes"].shape[0]
        ok = (a["codes"].dtype in (np.uint16, np.int32) and a["codes"].ndim == 1
              and a["packed"].dtype == np.uint8 and a["packed"].shape == (n_tok, dim * nbits // 8)
              and a["doc_offsets"].dtype == np.int64 and a["doc_offsets"].ndim == 1 and a["doc_offsets"].shape[0] >= 1
              and a["ids"].dtype == np.int64 and a["ids"].shape == (a["doc_offsets"].shape[0] - 1,)
              and a["ivf_offsets"].dtype == np.int64 and a["ivf_offsets"].ndim == 1
              and a["ivf_docs"].dtype in (np.uint16, np.int32) and a["ivf_docs"].ndim == 1)
        n = a["doc_offsets"].shape[0] - 1 if ok else 0
        nb = ivf_blocks(n) if ok and a["ivf_docs"].dtype == np.uint16 else 1
        n_runs = a["ivf_offsets"].shape[0] - 1 if ok else -1
        ok = ok and n_runs >= 0 and n_runs % nb == 0 and n_runs // nb <= k
        if not ok:
            raise IndexFormatError(f"{root}: {name}: arrays of inconsistent shapes or dtypes")
        off = _t(a["doc_offsets"])
        codes = _t(a["codes"]).to(torch.int32)
        runs = _t(a["ivf_offsets"])
        ivf_off = runs[::nb]
        if ivf_off.shape[0] < k + 1:  # a segment written before centroids were appended
            ivf_off = torch.cat([ivf_off, ivf_off[-1:].expand(k + 1 - ivf_off.shape[0])])
        ivf_docs = _t(a["ivf_docs"]).to(torch.int64)
        bad_runs = bool((runs[1:] < runs[:-1]).any()) or int(runs[-1]) != ivf_docs.shape[0]
        if nb > 1 and not bad_runs:  # add each entry's block back: block = run number mod nb
            block = torch.arange(n_runs, dtype=torch.int64) % nb
            ivf_docs += torch.repeat_interleave(block * IVF_BLOCK, runs[1:] - runs[:-1], output_size=ivf_docs.shape[0])
        bad = (bad_runs or int(off[0]) != 0 or int(off[-1]) != n_tok or bool((off[1:] < off[:-1]).any())
               or int(ivf_off[0]) != 0 or int(ivf_off[-1]) != ivf_docs.shape[0] or bool((ivf_off[1:] < ivf_off[:-1]).any())
               or (n_tok and (int(codes.min()) < 0 or int(codes.max()) >= k))
               or (ivf_docs.numel() and (int(ivf_docs.min()) < 0 or int(ivf_docs.max()) >= n)))
        if bad:
            raise IndexFormatError(f"{root}: {name}: invalid arrays (offsets out of order or codes / IVF entries "
                                   "out of range)")
        return _Segment(codes, _t(a["packed"]), off, ivf_off, ivf_docs, base)

    def codec(self, outlier_score: Optional[float] = None) -> "_source.Codec":
        return _source.Codec(self.centroids, self.bucket_cutoffs, self.bucket_weights, self.nbits, outlier_score,
                             self.coarse, self.cell_offsets, self.nprobe)

    def locate(self, ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(segment number, row) of each live document with these ids; -1 where none."""
        live = (~self.deleted).nonzero().squeeze(1)
        live_ids = self.ids[live]
        order = torch.argsort(live_ids)
        sorted_ids = live_ids[order]
        glob = torch.full_like(ids, -1)
        if sorted_ids.numel():
            pos = torch.searchsorted(sorted_ids, ids).clamp(max=sorted_ids.shape[0] - 1)
            glob = torch.where(sorted_ids[pos] == ids, live[order[pos]], glob)
        seg = torch.full_like(ids, -1)
        row = torch.full_like(ids, -1)
        for num, s in zip(self.seg_numbers, self.segments):
            inside = (glob >= s.base) & (glob < s.base + s.n_docs)
            seg = torch.where(inside, torch.full_like(ids, num), seg)
            row = torch.where(inside, glob - s.base, row)
        return seg, row


class SegmentedIndex:
    """A PLAID index on disk (PLAIDIndex.create / PLAIDIndex.open): arrays memory-mapped,
    `add` writes a segment, `delete` tombstones, `merge` rewrites segments into one; each
    change is one atomic manifest swap. `search` has PLAIDIndex.search's arguments and
    results: over several segments it returns what one segment holding the same documents
    (in the same order, under the same codec) returns."""

    def __init__(self, path: str, state: _State):
        self.path = path
        self._state = state

    # ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str, *, verify: bool = True) -> "SegmentedIndex":
        """Opens the state CURRENT names; every file's SHA-256 is checked against the
        manifest unless verify=False. IndexFormatError names a missing or damaged file."""
        return cls(path, _open_state(path, verify))

    def refresh(self, verify: bool = True) -> None:
        """Switches to the state CURRENT names now (another process's changes)."""
        self._state = _open_state(self.path, verify)

    @property
    def n_docs(self) -> int:
        return self._state.n_docs

    @property
    def n_tokens(self) -> int:
        return sum(s.codes.shape[0] for s in self._state.segments)

    @property
    def dim(self) -> int:
        return self._state.centroids.shape[1]

    @property
    def n_segments(self) -> int:
        return len(self._state.segments)

    @property
    def ids(self) -> torch.Tensor:
        return self._state.ids

    @property
    def deleted(self) -> torch.Tensor:
        return self._state.deleted

    @property
    def centroids(self) -> torch.Tensor:
        return self._state.centroids

    @property
    def bucket_cutoffs(self) -> torch.Tensor:
        return self._state.bucket_cutoffs

    @property
    def bucket_weights(self) -> torch.Tensor:
        return self._state.bucket_weights

    @property
    def nbits(self) -> int:
        return self._state.nbits

    @property
    def metadata(self) -> dict:
        return json.loads(json.dumps(self._state.manifest["user"]))

    @property
    def generation(self) -> int:
        return self._state.manifest["generation"]

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def bytes_per_token(self, where: str = "disk") -> float:
        """Bytes of the index files (codec, segments, tombstones) per token."""
        if where != "disk":
            raise ValueError(f'bytes_per_token: `where` must be "disk", got {where!r}')
        m = self._state.manifest
        total = sum(os.path.getsize(os.path.join(self.path, m["codec"]["dir"], f"{k}.npy")) for k in m["codec"]["files"])
        for s in m["segments"]:
            total += sum(os.path.getsize(os.path.join(self.path, s["dir"], f"{k}.npy")) for k in _SEG_FILES)
        return total / max(1, self.n_tokens)

    # ---------------------------------------------------------------------------------
    def search(self, queries: torch.Tensor, k: int = 10, *, query_mask: Optional[torch.Tensor] = None,
               ncells: Optional[int] = None, centroid_score_threshold: Optional[float] = None,
               ndocs: Optional[int] = None, ndocs_exact: Optional[int] = None, subset=None,
               scorer: str = "exact"):
        """As PLAIDIndex.search, over every segment in one batched pass, on the state the
        index held when the call began (a concurrent change never shows half-made)."""
        st = self._state
        k = _check_search(st.centroids.shape[1], torch.device("cpu"), queries, k, query_mask, ncells,
                          centroid_score_threshold, ndocs, ndocs_exact, scorer)
        allowed = None
        if subset is not None or st.any_deleted:
            from .plaid import PLAIDIndex

            shim = PLAIDIndex.__new__(PLAIDIndex)
            shim.ids, shim.deleted = st.ids, st.deleted
            allowed = PLAIDIndex._allowed_rows(shim, subset, queries.shape[0])
        if not st.segments:
            from .plaid import _no_results

            return _no_results(queries.shape[0], k)
        return _search_segments(st.segments, st.centroids, st.bucket_weights, st.nbits, st.ids, allowed, queries, k,
                                query_mask=query_mask, ncells=ncells,
                                centroid_score_threshold=centroid_score_threshold, ndocs=ndocs,
                                ndocs_exact=ndocs_exact, scorer=scorer)

    # ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _writing(self, op: str):
        """The writer's lock, held for the whole change; the state is the one on disk."""
        lock = os.open(os.path.join(self.path, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _read_current(self.path)[0] != self._state.manifest["generation"]:
                self.refresh()
            yield self._state
        finally:
            os.close(lock)

    def add(self, doc_tokens: torch.Tensor, doc_offsets: torch.Tensor, ids: Sequence[int], *,
            merge_factor: Optional[int] = 8, chunk_tokens: int = 1 << 18, expand: Optional[bool] = None,
            expand_fraction: float = 0.05, n_new_centroids: Optional[int] = None, kmeans_niter: int = 10,
            max_points_per_centroid: Optional[int] = 256, seed: int = 0, metadata: Optional[dict] = None) -> dict:
        """Appends documents as one new segment under the index's codec (nothing else
        rewritten), then swaps the manifest. With merge_factor set, the newest segments are
        merged when merge_factor of them fall in the same size tier (tiered merging keeps
        the count logarithmic in the index's size).

        Centroid drift: tokens far from every centroid (best score under the build sample's
        1% quantile) are outliers. expand=True, or expand=None (default) when outliers are
        at least `expand_fraction` of the new tokens, trains new centroids on them and
        appends them to the codec before the documents are coded (old segments keep their
        codes); expand=False never does. `metadata` (JSON) replaces the user metadata in
        the same manifest swap. Returns {"outlier_fraction", "new_centroids"}."""
        op = "SegmentedIndex.add"
        if metadata is not None:
            try:
                json.dumps(metadata)
            except (TypeError, ValueError) as e:
                raise TypeError(f"{op}: `metadata` must be JSON-serializable: {e}") from None
        with self._writing(op) as st:
            _positive_int(op, "chunk_tokens", chunk_tokens)
            src = _source.Source([(doc_tokens, doc_offsets, ids)], op, dim=st.centroids.shape[1])
            _, ids_t = _source.scan(src, True, False)
            chunks = _source.split(doc_tokens, doc_offsets, chunk_tokens)
            src = _source.Source(chunks, op, dim=st.centroids.shape[1])
            _source.scan(src, False, False)
            if st.ids.numel():
                clash = torch.isin(ids_t, st.ids[~st.deleted])
                if bool(clash.any()):
                    raise ValueError(f"{op}: ids already in the index: {ids_t[clash][:5].tolist()}")
            m = json.loads(json.dumps(st.manifest))
            drift = m["drift"]
            codec = st.codec(None if drift is None else drift["outlier_score"])
            report = {"outlier_fraction": None, "new_centroids": 0}
            if drift is not None and expand is not False:
                if isinstance(expand_fraction, bool) or not isinstance(expand_fraction, (int, float)) or not (
                        0 <= expand_fraction <= 1):
                    raise ValueError(f"{op}: `expand_fraction` must be a number in [0, 1], got {expand_fraction!r}")
                grown, report["outlier_fraction"] = _source.expand_codec(
                    src, codec, expand=expand, min_fraction=expand_fraction, seed=seed, kmeans_niter=kmeans_niter,
                    max_points_per_centroid=max_points_per_centroid, n_new_centroids=n_new_centroids)
                if grown is not None:
                    report["new_centroids"] = grown.centroids.shape[0] - codec.centroids.shape[0]
                    cnum = m["next"]["codec"]
                    m["next"]["codec"] += 1
                    _step("codec")
                    m["codec"] = _write_codec(self.path, cnum, grown)
                    codec = grown
            num = m["next"]["segment"]
            m["next"]["segment"] += 1
            _step("segment")
            entry = _write_segment(self.path, num, src, codec, ids_t)
            m["segments"].append(entry)
            if metadata is not None:
                m["user"] = json.loads(json.dumps(metadata))
            self._commit(m, "add")
            if merge_factor is not None:
                self._tiered_merge(_positive_int(op, "merge_factor", merge_factor))
        return report

    def delete(self, ids: Sequence[int]) -> None:
        """Tombstones live documents by id (search skips them; `merge` drops them)."""
        op = "SegmentedIndex.delete"
        with self._writing(op) as st:
            ids_t = _int_ids(op, "ids", ids, nonnegative=False)
            seg, row = st.locate(ids_t)
            if bool((seg < 0).any()):
                raise KeyError(f"{op}: ids not in the index: {ids_t[seg < 0][:5].tolist()}")
            tomb = np.concatenate([st.tombstones, torch.stack([seg, row], 1).numpy()])
            tomb = np.unique(tomb, axis=0)
            m = json.loads(json.dumps(st.manifest))
            self._write_tombstones(m, tomb)
            self._commit(m, "delete")

    def set_metadata(self, metadata: dict) -> None:
        """Replaces the user metadata (JSON) in one manifest swap."""
        try:
            json.dumps(metadata)
        except (TypeError, ValueError) as e:
            raise TypeError(f"SegmentedIndex.set_metadata: `metadata` must be JSON-serializable: {e}") from None
        with self._writing("set_metadata") as st:
            m = json.loads(json.dumps(st.manifest))
            m["user"] = json.loads(json.dumps(metadata))
            self._commit(m, "metadata")

    def merge(self, segments: Optional[Sequence[int]] = None) -> None:
        """Rewrites segments into one, dropping tombstoned documents: all of them (default),
        or a run of consecutive segments given by position. Codes and residuals are copied,
        not recomputed: the merged segment is what one fresh segment of the same documents
        under the same codec holds."""
        with self._writing("merge") as st:
            n = len(st.segments)
            pos = list(range(n)) if segments is None else sorted(set(int(p) for p in segments))
            if pos and (pos[0] < 0 or pos[-1] >= n or pos != list(range(pos[0], pos[-1] + 1))):
                raise ValueError(f"SegmentedIndex.merge: `segments` must be consecutive positions in [0, {n}), "
                                 f"got {list(segments)}")
            if len(pos) < 2 and not (len(pos) == 1 and st.any_deleted):
                return
            self._merge_run(st, pos)

    def _tiered_merge(self, factor: int) -> None:
        while True:
            st = self._state
            sizes = [max(1, s.codes.shape[0]) for s in st.segments]
            tiers = [int(math.log(x, factor)) for x in sizes]
            run = 1
            while run < len(tiers) and tiers[-run - 1] <= tiers[-1]:
                run += 1
            if run < factor:
                return
            self._merge_run(st, list(range(len(tiers) - run, len(tiers))))

    def _merge_run(self, st: _State, pos: List[int]) -> None:
        m = json.loads(json.dumps(st.manifest))
        num = m["next"]["segment"]
        m["next"]["segment"] += 1
        merged = [st.seg_numbers[p] for p in pos]
        parts = []
        for p in pos:
            seg = st.segments[p]
            keep = ~st.deleted[seg.base:seg.base + seg.n_docs]
            parts.append((seg, keep))
        _step("merge")
        entry = _merge_segments(self.path, num, parts, st)
        m["segments"][pos[0]:pos[-1] + 1] = [entry] if entry is not None else []
        tomb = st.tombstones[~np.isin(st.tombstones[:, 0], merged)] if st.tombstones.size else st.tombstones
        self._write_tombstones(m, tomb)
        self._commit(m, "merge")

    def _write_tombstones(self, m: dict, tomb: np.ndarray) -> None:
        if tomb.shape[0] == 0:
            m["tombstones"] = None
            return
        gen = m["generation"] + 1
        name = f"tombstones-{gen}.npy"
        tmp = os.path.join(self.path, f".tmp-{name}-{os.getpid()}")
        info = _write_npy(tmp, tomb.astype(np.int64))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.path, name))
        m["tombstones"] = {"file": name, "info": info}

    def _commit(self, m: dict, what: str) -> None:
        m["generation"] += 1
        _commit_manifest(self.path, m, what)
        self._state = _State(self.path, m, verify=False, reuse=self._state)
        _collect(self.path, m)


# -------------------------------------------------------------------------------------
def _read_current(path: str) -> Tuple[int, str, str]:
    try:
        with open(os.path.join(path, "CURRENT"), "rb") as f:
            raw = f.read(256)
    except FileNotFoundError:
        raise IndexFormatError(f"{path}: not a lateint index (no CURRENT file)") from None
    except OSError as e:
        raise IndexFormatError(f"{path}: CURRENT unreadable: {e}") from None
    try:
        m = _CURRENT_RE.fullmatch(raw.decode("ascii"))
    except UnicodeDecodeError:
        m = None
    if m is None:
        raise IndexFormatError(f"{path}: CURRENT is damaged (expected 'manifest-<N>.json <sha256>', got {raw[:80]!r})")
    return int(m.group(2)), m.group(1), m.group(3)


def _open_state(path: str, verify: bool) -> _State:
    seen, missing = None, "?"
    for _ in range(_OPEN_ATTEMPTS):
        gen, name, sha = _read_current(path)
        try:
            with open(os.path.join(path, name), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            missing = name
            if seen == (gen, sha):
                break
            seen = (gen, sha)
            continue
        if hashlib.sha256(raw).hexdigest() != sha:
            raise IndexFormatError(f"{path}: {name} is damaged (its SHA-256 does not match CURRENT's)")
        try:
            manifest = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise IndexFormatError(f"{path}: {name} is not valid JSON ({e})") from None
        _check_manifest(path, name, manifest)
        if manifest["generation"] != gen:
            raise IndexFormatError(f"{path}: {name} holds generation {manifest['generation']}")
        try:
            return _State(path, manifest, verify)
        except _Gone as gone:
            missing = str(gone)
            if seen == (gen, sha):
                break
            seen = (gen, sha)
    raise IndexFormatError(f"{path}: {missing} (of the state CURRENT names) is missing")


def _commit_manifest(path: str, m: dict, what: str) -> None:
    gen = m["generation"]
    name = f"manifest-{gen}.json"
    raw = json.dumps(m, indent=1, sort_keys=True).encode()
    _step(f"{what}:manifest")
    write_file_atomic(os.path.join(path, name), raw, tmp=os.path.join(path, f".tmp-{name}-{os.getpid()}"))
    _step(f"{what}:current")
    write_file_atomic(os.path.join(path, "CURRENT"), f"{name} {hashlib.sha256(raw).hexdigest()}\n",
                      tmp=os.path.join(path, f".tmp-CURRENT-{os.getpid()}"))
    _step(f"{what}:collect")


def _own_dir(d: str, files) -> bool:
    if os.path.islink(d) or not os.path.isdir(d):
        return False
    allowed = {f"{k}.npy" for k in files}
    return all(e in allowed and os.path.isfile(os.path.join(d, e)) for e in os.listdir(d))


def _collect(path: str, m: dict) -> None:
    """Removes what the state `m` no longer names: older manifests and tombstones, merged
    segments, replaced codecs, temporaries of crashed changes (the writer's lock is held, so
    no change is in flight). Only names this module writes, holding only its files."""
    keep = {f"manifest-{m['generation']}.json", m["codec"]["dir"]} | {s["dir"] for s in m["segments"]}
    if m["tombstones"] is not None:
        keep.add(m["tombstones"]["file"])
    for e in os.listdir(path):
        if e in keep or not _OWN_ENTRY_RE.fullmatch(e):
            continue
        full = os.path.join(path, e)
        try:
            if os.path.isdir(full) and not os.path.islink(full):
                if _own_dir(full, _SEG_FILES + _CODEC_FILES + _CELL_FILES):
                    shutil.rmtree(full)
            elif os.path.isfile(full) and not os.path.islink(full):
                os.remove(full)
        except FileNotFoundError:
            pass


# -------------------------------------------------------------------------------------
def _codes_dtype(k: int):
    return np.uint16 if k <= 65536 else np.int32


def _write_segment(path: str, num: int, src: "_source.Source", codec: "_source.Codec",
                   ids: Optional[torch.Tensor], progress: bool = False) -> dict:
    """Encodes the source chunk by chunk into seg-<num> (written under a temporary name,
    fsync'd, renamed). Returns its manifest entry."""
    name = f"seg-{num}"
    tmp = os.path.join(path, f".tmp-{name}-{os.getpid()}")
    if os.path.lexists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        T, n, dim = src.n_tokens, src.n_docs, src.dim
        k = codec.centroids.shape[0]
        mm = np.lib.format.open_memmap
        codes = mm(os.path.join(tmp, "codes.npy"), "w+", _codes_dtype(k), (T,))
        packed = mm(os.path.join(tmp, "packed.npy"), "w+", np.uint8, (T, dim * codec.nbits // 8))
        offsets = np.zeros(n + 1, dtype=np.int64)
        for c in src.passes("compress", progress):
            c_codes, c_packed = _source.encode_chunk(c.tokens, codec)
            end = c.tok0 + c.tokens.shape[0]
            codes[c.tok0:end] = c_codes.numpy()
            packed[c.tok0:end] = c_packed.numpy()
            offsets[c.doc0 + 1:c.doc0 + c.n_docs + 1] = c.offsets[1:].numpy() + c.tok0
            _step("chunk")
        codes.flush()
        packed.flush()
        del packed
        _finish_segment(tmp, codes, offsets, ids.numpy() if ids is not None else np.arange(n, dtype=np.int64), k)
        del codes
        files = {key: _describe(os.path.join(tmp, f"{key}.npy")) for key in _SEG_FILES}
        _step("publish-segment")
        _publish_dir(tmp, os.path.join(path, name))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"dir": name, "n_docs": n, "n_tokens": T, "files": files}


IVF_BLOCK = 1 << 16  # documents per block of the on-disk IVF (entries stored as uint16 within it)


def ivf_blocks(n_docs: int) -> int:
    return max(1, -(-n_docs // IVF_BLOCK))


def _finish_segment(tmp: str, codes, offsets: np.ndarray, ids: np.ndarray, k: int) -> None:
    np.save(os.path.join(tmp, "doc_offsets.npy"), offsets, allow_pickle=False)
    np.save(os.path.join(tmp, "ids.npy"), ids.astype(np.int64), allow_pickle=False)

    def alloc(total):
        return np.lib.format.open_memmap(os.path.join(tmp, "ivf_docs.npy"), "w+", np.uint16, (total,))

    ivf_offsets, ivf_docs = _source.ivf_chunked(codes, offsets, k, alloc, block=IVF_BLOCK)
    ivf_docs.flush()
    np.save(os.path.join(tmp, "ivf_offsets.npy"), ivf_offsets, allow_pickle=False)


def _merge_segments(path: str, num: int, parts, st: _State) -> Optional[dict]:
    """seg-<num>: the live documents of `parts` [(segment, keep mask)] in order."""
    lens = [torch.diff(seg.doc_offsets)[keep] for seg, keep in parts]
    n = sum(int(x.shape[0]) for x in lens)
    if n == 0:
        return None
    T = sum(int(x.sum()) for x in lens)
    k = st.centroids.shape[0]
    name = f"seg-{num}"
    tmp = os.path.join(path, f".tmp-{name}-{os.getpid()}")
    if os.path.lexists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        mm = np.lib.format.open_memmap
        codes = mm(os.path.join(tmp, "codes.npy"), "w+", _codes_dtype(k), (T,))
        width = parts[0][0].packed.shape[1]
        packed = mm(os.path.join(tmp, "packed.npy"), "w+", np.uint8, (T, width))
        offsets = np.zeros(n + 1, dtype=np.int64)
        ids = np.empty(n, dtype=np.int64)
        t0 = d0 = 0
        for (seg, keep), ln in zip(parts, lens):
            seg_ids = st.ids[seg.base:seg.base + seg.n_docs][keep]
            docs = keep.nonzero().squeeze(1)
            # runs of consecutive kept documents, copied a block at a time
            step = 1 << 14
            for i in range(0, docs.shape[0], step):
                dd = docs[i:i + step]
                starts, ends = seg.doc_offsets[dd], seg.doc_offsets[dd + 1]
                rows = torch.repeat_interleave(starts - (torch.cumsum(ends - starts, 0) - (ends - starts)),
                                               ends - starts) + torch.arange(int((ends - starts).sum()))
                m_tok = rows.shape[0]
                codes[t0:t0 + m_tok] = seg.codes[rows].numpy().astype(codes.dtype)
                packed[t0:t0 + m_tok] = seg.packed[rows].numpy()
                t0 += m_tok
            m = ln.shape[0]
            offsets[d0 + 1:d0 + m + 1] = np.cumsum(ln.numpy()) + offsets[d0]
            ids[d0:d0 + m] = seg_ids.numpy()
            d0 += m
            _step("merge-part")
        codes.flush()
        packed.flush()
        del packed
        _finish_segment(tmp, codes, offsets, ids, k)
        del codes
        files = {key: _describe(os.path.join(tmp, f"{key}.npy")) for key in _SEG_FILES}
        _step("publish-segment")
        _publish_dir(tmp, os.path.join(path, name))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"dir": name, "n_docs": n, "n_tokens": T, "files": files}


# -------------------------------------------------------------------------------------
def create(path: str, source, *, nbits: int = 4, seed: int = 0, n_centroids: Optional[int] = None,
           kmeans_niter: int = 20, max_points_per_centroid: Optional[int] = 256, sample_docs: Optional[int] = None,
           chunk_tokens: int = 1 << 18, show_progress_bar: bool = False, metadata: Optional[dict] = None,
           verify: bool = True, coarse_cells: Optional[int] = None, nprobe: int = 8,
           codec_from: Optional[str] = None, buckets: str = "lloyd") -> SegmentedIndex:
    """See PLAIDIndex.create."""
    op = "PLAIDIndex.create"
    if nbits not in (1, 2, 4, 8) or isinstance(nbits, bool):
        raise ValueError(f"{op}: `nbits` must be 1, 2, 4 or 8, got {nbits!r}")
    _positive_int(op, "kmeans_niter", kmeans_niter)
    _positive_int(op, "chunk_tokens", chunk_tokens)
    for arg, v in (("n_centroids", n_centroids), ("sample_docs", sample_docs),
                   ("max_points_per_centroid", max_points_per_centroid), ("coarse_cells", coarse_cells)):
        if v is not None:
            _positive_int(op, arg, v)
    _positive_int(op, "nprobe", nprobe)
    _source.check_buckets(op, buckets)
    path = os.fspath(path)
    if os.path.lexists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise FileExistsError(f"{op}: {path} exists and is not an empty directory; nothing was changed (create "
                              "writes a new index; open an existing one with PLAIDIndex.open)")
    user = {} if metadata is None else json.loads(json.dumps(metadata))
    src = _source.Source(source, op, chunk_tokens=chunk_tokens)
    lengths, ids = _source.scan(src, True, show_progress_bar)
    if src.dim * nbits % 8:
        raise ValueError(f"{op}: dim * nbits must be a multiple of 8")
    codec = (codec_of(codec_from, src.dim, op) if codec_from is not None else
             _source.train_codec(src, lengths, nbits=nbits, seed=seed, n_centroids=n_centroids,
                                 kmeans_niter=kmeans_niter, sample_docs=sample_docs,
                                 max_points_per_centroid=max_points_per_centroid, progress=show_progress_bar,
                                 coarse_cells=coarse_cells, nprobe=nprobe, buckets=buckets))
    create_from_codec(path, src, codec, src.dim, ids=ids, metadata=user, progress=show_progress_bar)
    return SegmentedIndex.open(path, verify=verify)


def codec_of(index_path: str, dim: int, op: str) -> "_source.Codec":
    """The codec (centroids, buckets, outlier score) of the index `create` wrote at
    `index_path`, for building another index that shares it (its nbits, training settings
    and seed come with it)."""
    idx = SegmentedIndex.open(os.fspath(index_path), verify=False)
    st = idx._state
    if st.centroids.shape[1] != dim:
        raise ValueError(f"{op}: `codec_from` {index_path} holds {st.centroids.shape[1]}-dimensional centroids, "
                         f"the source has dim {dim}")
    drift = st.manifest["drift"]
    return st.codec(None if drift is None else drift["outlier_score"])


def create_from_codec(path: str, source, codec: "_source.Codec", dim: int, *, ids: Optional[torch.Tensor] = None,
                      metadata: Optional[dict] = None, progress: bool = False) -> None:
    """Writes a new index at `path` (new or empty) with a given codec and one segment of
    `source` (a Source, or anything Source takes); ids from the chunks or `ids`."""
    if not isinstance(source, _source.Source):
        source = _source.Source(source, "create_from_codec", dim=dim)
    if source.n_docs is None:
        _, chunk_ids = _source.scan(source, True, progress)
        ids = chunk_ids if ids is None else ids
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "LOCK"), "a"):
        pass
    cent = _write_codec(path, 1, codec)
    entry = _write_segment(path, 1, source, codec, ids, progress)
    drift = None if codec.outlier_score is None else {"outlier_score": codec.outlier_score,
                                                      "quantile": _source.OUTLIER_QUANTILE}
    m = {"format": FORMAT, "version": STORE_VERSION, "generation": 1, "nbits": codec.nbits, "dim": dim,
         "codec": cent, "segments": [entry], "tombstones": None,
         "next": {"segment": 2, "codec": 2}, "drift": drift, "user": {} if metadata is None else metadata}
    _commit_manifest(path, m, "create")


def _write_codec(path: str, num: int, codec: "_source.Codec") -> dict:
    """codec-<num> (temporary name, fsync, rename); returns its manifest entry."""
    name = f"codec-{num}"
    tmp = os.path.join(path, f".tmp-{name}-{os.getpid()}")
    if os.path.lexists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    files = {"centroids": _write_npy(os.path.join(tmp, "centroids.npy"), codec.centroids.half().numpy()),
             "bucket_cutoffs": _write_npy(os.path.join(tmp, "bucket_cutoffs.npy"), codec.bucket_cutoffs.numpy()),
             "bucket_weights": _write_npy(os.path.join(tmp, "bucket_weights.npy"), codec.bucket_weights.numpy())}
    entry = {"dir": name, "files": files}
    if codec.coarse is not None:
        files["coarse"] = _write_npy(os.path.join(tmp, "coarse.npy"), codec.coarse.float().numpy())
        files["cell_offsets"] = _write_npy(os.path.join(tmp, "cell_offsets.npy"), codec.cell_offsets.numpy())
        entry["nprobe"] = int(codec.nprobe)
    _publish_dir(tmp, os.path.join(path, name))
    return entry
