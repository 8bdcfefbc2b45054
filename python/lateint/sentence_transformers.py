"""sentence-transformers 6 drop-in: multi-vector scoring, its losses and evaluators, and
hierarchical token pooling on lateint kernels, switched on and off in one line.

    import lateint.sentence_transformers as lst
    lst.enable()      # MaxSim scoring of MultiVectorEncoder.similarity / similarity_pairwise,
                      # sentence_transformers.util.maxsim(_pairwise) and mean_maxsim(_pairwise),
                      # every multi-vector loss (the cached one included) and evaluator that
                      # scores through them, and HierarchicalTokenPooling, now run on lateint
    ...               # unchanged sentence-transformers code
    lst.disable()     # everything back to sentence-transformers' own

The switch replaces the two chunk scorers that sentence-transformers' MaxSim functions
call (`util.similarity._maxsim_score_documents` and `_maxsim_score_pairs`), so chunking,
padding, masks, MeanMaxSim and the empty-document sentinel stay theirs: same scores to
float32 rounding, with autograd. `maxsim` / `maxsim_pairwise` themselves are rebound where
sentence-transformers holds them, so that lists of tensors (what `encode` returns) go to the
kernel packed, without their padded copy of every document; calls with masks or a device
still take their path. Inputs the kernels do not take (float64, other devices,
non-binary masks) run sentence-transformers' own code.

`HierarchicalTokenPooling` here is a subclass of theirs (same arguments, same saved
config) that pools a whole batch in one `lk.token_pool_list(variant="sentence-transformers")`
call, bit for bit their output; put it in a model's modules and the saved checkpoint loads
it back (with `trust_remote_code=True`, which sentence-transformers asks for any module
class from another package). `enable(pooling=True)` also routes their own class through
the kernel, so checkpoints saved with theirs pool fast and load anywhere. When the embeddings require a gradient the clustering comes from
the kernel and the means are taken with their autograd-visible scatter_add.

Supported: sentence-transformers 6.2.0 (tested); `enable()` refuses other versions unless
`allow_untested=True` (inside 6.x only).
"""
from __future__ import annotations

import importlib
from typing import Dict, List, Optional

import torch

import lateint_kernels as lk

from ._versions import require_tested, version_tuple

TESTED = ("6.2.0",)
SUPPORTED = ((6, 0), (7, 0))
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _import_st():
    try:
        import sentence_transformers
    except ImportError as e:
        raise ImportError("lateint.sentence_transformers needs sentence-transformers 6: "
                          "pip install sentence-transformers==6.2.0 (in an environment without PyLate, "
                          "which pins 5.3.0; scripts/install.sh sets one up in .venv-st6)") from e
    return sentence_transformers


def check_version(allow_untested: bool = False) -> str:
    """The installed sentence-transformers version; RuntimeError outside 6.x, or when it is
    not a tested version and `allow_untested` is False."""
    v = getattr(_import_st(), "__version__", "0")
    if not (SUPPORTED[0] <= version_tuple(v)[:2] < SUPPORTED[1]):
        raise RuntimeError(f"lateint.sentence_transformers supports sentence-transformers 6.x (MultiVectorEncoder); "
                           f"installed: {v}")
    require_tested("lateint.sentence_transformers", "sentence-transformers", v, TESTED, allow_untested)
    return v


def _similarity_module():
    return importlib.import_module("sentence_transformers.util.similarity")


def _pooling_class():
    from sentence_transformers.multi_vector_encoder.modules.token_pooling import HierarchicalTokenPooling as T
    return T


_ORIGINALS: Dict[str, object] = {}
_INHERITED = set()  # pooling methods HierarchicalTokenPooling inherits rather than defines


def _original(name: str):
    """sentence-transformers' own function or method, as it was before any switch."""
    if name not in _ORIGINALS:
        if name in ("_maxsim_score_documents", "_maxsim_score_pairs", "maxsim", "maxsim_pairwise"):
            _ORIGINALS[name] = getattr(_similarity_module(), name)
        else:
            cls = _pooling_class()
            if name not in cls.__dict__:
                _INHERITED.add(name)
            _ORIGINALS[name] = getattr(cls, name)
    return _ORIGINALS[name]


# ---------------------------------------------------------------------------------------
# scoring
def _binary(m: Optional[torch.Tensor]) -> bool:
    return m is None or m.dtype == torch.bool or bool(((m == 0) | (m == 1)).all())


def _kernel_takes(a, b, a_mask, b_mask) -> bool:
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dim() == 3 and b.dim() == 3):
        return False
    if a.dtype != b.dtype or a.dtype not in _KERNEL_DTYPES or a.device != b.device:
        return False
    if a.device.type not in ("cpu", "cuda") or b.shape[1] == 0 or a.shape[-1] != b.shape[-1]:
        return False
    for m in (a_mask, b_mask):
        if m is not None and (m.device != a.device or not _binary(m)):
            return False
    return True


def _packed(b: torch.Tensor, b_mask: Optional[torch.Tensor]):
    """[n, L, h] (+ mask) -> (tokens, offsets, mask as bool or None): masked tokens dropped."""
    n, L, h = b.shape
    if b_mask is None:
        return b.reshape(n * L, h), torch.arange(n + 1, device=b.device, dtype=torch.int64) * L, None
    m = b_mask.bool()
    p = lk.pack(b, m)
    return p.tokens, p.offsets, m


def _score_documents(a, b, a_mask, b_mask):
    """`_maxsim_score_documents` on lk.maxsim: every query of the chunk against every
    document -> float32 [A, B]."""
    if not _kernel_takes(a, b, a_mask, b_mask):
        return _original("_maxsim_score_documents")(a, b, a_mask, b_mask)
    tokens, offsets, m = _packed(b, b_mask)
    s = lk.maxsim(a, tokens, offsets, query_mask=None if a_mask is None else a_mask.bool())
    if m is not None:
        s = _similarity_module()._fill_empty_document_scores(s, ~m.any(dim=-1)[None, :].expand_as(s))
    return s


def _score_pairs(a, b, a_mask, b_mask):
    """`_maxsim_score_pairs` on lk.maxsim_candidates: query i against document i -> [B]."""
    if not _kernel_takes(a, b, a_mask, b_mask) or a.shape[0] != b.shape[0]:
        return _original("_maxsim_score_pairs")(a, b, a_mask, b_mask)
    tokens, offsets, m = _packed(b, b_mask)
    cand = torch.arange(b.shape[0], device=b.device)[:, None]
    s = lk.maxsim_candidates(a, tokens, offsets, cand, query_mask=None if a_mask is None else a_mask.bool())[:, 0]
    if m is not None:
        s = _similarity_module()._fill_empty_document_scores(s, ~m.any(dim=-1))
    return s


def _tensor_list(x) -> bool:
    return isinstance(x, list) and len(x) > 0 and all(isinstance(t, torch.Tensor) and t.dim() == 2 for t in x)


def _lists_for_kernel(a, b, a_mask, b_mask, device) -> bool:
    """Whether a maxsim call can skip sentence-transformers' padding: lists of 2-D tensors
    of one kernel dtype and device on both sides, no masks, no device move."""
    if a_mask is not None or b_mask is not None or device is not None:
        return False
    if not (_tensor_list(a) and _tensor_list(b)):
        return False
    dt, dev, dim = a[0].dtype, a[0].device, a[0].shape[-1]
    if dt not in _KERNEL_DTYPES or dev.type not in ("cpu", "cuda"):
        return False
    return all(t.dtype == dt and t.device == dev and t.shape[-1] == dim for t in a + b)


def _queries_and_docs(a, b):
    """Padded queries (+ mask when their lengths differ) and the packed documents."""
    lens = torch.tensor([t.shape[0] for t in a])
    q = torch.nn.utils.rnn.pad_sequence(a, batch_first=True)
    qm = None
    if int(lens.min()) != q.shape[1]:
        qm = (torch.arange(q.shape[1])[None, :] < lens[:, None]).to(q.device)
    return q, qm, lk.pack_list(b)


def _finish(s, docs, a, length_normalize, pairwise: bool):
    """sentence-transformers' sentinel for documents without tokens, and MeanMaxSim."""
    empty = docs.offsets[1:] == docs.offsets[:-1]
    if bool(empty.any()):
        s = _similarity_module()._fill_empty_document_scores(s, empty if pairwise else empty[None, :].expand_as(s))
    if length_normalize:
        counts = _similarity_module()._query_token_counts(a, None).to(device=s.device, dtype=s.dtype)
        s = s / (counts if pairwise else counts[:, None])
    return s


def _maxsim(a, b, a_mask=None, b_mask=None, chunk_elements=None, length_normalize=False, device=None):
    """sentence-transformers' `maxsim`: lists of tensors go to lk.maxsim directly (no padded
    copy of the documents); everything else to theirs, which scores through the kernel's
    chunk scorer."""
    if not _lists_for_kernel(a, b, a_mask, b_mask, device):
        return _original("maxsim")(a, b, a_mask=a_mask, b_mask=b_mask, chunk_elements=chunk_elements,
                                   length_normalize=length_normalize, device=device)
    q, qm, docs = _queries_and_docs(a, b)
    s = lk.maxsim(q, docs.tokens, docs.offsets, query_mask=qm)
    return _finish(s, docs, a, length_normalize, pairwise=False)


def _maxsim_pairwise(a, b, a_mask=None, b_mask=None, chunk_elements=None, length_normalize=False, device=None):
    """sentence-transformers' `maxsim_pairwise`, lists of tensors straight to the kernel."""
    if not _lists_for_kernel(a, b, a_mask, b_mask, device) or len(a) != len(b):
        return _original("maxsim_pairwise")(a, b, a_mask=a_mask, b_mask=b_mask, chunk_elements=chunk_elements,
                                            length_normalize=length_normalize, device=device)
    q, qm, docs = _queries_and_docs(a, b)
    cand = torch.arange(len(b), device=q.device)[:, None]
    s = lk.maxsim_candidates(q, docs.tokens, docs.offsets, cand, query_mask=qm)[:, 0]
    return _finish(s, docs, a, length_normalize, pairwise=True)


# modules that hold `maxsim` / `maxsim_pairwise` under their own names
_MAXSIM_HOLDERS = ("sentence_transformers.util.similarity", "sentence_transformers.util",
                   "sentence_transformers.multi_vector_encoder", "sentence_transformers.multi_vector_encoder.scoring.colbert")


# ---------------------------------------------------------------------------------------
# token pooling
def _pool_docs(module, docs: List[torch.Tensor]) -> List[torch.Tensor]:
    """`module.pool_one` over every document at once: one kernel call, or (when a document
    requires a gradient) the kernel's clusters and sentence-transformers' own means."""
    if not docs:
        return []
    pf, protect, norm = module.pool_factor, module.num_protected_tokens, module.normalize_embeddings
    needs_grad = any(d.requires_grad for d in docs)
    if not needs_grad or not torch.is_grad_enabled():
        return lk.token_pool_list([d.detach() for d in docs] if needs_grad else docs, pf, protected_tokens=protect,
                                  normalize=norm, variant="sentence-transformers")
    return [_pool_with_grad(d, pf, protect, norm) for d in docs]


def _pool_with_grad(doc: torch.Tensor, pool_factor, protect: int, normalize: bool) -> torch.Tensor:
    """One document, differentiable: the kernel's labels, then means as sentence-transformers
    takes them (scatter_add in the input dtype over dense labels, divided by the counts)."""
    from sentence_transformers.multi_vector_encoder.modules.token_pooling import _normalize_token_embeddings

    offsets = torch.tensor([0, doc.shape[0]], dtype=torch.int64, device=doc.device)
    rows, new_off = lk.token_pool_labels(doc.detach(), offsets, pool_factor, protected_tokens=protect,
                                         variant="sentence-transformers")
    p = min(protect, doc.shape[0])
    out = doc
    if int(new_off[1]) < doc.shape[0]:
        to_pool = doc[p:]
        inv = rows[p:] - p
        nc = int(new_off[1]) - p
        sums = torch.zeros(nc, doc.shape[1], dtype=doc.dtype, device=doc.device)
        counts = torch.zeros(nc, dtype=torch.long, device=doc.device)
        sums = sums.scatter_add(0, inv.unsqueeze(1).expand_as(to_pool), to_pool)
        counts.scatter_add_(0, inv, torch.ones_like(inv))
        out = torch.cat([doc[:p], sums / counts.unsqueeze(1)], dim=0)
    return _normalize_token_embeddings(out) if normalize else out


def _pool_one(self, embedding: torch.Tensor, **kwargs) -> torch.Tensor:
    return _pool_docs(self, [embedding])[0]


def _pool(self, embeddings, *, task=None, attention_mask=None, padding_side: str = "right"):
    from sentence_transformers.multi_vector_encoder.modules import token_pooling as tp

    if not self.applies_to(task) or not isinstance(embeddings, (list, torch.Tensor)):
        return _original("pool")(self, embeddings, task=task, attention_mask=attention_mask,
                                 padding_side=padding_side)
    if isinstance(embeddings, torch.Tensor):
        if embeddings.ndim != 3 or padding_side not in ("left", "right") or embeddings.shape[0] == 0:
            return _original("pool")(self, embeddings, task=task, attention_mask=attention_mask,
                                     padding_side=padding_side)
        docs = tp._unbind_padded(embeddings, attention_mask, padding_side)
        return tp._pad_to_3d(_pool_docs(self, docs), padding_side)
    if not embeddings or embeddings[0].ndim != 2:
        return _original("pool")(self, embeddings, task=task, attention_mask=attention_mask,
                                 padding_side=padding_side)
    return _pool_docs(self, list(embeddings))


def _forward(self, features: Dict[str, torch.Tensor], task: Optional[str] = None):
    from sentence_transformers.multi_vector_encoder.modules import token_pooling as tp

    emb = features["token_embeddings"]
    if self.pool_factor <= 1 or not self.applies_to(task) or emb.shape[0] == 0:
        return _original("forward")(self, features, task=task)
    mask = features["attention_mask"].bool()
    pooled = _pool_docs(self, [e[m] for e, m in zip(emb, mask)])
    device = emb.device
    padded = tp._pad_to_3d(pooled, padding_side="right").to(device)
    lengths = torch.as_tensor([row.shape[0] for row in pooled], device=device, dtype=torch.long)
    features["token_embeddings"] = padded
    features["attention_mask"] = torch.arange(int(lengths.max()), device=device).unsqueeze(0) < lengths.unsqueeze(1)
    return features


def _make_pooling_class():
    base = _pooling_class()

    class HierarchicalTokenPooling(base):
        """sentence-transformers' HierarchicalTokenPooling (same arguments and config) on
        lateint's kernel: a whole batch clustered in one call, their output bit for bit."""

        forward = _forward
        pool = _pool
        pool_one = _pool_one

    HierarchicalTokenPooling.__module__ = __name__
    return HierarchicalTokenPooling


def __getattr__(name: str):
    # the subclass is built on first use, so that importing this module does not need
    # sentence-transformers 6 (and checks its version first)
    if name == "HierarchicalTokenPooling":
        check_version(allow_untested=True)
        cls = _make_pooling_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------
# the switch
_STATE = {"enabled": False}


def is_enabled() -> bool:
    return _STATE["enabled"]


def enable(*, scores: bool = True, pooling: bool = True, allow_untested: bool = False) -> None:
    """Routes sentence-transformers' MaxSim scoring (`scores`) and HierarchicalTokenPooling
    (`pooling`) through lateint. Idempotent; `disable()` restores theirs."""
    check_version(allow_untested)
    if _STATE["enabled"]:
        disable()
    sim = _similarity_module()
    if scores:
        for name in ("_maxsim_score_documents", "_maxsim_score_pairs", "maxsim", "maxsim_pairwise"):
            _original(name)
        sim._maxsim_score_documents = _score_documents
        sim._maxsim_score_pairs = _score_pairs
        for holder in _MAXSIM_HOLDERS:
            mod = importlib.import_module(holder)
            for name, fn in (("maxsim", _maxsim), ("maxsim_pairwise", _maxsim_pairwise)):
                if getattr(mod, name, None) is _original(name):
                    setattr(mod, name, fn)
    if pooling:
        cls = _pooling_class()
        for name, fn in (("forward", _forward), ("pool", _pool), ("pool_one", _pool_one)):
            _original(name)
            setattr(cls, name, fn)
    _STATE["enabled"] = True


def disable() -> None:
    """Puts back every function `enable()` replaced."""
    if not _ORIGINALS:
        _STATE["enabled"] = False
        return
    sim = _similarity_module()
    for name in ("_maxsim_score_documents", "_maxsim_score_pairs"):
        if name in _ORIGINALS:
            setattr(sim, name, _ORIGINALS[name])
    for holder in _MAXSIM_HOLDERS:
        mod = importlib.import_module(holder)
        for name, fn in (("maxsim", _maxsim), ("maxsim_pairwise", _maxsim_pairwise)):
            if getattr(mod, name, None) is fn:
                setattr(mod, name, _ORIGINALS[name])
    cls = _pooling_class()
    for name in ("forward", "pool", "pool_one"):
        if name in _INHERITED:
            if name in cls.__dict__:
                delattr(cls, name)
        elif name in _ORIGINALS:
            setattr(cls, name, _ORIGINALS[name])
    _STATE["enabled"] = False


class enabled:
    """Context manager: `with lst.enabled(): ...` switches on for the block."""

    def __init__(self, **kw):
        self.kw = kw

    def __enter__(self):
        enable(**self.kw)
        return self

    def __exit__(self, *exc):
        disable()
        return False
