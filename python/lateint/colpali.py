"""colpali-engine drop-in: its multi-vector scoring (score_multi_vector, the late-interaction
losses) and its HierarchicalTokenPooler on lateint kernels, switched on and off in one line.

    import lateint.colpali as lcp
    lcp.enable()      # colpali_engine's MaxSim (in-batch and per-query candidates) and
                      # HierarchicalTokenPooler.pool_embeddings now run on lateint
    lcp.disable()

Scores: colpali-engine's einsum reference over zero-padded batches (a zero row is padding:
it scores 0, so a padded page floors every token maximum at 0) is lk.maxsim with PyLate's
"zero" masking, same scores to float32 rounding, with autograd. Its backend switch is
honoured: `COLPALI_SCORES_BACKEND=torch` runs colpali-engine's own einsum, "lik" its
late-interaction-kernels path; "auto" (the default) runs lateint where its kernels take the
inputs (float32/16/bf16 on CPU or CUDA) and colpali-engine's own code otherwise.

Pooling: `lk.token_pool_list(variant="colpali")` for the whole batch, bit for bit
colpali-engine's pooled vectors; the cluster-to-token maps of `return_dict=True` are built
from the kernel's labels (identical wherever scipy's maxclust cut gives the requested
number of clusters, i.e. barring exact ties).

Supported: colpali-engine 0.3.18 (tested; it installs beside CPU torch with --no-deps plus
pillow and peft); `enable()` refuses other versions unless `allow_untested=True`.
"""
from __future__ import annotations

import importlib
from typing import Dict, List, Optional

import torch

import lateint_kernels as lk

from ._versions import require_tested

TESTED = ("0.3.18",)
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_ORIGINALS: Dict[str, object] = {}
_STATE = {"enabled": False}


def _maxsim_module():
    return importlib.import_module("colpali_engine.utils.maxsim")


def _pooler_class():
    from colpali_engine.compression.token_pooling import HierarchicalTokenPooler
    return HierarchicalTokenPooler


def check_version(allow_untested: bool = False) -> str:
    try:
        from importlib.metadata import version
        v = version("colpali-engine")
    except Exception as e:  # not installed
        raise ImportError("lateint.colpali needs colpali-engine: pip install --no-deps colpali-engine==0.3.18 "
                          "pillow 'peft>=0.18,<0.21'") from e
    require_tested("lateint.colpali", "colpali-engine", v, TESTED, allow_untested)
    return v


def _kernel_takes(query, doc) -> bool:
    return (isinstance(query, torch.Tensor) and isinstance(doc, torch.Tensor) and query.dtype == doc.dtype
            and query.dtype in _KERNEL_DTYPES and query.device == doc.device
            and query.device.type in ("cpu", "cuda") and query.shape[-1] == doc.shape[-1] and doc.shape[-2] > 0)


def _packed_nonzero(doc: torch.Tensor):
    """[n, L, d] zero-padded pages -> packed real rows, offsets, and which pages had padding."""
    p = lk.pack(doc, doc.detach().ne(0).any(dim=-1))
    return p.tokens, p.offsets, p.padded


def maxsim_inbatch(query: torch.Tensor, doc: torch.Tensor) -> torch.Tensor:
    """colpali-engine's in-batch MaxSim: query [B_q, L_q, d] x doc [B_d, L_d, d] -> [B_q, B_d]
    in the input dtype."""
    if _maxsim_module()._resolve_backend() != "auto" or not _kernel_takes(query, doc) or doc.dim() != 3:
        return _ORIGINALS["maxsim_inbatch"](query, doc)
    tokens, offsets, padded = _packed_nonzero(doc)
    return lk.maxsim(query, tokens, offsets, mask_mode="zero", doc_padded=padded).to(query.dtype)


def maxsim_kd(query: torch.Tensor, doc: torch.Tensor) -> torch.Tensor:
    """colpali-engine's per-query candidates: query [B, L_q, d], doc [B, N, L_d, d] -> [B, N]."""
    if _maxsim_module()._resolve_backend() != "auto" or not _kernel_takes(query, doc) or doc.dim() != 4:
        return _ORIGINALS["maxsim_kd"](query, doc)
    b, n, L, d = doc.shape
    tokens, offsets, padded = _packed_nonzero(doc.reshape(b * n, L, d))
    cand = torch.arange(b * n, device=doc.device).view(b, n)
    return lk.maxsim_candidates(query, tokens, offsets, cand, mask_mode="zero", doc_padded=padded).to(query.dtype)


def _pool_lists(embeddings: List[torch.Tensor], pool_factor: int, num_workers: Optional[int], want_maps: bool):
    """Pooled pages (one kernel call) and, when asked, colpali-engine's cluster-to-token maps
    (a second call for the labels: the clustering is most of the cost, so only on demand)."""
    if num_workers is not None and num_workers < 1:
        raise ValueError(f"Invalid number of workers: {num_workers}")
    for i, e in enumerate(embeddings):
        if e.size(0) == 1:
            raise ValueError(f"The input tensor must have more than one token (embeddings[{i}]).")
    if pool_factor == 1:
        return list(embeddings), [{0: (torch.arange(e.size(0)),)} for e in embeddings]
    pooled = lk.token_pool_list(embeddings, pool_factor, variant="colpali")
    if not want_maps:
        return pooled, None
    packed = lk.pack_list([e.detach() for e in embeddings])
    rows, new_off = lk.token_pool_labels(packed.tokens.float(), packed.offsets, pool_factor, variant="colpali")
    rows, new_off = rows.cpu(), new_off.cpu()
    maps = []
    for i, e in enumerate(embeddings):
        s, t = int(packed.offsets[i]), int(packed.offsets[i + 1])
        local = rows[s:t] - int(new_off[i])
        k = max(e.size(0) // pool_factor, 1)
        maps.append({c: torch.where(local == c) for c in range(k)})
    return pooled, maps


def _takes_list(embeddings) -> bool:
    return bool(embeddings) and all(isinstance(e, torch.Tensor) and e.dim() == 2 for e in embeddings)


def _pool_embeddings_impl(self, embeddings: List[torch.Tensor], pool_factor: int, num_workers: Optional[int] = None):
    """HierarchicalTokenPooler's pooling of a list of [L, d] tensors, one kernel call (plus
    one for the cluster maps it also returns)."""
    if not _takes_list(embeddings):
        return _ORIGINALS["_pool_embeddings_impl"](self, embeddings, pool_factor=pool_factor, num_workers=num_workers)
    return _pool_lists(embeddings, pool_factor, num_workers, want_maps=True)


def _pool_embeddings(self, embeddings, return_dict: bool = False, padding: bool = False, padding_side: str = "left",
                     num_workers: Optional[int] = None, **pool_kwargs):
    """BaseTokenPooler.pool_embeddings for HierarchicalTokenPooler: the cluster maps are
    computed only for return_dict=True."""
    original = _ORIGINALS["pool_embeddings"]
    if set(pool_kwargs) != {"pool_factor"} or (isinstance(embeddings, list) and not embeddings):
        return original(self, embeddings, return_dict=return_dict, padding=padding, padding_side=padding_side,
                        num_workers=num_workers, **pool_kwargs)
    self._validate_embeddings(embeddings)
    prepared = self._prepare_embeddings(embeddings, padding, padding_side)
    if not _takes_list(prepared):
        return original(self, embeddings, return_dict=return_dict, padding=padding, padding_side=padding_side,
                        num_workers=num_workers, **pool_kwargs)
    pooled, maps = _pool_lists(prepared, pool_kwargs["pool_factor"], num_workers, want_maps=return_dict)
    if isinstance(embeddings, torch.Tensor) and embeddings.dim() == 3:
        pooled = torch.nn.utils.rnn.pad_sequence(pooled, batch_first=True, padding_value=0.0,
                                                 padding_side=padding_side)
    if not return_dict:
        return pooled
    from colpali_engine.compression.token_pooling.base_token_pooling import TokenPoolingOutput
    return TokenPoolingOutput(pooled_embeddings=pooled, cluster_id_to_indices=maps)


def is_enabled() -> bool:
    return _STATE["enabled"]


def _targets():
    """(module or class, attribute, replacement): every place colpali-engine looks the
    functions up."""
    out = []
    for modname in ("colpali_engine.utils.maxsim", "colpali_engine.utils.processing_utils",
                    "colpali_engine.loss.late_interaction_losses"):
        mod = importlib.import_module(modname)
        for name, fn in (("maxsim_inbatch", maxsim_inbatch), ("maxsim_kd", maxsim_kd)):
            if hasattr(mod, name):
                out.append((mod, name, fn))
    out.append((_pooler_class(), "_pool_embeddings_impl", _pool_embeddings_impl))
    out.append((_pooler_class(), "pool_embeddings", _pool_embeddings))
    return out


def enable(*, allow_untested: bool = False) -> None:
    check_version(allow_untested)
    if _STATE["enabled"]:
        disable()
    mm = _maxsim_module()
    _ORIGINALS.setdefault("maxsim_inbatch", mm.maxsim_inbatch)
    _ORIGINALS.setdefault("maxsim_kd", mm.maxsim_kd)
    _ORIGINALS.setdefault("_pool_embeddings_impl", _pooler_class().__dict__["_pool_embeddings_impl"])
    _ORIGINALS.setdefault("pool_embeddings", _pooler_class().pool_embeddings)
    for owner, name, fn in _targets():
        setattr(owner, name, fn)
    _STATE["enabled"] = True


def disable() -> None:
    if _ORIGINALS:
        for owner, name, _ in _targets():
            if name == "pool_embeddings":  # inherited from BaseTokenPooler: drop the override
                if name in owner.__dict__:
                    delattr(owner, name)
            else:
                setattr(owner, name, _ORIGINALS[name])
    _STATE["enabled"] = False
