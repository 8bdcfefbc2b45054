"""Training losses on the `maxsim` op: Contrastive, CachedContrastive (GradCache), Distillation.

All three take tokenized features (`ColBERT.tokenize`) and return a scalar loss that
`loss.backward()` turns into parameter gradients. Scores come from `lk.maxsim` /
`lk.maxsim_candidates` on packed documents: the kernels work tile by tile in forward and
backward, so no loss here ever holds a `batch x batch x Lq x Ld` similarity tensor (the
memory of the scoring step is the embeddings plus the `[B, N]` score matrix).

Masking: query positions are all used when the model expands queries (ColBERT / PyLate);
otherwise padded query tokens are ignored. Document padding and skiplist tokens are dropped
before scoring (`mask_mode="ignore"`: a dropped token can never win a max). PyLate multiplies
the similarities by the mask instead, which floors every token max of a padded document at
0; the PyLate adapter reproduces that, the losses use the exact MaxSim.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import lateint_kernels as lk

from .distributed import gather_packed


def _slice(features: dict, start: int, stop: int) -> dict:
    return {k: v[start:stop] for k, v in features.items()}


def _batch_size(features: dict) -> int:
    return int(features["input_ids"].shape[0])


def _query_mask(mask: torch.Tensor) -> Optional[torch.Tensor]:
    return None if bool(mask.all()) else mask


def _packed(groups: Sequence[Tuple[torch.Tensor, torch.Tensor]]):
    """[(emb [n, L, d], mask [n, L]), ...] -> one packed (tokens, offsets), groups in order."""
    toks, offs, base = [], [torch.zeros(1, dtype=torch.long, device=groups[0][0].device)], 0
    for emb, mask in groups:
        p = lk.pack(emb, mask)
        toks.append(p.tokens)
        offs.append(p.offsets[1:] + base)
        base += p.tokens.shape[0]
    return torch.cat(toks), torch.cat(offs)


def contrastive_loss(queries: torch.Tensor, query_mask: torch.Tensor,
                     documents: Sequence[Tuple[torch.Tensor, torch.Tensor]], *,
                     temperature: float = 1.0, size_average: bool = True,
                     gather_across_devices: bool = False) -> torch.Tensor:
    """Cross-entropy over in-batch (+ hard) negatives from embeddings.

    queries [B, Lq, d] + mask; documents: the positives' (emb [B, L, d], mask) first, then
    one (emb, mask) per hard-negative column. Query i's positive is document i; every other
    document (all processes' with gather_across_devices) is a negative."""
    if temperature <= 0:
        raise ValueError(f"contrastive_loss: temperature must be > 0, got {temperature}")
    b = queries.shape[0]
    for j, (emb, _) in enumerate(documents):
        if emb.shape[0] != b:
            raise ValueError(f"contrastive_loss: documents[{j}] has {emb.shape[0]} rows, expected one per "
                             f"query ({b})")
    tokens, offsets = _packed(documents)
    first = 0
    if gather_across_devices:
        tokens, offsets, first = gather_packed(tokens, offsets)
    scores = lk.maxsim(queries, tokens, offsets, query_mask=_query_mask(query_mask)) / temperature
    labels = torch.arange(first, first + b, device=scores.device)
    return F.cross_entropy(scores, labels, reduction="mean" if size_average else "sum")


class Contrastive(nn.Module):
    """In-batch negatives (+ hard negatives) contrastive loss, one forward over the batch.

    loss = Contrastive(model)(query_features, positive_features, *negative_features)"""

    def __init__(self, model, *, temperature: float = 1.0, size_average: bool = True,
                 gather_across_devices: bool = False):
        super().__init__()
        self.model, self.temperature = model, temperature
        self.size_average, self.gather_across_devices = size_average, gather_across_devices

    def forward(self, query_features: dict, positive_features: dict, *negative_features: dict) -> torch.Tensor:
        outs = [self.model(f) for f in (query_features, positive_features, *negative_features)]
        return contrastive_loss(outs[0]["token_embeddings"], outs[0]["mask"],
                                [(o["token_embeddings"], o["mask"]) for o in outs[1:]],
                                temperature=self.temperature, size_average=self.size_average,
                                gather_across_devices=self.gather_across_devices)


class _RngState:
    """The random state before a mini-batch forward, so the replay draws the same dropout."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextmanager
    def replay(self):
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


class CachedContrastive(nn.Module):
    """GradCache: the Contrastive loss over a large batch with the memory of one mini-batch.

    1. every mini-batch of every input is embedded without a graph (random state saved);
    2. the loss and its gradient w.r.t. all embeddings are computed on the whole batch
       (gathered across processes with gather_across_devices);
    3. on `loss.backward()`, each mini-batch is embedded again with a graph under its saved
       random state (same dropout) and its cached embedding gradient back-propagated.
    Parameter gradients equal Contrastive's on the whole batch; the step costs one more
    forward. The returned loss is detached from the model: call `.backward()` on it once.
    """

    def __init__(self, model, *, mini_batch_size: int = 32, temperature: float = 1.0,
                 size_average: bool = True, gather_across_devices: bool = False,
                 show_progress_bar: bool = False):
        super().__init__()
        if mini_batch_size < 1:
            raise ValueError(f"CachedContrastive: mini_batch_size must be >= 1, got {mini_batch_size}")
        self.model, self.mini_batch_size, self.temperature = model, mini_batch_size, temperature
        self.size_average, self.gather_across_devices = size_average, gather_across_devices
        self.show_progress_bar = show_progress_bar
        self.replay_random_state = True  # tests switch it off to show that it matters

    def _embed_without_graph(self, features: dict):
        embs, masks, states = [], [], []
        with torch.no_grad():
            for s in range(0, _batch_size(features), self.mini_batch_size):
                states.append(_RngState(self.model.device))
                out = self.model(_slice(features, s, s + self.mini_batch_size))
                embs.append(out["token_embeddings"])
                masks.append(out["mask"])
        return torch.cat(embs), torch.cat(masks), states

    def _replay(self, groups: List[dict], states: List[List[_RngState]], grads: List[torch.Tensor],
                grad_output: torch.Tensor) -> None:
        mb = self.mini_batch_size
        with torch.enable_grad():
            for features, group_states, grad in zip(groups, states, grads):
                for i, state in enumerate(group_states):
                    s = i * mb
                    ctx = state.replay() if self.replay_random_state else _noop()
                    with ctx:
                        emb = self.model(_slice(features, s, s + mb))["token_embeddings"]
                    surrogate = (emb * grad[s:s + mb]).sum() * grad_output
                    surrogate.backward()

    def forward(self, query_features: dict, positive_features: dict, *negative_features: dict) -> torch.Tensor:
        groups = [query_features, positive_features, *negative_features]
        it = groups
        if self.show_progress_bar:
            from tqdm.auto import tqdm
            it = tqdm(groups, desc="GradCache: embed", unit="input")
        cached = [self._embed_without_graph(f) for f in it]
        leaves = [emb.detach().requires_grad_() for emb, _, _ in cached]
        loss = contrastive_loss(leaves[0], cached[0][1], [(leaves[j], cached[j][1]) for j in range(1, len(groups))],
                                temperature=self.temperature, size_average=self.size_average,
                                gather_across_devices=self.gather_across_devices)
        grads = torch.autograd.grad(loss, leaves)
        out = loss.detach().requires_grad_()
        out.register_hook(partial(self._replay, groups, [c[2] for c in cached], list(grads)))
        return out


@contextmanager
def _noop():
    yield


class Distillation(nn.Module):
    """KL divergence from the teacher's score distribution to the student's, per query over
    its own `n_ways` documents (teacher scores [B, n_ways], documents grouped by query:
    query i's documents are rows i*n_ways ... (i+1)*n_ways - 1). Scores are min-max
    normalized per query first when normalize_scores (PyLate's default)."""

    def __init__(self, model, *, normalize_scores: bool = True, size_average: bool = True):
        super().__init__()
        self.model, self.normalize_scores, self.size_average = model, normalize_scores, size_average

    def forward(self, query_features: dict, document_features: dict, teacher_scores: torch.Tensor) -> torch.Tensor:
        q = self.model(query_features)
        d = self.model(document_features)
        return distillation_loss(q["token_embeddings"], q["mask"], d["token_embeddings"], d["mask"], teacher_scores,
                                 normalize_scores=self.normalize_scores, size_average=self.size_average)


def distillation_loss(queries: torch.Tensor, query_mask: torch.Tensor, documents: torch.Tensor,
                      document_mask: torch.Tensor, teacher_scores: torch.Tensor, *,
                      normalize_scores: bool = True, size_average: bool = True) -> torch.Tensor:
    """KL(teacher || student) from embeddings: queries [B, Lq, d], documents [B * n_ways, Ld, d]
    grouped by query, teacher_scores [B, n_ways] (logits)."""
    b = queries.shape[0]
    if teacher_scores.dim() != 2 or teacher_scores.shape[0] != b:
        raise ValueError(f"Distillation: teacher_scores must be [n_queries={b}, n_ways], got "
                         f"{tuple(teacher_scores.shape)}")
    n = teacher_scores.shape[1]
    if documents.shape[0] != b * n:
        raise ValueError(f"Distillation: expected n_queries * n_ways = {b * n} documents, got {documents.shape[0]}")
    if not torch.isfinite(teacher_scores).all():
        raise ValueError("Distillation: teacher_scores contains NaN or Inf")
    tokens, offsets = _packed([(documents, document_mask)])
    cand = torch.arange(b * n, device=tokens.device).view(b, n)
    scores = lk.maxsim_candidates(queries, tokens, offsets, cand, query_mask=_query_mask(query_mask))
    if normalize_scores:
        lo = scores.min(dim=1, keepdim=True).values
        hi = scores.max(dim=1, keepdim=True).values
        scores = (scores - lo) / (hi - lo + 1e-8)
    teacher = teacher_scores.to(scores.device, scores.dtype)
    return F.kl_div(F.log_softmax(scores, dim=-1), F.log_softmax(teacher, dim=-1), log_target=True,
                    reduction="batchmean" if size_average else "sum")
