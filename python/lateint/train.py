"""A small training loop for `ColBERT`: contrastive (or GradCache) fine-tuning on
(query, positive[, hard negatives]) texts, multi-process under torchrun, checkpoint/resume.

    from lateint.train import TrainConfig, train
    train(model, [("query", "relevant passage", "hard negative"), ...],
          TrainConfig(epochs=1, batch_size=32, mini_batch_size=8, checkpoint_dir="ckpt"))

`batch_size` is per process; with N processes (torchrun, gloo on CPU / nccl on GPU) each
step sees N x batch_size examples and every query is scored against all N processes'
documents. `mini_batch_size` switches to CachedContrastive (GradCache) with that chunk size.
The global random generator is seeded from `seed` (and the process rank) at the start, so
a run is reproducible. A checkpoint (model weights, optimizer, step, random state) is written atomically every
`checkpoint_every` steps and at the end; a run pointed at an existing checkpoint resumes
where it stopped and finishes with the same weights as an uninterrupted run.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional, Sequence

import torch

from .distributed import average_gradients, is_distributed, rank, world_size
from .losses import CachedContrastive, Contrastive

CHECKPOINT_NAME = "trainer_state.pt"


@dataclass
class TrainConfig:
    epochs: int = 1
    batch_size: int = 32               # per process
    mini_batch_size: Optional[int] = None   # set: GradCache (CachedContrastive) in chunks of this size
    lr: float = 3e-3                   # projection
    encoder_lr: float = 2e-5           # encoder layers that are trained
    train_layers: int = 0              # last N encoder layers trained (-1: the whole encoder; 0: projection only)
    temperature: float = 1.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0         # 0: no clipping
    seed: int = 0
    max_steps: Optional[int] = None    # stop after this many steps in total (resume continues the count)
    checkpoint_dir: Optional[str] = None
    checkpoint_every: int = 0          # steps; 0: only at the end
    log_every: int = 10


def _examples(examples: Sequence) -> List[tuple]:
    out = []
    for i, ex in enumerate(examples):
        if isinstance(ex, dict):
            if "query" not in ex or "positive" not in ex:
                raise ValueError(f"train: example {i} needs 'query' and 'positive' (and optional 'negatives')")
            ex = (ex["query"], ex["positive"], *ex.get("negatives", []))
        ex = tuple(ex)
        if len(ex) < 2 or not all(isinstance(t, str) for t in ex):
            raise ValueError(f"train: example {i} must be (query, positive, *negatives) strings, got {ex!r:.80}")
        out.append(ex)
    if not out:
        raise ValueError("train: no examples")
    widths = {len(e) for e in out}
    if len(widths) > 1:
        raise ValueError(f"train: every example needs the same number of hard negatives, got widths {sorted(widths)}")
    return out


def _encoder_layers(encoder) -> list:
    for path in ("encoder.layer", "layers", "transformer.layer", "encoder.layers", "h"):
        obj = encoder
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return list(obj)
    raise ValueError("train: train_layers > 0 needs an encoder whose layers are found at "
                     "encoder.layer / layers / transformer.layer / h")


def trainable_parameter_groups(model, config: TrainConfig) -> list:
    """Freezes what is not trained; returns the optimizer's parameter groups."""
    for p in model.encoder.parameters():
        p.requires_grad_(config.train_layers < 0)
    if config.train_layers > 0:
        for layer in _encoder_layers(model.encoder)[-config.train_layers:]:
            for p in layer.parameters():
                p.requires_grad_(True)
    groups = []
    if model.projection is not None:
        model.projection.weight.requires_grad_(True)
        groups.append({"params": [model.projection.weight], "lr": config.lr})
    elif config.train_layers == 0:
        raise ValueError("train: a model without projection (dim=None) needs train_layers != 0")
    enc = [p for p in model.encoder.parameters() if p.requires_grad]
    if enc:
        groups.append({"params": enc, "lr": config.encoder_lr})
    return groups


def _atomic_save(obj, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def train(model, examples: Sequence, config: TrainConfig = TrainConfig(),
          log: Optional[Callable[[str], None]] = print) -> List[dict]:
    """Fine-tunes `model` in place; returns the logged history (step, epoch, loss, seconds)."""
    data = _examples(examples)
    if config.batch_size < 1:
        raise ValueError(f"train: batch_size must be >= 1, got {config.batch_size}")
    r, w = rank(), world_size()
    gb = config.batch_size * w
    steps_per_epoch = len(data) // gb
    if steps_per_epoch == 0:
        raise ValueError(f"train: {len(data)} examples are fewer than one global batch "
                         f"({config.batch_size} x {w} processes)")
    total = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    groups = trainable_parameter_groups(model, config)
    opt = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    gather = is_distributed()
    if config.mini_batch_size:
        loss_fn = CachedContrastive(model, mini_batch_size=config.mini_batch_size, temperature=config.temperature,
                                    gather_across_devices=gather)
    else:
        loss_fn = Contrastive(model, temperature=config.temperature, gather_across_devices=gather)

    step = 0
    history: List[dict] = []
    torch.manual_seed(config.seed * 1000 + r)   # dropout: reproducible runs, distinct per process
    ckpt = os.path.join(config.checkpoint_dir, CHECKPOINT_NAME) if config.checkpoint_dir else None
    if ckpt and os.path.exists(ckpt):
        state = torch.load(ckpt, map_location=model.device, weights_only=False)
        if state["n_examples"] != len(data) or state["world_size"] != w or state["batch_size"] != config.batch_size:
            raise ValueError(f"train: checkpoint {ckpt} was written for {state['n_examples']} examples, "
                             f"batch {state['batch_size']} x {state['world_size']} processes; this run has "
                             f"{len(data)}, {config.batch_size} x {w}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"][r] if isinstance(state["rng"], list) else state["rng"])
        step, history = state["step"], state["history"]
        if log and r == 0:
            log(f"resumed from {ckpt} at step {step}")

    def save_checkpoint():
        if not ckpt:
            return
        rng = torch.get_rng_state()
        rngs = [rng]
        if is_distributed():
            import torch.distributed as dist
            rngs = [None] * w
            dist.all_gather_object(rngs, rng)
        if r == 0:
            os.makedirs(config.checkpoint_dir, exist_ok=True)
            _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                          "rng": rngs if w > 1 else rng, "history": history, "config": asdict(config),
                          "n_examples": len(data), "world_size": w, "batch_size": config.batch_size}, ckpt)

    model.train()
    t0 = time.perf_counter()
    running = []
    while step < total:
        epoch, pos = divmod(step, steps_per_epoch)
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(config.seed + epoch))
        idx = order[pos * gb + r * config.batch_size: pos * gb + (r + 1) * config.batch_size].tolist()
        batch = [data[i] for i in idx]
        feats = [model.tokenize([b[0] for b in batch], True)]
        feats += [model.tokenize([b[j] for b in batch], False) for j in range(1, len(batch[0]))]
        loss = loss_fn(*feats)
        loss.backward()
        average_gradients([p for g in groups for p in g["params"]])
        if config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], config.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"train: loss became {value} at step {step}")
        running.append(value)
        if step % max(1, config.log_every) == 0 or step == total:
            rec = {"step": step, "epoch": epoch, "loss": sum(running) / len(running),
                   "seconds": time.perf_counter() - t0}
            history.append(rec)
            running = []
            if log and r == 0:
                log(f"step {step}/{total} epoch {epoch} loss {rec['loss']:.4f} ({rec['seconds']:.1f} s)")
        if config.checkpoint_every and step % config.checkpoint_every == 0 and step < total:
            save_checkpoint()
    save_checkpoint()
    model.eval()
    return history
