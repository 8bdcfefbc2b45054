"""PyLate drop-in: PyLate's scoring, reranking, losses, token pooling and PLAID retrieval on
lateint kernels, switched on and off in one line.

    import lateint.pylate as lp
    lp.enable()       # PyLate's colbert_scores / colbert_kd_scores / colbert_scores_pairwise,
                      # ColBERTScores (its contrastive losses), rank.rerank, Distillation,
                      # ColBERT.encode(pool_factor=...) and indexes.PLAID now run on lateint
    ...               # unchanged PyLate code
    lp.disable()      # everything back to PyLate's own

Scores keep PyLate's exact signature and masking semantics (masks multiply the
similarities: a masked document token counts as a 0 similarity, so every token max of a
padded document is floored at 0) and are equal to PyLate's own to float32 rounding, with
autograd. PyLate's backend switch is honoured, not fought: `backend=` / the env variable
`PYLATE_SCORES_BACKEND` set to "torch", "flash" or "lik" runs PyLate's own implementation;
"auto" (the default) runs lateint's kernels (CPU C++, CUDA/Triton on GPU). Inputs the
kernels do not take (float64, MPS tensors, non-binary masks) also go to PyLate's own code.

`PLAID` is an end-to-end index with PyLate's index interface (`add_documents`,
`remove_documents`, `__call__(queries_embeddings, k, subset)`, `get_documents_embeddings`)
on `lateint.plaid.PLAIDIndex`, usable by `pylate.retrieve.ColBERT`. Supported: PyLate
1.4 <= version < 2 (tested: 1.6.0); `enable()` refuses other versions.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

import lateint_kernels as lk

from ._versions import version_tuple

logger = logging.getLogger(__name__)

SUPPORTED = ((1, 4), (2, 0))     # [1.4, 2.0): PyLate's current module layout (scores.colbert, ...)
TESTED = ("1.6.0",)
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _import_pylate():
    try:
        import pylate
    except ImportError as e:
        raise ImportError("lateint.pylate needs PyLate: pip install --no-deps pylate==1.6.0 (plus "
                          "sentence-transformers==5.3.0, datasets, ujson; see scripts/install.sh)") from e
    return pylate


def check_version() -> str:
    """The installed PyLate version, or RuntimeError when it is outside SUPPORTED."""
    pylate = _import_pylate()
    v = getattr(pylate, "__version__", "0")
    if not (SUPPORTED[0] <= version_tuple(v)[:2] < SUPPORTED[1]):
        raise RuntimeError(f"lateint.pylate supports PyLate >= {'.'.join(map(str, SUPPORTED[0]))} and < "
                           f"{'.'.join(map(str, SUPPORTED[1]))} (modules moved in 1.4); installed: {v}")
    if v not in TESTED:
        warnings.warn(f"lateint.pylate: PyLate {v} is in the supported range but untested (tested: "
                      f"{', '.join(TESTED)})", stacklevel=3)
    return v


def _pylate_scores_module():
    import importlib
    return importlib.import_module("pylate.scores.colbert")


_ORIGINALS: Dict[str, object] = {}


def _original(name: str):
    if name not in _ORIGINALS:
        _ORIGINALS[name] = getattr(_pylate_scores_module(), name)
    return _ORIGINALS[name]


# ---------------------------------------------------------------------------------------
# scores
def _convert(x):
    from pylate.utils.tensor import convert_to_tensor
    return convert_to_tensor(x)


def _use_pylate(backend: Optional[str], tensors, masks) -> bool:
    """True when PyLate's own implementation must run (its backend switch, or inputs the
    kernels don't take)."""
    from pylate.scores.colbert import _resolve_backend  # validates the name like PyLate does
    if _resolve_backend(backend) != "auto":
        return True
    dtype, device = tensors[0].dtype, tensors[0].device
    for t in tensors:
        if t.dtype != dtype or t.dtype not in _KERNEL_DTYPES or t.device != device:
            return True
        if t.device.type not in ("cpu", "cuda"):
            return True
    for m in masks:
        if m is not None and (m.device != device or not bool(((m == 0) | (m == 1)).all())):
            return True
    return False


def _packed_zero(documents: torch.Tensor, documents_mask: Optional[torch.Tensor]):
    """[n, L, h] (+ mask [n, L]) -> tokens, offsets, padded flags for mask_mode="zero"."""
    n, L, h = documents.shape
    if documents_mask is None:
        offsets = torch.arange(n + 1, device=documents.device, dtype=torch.int64) * L
        return documents.reshape(n * L, h), offsets, torch.zeros(n, dtype=torch.bool, device=documents.device)
    p = lk.pack(documents, documents_mask.bool())
    return p.tokens, p.offsets, p.padded


def _query_mask(queries_mask):
    return None if queries_mask is None else queries_mask.bool()


def colbert_scores(queries_embeddings, documents_embeddings, queries_mask=None, documents_mask=None,
                   backend: Optional[str] = None) -> torch.Tensor:
    """PyLate's `colbert_scores` on `lk.maxsim`: queries [A, Lq, h], documents [B, Ld, h]
    (+ masks) -> [A, B] in the input dtype."""
    q, d = _convert(queries_embeddings), _convert(documents_embeddings)
    qm = None if queries_mask is None else _convert(queries_mask)
    dm = None if documents_mask is None else _convert(documents_mask)
    if q.dim() != 3 or d.dim() != 3 or _use_pylate(backend, (q, d), (qm, dm)):
        return _original("colbert_scores")(q, d, qm, dm, backend=backend)
    tokens, offsets, padded = _packed_zero(d, dm)
    s = lk.maxsim(q, tokens, offsets, query_mask=_query_mask(qm), mask_mode="zero", doc_padded=padded)
    return s.to(q.dtype)


def colbert_kd_scores(queries_embeddings, documents_embeddings, queries_mask=None, documents_mask=None,
                      backend: Optional[str] = None) -> torch.Tensor:
    """PyLate's `colbert_kd_scores`: queries [B, Lq, h], each query's own documents
    [B, N, Ld, h] (+ masks [B, Lq], [B, N, Ld]) -> [B, N]."""
    q, d = _convert(queries_embeddings), _convert(documents_embeddings)
    qm = None if queries_mask is None else _convert(queries_mask)
    dm = None if documents_mask is None else _convert(documents_mask)
    if q.dim() != 3 or d.dim() != 4 or _use_pylate(backend, (q, d), (qm, dm)):
        return _original("colbert_kd_scores")(q, d, qm, dm, backend=backend)
    b, n, L, h = d.shape
    tokens, offsets, padded = _packed_zero(d.reshape(b * n, L, h), None if dm is None else dm.reshape(b * n, L))
    cand = torch.arange(b * n, device=q.device).view(b, n)
    s = lk.maxsim_candidates(q, tokens, offsets, cand, query_mask=_query_mask(qm), mask_mode="zero",
                             doc_padded=padded)
    return s.to(q.dtype)


def colbert_scores_pairwise(queries_embeddings, documents_embeddings, backend: Optional[str] = None) -> torch.Tensor:
    """PyLate's `colbert_scores_pairwise`: query i against document i -> [B] (tensors, or
    lists of [L_i, h] of any lengths, as PyLate takes them)."""
    q_list = [_convert(x) for x in queries_embeddings]
    d_list = [_convert(x) for x in documents_embeddings]
    tensors = q_list + d_list
    if (not q_list or len(q_list) != len(d_list) or any(t.dim() != 2 or t.shape[0] == 0 for t in tensors)
            or _use_pylate(backend, tensors, ())):
        return _original("colbert_scores_pairwise")(queries_embeddings, documents_embeddings, backend=backend)
    # zero query rows add max(0) = 0, so padding the queries changes nothing
    q = torch.nn.utils.rnn.pad_sequence(q_list, batch_first=True)
    docs = lk.pack_list(d_list)
    cand = torch.arange(len(d_list), device=q.device)[:, None]
    s = lk.maxsim_candidates(q, docs.tokens, docs.offsets, cand)[:, 0]
    return s.to(q.dtype)


def _colbert_scores_class():
    from pylate.scores.colbert import ColBERTScores as _Base

    class ColBERTScores(_Base):
        """PyLate's ColBERTScores (contrastive losses' default): queries [Q, Qt, H] against
        stacked groups [D, N, Dt, H] -> [Q, D * N], query-major (column j*N + k is group j,
        slot k) — in one kernel call instead of one per slot."""

        def __call__(self, queries_embeddings, documents_embeddings, queries_mask=None, documents_mask=None,
                     backend: Optional[str] = None) -> torch.Tensor:
            q, d = _convert(queries_embeddings), _convert(documents_embeddings)
            dm = None if documents_mask is None else _convert(documents_mask)
            if d.dim() != 4:
                return super().__call__(q, d, queries_mask, documents_mask, backend=backend)
            D, N, L, H = d.shape
            return colbert_scores(q, d.reshape(D * N, L, H), queries_mask,
                                  None if dm is None else dm.reshape(D * N, L), backend=backend)

    return ColBERTScores


# ---------------------------------------------------------------------------------------
# token pooling
def pool_embeddings_hierarchical(self, documents_embeddings: List[torch.Tensor], pool_factor: int = 1,
                                 protected_tokens: int = 1) -> List[torch.Tensor]:
    """PyLate's `ColBERT.pool_embeddings_hierarchical` on `lk.token_pool` (same clusters,
    same rows; CPU tensors out, as PyLate returns them)."""
    if pool_factor <= 1 or len(documents_embeddings) == 0:
        return [d.cpu() for d in documents_embeddings]
    docs = [d.cpu() for d in documents_embeddings]
    if any(d.dtype not in _KERNEL_DTYPES and d.dtype != torch.float64 for d in docs):
        return _ORIGINALS["pool_embeddings_hierarchical"](self, documents_embeddings, pool_factor, protected_tokens)
    return lk.token_pool_list(docs, pool_factor, protected_tokens=protected_tokens)


# ---------------------------------------------------------------------------------------
# index
def _to_tensor_list(embeddings) -> List[torch.Tensor]:
    if isinstance(embeddings, (np.ndarray, torch.Tensor)):
        embeddings = [embeddings] if embeddings.ndim == 2 else list(embeddings)
    out = []
    for i, e in enumerate(embeddings):
        t = torch.as_tensor(np.asarray(e) if isinstance(e, list) else e).float().cpu()
        if t.dim() != 2:
            raise ValueError(f"PLAID: embeddings[{i}] must be [n_tokens, dim], got shape {tuple(t.shape)}")
        out.append(t)
    return out


class PLAID:
    """An end-to-end PLAID index with PyLate's interface, on lateint's `PLAIDIndex`.

    PLAID(index_folder="indexes", index_name="colbert", override=False, nbits=4, seed=42)
    keeps the index in index_folder/index_name (loaded when present, unless override) and
    saves it after every change (atomically). Document ids are PyLate's strings. Adding
    an id that is already there replaces that document. PyLate's fast-plaid tuning
    arguments (kmeans_niters, n_ivf_probe, ...) are accepted and ignored; lateint's
    search settings are `ncells`, `centroid_score_threshold`, `ndocs` (PLAID's defaults
    per k when None)."""

    is_end_to_end_index = True

    def __init__(self, index_folder: str = "indexes", index_name: str = "colbert", override: bool = False,
                 nbits: int = 4, seed: int = 42, show_progress: bool = True, ncells: Optional[int] = None,
                 centroid_score_threshold: Optional[float] = None, ndocs: Optional[int] = None, **kwargs):
        from .plaid import PLAIDIndex
        if kwargs:
            logger.info("lateint PLAID ignores fast-plaid settings %s", sorted(kwargs))
        self.index_folder, self.index_name = index_folder, index_name
        self.path = os.path.join(index_folder, index_name)
        self.nbits, self.seed, self.show_progress = nbits, seed, show_progress
        self.search_settings = {"ncells": ncells, "centroid_score_threshold": centroid_score_threshold,
                                "ndocs": ndocs}
        if override and os.path.exists(self.path):
            shutil.rmtree(self.path)
        self.index = PLAIDIndex.load(self.path) if os.path.exists(os.path.join(self.path, "CURRENT")) else None
        self._names: List[str] = [] if self.index is None else list(self.index.metadata.get("names", []))
        self._by_name: Dict[str, int] = {}
        if self.index is not None:
            live = (~self.index.deleted).tolist()
            for i, alive in zip(self.index.ids.tolist(), live):
                if alive:
                    self._by_name[self._names[i]] = i

    def _save(self) -> None:
        self.index.metadata = {"names": self._names}
        self.index.save(self.path)

    def add_documents(self, documents_ids, documents_embeddings, batch_size: Optional[int] = None, **kwargs) -> "PLAID":
        from .plaid import PLAIDIndex
        if isinstance(documents_ids, str):
            documents_ids = [documents_ids]
        documents_ids = [str(x) for x in documents_ids]
        docs = _to_tensor_list(documents_embeddings)
        if len(docs) != len(documents_ids):
            raise ValueError(f"PLAID.add_documents: {len(documents_ids)} ids for {len(docs)} documents")
        if len(set(documents_ids)) != len(documents_ids):
            raise ValueError("PLAID.add_documents: documents_ids contains duplicates")
        if not docs:
            return self
        packed = lk.pack_list(docs)
        replaced = [i for i in documents_ids if i in self._by_name]
        if replaced and self.index is not None:
            self.index.delete([self._by_name[i] for i in replaced])
        new_ids = list(range(len(self._names), len(self._names) + len(docs)))
        if self.index is None:
            self.index = PLAIDIndex.build(packed.tokens, packed.offsets, ids=new_ids, nbits=self.nbits,
                                          seed=self.seed, show_progress_bar=self.show_progress)
        else:
            self.index.add(packed.tokens, packed.offsets, new_ids)
        self._names.extend(documents_ids)
        self._by_name.update(zip(documents_ids, new_ids))
        self._save()
        return self

    def update_documents(self, documents_ids, documents_embeddings) -> "PLAID":
        return self.add_documents(documents_ids, documents_embeddings)

    def remove_documents(self, documents_ids) -> "PLAID":
        if isinstance(documents_ids, str):
            documents_ids = [documents_ids]
        known = [str(i) for i in documents_ids if str(i) in self._by_name]
        unknown = [str(i) for i in documents_ids if str(i) not in self._by_name]
        if unknown:  # PyLate's indexes ignore unknown ids; say so
            logger.warning("PLAID.remove_documents: %d ids not in the index (ignored), e.g. %s",
                           len(unknown), unknown[:5])
        if known:
            self.index.delete([self._by_name.pop(i) for i in known])
            self._save()
        return self

    def _subset_ids(self, subset, nq: int):
        if subset is None:
            return None
        if len(subset) > 0 and not isinstance(subset[0], str):
            if len(subset) != nq:
                raise ValueError(f"PLAID: per-query subset needs {nq} lists, got {len(subset)}")
            return [[self._by_name[s] for s in sub if s in self._by_name] for sub in subset]
        return [self._by_name[s] for s in subset if s in self._by_name]

    def __call__(self, queries_embeddings, k: int = 10, subset=None) -> List[List[dict]]:
        if self.index is None or not self._by_name:
            raise ValueError("PLAID: the index is empty; add documents before querying")
        qs = _to_tensor_list(queries_embeddings)
        q = torch.nn.utils.rnn.pad_sequence(qs, batch_first=True)
        lens = torch.tensor([t.shape[0] for t in qs])
        mask = torch.arange(q.shape[1])[None, :] < lens[:, None]
        qmask = None if bool(mask.all()) else mask
        settings = {key: v for key, v in self.search_settings.items() if v is not None}
        ids, scores = self.index.search(q, k, query_mask=qmask, subset=self._subset_ids(subset, len(qs)), **settings)
        out = []
        for row_ids, row_scores in zip(ids.tolist(), scores.tolist()):
            out.append([{"id": self._names[i], "score": s} for i, s in zip(row_ids, row_scores) if i >= 0])
        return out

    def get_documents_embeddings(self, documents_ids: Sequence[Sequence[str]]) -> List[List[np.ndarray]]:
        """Decompressed (approximate) token embeddings per id, as PyLate's rerank takes them."""
        ix = self.index
        pos = {int(i): p for p, i in enumerate(ix.ids.tolist())}
        out = []
        for group in documents_ids:
            row = []
            for name in group:
                if name not in self._by_name:
                    raise KeyError(f"PLAID.get_documents_embeddings: unknown document id {name!r}")
                p = pos[self._by_name[name]]
                a, b = int(ix.doc_offsets[p]), int(ix.doc_offsets[p + 1])
                row.append(lk.decompress_residuals(ix.codes[a:b], ix.packed[a:b], ix.centroids, ix.bucket_weights,
                                                   ix.nbits).numpy())
            out.append(row)
        return out


# ---------------------------------------------------------------------------------------
# the switch
_PATCHES: List[tuple] = []   # (object, attribute, original value)


def is_enabled() -> bool:
    return bool(_PATCHES)


def _set(obj, attr, value):
    _PATCHES.append((obj, attr, getattr(obj, attr)))
    setattr(obj, attr, value)


def enable(*, scores: bool = True, pooling: bool = True, index: bool = True) -> None:
    """Routes PyLate's scoring (and so its losses and rank.rerank), token pooling and
    `indexes.PLAID` to lateint. Idempotent; `disable()` undoes it."""
    import importlib
    if is_enabled():
        return
    check_version()
    names = ("pylate.scores", "pylate.scores.colbert", "pylate.scores.similarity_functions", "pylate.rank",
             "pylate.rank.rank", "pylate.losses", "pylate.losses.contrastive", "pylate.losses.cached_contrastive",
             "pylate.losses.distillation", "pylate.models", "pylate.models.colbert", "pylate.indexes",
             "pylate.retrieve", "pylate.evaluation", "pylate.evaluation.colbert_distillation",
             "pylate.evaluation.colbert_triplet")
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional part of PyLate that needs what is not installed
            pass
    sc = _pylate_scores_module()
    required = ("colbert_scores", "colbert_kd_scores", "colbert_scores_pairwise", "ColBERTScores", "_resolve_backend")
    missing = [r for r in required if not hasattr(sc, r)]
    if missing:
        raise RuntimeError(f"lateint.pylate: this PyLate lacks pylate.scores.colbert.{missing[0]}; "
                           f"supported layouts: PyLate {SUPPORTED[0]}..{SUPPORTED[1]}")
    try:
        replacements = {}
        if scores:
            for fn in ("colbert_scores", "colbert_kd_scores", "colbert_scores_pairwise"):
                replacements[id(_original(fn))] = globals()[fn]
            replacements[id(sc.ColBERTScores)] = _colbert_scores_class()
        if index:
            plaid_cls = importlib.import_module("pylate.indexes").PLAID
            replacements[id(plaid_cls)] = PLAID
        # every module-level name bound to one of PyLate's originals (found by identity, so
        # re-exports and `from ..scores import colbert_scores` copies are all caught)
        for mod_name, mod in list(sys.modules.items()):
            if mod is None or not (mod_name == "pylate" or mod_name.startswith("pylate.")):
                continue
            for attr, value in list(vars(mod).items()):
                if id(value) in replacements and not attr.startswith("__"):
                    _set(mod, attr, replacements[id(value)])
        if scores:
            from pylate.losses.distillation import Distillation
            defaults = Distillation.__init__.__defaults__
            if defaults and any(d is _original("colbert_kd_scores") for d in defaults):
                _set(Distillation.__init__, "__defaults__",
                     tuple(colbert_kd_scores if d is _original("colbert_kd_scores") else d for d in defaults))
        if pooling:
            from pylate.models.colbert import ColBERT
            _ORIGINALS["pool_embeddings_hierarchical"] = ColBERT.pool_embeddings_hierarchical
            _set(ColBERT, "pool_embeddings_hierarchical", pool_embeddings_hierarchical)
    except BaseException:
        disable()
        raise


def disable() -> None:
    """Restores everything `enable()` replaced."""
    while _PATCHES:
        obj, attr, value = _PATCHES.pop()
        setattr(obj, attr, value)


class enabled:
    """`with lateint.pylate.enabled(): ...` — enable() for a block."""

    def __init__(self, **kw):
        self.kw = kw

    def __enter__(self):
        self.was = is_enabled()
        enable(**self.kw)
        return self

    def __exit__(self, *exc):
        if not self.was:
            disable()
