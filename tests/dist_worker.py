"""Worker for test_training's multi-process test, run under torchrun (gloo, CPU):

    torchrun --standalone --nproc_per_node 2 tests/dist_worker.py <loss> <out.pt>

Each process takes its half of the batch `training_batch()` (tokenized locally, so the two
processes pad documents to different lengths), computes the loss with embeddings gathered
across processes, back-propagates and averages parameter gradients (what DDP does). Rank 0
saves the loss (averaged) and the flat gradient for the test to compare with one process on
the whole batch."""
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _training_data import flat_grads, small_model, training_batch  # noqa: E402

from lateint.distributed import average_gradients  # noqa: E402
from lateint.losses import CachedContrastive, Contrastive  # noqa: E402


def main(kind: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    r, w = dist.get_rank(), dist.get_world_size()
    model = small_model().eval()
    queries, positives, negatives = training_batch()
    n = len(queries) // w
    part = slice(r * n, (r + 1) * n)
    feats = [model.tokenize(queries[part], True), model.tokenize(positives[part], False),
             model.tokenize(negatives[part], False)]
    if kind in ("contrastive", "nogather"):
        loss_fn = Contrastive(model, gather_across_devices=kind == "contrastive", temperature=0.5)
    else:
        loss_fn = CachedContrastive(model, mini_batch_size=2, gather_across_devices=True, temperature=0.5)
    loss = loss_fn(*feats)
    loss.backward()
    average_gradients(model.parameters())
    value = loss.detach().clone()
    dist.all_reduce(value)
    lengths = [None] * w
    dist.all_gather_object(lengths, [f["input_ids"].shape[1] for f in feats[1:]])
    if r == 0:
        torch.save({"loss": float(value) / w, "grads": flat_grads(model), "doc_lengths": lengths}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
