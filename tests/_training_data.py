"""Shared inputs for the training tests and their multi-process worker."""
import torch

from lateint.model import ColBERT, minilm_dir


def small_model(**kw) -> ColBERT:
    """all-MiniLM-L6-v2 (the shipped package) with short sequences and a seeded projection."""
    kw.setdefault("query_length", 16)
    kw.setdefault("document_length", 40)
    return ColBERT(minilm_dir(), **kw)


def training_batch(n: int = 8):
    """n (query, positive, hard negative) texts; the second half's documents are longer, so
    processes that take one half each pad to different lengths."""
    topics = ["rates", "football", "elections", "films", "phones", "banks", "tennis", "music"]
    queries = [f"what happened with {topics[i % 8]} this week, story {i}?" for i in range(n)]
    positives = [f"This week in {topics[i % 8]}: story {i} reports a change." +
                 (" It goes on, with many more details about it and its background." * (i >= n // 2))
                 for i in range(n)]
    negatives = [f"A note on {topics[(i + 3) % 8]}, unrelated to story {i}." for i in range(n)]
    return queries, positives, negatives


def flat_grads(model) -> torch.Tensor:
    """All parameter gradients as one float64 vector (missing ones as zeros), then cleared."""
    out = []
    for p in model.parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        out.append(g.detach().double().flatten())
        p.grad = None
    return torch.cat(out)
