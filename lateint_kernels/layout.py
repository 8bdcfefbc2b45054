"""The packed (CSR) document layout every op takes, and conversions from and to PyLate's
padded one."""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch

__all__ = ["PackedDocs", "pack", "pack_list", "unpack"]


class PackedDocs(NamedTuple):
    """Documents in the packed (CSR) layout.

    tokens  [T, dim]     every real token of every document, documents back to back
    offsets int64 [n+1]  document i is tokens[offsets[i]:offsets[i+1]]
    padded  bool [n]     whether the document had padding (or masked tokens) in its padded
                         batch: needed by mask_mode="zero" to reproduce PyLate's scores
    """
    tokens: torch.Tensor
    offsets: torch.Tensor
    padded: torch.Tensor


def pack(padded_docs: torch.Tensor, doc_mask: Optional[torch.Tensor] = None) -> PackedDocs:
    """[n, L, dim] padded documents (+ bool/0-1 mask [n, L]) -> PackedDocs.

    Masked tokens are dropped wherever they are (PyLate masks skiplist tokens inside a
    document too); a document with any masked token is marked `padded`."""
    if padded_docs.dim() != 3:
        raise ValueError(f"pack: `padded_docs` must be 3-D [n_docs, doc_len, dim], got shape {tuple(padded_docs.shape)}")
    n, L, _ = padded_docs.shape
    if doc_mask is None:
        doc_mask = torch.ones(n, L, dtype=torch.bool, device=padded_docs.device)
    if doc_mask.shape != (n, L):
        raise ValueError(f"pack: `doc_mask` must have shape [n_docs, doc_len] = [{n}, {L}], got {tuple(doc_mask.shape)}")
    if doc_mask.device != padded_docs.device:
        raise ValueError(f"pack: `doc_mask` must be on {padded_docs.device}, got {doc_mask.device}")
    m = doc_mask.bool()
    lens = m.sum(1)
    offsets = torch.zeros(n + 1, dtype=torch.int64, device=padded_docs.device)
    offsets[1:] = torch.cumsum(lens, 0)
    return PackedDocs(padded_docs[m], offsets, lens < L)


def pack_list(docs: Sequence[torch.Tensor]) -> PackedDocs:
    """List of [L_i, dim] tensors -> PackedDocs (no document is padded)."""
    if len(docs) == 0:
        raise ValueError("pack_list: `docs` is empty")
    dim = docs[0].shape[-1]
    for i, t in enumerate(docs):
        if t.dim() != 2 or t.shape[1] != dim:
            raise ValueError(f"pack_list: docs[{i}] must be [L, {dim}], got shape {tuple(t.shape)}")
    lens = torch.tensor([t.shape[0] for t in docs], dtype=torch.int64)
    offsets = torch.zeros(len(docs) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lens, 0)
    dev = docs[0].device
    return PackedDocs(torch.cat(list(docs), 0), offsets.to(dev),
                      torch.zeros(len(docs), dtype=torch.bool, device=dev))


def unpack(tokens: torch.Tensor, offsets: torch.Tensor):
    """Packed documents -> (padded [n_docs, max_len, dim] with zeros, bool mask [n_docs,
    max_len]): the layout PyLate's `colbert_scores` takes. The inverse of `pack` for
    prefix-masked documents."""
    if tokens.dim() != 2:
        raise ValueError(f"unpack: `tokens` must be 2-D [total_tokens, dim], got shape {tuple(tokens.shape)}")
    if offsets.dim() != 1 or offsets.shape[0] < 1:
        raise ValueError("unpack: `offsets` must be a 1-D tensor [n_docs + 1]")
    lens = offsets[1:] - offsets[:-1]
    max_len = int(lens.max()) if lens.numel() else 0
    mask = torch.arange(max_len, device=offsets.device)[None, :] < lens[:, None]
    padded = tokens.new_zeros(lens.shape[0], max_len, tokens.shape[1])
    padded[mask] = tokens
    return padded, mask
