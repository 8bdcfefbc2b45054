"""Token pooling and kmeans_assign on a CUDA GPU, checked before they are timed.

- token_pool: the Triton path (device distances + Ward NN-chain, host sort/cut, device means)
  vs the C++ CPU op on the same machine and PyLate-equivalent answers: cluster labels are
  compared document by document with the CPU op's (which is bit-identical to scipy/PyLate).
- kmeans_assign: the Triton fused matmul + argmax vs torch on the same GPU (one matmul +
  argmax per chunk, the way one writes it without materializing [n, k]); answers compared
  first (exact equality of the assignments, ties are measure-zero on this data).
- PLAID search: an index built on CPU, moved with PLAIDIndex.to("cuda") so every stage runs
  on the GPU (Triton approx_scores / decompress_maxsim, torch ivf_candidates); top-10 ids
  compared with the CPU search of the same index first, then latency at batch 1 and
  queries/s at batch 64 on both; and compress_residuals (Triton) vs the C++ CPU op.

Times: CUDA-synchronized wall clock, median of repeats after a warm-up (the pooling path has
a host step, so do_bench's kernel-only timing would flatter it). Appends rows to
bench/results/gpu_ops.csv.

    python bench/bench_gpu_ops.py [--smoke]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

import lateint_kernels as lk  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))


def time_cuda(fn, repeats=5):
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def torch_assign(x, c, chunk=65536):
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    for i in range(0, x.shape[0], chunk):
        out[i:i + chunk] = (x[i:i + chunk] @ c.T).argmax(1)
    return out


def bench_pool(n_docs, rows, table):
    _, tokens, offsets = H.clustered_corpus(n_docs, 64, 300, 128, seed=0)
    label0 = f"{n_docs} docs 64-300 tok d128"
    tg, og = tokens.cuda(), offsets.cuda()
    for pf in (2, 4):
        want_rows, want_off = lk.token_pool_labels(tokens, offsets, pf)
        got_rows, got_off = lk.token_pool_labels(tg, og, pf)
        same_labels = bool(torch.equal(got_rows.cpu(), want_rows) and torch.equal(got_off.cpu(), want_off))
        p_cpu, o_cpu = lk.token_pool(tokens, offsets, pf)
        p_gpu, o_gpu = lk.token_pool(tg, og, pf)
        same_off = bool(torch.equal(o_gpu.cpu(), o_cpu))
        err = float((p_gpu.cpu().double() - p_cpu.double()).abs().max()) if same_off else float("nan")
        t_gpu = time_cuda(lambda: lk.token_pool(tg, og, pf))
        t_cpu = H.time_cpu(lambda: lk.token_pool(tokens, offsets, pf), repeats=3, min_repeats_slow=3)
        label = f"{label0} pf{pf}"
        rows += [H.row("token_pool_gpu", "lateint triton", torch.float32, label, "seconds", t_gpu, "s", device="cuda"),
                 H.row("token_pool_gpu", f"lateint cpu ({torch.get_num_threads()} threads)", torch.float32, label,
                       "seconds", t_cpu, "s"),
                 H.row("token_pool_gpu", "lateint triton", torch.float32, label, "labels_equal_cpu",
                       float(same_labels), "bool", device="cuda"),
                 H.row("token_pool_gpu", "lateint triton", torch.float32, label, "max_abs_err_vs_cpu",
                       err, "abs", device="cuda")]
        table.append(f"token_pool {label}: GPU {t_gpu * 1e3:.1f} ms, CPU op ({torch.get_num_threads()} threads) "
                     f"{t_cpu * 1e3:.1f} ms; labels equal to CPU/scipy: {same_labels}; "
                     f"offsets equal: {same_off}; max |pooled gpu - cpu| {err:.2e}")


def bench_kmeans(shapes, rows, table):
    dim = 128
    for n, k in shapes:
        _, tokens, _ = H.clustered_corpus(max(n // 150, 1), 100, 200, dim, seed=1)
        x = tokens[:n].contiguous().cuda()
        n = x.shape[0]
        c = x[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k].cuda()].contiguous()
        got = lk.kmeans_assign(x, c).long()
        ref = torch_assign(x, c)
        agree = float((got == ref).double().mean())
        # Where they differ it must be a float32 near-tie: check against float64 scores.
        diff = (got != ref).nonzero().flatten()[:1000]
        if diff.numel():
            s = x[diff].double() @ c.double().T
            gap = float((s.gather(1, got[diff, None]) - s.gather(1, ref[diff, None])).abs().max())
        else:
            gap = 0.0
        t_ours = time_cuda(lambda: lk.kmeans_assign(x, c))
        t_torch = time_cuda(lambda: torch_assign(x, c))
        tf = 2 * n * k * dim / t_ours / 1e12
        label = f"{n} x {k} centroids d{dim}"
        rows += [H.row("kmeans_assign_gpu", "lateint triton", torch.float32, label, "seconds", t_ours, "s", device="cuda"),
                 H.row("kmeans_assign_gpu", "torch chunked matmul+argmax", torch.float32, label, "seconds", t_torch,
                       "s", device="cuda"),
                 H.row("kmeans_assign_gpu", "lateint triton", torch.float32, label, "agreement_vs_torch", agree,
                       "fraction", device="cuda")]
        table.append(f"kmeans_assign {label}: triton {t_ours * 1e3:.2f} ms ({tf:.1f} TFLOP/s), torch chunked "
                     f"{t_torch * 1e3:.2f} ms ({t_torch / t_ours:.2f}x); agreement {agree:.6f} "
                     f"(largest fp64 score gap where they differ {gap:.1e})")


def bench_plaid(n_docs, rows, table, device="cuda"):
    from lateint.plaid import PLAIDIndex

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    q, tokens, offsets = H.clustered_corpus(n_docs, 30, 170, 128, nq=64, lq=32, n_topics=512, seed=0)
    index = PLAIDIndex.build(tokens, offsets, nbits=2, kmeans_niter=4)
    gi, qg = index.to(device), q.to(device)
    label0 = f"{n_docs} docs {tokens.shape[0]} tok d128 nbits2"

    def timed(fn):
        fn()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    for ncells, ndocs in ((1, 256), (2, 1024)):
        kw = dict(ncells=ncells, centroid_score_threshold=0.45, ndocs=ndocs)
        want = index.search(q, 10, **kw)[0]
        got = gi.search(qg, 10, **kw)[0].cpu()
        same = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(got, want)) / want.numel()
        lat = {}
        for name, idx, qq in (("gpu", gi, qg), ("cpu", index, q)):
            one = sorted(timed(lambda i=i: idx.search(qq[i:i + 1], 10, **kw)) for i in range(16))
            lat[name] = (statistics.median(one), 64 / timed(lambda: idx.search(qq, 10, **kw)))
        label = f"{label0} ncells={ncells},ndocs={ndocs}"
        for name, (p50, qps) in lat.items():
            prov = "lateint triton" if name == "gpu" else f"lateint cpu ({torch.get_num_threads()} threads)"
            dev = device if name == "gpu" else "cpu"
            rows += [H.row("plaid_search_gpu", prov, "nbits2", label, "p50_ms", p50 * 1e3, "ms", device=dev),
                     H.row("plaid_search_gpu", prov, "nbits2", label, "qps_batch64", qps, "q/s", device=dev)]
        rows.append(H.row("plaid_search_gpu", "lateint triton", "nbits2", label, "top10_overlap_vs_cpu", same,
                          "fraction", device=device))
        table.append(f"PLAID search {label}: GPU p50 {lat['gpu'][0] * 1e3:.2f} ms, {lat['gpu'][1]:.0f} q/s @64; "
                     f"CPU p50 {lat['cpu'][0] * 1e3:.2f} ms, {lat['cpu'][1]:.0f} q/s @64; "
                     f"top-10 overlap GPU vs CPU {same:.4f}")
    x, c = tokens.to(device), index.centroids.to(device)
    codes = lk.kmeans_assign(x, c)
    cut = index.bucket_cutoffs.to(device)
    packed = lk.compress_residuals(x, c, codes, cut, 2)
    same_codes = bool(torch.equal(codes.cpu(), lk.kmeans_assign(tokens, index.centroids)))
    same_packed = same_codes and bool(torch.equal(packed.cpu(), lk.compress_residuals(
        tokens, index.centroids, codes.cpu(), index.bucket_cutoffs, 2)))
    t_gpu = timed(lambda: lk.compress_residuals(x, c, codes, cut, 2))
    t_cpu = H.time_cpu(lambda: lk.compress_residuals(tokens, index.centroids, codes.cpu(), index.bucket_cutoffs, 2))
    rows += [H.row("compress_residuals_gpu", "lateint triton", "nbits2", label0, "seconds", t_gpu, "s", device=device),
             H.row("compress_residuals_gpu", f"lateint cpu ({torch.get_num_threads()} threads)", "nbits2", label0,
                   "seconds", t_cpu, "s")]
    table.append(f"compress_residuals {label0}: GPU {t_gpu * 1e3:.2f} ms, CPU op {t_cpu * 1e3:.1f} ms; "
                 f"codes equal to CPU: {same_codes}, packed bytes equal: {same_packed}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu_ops.py needs a CUDA device")
    rows, table = [], []
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {H.triton_version()}; "
          f"backends: token_pool {lk.backend_for('token_pool', 'cuda')}, "
          f"kmeans_assign {lk.backend_for('kmeans_assign', 'cuda')}", flush=True)
    bench_pool(200 if args.smoke else 2000, rows, table)
    print("\n".join(table), flush=True)
    bench_kmeans([(20_000, 1024)] if args.smoke else [(200_000, 4096), (1_000_000, 16384)], rows, table)
    print("\n".join(table[-2:]), flush=True)
    bench_plaid(300 if args.smoke else 2000, rows, table)
    print("\n".join(table[-3:]))
    if not args.smoke:
        print(f"rows -> {H.append_rows('gpu_ops', rows)}")


if __name__ == "__main__":
    main()
