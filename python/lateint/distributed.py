"""Cross-process gathering of ragged (packed) embeddings with gradients to the local shard.

Every process holds its own documents as packed tokens [T_r, dim] + offsets [n_r + 1];
`gather_packed` returns everyone's documents concatenated in rank order, so each query sees
every process's documents as negatives. Backward sums the gradients all processes computed
for the gathered tokens (all_reduce) and returns the local slice: with per-process losses
L_r, each process then holds d(sum_r L_r)/d(its own tokens), and averaging parameter
gradients across processes (`average_gradients`) gives the gradient of the mean loss —
exactly what one process computes on the concatenated batch. Works with gloo (CPU) and
nccl (GPU); without an initialized process group everything is the identity.
"""
from __future__ import annotations

from typing import Iterable, Tuple

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def _gather_sizes(n: int, device) -> list:
    t = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [int(x) for x in out]


def _all_gather_rows(x: torch.Tensor, sizes: list) -> torch.Tensor:
    """Concatenate every process's x [n_r, ...] (n_r = sizes[r]) in rank order."""
    width = max(sizes)
    padded = x.new_zeros((width,) + tuple(x.shape[1:]))
    padded[:x.shape[0]] = x
    bufs = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(bufs, padded.contiguous())
    return torch.cat([b[:n] for b, n in zip(bufs, sizes)])


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sizes):
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        return _all_gather_rows(x, sizes)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[:ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None


def gather_rows(x: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """All processes' x concatenated (differentiable, gradients summed to the owner) and
    the row where this process's rows start."""
    if not is_distributed():
        return x, 0
    sizes = _gather_sizes(x.shape[0], x.device)
    start = sum(sizes[:dist.get_rank()])
    if x.requires_grad:
        return _GatherRows.apply(x, sizes), start
    return _all_gather_rows(x, sizes), start


def gather_packed(tokens: torch.Tensor, offsets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Packed documents of every process -> (tokens, offsets, first document of this
    process). Document lengths may differ freely between processes."""
    if not is_distributed():
        return tokens, offsets, 0
    all_tokens, _ = gather_rows(tokens)
    lengths = (offsets[1:] - offsets[:-1]).to(torch.long)
    all_lengths, first_doc = gather_rows(lengths)
    all_offsets = torch.zeros(all_lengths.numel() + 1, dtype=torch.long, device=offsets.device)
    torch.cumsum(all_lengths, 0, out=all_offsets[1:])
    return all_tokens, all_offsets, first_doc


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Mean of each parameter's .grad over the processes (what DDP does), in place."""
    if not is_distributed():
        return
    w = dist.get_world_size()
    for p in params:
        if p.requires_grad:
            if p.grad is None:  # every process must join every all_reduce
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(w)
