"""Corpus sources for building a PLAID index in bounded memory, and the build's passes.

A source is read chunk by chunk, several times (count, sample, compress), and never held
whole: an embeddings directory (tokens.npy + offsets.npy, as `lateint encode` writes them,
memory-mapped), a list or tuple of chunks, or a function returning a fresh iterator of
chunks. A chunk is (tokens [t, dim] float32/float16/bfloat16, offsets int [m + 1] starting at
0) or (tokens, offsets, ids), torch or numpy. Every chunk is checked on every pass; errors
name the chunk and, for bad values, the document.

The codec (sample -> k-means -> residual buckets) depends on the documents, the seed and
the k-means budget only, never on how the corpus is cut into chunks: the sample is drawn
over document numbers, its rows are copied in the order an in-memory build takes them, and
every token is coded and compressed on its own.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np
import torch

import lateint_kernels as lk
from lateint_kernels.ops.codec import BUCKET_METHODS

from . import kmeans as _kmeans

_FLOAT_TORCH = (torch.float32, torch.float16, torch.bfloat16)
_FINITE_ROWS = 1 << 16  # rows checked for NaN / Inf at a time (bounds the bool temporary)


class Chunk:
    """One validated chunk: tokens (a view, not a copy, of what the source gave), offsets
    int64 [m + 1] from 0, ids int64 [m] or None, its number, first document and token."""
    __slots__ = ("no", "tokens", "offsets", "ids", "doc0", "tok0")

    def __init__(self, no, tokens, offsets, ids, doc0, tok0):
        self.no, self.tokens, self.offsets, self.ids, self.doc0, self.tok0 = no, tokens, offsets, ids, doc0, tok0

    @property
    def n_docs(self) -> int:
        return self.offsets.shape[0] - 1


def _as_tensor(x, what: str, op: str, no: int):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu() if x.device.type != "cpu" else x.detach()
    if isinstance(x, np.ndarray):
        try:
            with warnings.catch_warnings():  # a read-only array (a memory map): only read here
                warnings.simplefilter("ignore", UserWarning)
                return torch.from_numpy(x)
        except TypeError:
            raise TypeError(f"{op}: chunk {no}: `{what}` has the unsupported dtype {x.dtype}") from None
    raise TypeError(f"{op}: chunk {no}: `{what}` must be a torch tensor or a numpy array, got {type(x).__name__}")


class Source:
    """Reads a corpus source chunk by chunk; `passes()` starts a new pass over it."""

    def __init__(self, source, op: str, *, chunk_tokens: int = 1 << 18, dim: Optional[int] = None):
        self.op = op
        self.chunk_tokens = chunk_tokens
        self.dim = dim
        self.names: Optional[list] = None
        self._dir: Optional[str] = None
        if isinstance(source, (str, os.PathLike)):
            self._dir = os.fspath(source)
            self._open_dir()
            self._make = self._dir_chunks
        elif isinstance(source, (list, tuple)):
            chunks = list(source)
            self._make = lambda: iter(chunks)
        elif callable(source):
            self._make = source
        elif hasattr(source, "__next__"):
            raise TypeError(f"{op}: `source` is an iterator, which can be read only once; the build reads its "
                            "source three times (count, sample, compress). Pass a list of chunks, a function "
                            "returning a fresh iterator of chunks, or an embeddings directory")
        else:
            raise TypeError(f"{op}: `source` must be an embeddings directory, a list of (tokens, offsets[, ids]) "
                            f"chunks or a function returning an iterator of them, got {type(source).__name__}")
        self.n_docs = self.n_tokens = None
        self._shape: List[Tuple[int, int]] = []

    # ---------------------------------------------------------------------------------
    def _open_dir(self) -> None:
        d, op = self._dir, self.op
        if not os.path.isdir(d):
            raise FileNotFoundError(f"{op}: {d}: no such embeddings directory")
        for name in ("tokens.npy", "offsets.npy"):
            if not os.path.isfile(os.path.join(d, name)):
                raise FileNotFoundError(f"{op}: {d}: not an embeddings directory (no {name})")
        try:
            self._tok = np.load(os.path.join(d, "tokens.npy"), mmap_mode="r", allow_pickle=False)
            self._off = np.load(os.path.join(d, "offsets.npy"), mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"{op}: {d}: unreadable embeddings ({e})") from None
        if self._tok.ndim != 2 or self._tok.dtype not in (np.float32, np.float16):
            raise ValueError(f"{op}: {d}/tokens.npy must be float32 or float16 [T, dim], got "
                             f"{self._tok.dtype} {list(self._tok.shape)}")
        if self._off.ndim != 1 or self._off.dtype.kind not in "iu" or self._off.shape[0] < 1:
            raise ValueError(f"{op}: {d}/offsets.npy must be integer [n + 1], got {self._off.dtype} "
                             f"{list(self._off.shape)}")
        ids_path = os.path.join(d, "ids.json")
        if os.path.isfile(ids_path):
            import json

            with open(ids_path, encoding="utf-8") as f:
                self.names = json.load(f)

    def _dir_chunks(self) -> Iterator:
        off = self._off
        n = off.shape[0] - 1
        d0 = 0
        while d0 < n:
            # documents [d0, d1) holding about chunk_tokens tokens (at least one document)
            t0 = int(off[d0])
            d1 = int(np.searchsorted(off, t0 + self.chunk_tokens, side="right")) - 1
            d1 = min(n, max(d1, d0 + 1))
            o = np.asarray(off[d0:d1 + 1], dtype=np.int64)
            t1 = int(o[-1])
            if t0 > t1 or t1 > self._tok.shape[0]:  # checked as a chunk below; keep the slice valid
                t1 = max(t0, min(t1, self._tok.shape[0]))
            yield self._tok[t0:t1], o - o[0]
            d0 = d1

    # ---------------------------------------------------------------------------------
    def passes(self, desc: Optional[str] = None, progress: bool = False) -> Iterator[Chunk]:
        """One pass over the source: validated chunks with their global positions. From the
        second pass on, each chunk must match the first pass's (documents, tokens)."""
        first = self.n_docs is None
        it = self._make()
        if first and not hasattr(it, "__next__"):
            try:
                it = iter(it)
            except TypeError:
                raise TypeError(f"{self.op}: the `source` function must return an iterator of chunks, got "
                                f"{type(it).__name__}") from None
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.n_tokens, desc=desc, unit="tok", unit_scale=True)
        doc0 = tok0 = 0
        no = -1
        for no, raw in enumerate(it):
            c = self._check(no, raw, doc0, tok0)
            if first:
                self._shape.append((c.n_docs, c.tokens.shape[0]))
            elif no >= len(self._shape) or self._shape[no] != (c.n_docs, c.tokens.shape[0]):
                raise ValueError(f"{self.op}: chunk {no} differs from the first pass over `source` (a source "
                                 "must give the same chunks every time it is read)")
            yield c
            doc0 += c.n_docs
            tok0 += c.tokens.shape[0]
            if bar is not None:
                bar.update(c.tokens.shape[0])
        if bar is not None:
            bar.close()
        if first:
            if doc0 == 0 or tok0 == 0:
                raise ValueError(f"{self.op}: `source` holds no documents (or no tokens)")
            self.n_docs, self.n_tokens = doc0, tok0
        elif no + 1 != len(self._shape):
            raise ValueError(f"{self.op}: `source` gave {no + 1} chunks, {len(self._shape)} on the first pass")

    def _check(self, no: int, raw, doc0: int, tok0: int) -> Chunk:
        op = self.op
        if not isinstance(raw, (tuple, list)) or len(raw) not in (2, 3):
            raise TypeError(f"{op}: chunk {no} must be (tokens, offsets) or (tokens, offsets, ids), got "
                            f"{type(raw).__name__}")
        tokens = _as_tensor(raw[0], "tokens", op, no)
        offsets = _as_tensor(raw[1], "offsets", op, no)
        if tokens.dim() != 2 or tokens.dtype not in _FLOAT_TORCH:
            raise ValueError(f"{op}: chunk {no}: `tokens` must be float32, float16 or bfloat16 [t, dim], got "
                             f"{tokens.dtype} {list(tokens.shape)}")
        if self.dim is None:
            self.dim = tokens.shape[1]
        elif tokens.shape[1] != self.dim:
            raise ValueError(f"{op}: chunk {no}: tokens have dim {tokens.shape[1]}, expected {self.dim}")
        if (offsets.dim() != 1 or offsets.shape[0] < 1 or offsets.is_floating_point() or offsets.is_complex()
                or offsets.dtype == torch.bool):
            raise ValueError(f"{op}: chunk {no}: `offsets` must be integers [m + 1], got {offsets.dtype} "
                             f"{list(offsets.shape)}")
        offsets = offsets.to(torch.int64)
        if int(offsets[0]) != 0 or int(offsets[-1]) != tokens.shape[0]:
            raise ValueError(f"{op}: chunk {no}: `offsets` must start at 0 and end at its {tokens.shape[0]} tokens, "
                             f"got {int(offsets[0])} .. {int(offsets[-1])}")
        drop = (offsets[1:] < offsets[:-1]).nonzero()
        if drop.numel():
            d = int(drop[0])
            raise ValueError(f"{op}: chunk {no}: `offsets` decrease at document {d} (document {doc0 + d} of the "
                             f"corpus): {int(offsets[d])} -> {int(offsets[d + 1])}")
        ids = None
        if len(raw) == 3:
            from .plaid import _int_ids

            ids = _int_ids(f"{op}: chunk {no}", "ids", raw[2])
            if ids.shape[0] != offsets.shape[0] - 1:
                raise ValueError(f"{op}: chunk {no}: {ids.shape[0]} ids for {offsets.shape[0] - 1} documents")
        for r0 in range(0, tokens.shape[0], _FINITE_ROWS):
            fin = torch.isfinite(tokens[r0:r0 + _FINITE_ROWS]).all(1)
            if not bool(fin.all()):
                row = r0 + int((~fin).nonzero()[0])
                d = int(torch.searchsorted(offsets, torch.tensor(row), right=True)) - 1
                raise ValueError(f"{op}: chunk {no}: document {d} (document {doc0 + d} of the corpus) has NaN or "
                                 f"Inf (token {row - int(offsets[d])})")
        return Chunk(no, tokens, offsets, ids, doc0, tok0)


# -------------------------------------------------------------------------------------
class Codec:
    """centroids float32 [k, dim] (float16-rounded: what the disk keeps), bucket_cutoffs,
    bucket_weights, nbits."""
    __slots__ = ("centroids", "bucket_cutoffs", "bucket_weights", "nbits", "outlier_score", "coarse",
                 "cell_offsets", "nprobe")

    def __init__(self, centroids, bucket_cutoffs, bucket_weights, nbits, outlier_score=None, coarse=None,
                 cell_offsets=None, nprobe=None):
        self.centroids, self.bucket_cutoffs, self.bucket_weights, self.nbits = (
            centroids, bucket_cutoffs, bucket_weights, nbits)
        # a token whose best centroid score is below this is an outlier (centroid drift)
        self.outlier_score = outlier_score
        # two-level codecs: coarse centroids, the cells' runs of `centroids`, cells probed
        self.coarse, self.cell_offsets, self.nprobe = coarse, cell_offsets, nprobe

    def assign(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(codes int32, best scores float32) of float32 rows: exact, or through the cells."""
        if self.coarse is None:
            return lk.kmeans_assign(x, self.centroids, return_scores=True)
        return _kmeans.assign_two_level(x, self.centroids, self.coarse, self.cell_offsets, self.nprobe)

    def with_centroids(self, centroids: torch.Tensor) -> "Codec":
        return Codec(centroids, self.bucket_cutoffs, self.bucket_weights, self.nbits, self.outlier_score,
                     self.coarse, self.cell_offsets, self.nprobe)


OUTLIER_QUANTILE = 0.01  # share of the build sample's held-out tokens that count as outliers


def scan(src: Source, ids_wanted: bool, progress: bool) -> Tuple[np.ndarray, Optional[torch.Tensor]]:
    """The counting pass: per-document lengths int64 [n] and the ids (int64 [n]; None when no
    chunk gives ids). Chunks with ids and chunks without may not mix; ids must be distinct
    across the corpus (the error names the chunk holding a repeat)."""
    lens, id_parts = [], []
    seen = torch.empty(0, dtype=torch.int64)
    with_ids = None
    for c in src.passes("scan", progress):
        lens.append((c.offsets[1:] - c.offsets[:-1]).numpy())
        has = c.ids is not None
        if with_ids is None:
            with_ids = has
        elif has != with_ids:
            raise ValueError(f"{src.op}: chunk {c.no} {'gives' if has else 'lacks'} ids and chunk 0 "
                             f"{'does not' if has else 'does'}: give ids with every chunk or with none")
        if has:
            dup = torch.unique(c.ids, return_counts=True)
            if bool((dup[1] > 1).any()) or (seen.numel() and bool(torch.isin(c.ids, seen).any())):
                rep = dup[0][dup[1] > 1]
                if not rep.numel():
                    rep = c.ids[torch.isin(c.ids, seen)]
                raise ValueError(f"{src.op}: chunk {c.no}: duplicate document ids, e.g. {rep[:5].tolist()}")
            seen = torch.sort(torch.cat([seen, c.ids])).values
            id_parts.append(c.ids)
    lengths = np.concatenate(lens).astype(np.int64)
    ids = torch.cat(id_parts) if with_ids else None
    return lengths, ids


def check_buckets(op: str, buckets) -> None:
    """`buckets` of an index build: one of lk.residual_buckets' methods, checked before any
    work."""
    if not isinstance(buckets, str) or buckets not in BUCKET_METHODS:
        raise ValueError(f"{op}: `buckets` must be \"lloyd\" or \"quantile\", got {buckets!r}")


def train_codec(src: Source, lengths: np.ndarray, *, nbits: int, seed: int, n_centroids: Optional[int],
                kmeans_niter: int, sample_docs: Optional[int], max_points_per_centroid: Optional[int],
                progress: bool, coarse_cells: Optional[int] = None, nprobe: int = 8,
                buckets: str = "lloyd") -> Codec:
    """Sample -> k-means -> residual buckets, reading only the sampled documents' rows (one
    pass). The sample: min(n, 1 + 16 sqrt(120 n)) documents (or `sample_docs`), as PLAID
    draws it; 5% of its tokens held out for the buckets; k-means on at most
    n_centroids * max_points_per_centroid of the others. coarse_cells: a two-level codec
    (kmeans.fit_two_level; tokens coded through their `nprobe` best cells), for centroid
    counts where the flat k-means and assignment cost too much. buckets: how the residual
    buckets are fit on the held-out residuals (lk.residual_buckets' method: "lloyd", the
    least squared error, or "quantile", PLAID's)."""
    n = lengths.shape[0]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    g = torch.Generator().manual_seed(seed)
    n_sample = min(n, sample_docs or 1 + int(16 * math.sqrt(120 * n)))
    sample = torch.sort(torch.randperm(n, generator=g)[:n_sample]).values.numpy()
    s_lens = lengths[sample]
    n_sample_tok = int(s_lens.sum())
    if n_sample_tok < 1:
        raise ValueError(f"{src.op}: the sampled documents hold no tokens")
    # global row of each sampled token, ascending
    tok_idx = np.repeat(offsets[sample] - (np.cumsum(s_lens) - s_lens), s_lens) + np.arange(n_sample_tok)
    if n_centroids is None:
        est = max(1, int(n_sample_tok * n / n_sample))
        n_centroids = min(_kmeans.plaid_num_centroids(est), n_sample_tok)
    perm = torch.randperm(n_sample_tok, generator=g).numpy()
    n_held = max(1, n_sample_tok // 20) if n_sample_tok > n_centroids + 1 else 0
    train_pos = perm[n_held:]
    if max_points_per_centroid is not None:
        train_pos = train_pos[:n_centroids * max_points_per_centroid]
    n_centroids = min(n_centroids, train_pos.shape[0])
    # where each sampled token goes: train row j >= 0, held-out row i as -(i + 2), else -1
    dest = np.full(n_sample_tok, -1, dtype=np.int64)
    dest[train_pos] = np.arange(train_pos.shape[0])
    dest[perm[:n_held]] = -(np.arange(n_held) + 2)
    dim = src.dim
    train = torch.empty(train_pos.shape[0], dim)
    held = torch.empty(n_held, dim)
    for c in src.passes("sample", progress):
        p0, p1 = np.searchsorted(tok_idx, [c.tok0, c.tok0 + c.tokens.shape[0]])
        if p1 == p0:
            continue
        rows = torch.from_numpy(tok_idx[p0:p1] - c.tok0)
        d = torch.from_numpy(dest[p0:p1])
        t = d >= 0
        if bool(t.any()):
            train[d[t]] = c.tokens[rows[t]].float()
        h = d <= -2
        if bool(h.any()):
            held[-d[h] - 2] = c.tokens[rows[h]].float()
    coarse = cell_offsets = None
    if coarse_cells is None:
        centroids = _kmeans.fit(train, n_centroids, niter=kmeans_niter, seed=seed, show_progress_bar=progress)
    else:
        centroids, coarse, cell_offsets = _kmeans.fit_two_level(
            train, n_centroids, min(coarse_cells, n_centroids), niter=kmeans_niter, seed=seed,
            show_progress_bar=progress)
        coarse = coarse.half().float()
    centroids = centroids.half().float()  # what the disk keeps: compute with exactly that
    codec = Codec(centroids, None, None, nbits, None, coarse, cell_offsets, None if coarse is None else nprobe)
    ref = held if n_held else train
    ref_codes, ref_scores = codec.assign(ref)
    codec.bucket_cutoffs, codec.bucket_weights = lk.residual_buckets(ref - centroids[ref_codes.long()], nbits,
                                                                     buckets)
    codec.outlier_score = float(ref_scores.kthvalue(max(1, math.ceil(OUTLIER_QUANTILE * ref_scores.shape[0]))).values)
    return codec


def expand_codec(src: Source, codec: Codec, *, expand: Optional[bool], min_fraction: float, seed: int,
                 kmeans_niter: int, max_points_per_centroid: Optional[int], n_new_centroids: Optional[int],
                 progress: bool = False) -> Tuple[Optional[Codec], float]:
    """Centroid drift: the source's tokens whose best centroid score is below the codec's
    outlier score (the build sample's 1% quantile) are outliers. When there are any and
    `expand` is True, or `expand` is None and they are at least `min_fraction` of the
    tokens, new centroids are trained on them (PLAID's count rule on the outliers unless
    n_new_centroids; at most max_points_per_centroid points each) and appended: a codec
    whose first centroids are the old ones, so existing codes stay valid. Returns (the
    expanded codec or None, the outlier fraction)."""
    masks, n_out, total = [], 0, 0
    for c in src.passes("outliers", progress):
        _, sc = codec.assign(c.tokens.float().contiguous())
        m = sc < codec.outlier_score
        masks.append(m)
        n_out += int(m.sum())
        total += m.shape[0]
    frac = n_out / max(1, total)
    if expand is False or n_out < 2 or (expand is None and frac < min_fraction):
        return None, frac
    k_new = min(n_out, n_new_centroids or _kmeans.plaid_num_centroids(n_out))
    cap = n_out if max_points_per_centroid is None else min(n_out, k_new * max_points_per_centroid)
    g = torch.Generator().manual_seed(seed)
    pick = torch.sort(torch.randperm(n_out, generator=g)[:cap]).values
    rows = torch.empty(pick.shape[0], codec.centroids.shape[1])
    seen = filled = 0
    for c, m in zip(src.passes(), masks):
        idx = m.nonzero().squeeze(1)
        sel = pick[(pick >= seen) & (pick < seen + idx.shape[0])] - seen
        rows[filled:filled + sel.shape[0]] = c.tokens[idx[sel]].float()
        filled += sel.shape[0]
        seen += idx.shape[0]
    new = _kmeans.fit(rows, k_new, niter=kmeans_niter, seed=seed, show_progress_bar=progress).half().float()
    return codec.with_centroids(torch.cat([codec.centroids, new])), frac


def encode_chunk(tokens: torch.Tensor, codec: Codec) -> Tuple[torch.Tensor, torch.Tensor]:
    """(codes int32 [t], packed uint8 [t, dim * nbits / 8]) of a chunk's tokens, converted
    to float32 a chunk at a time."""
    x = tokens.float().contiguous()
    codes = codec.assign(x)[0] if codec.coarse is not None else lk.kmeans_assign(x, codec.centroids)
    return codes, lk.compress_residuals(x, codec.centroids, codes, codec.bucket_cutoffs, codec.nbits)


def ivf_chunked(codes, doc_offsets: np.ndarray, k: int, alloc: Callable[[int], np.ndarray],
                chunk_tokens: int = 1 << 20, block: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The IVF (centroid -> ascending unique documents) of codes [T] (any integer array,
    e.g. memory-mapped) in two passes over document ranges of about chunk_tokens tokens:
    counts, then each list filled in document order. `alloc(total)` gives the array for the
    documents (in memory or memory-mapped). Same result as one global sort. Without `block`:
    int32 documents and offsets [k + 1]. With `block`: each list cut into runs of documents
    [h * block, (h + 1) * block), an entry stored as its document modulo block (alloc gives
    a uint16 array) and offsets [k * B + 1] marking the start of every (centroid, run), B =
    ceil(n / block) (its run gives an entry's block back)."""
    n = doc_offsets.shape[0] - 1
    nb = 1 if block is None else max(1, -(-n // block))
    ranges = []
    d0 = 0
    while d0 < n:
        d1 = int(np.searchsorted(doc_offsets, doc_offsets[d0] + chunk_tokens, side="right")) - 1
        d1 = min(n, max(d1, d0 + 1))
        ranges.append((d0, d1))
        d0 = d1

    def pairs(d0, d1):
        o = torch.from_numpy(np.asarray(doc_offsets[d0:d1 + 1], dtype=np.int64))
        c = torch.from_numpy(np.asarray(codes[int(o[0]):int(o[-1])]).astype(np.int64))
        m = d1 - d0
        doc_of = torch.repeat_interleave(torch.arange(m), o[1:] - o[:-1], output_size=c.shape[0])
        p = torch.unique(c * m + doc_of)  # sorted by (centroid, document)
        doc = p % m + d0
        if block is None:
            return p // m, doc
        return (p // m) * nb + doc // block, doc % block  # (run, document within its block)

    counts = torch.zeros(k * nb, dtype=torch.int64)
    for d0, d1 in ranges:
        run, _ = pairs(d0, d1)
        counts += torch.bincount(run, minlength=k * nb)
    ivf_offsets = np.zeros(k * nb + 1, dtype=np.int64)
    np.cumsum(counts.numpy(), out=ivf_offsets[1:])
    ivf_docs = alloc(int(ivf_offsets[-1]))
    fill = torch.from_numpy(ivf_offsets[:-1].copy())
    # torch has no index_put for uint16: block entries go through numpy
    out = torch.from_numpy(ivf_docs) if ivf_docs.flags.writeable and block is None else None
    for d0, d1 in ranges:
        run, doc = pairs(d0, d1)
        cnt = torch.bincount(run, minlength=k * nb)
        start = torch.cumsum(cnt, 0) - cnt
        dest = fill[run] + torch.arange(run.shape[0]) - start[run]
        if out is not None:
            out[dest] = doc.to(torch.int32)
        else:
            ivf_docs[dest.numpy()] = doc.numpy().astype(ivf_docs.dtype)
        fill += cnt
    return ivf_offsets, ivf_docs


def split(tokens: torch.Tensor, offsets: torch.Tensor, chunk_tokens: int = 1 << 18) -> list:
    """An in-memory corpus as chunks (views) of whole documents, about chunk_tokens each."""
    off = np.asarray(offsets, dtype=np.int64)
    n = off.shape[0] - 1
    out, d0 = [], 0
    while d0 < n:
        d1 = int(np.searchsorted(off, off[d0] + chunk_tokens, side="right")) - 1
        d1 = min(n, max(d1, d0 + 1))
        out.append((tokens[int(off[d0]):int(off[d1])], offsets[d0:d1 + 1] - offsets[d0]))
        d0 = d1
    return out
