"""MaxSim on CPU, side by side in one run on the same data (see ../shared/BENCH.md protocol).

Contestants: ours (lateint_kernels.maxsim), PyLate's `colbert_scores` (padded einsum with
masks; pylate's own function when installed, else its exact formula), maxsim-cpu (when
installed), plain torch (packed tokens, one matmul, segment max), and the compute floor:
the one torch.matmul doing the same multiply-adds. Ceilings: 4096^3 torch.matmul in float32
and bfloat16, timed in the same run.

    python bench/bench_maxsim.py            # full run (a few minutes on 2 cores)
    python bench/bench_maxsim.py --smoke    # tiny shapes (CI)
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

import lateint_kernels as lk  # noqa: E402


def _pylate_fn():
    try:
        from pylate.scores import colbert_scores
        return colbert_scores, "pylate.colbert_scores"
    except Exception:
        return lk.reference.pylate_colbert_scores_ref, "pylate-formula"


def torch_packed(q, tokens, offsets):
    """Packed tokens, one matmul, segment max (the best plain-torch path)."""
    nq, lq, d = q.shape
    sim = (q.reshape(nq * lq, d) @ tokens.T).float()  # [nq*lq, T]
    lens = offsets[1:] - offsets[:-1]
    mx = torch.segment_reduce(sim.T, "max", lengths=lens, axis=0)  # [nd, nq*lq]
    return mx.reshape(-1, nq, lq).sum(-1).T


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, for CI")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--overwrite", action="store_true", help="replace rows with the same dedup key")
    ap.add_argument("--no-csv", action="store_true")
    ap.add_argument("--ours-only", action="store_true",
                    help="time lateint alone (no baselines): for A/B runs of two builds, bench/ab_same_run.py")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    try:
        import maxsim_cpu
    except Exception:
        maxsim_cpu = None
    pylate_scores, pylate_name = _pylate_fn()

    if args.smoke:
        n_docs, lo, hi, sq = 200, 8, 40, 512
        shapes = [("1q x 200 docs", 1, None), ("8q x 100 docs", 8, 100), ("1q x 50 cand", 1, "cand50")]
    else:
        n_docs, lo, hi, sq = 10_000, 64, 300, 4096
        shapes = [("1q x 10000 docs", 1, None), ("32q x 1000 docs", 32, 1000), ("64q x 1000 docs", 64, 1000),
                  ("1q x 1000 cand", 1, "cand1000")]

    rows, table = [], []

    # ceilings
    ceil = {}
    # the bf16 ceiling takes minutes on a CPU without native bf16 (AVX2): not in --ours-only
    for dt in (torch.float32,) if args.ours_only else (torch.float32, torch.bfloat16):
        a = torch.randn(sq, sq).to(dt)
        b = torch.randn(sq, sq).to(dt)
        t = H.time_cpu(lambda: torch.matmul(a, b))
        ceil[dt] = 2 * sq ** 3 / t / 1e9
        rows.append(H.row("matmul_square", "torch", dt, f"{sq}^3", "gflops", ceil[dt], "GFLOP/s"))
        table.append((f"matmul {sq}^3", "torch", str(dt).replace("torch.", ""), t, float("nan"), ceil[dt], 1.0))
        del a, b

    Q, tokens, offsets = H.clustered_corpus(n_docs, lo, hi, nq=64, seed=1)
    for label, nq, sub in shapes:
        if isinstance(sub, str):
            k = int(sub[4:])
            g = torch.Generator().manual_seed(2)
            cand = torch.randperm(n_docs, generator=g)[:k].sort().values[None, :]
            nd_sel = k
            sel = cand[0]
        else:
            cand = None
            nd_sel = sub or n_docs
            sel = torch.arange(nd_sel)
        off_sel = offsets[: nd_sel + 1] if cand is None else offsets
        tok_sel = tokens[: int(off_sel[-1])] if cand is None else tokens
        n_tok = int((offsets[sel + 1] - offsets[sel]).sum())
        flops = 2 * nq * 32 * 128 * n_tok
        q = Q[:nq]
        for dt in (torch.float32, torch.bfloat16):
            qd, td = q.to(dt), tok_sel.to(dt)
            cands = {}
            if cand is None:
                cands["ours"] = lambda: lk.maxsim(qd, td, off_sel)
            else:
                cands["ours"] = lambda: lk.maxsim_candidates(qd, td, off_sel, cand)
            # baselines see only the selected documents (what a user would pass them)
            sel_docs = [td[offsets[i]:offsets[i + 1]] for i in sel.tolist()] if cand is not None else None
            if cand is None:
                sub_tok, sub_off = td, off_sel
            else:
                packed = lk.pack_list(sel_docs)
                sub_tok, sub_off = packed.tokens, packed.offsets
            padded, pmask = lk.unpack(sub_tok, sub_off)
            qmask = torch.ones(nq, 32, dtype=dt)
            pm = pmask.to(dt)
            if not args.ours_only:
                cands[pylate_name] = lambda: pylate_scores(qd, padded, qmask, pm)
                cands["torch packed+segmax"] = lambda: torch_packed(qd, sub_tok, sub_off)
                flat_q = qd.reshape(nq * 32, 128)
                cands["floor: one matmul"] = lambda: flat_q @ sub_tok.T
            if maxsim_cpu is not None and dt == torch.float32 and not args.ours_only:
                import numpy as np
                np_docs = [sub_tok[sub_off[i]:sub_off[i + 1]].numpy() for i in range(len(sub_off) - 1)]
                np_q = [qd[i].numpy() for i in range(nq)]
                cands["maxsim-cpu"] = lambda: [maxsim_cpu.maxsim_scores_variable(x, np_docs) for x in np_q]
            # correctness of ours on this data before timing it
            want = lk.reference.maxsim_ref(qd.double(), sub_tok.double(), sub_off)
            got = cands["ours"]()
            err = float((got.double() - want).abs().max() / want.abs().max())
            assert err < 1e-4, f"ours disagrees with the reference on {label} {dt}: rel err {err}"
            times = {}
            for name, fn in cands.items():
                times[name] = H.time_cpu(fn)
            base = times.get(pylate_name, float("nan"))
            for name, t in times.items():
                gf = flops / t / 1e9
                frac = gf / ceil[torch.float32]
                table.append((label, name, str(dt).replace("torch.", ""), t, n_tok * nq / t, gf, frac, base / t))
                rows.append(H.row("maxsim", name, dt, label, "seconds", t, "s"))
                rows.append(H.row("maxsim", name, dt, label, "gflops", gf, "GFLOP/s"))
                rows.append(H.row("maxsim", name, dt, label, "frac_sgemm", frac, "ratio"))

    # training step: forward + backward w.r.t. queries and document tokens, fp32
    nq_t, nd_t = (8, 100) if args.smoke else (32, 1000)
    off_t = offsets[: nd_t + 1]
    tok_t = tokens[: int(off_t[-1])]
    n_tok_t = tok_t.shape[0]
    padded_t, pmask_t = lk.unpack(tok_t, off_t)
    qmask_t = torch.ones(nq_t, 32)
    doc_padded_t = ~pmask_t.all(1)  # PyLate's semantics: padding is a 0 similarity

    def ours_step():
        q = Q[:nq_t].clone().requires_grad_(True)
        d = tok_t.clone().requires_grad_(True)
        lk.maxsim(q, d, off_t, mask_mode="zero", doc_padded=doc_padded_t).sum().backward()
        return q.grad, d.grad

    def pylate_step():
        q = Q[:nq_t].clone().requires_grad_(True)
        d = padded_t.clone().requires_grad_(True)
        pylate_scores(q, d, qmask_t, pmask_t.float()).sum().backward()
        return q.grad, d.grad[pmask_t]

    if not args.ours_only:
        (gq, gd), (wq, wd) = ours_step(), pylate_step()
        assert torch.allclose(gq, wq, rtol=1e-4, atol=1e-4) and torch.allclose(gd, wd, rtol=1e-4, atol=1e-4), \
            "training-step gradients disagree with PyLate's autograd"
    label = f"{nq_t}q x {nd_t} fwd+bwd"
    flops = 2 * nq_t * 32 * 128 * n_tok_t  # forward multiply-adds (the backward recomputes them)
    times = {"ours": H.time_cpu(ours_step, repeats=3)}
    if not args.ours_only:
        times[pylate_name + " autograd"] = H.time_cpu(pylate_step, repeats=3)
    base = times.get(pylate_name + " autograd", float("nan"))
    for name, t in times.items():
        table.append((label, name, "float32", t, n_tok_t * nq_t / t, flops / t / 1e9,
                      flops / t / 1e9 / ceil[torch.float32], base / t))
        rows.append(H.row("maxsim_train_step", name, torch.float32, label, "seconds", t, "s"))

    print(f"\nMaxSim CPU benchmark — {H.cpu_model()}, {args.threads} threads, torch {torch.__version__}, "
          f"commit {H.git_commit()}, ISA {lk.cpu_isa()}")
    print(f"ceilings: sgemm {ceil[torch.float32]:.1f} GFLOP/s, bf16 matmul "
          f"{ceil.get(torch.bfloat16, float('nan')):.1f} GFLOP/s")
    hdr = f"{'shape':<20}{'provider':<32}{'dtype':<10}{'time s':>10}{'doc-tok/s':>12}{'GFLOP/s':>10}{'/sgemm':>8}{'vs PyLate':>11}"
    print(hdr)
    print("-" * len(hdr))
    for r in table:
        if len(r) == 7:
            label, name, dt, t, _, gf, _ = r
            print(f"{label:<20}{name:<32}{dt:<10}{t:>10.4f}{'':>12}{gf:>10.1f}{'':>8}{'':>11}")
        else:
            label, name, dt, t, tps, gf, frac, sp = r
            print(f"{label:<20}{name:<32}{dt:<10}{t:>10.4f}{tps:>12.3g}{gf:>10.1f}{frac:>8.2f}{sp:>10.2f}x")
    if not args.no_csv:
        path = H.append_rows("maxsim", rows, overwrite=args.overwrite)
        print(f"rows appended to {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
