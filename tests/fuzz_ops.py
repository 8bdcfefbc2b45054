"""Seeded fuzzing of every public op and its raw `torch.ops.lateint_kernels` entry.

    python tests/fuzz_ops.py --seed 0 --cases 300 --progress /tmp/p.txt

Each case draws shapes (0, 1, tile edges), dtypes, strides, values (unit vectors, extreme
finite values, subnormals, NaN/Inf anywhere), masks, candidate ids and offsets (valid or
not), calls the op, and classifies the outcome:
  ok       the output equals the float64 reference (within the dtype's tolerance);
  refused  a clear error: ValueError / TypeError / RuntimeError naming the op or an argument;
  FAIL     anything else: a wrong answer, bad input accepted, an unclear error.
A signal or a hang kills the process: the caller (tests/test_fuzz.py) runs this in a
subprocess and reads the case it died on from the progress file, written before each case.
Prints one JSON line: counts per op and outcome, and the failures.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

import numpy as np
import torch

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [_ROOT, os.path.join(_ROOT, "python")]  # the checkout this file is in, not another install
import lateint_kernels as lk  # noqa: E402
from lateint_kernels import reference as ref  # noqa: E402
import lateint_kernels.testing as lkt  # noqa: E402

OPS = torch.ops.lateint_kernels
TESTING = lkt.ops
FLOATS = (torch.float32, torch.float16, torch.bfloat16)


class Fail(Exception):
    pass


class MustRefuse(Exception):
    """The input is invalid: the op has to raise."""


def clear_error(op: str, e: BaseException) -> bool:
    msg = str(e)
    return isinstance(e, (ValueError, TypeError, RuntimeError, KeyError)) and (op.split(".")[-1] in msg or "`" in msg)


def close(got: torch.Tensor, want: torch.Tensor, dtype, what: str) -> None:
    if got.shape != want.shape:
        raise Fail(f"{what}: shape {tuple(got.shape)} != reference {tuple(want.shape)}")
    g = got.double()
    # the reference rounded to the output's dtype: a float16 result past 65504 is inf there too
    w = want.to(got.dtype).double() if got.dtype in (torch.float16, torch.bfloat16) else want.double()
    if not torch.equal(torch.isfinite(g), torch.isfinite(w)) or not torch.equal(g[~torch.isfinite(g)],
                                                                               w[~torch.isfinite(w)]):
        raise Fail(f"{what}: non-finite entries differ from the reference")
    fin = torch.isfinite(w)
    if not fin.any():
        return
    scale = w[fin].abs().max().clamp_min(1.0)
    # float16 / bfloat16: the output's own rounding (2^-11 / 2^-8 relative) on top
    tol = {torch.float32: 2e-5, torch.float64: 1e-9, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype] * scale
    err = (g[fin] - w[fin]).abs().max()
    if err > tol:
        raise Fail(f"{what}: max error {float(err):.3g} > {float(tol):.3g}")


# ---------------------------------------------------------------------------------------
# value generators
def unit(rng, n, d, dtype=torch.float32):
    x = torch.from_numpy(rng.standard_normal((n, d)))
    return torch.nn.functional.normalize(x, dim=-1).to(dtype)


def offsets_for(rng, nd, max_len=40, allow_empty=True):
    lens = rng.integers(0 if allow_empty else 1, max_len + 1, nd)
    return torch.from_numpy(np.concatenate([[0], np.cumsum(lens)])).to(torch.int64)


def poison_values(rng, t: torch.Tensor, kind: str) -> torch.Tensor:
    """t with one value replaced: NaN / Inf / extreme finite / subnormal (in place on a copy)."""
    t = t.clone()
    if t.numel() == 0:
        return t
    flat = t.view(-1)
    i = int(rng.integers(t.numel()))
    big = {torch.float16: 6e4, torch.bfloat16: 1e20, torch.float32: 1e20, torch.float64: 1e20}[t.dtype]
    tiny = {torch.float16: 6e-8, torch.bfloat16: 1e-40, torch.float32: 1e-40, torch.float64: 1e-310}[t.dtype]
    flat[i] = {"nan": float("nan"), "inf": float("inf") * (1 if rng.random() < .5 else -1),
               "extreme": big * (1 if rng.random() < .5 else -1), "subnormal": tiny}[kind]
    return t


def maybe_strided(rng, t: torch.Tensor) -> torch.Tensor:
    """The same values, sometimes in a non-contiguous layout."""
    if t.dim() >= 1 and t.numel() and rng.random() < 0.3:
        big = torch.empty(*t.shape[:-1], t.shape[-1] * 2, dtype=t.dtype)
        big[..., ::2] = t
        return big[..., ::2]
    return t


def bad_offsets(rng, off: torch.Tensor, T: int) -> torch.Tensor:
    off = off.clone()
    kind = rng.integers(4)
    if kind == 0 or off.numel() < 3:
        off[-1] = T + 1 + int(rng.integers(3))
    elif kind == 1:
        off[0] = 1
    elif kind == 2:
        i = int(rng.integers(1, off.numel() - 1))
        off[i] = off[i + 1] + 1 if off[i + 1] < T else -1
    else:
        off[int(rng.integers(off.numel()))] = -7
    return off


# ---------------------------------------------------------------------------------------
# families: each returns (op name, outcome) and raises Fail on a wrong outcome
def run_checked(op, call, check, must_refuse):
    try:
        out = call()
    except MustRefuse:
        raise
    except Exception as e:  # noqa: BLE001
        if clear_error(op, e):
            return "refused"
        raise Fail(f"unclear error {type(e).__name__}: {str(e)[:300]}") from None
    if must_refuse:
        raise Fail("bad input accepted")
    check(out)
    return "ok"


def fam_maxsim(rng):
    dtype = FLOATS[rng.integers(3)]
    nq, lq = int(rng.choice([0, 1, 3])), int(rng.choice([1, 2, 15, 16, 17, 33]))
    d = int(rng.choice([1, 7, 8, 16, 33, 64]))
    nd = int(rng.choice([0, 1, 2, 5, 17]))
    off = offsets_for(rng, nd)
    T = int(off[-1])
    q = unit(rng, nq * lq, d, dtype).reshape(nq, lq, d)
    x = unit(rng, T, d, dtype)
    qmask = torch.from_numpy(rng.random((nq, lq)) < 0.8) if rng.random() < 0.4 else None
    mode = "zero" if rng.random() < 0.3 else "ignore"
    padded = torch.from_numpy(rng.random(nd) < 0.5) if mode == "zero" and rng.random() < 0.7 else None
    which = rng.choice(["maxsim", "maxsim_candidates", "maxsim_argmax", "maxsim_backward"])
    cand = None
    if which != "maxsim":
        if which == "maxsim_candidates" or rng.random() < 0.5:
            k = int(rng.choice([0, 1, 3, 9]))
            cand = torch.from_numpy(rng.integers(-1, max(nd, 1), (nq, k))).to(torch.int64)
            if nd == 0:
                cand.fill_(-1)
    mutation = rng.choice(["none", "none", "nan", "inf", "extreme", "subnormal", "offsets", "cand", "dtype",
                           "shape", "strided"])
    must_refuse = False
    if mutation in ("nan", "inf", "extreme", "subnormal"):
        if rng.random() < 0.5 and q.numel():
            q = poison_values(rng, q, mutation)
        elif x.numel():
            x = poison_values(rng, x, mutation)
    elif mutation == "offsets" and nd:
        off = bad_offsets(rng, off, T)
        must_refuse = True
    elif mutation == "cand" and cand is not None and cand.numel():
        cand = cand.clone()
        cand.view(-1)[int(rng.integers(cand.numel()))] = int(rng.choice([-2, nd, nd + 5]))
        must_refuse = True
    elif mutation == "dtype":
        x = x.to(torch.float64 if rng.random() < 0.5 else torch.int32)
        must_refuse = True
    elif mutation == "shape":
        x = x.reshape(-1)
        must_refuse = True
    elif mutation == "strided":
        q, x = maybe_strided(rng, q), maybe_strided(rng, x)
    raw = rng.random() < 0.5
    op = which if raw else f"lk.{which}"

    def ref_scores(qq, xx):
        return ref.maxsim_argmax_ref(qq.double(), xx.double(), off, cand, query_mask=qmask, mask_mode=mode,
                                     doc_padded=padded)[0]

    def call():
        if which == "maxsim":
            if raw:
                return OPS.maxsim(q, qmask, x, off, padded, mode)
            return lk.maxsim(q, x, off, query_mask=qmask, mask_mode=mode, doc_padded=padded)
        if which == "maxsim_candidates":
            if raw:
                return OPS.maxsim_candidates(q, qmask, x, off, cand, padded, mode)
            return lk.maxsim_candidates(q, x, off, cand, query_mask=qmask, mask_mode=mode, doc_padded=padded)
        if which == "maxsim_argmax":
            return TESTING.maxsim_argmax(q, qmask, x, off, cand, padded, mode)[0]
        ns = cand.shape[1] if cand is not None else nd
        grad = torch.from_numpy(rng.standard_normal((nq, ns))).float()
        return OPS.maxsim_backward(grad, q, qmask, x, off, cand, padded, mode), grad

    def check(out):
        want = ref_scores(q, x)
        if which != "maxsim_backward":
            real = want.masked_fill(torch.isneginf(want) & torch.isneginf(out), 0)  # -inf: no candidate
            if not torch.isfinite(real).all():
                raise Fail("non-finite input reached the output but was accepted")
            if real.numel() and real.abs().max() > 3e38:
                raise Fail("similarities beyond float32 accepted")
            close(out, want, dtype, which)
            return
        (dq, dd), grad = out
        if not torch.isfinite(want.masked_fill(torch.isneginf(want), 0)).all():
            raise Fail("non-finite input accepted by the backward")
        # a non-finite value the forward never reached (masked, or in no candidate) has no
        # gradient: zeroed, so autograd's 0 * NaN does not stand in for it
        qq = torch.nan_to_num(q.detach().double(), nan=0.0, posinf=0.0, neginf=0.0).requires_grad_()
        xx = torch.nan_to_num(x.detach().double(), nan=0.0, posinf=0.0, neginf=0.0).requires_grad_()
        s = ref.maxsim_argmax_ref(qq, xx, off, cand, query_mask=qmask, mask_mode=mode, doc_padded=padded)[0]
        s = torch.where(torch.isfinite(s), s, torch.zeros_like(s))
        gq = gd = None
        if s.requires_grad and s.numel():
            gq, gd = torch.autograd.grad(s, (qq, xx), grad.double(), allow_unused=True)
        gq = torch.zeros_like(qq) if gq is None else gq
        gd = torch.zeros_like(xx) if gd is None else gd
        close(dq, gq, dtype, "maxsim_backward dq")
        close(dd, gd, dtype, "maxsim_backward dd")

    if mutation in ("nan", "inf"):
        # accepted only where the value cannot reach the output (a masked token, a document
        # no candidate names); check() then compares with the reference
        pass
    return op, run_checked(op, call, check, must_refuse)


def fam_pool(rng):
    dtype = (torch.float32, torch.float16, torch.bfloat16, torch.float64)[rng.integers(4)]
    d = int(rng.choice([1, 3, 8, 16, 33]))
    nd = int(rng.choice([0, 1, 2, 6]))
    off = offsets_for(rng, nd, 45)
    T = int(off[-1])
    x = unit(rng, T, d, torch.float64).to(dtype)
    pf = int(rng.choice([1, 2, 3, 4]))
    prot = int(rng.choice([0, 1, 2]))
    dist = "euclidean" if rng.random() < 0.3 else "cosine"
    which = rng.choice(["token_pool", "token_pool_labels", "token_pool_list"])
    mutation = rng.choice(["none", "none", "nan", "inf", "extreme", "subnormal", "scale", "offsets", "strided",
                           "pool_factor"])
    if which == "token_pool_list" and mutation == "offsets":
        mutation = "none"  # the list op takes no offsets
    must_refuse = False
    if mutation in ("nan", "inf"):
        if T:
            x = poison_values(rng, x, mutation)
            must_refuse = True
    elif mutation in ("extreme", "subnormal"):
        x = poison_values(rng, x, mutation)
    elif mutation == "scale":
        x = (x.double() * float(rng.choice([0.5, 3.0, 1e3]))).to(dtype)
    elif mutation == "offsets" and nd:
        off = bad_offsets(rng, off, T)
        must_refuse = True
    elif mutation == "strided":
        x = maybe_strided(rng, x)
    elif mutation == "pool_factor":
        pf = int(rng.choice([0, -1]))
        must_refuse = True
    raw = rng.random() < 0.5
    op = which if raw else f"lk.{which}"

    def call():
        if which == "token_pool":
            if raw:
                return OPS.token_pool(x, off, pf, prot, False, dist)
            return lk.token_pool(x, off, pf, protected_tokens=prot, distance=dist)
        if which == "token_pool_labels":
            if raw:
                return OPS.token_pool_labels(x, off, pf, prot, dist)
            return lk.token_pool_labels(x, off, pf, protected_tokens=prot, distance=dist)
        docs = [x[int(off[i]):int(off[i + 1])] for i in range(nd)]
        if not docs:
            docs = [x[:0]]
        if raw:
            return OPS.token_pool_list(docs, pf, prot, False, dist)
        return lk.token_pool_list(docs, pf, protected_tokens=prot, distance=dist)

    def check(out):
        lens = off[1:] - off[:-1]
        p = lens.clamp(max=prot)
        n = lens - p
        clustered = (n // max(pf, 1)).clamp(min=1) < n
        if dist == "cosine" and clustered.any():
            dof = torch.repeat_interleave(torch.arange(nd), lens)
            pos = torch.arange(T) - off[:-1][dof]
            sel = clustered[dof] & (pos >= p[dof])
            if bool((x[sel].double().pow(2).sum(1) > 1.02).any()):
                raise Fail("tokens that are not L2-normalized were clustered under the cosine distance")
        rows, new_off = ref.token_pool_labels_ref(x, off, pf, prot, dist)
        if which == "token_pool_labels":
            if not (torch.equal(out[0], rows) and torch.equal(out[1], new_off)):
                raise Fail("labels differ from scipy's")
            return
        pooled, new_off = ref.token_pool_ref(x.double(), off, pf, prot, False, dist)
        if which == "token_pool":
            if not torch.equal(out[1], new_off):
                raise Fail("offsets differ from scipy's clustering")
            close(out[0], pooled, dtype, "token_pool")
        else:
            want = [pooled[int(new_off[i]):int(new_off[i + 1])] for i in range(nd)] or [pooled[:0]]
            if len(out) != len(want):
                raise Fail("wrong number of documents")
            for a, b in zip(out, want):
                close(a, b, dtype, "token_pool_list")

    return op, run_checked(op, call, check, must_refuse)


def fam_pool_hooks(rng):
    from scipy.cluster import hierarchy
    which = rng.choice(["_ward_linkage", "_fcluster_maxclust", "_pool_distances", "_token_pool_finish"])
    n = int(rng.choice([1, 2, 3, 8, 17]))
    must_refuse = False
    if which == "_ward_linkage":
        pts = rng.standard_normal((n, 4))
        D = torch.from_numpy(np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)))
        mut = rng.choice(["none", "asym", "nan", "inf", "shape", "neg"])
        if n < 2 or mut in ("asym", "nan", "inf", "shape"):
            must_refuse = True
        if mut == "asym" and n >= 2:
            D[0, 1] += 0.5
        elif mut in ("nan", "inf") and n >= 2:
            D[0, 1] = D[1, 0] = float(mut)
        elif mut == "shape":
            D = D[:, :max(n - 1, 0)]
        elif mut == "neg" and n >= 2:
            D[0, 1] = D[1, 0] = -D[0, 1]

        def call():
            return TESTING.ward_linkage(D)

        def check(Z):
            if mut == "neg":
                return  # scipy's Ward is undefined on negative distances: the hook just must not crash
            cond = D.numpy()[np.triu_indices(n, 1)]
            want = torch.from_numpy(hierarchy.linkage(cond, method="ward"))
            close(Z, want, torch.float64, "_ward_linkage")
    elif which == "_fcluster_maxclust":
        pts = rng.standard_normal((max(n, 2), 3))
        Z = torch.from_numpy(hierarchy.linkage(pts, method="ward"))
        k = int(rng.integers(-1, max(n, 2) + 2))
        mut = rng.choice(["none", "none", "node"])
        if k < 1:
            must_refuse = True
        if mut == "node":
            Z = Z.clone()
            Z[int(rng.integers(Z.shape[0])), int(rng.integers(2))] = float(rng.choice([-1, 2 * Z.shape[0] + 5, 0.5]))
            must_refuse = True

        def call():
            return TESTING.fcluster_maxclust(Z, k)

        def check(T):
            want = hierarchy.fcluster(Z.numpy(), k, criterion="maxclust")
            if not np.array_equal(T.numpy(), want):
                raise Fail("fcluster labels differ from scipy's")
    elif which == "_pool_distances":
        x = unit(rng, n, int(rng.choice([1, 5, 16])))
        dist = rng.choice(["cosine", "euclidean", "manhattan"])
        if dist == "manhattan":
            must_refuse = True

        def call():
            return TESTING.pool_distances(x, dist)

        def check(D):
            want = torch.from_numpy(ref.pool._pool_distances_condensed(x, dist))
            got = D[tuple(torch.triu_indices(n, n, 1))]
            close(got, want, torch.float32, "_pool_distances")
    else:
        off = offsets_for(rng, 2, 12, allow_empty=False)
        W = int(off[-1])
        mx = torch.zeros(2, W, dtype=torch.int32)
        my = torch.zeros(2, W, dtype=torch.int32)
        md = torch.zeros(2, W, dtype=torch.float64)
        for doc in range(2):
            m = int(off[doc + 1] - off[doc])
            alive = list(range(m))
            for j in range(m - 1):  # a random valid merge sequence
                a, b = sorted(rng.choice(len(alive), 2, replace=False))
                mx[doc, j], my[doc, j] = alive[a], alive[b]
                md[doc, j] = float(j + rng.random())
                alive.pop(a)
        mut = rng.choice(["none", "none", "offsets", "merge"])
        if mut == "offsets":
            off = bad_offsets(rng, off, W)
            must_refuse = True
        elif mut == "merge" and W > 2:
            my[0, 0] = mx[0, 0]
            must_refuse = int(off[1]) > 2

        def call():
            return OPS._token_pool_finish(mx, my, md, off, 2, 0)

        def check(out):
            rows, new_off = out
            if rows.shape != (int(off[-1]),) or new_off.shape != off.shape:
                raise Fail("_token_pool_finish: wrong output shapes")
    return which, run_checked(which, call, check, must_refuse)


def fam_kmeans(rng):
    dtype = (torch.float32, torch.float16, torch.bfloat16)[rng.integers(3)]
    n, k, d = int(rng.choice([0, 1, 5, 33])), int(rng.choice([0, 1, 3, 16])), int(rng.choice([1, 8, 33]))
    x, c = unit(rng, n, d, dtype), unit(rng, k, d, dtype)
    mutation = rng.choice(["none", "none", "nan", "extreme", "subnormal", "dtype", "strided"])
    must_refuse = k == 0
    if mutation in ("nan", "extreme", "subnormal"):
        if rng.random() < 0.5:
            x = poison_values(rng, x, mutation)
            must_refuse |= mutation == "nan" and n > 0
        else:
            c = poison_values(rng, c, mutation)
            must_refuse |= mutation == "nan" and k > 0
    elif mutation == "dtype":
        c = c.to(torch.int64)
        must_refuse = True
    elif mutation == "strided":
        x, c = maybe_strided(rng, x), maybe_strided(rng, c)
    raw = rng.random() < 0.5
    op = "kmeans_assign" if raw else "lk.kmeans_assign"

    def call():
        return OPS.kmeans_assign(x, c) if raw else (lk.kmeans_assign(x, c), None)

    def check(out):
        codes = out[0]
        s = x.double() @ c.double().T
        if not torch.isfinite(s).all():
            raise Fail("non-finite scores accepted")
        if codes.shape != (n,):
            raise Fail("codes shape")
        if n:
            got = s.gather(1, codes.long()[:, None])[:, 0]
            best = s.max(1).values
            tol = (2e-5 if dtype == torch.float32 else 2e-3) * best.abs().clamp_min(1)
            if ((best - got) > tol).any():
                raise Fail("a code is not the best centroid")

    return op, run_checked(op, call, check, must_refuse)


def _codec_inputs(rng, nbits, d, k, T):
    c = unit(rng, k, d)
    x = unit(rng, T, d)
    codes = torch.from_numpy(rng.integers(0, max(k, 1), T)).to(torch.int32)
    cut = torch.sort(torch.from_numpy(rng.standard_normal((1 << nbits) - 1) * 0.1).float()).values
    w = torch.sort(torch.from_numpy(rng.standard_normal(1 << nbits) * 0.1).float()).values
    packed = torch.from_numpy(rng.integers(0, 256, (T, d * nbits // 8), dtype=np.uint8))
    return c, x, codes, cut, w, packed


def fam_codec(rng):
    nbits = int(rng.choice([1, 2, 4, 8]))
    d = int(rng.choice([8, 16, 64]))
    k, T = int(rng.choice([1, 4, 16])), int(rng.choice([0, 1, 9, 40]))
    c, x, codes, cut, w, packed = _codec_inputs(rng, nbits, d, k, T)
    which = rng.choice(["compress_residuals", "decompress_residuals"])
    mutation = rng.choice(["none", "none", "codes", "nbits", "nan", "shape", "strided"])
    must_refuse = False
    if mutation == "codes" and T:
        codes = codes.clone()
        codes[int(rng.integers(T))] = int(rng.choice([-1, k]))
        must_refuse = True
    elif mutation == "nbits":
        nbits = int(rng.choice([0, 3, 16]))
        must_refuse = True
    elif mutation == "nan":
        if which == "compress_residuals" and T:
            x = poison_values(rng, x, "nan")
            must_refuse = True
        elif which == "decompress_residuals":
            w = poison_values(rng, w, "nan")
            must_refuse = T > 0
    elif mutation == "shape":
        packed, x = packed[:, :-1], x[:, :-1]
        must_refuse = True
    elif mutation == "strided":
        x = maybe_strided(rng, x)
    raw = rng.random() < 0.5
    op = which if raw else f"lk.{which}"

    def call():
        if which == "compress_residuals":
            return (OPS if raw else lk).compress_residuals(x, c, codes, cut, nbits)
        return (OPS if raw else lk).decompress_residuals(codes, packed, c, w, nbits)

    def check(out):
        if which == "compress_residuals":
            if not torch.equal(out, ref.compress_residuals_ref(x, c, codes, cut, nbits)):
                raise Fail("packed residuals differ from the reference")
        else:
            close(out, ref.decompress_residuals_ref(codes, packed, c.double(), w.double(), nbits), torch.float32,
                  "decompress_residuals")

    return op, run_checked(op, call, check, must_refuse)


def fam_plaid(rng):
    nbits = int(rng.choice([1, 2, 4]))
    d = int(rng.choice([8, 16, 32]))
    k = int(rng.choice([1, 4, 16]))
    nd = int(rng.choice([0, 1, 3, 12]))
    off = offsets_for(rng, nd, 20)
    T = int(off[-1])
    c, _, codes, cut, w, packed = _codec_inputs(rng, nbits, d, k, T)
    nq, lq = int(rng.choice([0, 1, 3])), int(rng.choice([1, 4, 17]))
    q = unit(rng, nq * lq, d).reshape(nq, lq, d)
    qmask = torch.from_numpy(rng.random((nq, lq)) < 0.8) if rng.random() < 0.4 else None
    s = lk.centroid_scores(q, c)
    ncand = int(rng.choice([0, 1, 5]))
    cand = torch.from_numpy(rng.integers(-1, max(nd, 1), (nq, ncand))).to(torch.int64)
    if nd == 0:
        cand.fill_(-1)
    thr = float(rng.choice([float("-inf"), 0.0, 0.3]))
    # token-major, code-major per query, or as centroid_scores returns small scores (queries
    # interleaved): the CPU kernels read them by different paths
    layout = rng.choice(["token", "query", "interleaved"])
    which = rng.choice(["ivf_candidates", "approx_scores", "decompress_maxsim", "lut_maxsim"])
    mutation = rng.choice(["none", "none", "cand", "codes", "offsets", "nan", "threshold"])
    must_refuse = False
    if mutation == "cand" and cand.numel():
        cand = cand.clone()
        cand.view(-1)[0] = nd + 1
        must_refuse = which != "ivf_candidates"
    elif mutation == "codes" and T:
        codes = codes.clone()
        codes[int(rng.integers(T))] = k + 3
        must_refuse = which not in ("ivf_candidates",) and bool((cand >= 0).any())
        if which in ("approx_scores", "decompress_maxsim", "lut_maxsim"):
            must_refuse = False  # only the tokens of the candidates are read: refused or correct
    elif mutation == "offsets" and nd:
        off = bad_offsets(rng, off, T)
        must_refuse = which != "ivf_candidates"
    elif mutation == "nan" and q.numel():
        q = poison_values(rng, q, "nan")
        s = lk.centroid_scores(q, c)
    elif mutation == "threshold":
        thr = float("nan")
        must_refuse = which == "approx_scores"
    if layout == "token":
        s = s.contiguous()
    elif layout == "query":
        s = s.transpose(1, 2).contiguous().transpose(1, 2)
    raw = rng.random() < 0.5
    op = which if raw else f"lk.{which}"
    ivf_off = torch.zeros(k + 1, dtype=torch.int64)
    ivf_docs = torch.zeros(0, dtype=torch.int64)
    if which == "ivf_candidates" and T and int(off[0]) == 0 and bool((off[1:] >= off[:-1]).all()) and \
            int(off[-1]) == T:
        from lateint.plaid import _ivf
        ivf_off, ivf_docs = _ivf(codes.clamp(0, k - 1), off, k)
    ncells = int(rng.choice([0, 1, 2])) if which == "ivf_candidates" else 1
    if which == "ivf_candidates" and ncells == 0:
        must_refuse = True

    def call():
        if which == "ivf_candidates":
            if raw:
                return OPS.ivf_candidates(s, qmask, ivf_off, ivf_docs, nd, ncells)
            return lk.ivf_candidates(s, ivf_off, ivf_docs, nd, ncells, query_mask=qmask)
        if which == "approx_scores":
            if raw:
                return OPS.approx_scores(s, qmask, codes, off, cand, thr)
            return lk.approx_scores(s, codes, off, cand, threshold=thr, query_mask=qmask)
        if which == "decompress_maxsim":
            if raw:
                return OPS.decompress_maxsim(q, qmask, codes, packed, off, c, w, nbits, cand)
            return lk.decompress_maxsim(q, codes, packed, off, c, w, nbits, cand, query_mask=qmask)
        if raw:
            return OPS.lut_maxsim(q, qmask, s, codes, packed, off, w, nbits, cand)
        return lk.lut_maxsim(q, s, codes, packed, off, w, nbits, cand, query_mask=qmask)

    def check(out):
        reached = cand[cand >= 0]
        if which != "ivf_candidates" and reached.numel() and T and mutation == "codes":
            toks = torch.cat([torch.arange(int(off[i]), int(off[i + 1])) for i in reached.tolist()])
            if toks.numel() and int(codes[toks].max()) >= k:
                raise Fail("codes past the centroids were read and accepted")
        if which == "ivf_candidates":
            want = ref.ivf_candidates_ref(s, qmask, ivf_off, ivf_docs, nd, ncells)
            if not torch.equal(out, want):
                raise Fail("candidates differ from the reference")
            return
        codes_read = codes.clamp(0, k - 1)  # an out-of-range code left unread cannot change the output
        if which == "approx_scores":
            want = ref.approx_scores_ref(s.double(), qmask, codes_read, off, cand, thr)
        elif which == "decompress_maxsim":
            want = ref.decompress_maxsim_ref(q.double(), qmask, codes_read, packed, off, c.double(), w.double(), nbits,
                                             cand)
        else:
            want = ref.lut_maxsim_ref(q.double(), qmask, s.double(), codes_read, packed, off, w.double(), nbits,
                                      cand)
        if not torch.isfinite(want.masked_fill(torch.isneginf(want), 0)).all():
            raise Fail("NaN reached the output and was accepted")
        close(out, want, torch.float32, which)

    return op, run_checked(op, call, check, must_refuse)


def fam_helpers(rng):
    """The public helpers around the kernels and the raw ISA switch."""
    which = rng.choice(["residual_buckets", "centroid_scores", "pack", "pack_list", "unpack", "cpu_isa"])
    must_refuse = False
    if which == "residual_buckets":
        nbits = int(rng.choice([1, 2, 4, 8, 3, 0]))
        v = torch.from_numpy(rng.standard_normal(int(rng.choice([0, 1, 7, 300])))).float() * 0.1
        mut = rng.choice(["none", "none", "nan", "extreme"])
        if mut != "none" and v.numel():
            v = poison_values(rng, v, mut)
        must_refuse = nbits not in (1, 2, 4, 8) or v.numel() == 0 or (mut == "nan" and v.numel() > 0)

        def call():
            return lk.residual_buckets(v, nbits)

        def check(out):
            cut, w = out
            s = torch.sort(v.double()).values
            qs = torch.arange(1, 1 << nbits, dtype=torch.float64) / (1 << nbits)
            want = torch.quantile(s, qs) if s.numel() <= 2 ** 24 else None
            close(cut, want, torch.float32, "residual_buckets cutoffs")
            if not bool((w[1:] >= w[:-1]).all()):
                raise Fail("bucket weights not sorted")
    elif which == "centroid_scores":
        d = int(rng.choice([4, 16]))
        q = unit(rng, 6, d).reshape(2, 3, d)
        c = unit(rng, int(rng.choice([1, 5])), d if rng.random() < 0.8 else d + 1)
        must_refuse = c.shape[1] != d

        def call():
            return lk.centroid_scores(q, c)

        def check(out):
            close(out, q.double() @ c.double().T, torch.float32, "centroid_scores")
    elif which in ("pack", "pack_list", "unpack"):
        d = int(rng.choice([1, 8]))
        lens = rng.integers(0, 6, int(rng.choice([1, 3])))
        docs = [unit(rng, int(n), d) for n in lens]
        padded = torch.zeros(len(docs), max(int(lens.max()), 1), d)
        mask = torch.zeros(padded.shape[:2], dtype=torch.bool)
        for i, t in enumerate(docs):
            padded[i, :t.shape[0]] = t
            mask[i, :t.shape[0]] = True
        mut = rng.choice(["none", "none", "shape", "dims"])
        if mut == "shape" and which != "unpack":  # a mask of another shape / a document of another dim
            mask = mask[:, :-1] if mask.shape[1] > 1 else mask[:0]
            docs = docs + [unit(rng, 2, d + 1)]
            must_refuse = True
        elif mut == "dims" and which != "pack_list":  # 2-D padded docs / 1-D tokens
            padded = padded[0]
            must_refuse = True
        else:
            mut = "none"

        def call():
            if which == "pack":
                return lk.pack(padded, mask)
            if which == "pack_list":
                return lk.pack_list(docs)
            flat = torch.cat([t for t in docs if t.shape[1] == d]) if docs else torch.zeros(0, d)
            off = torch.from_numpy(np.concatenate([[0], np.cumsum(lens)])).to(torch.int64)
            return lk.unpack(flat if mut != "dims" else flat.reshape(-1), off)

        def check(out):
            if which == "unpack":
                p, m = out
                w = int(lens.max())  # unpack pads to the longest document, 0 when all are empty
                if not torch.equal(m, mask[:, :w]) or not torch.equal(p, padded[:, :w]):
                    raise Fail("unpack differs from the padded documents")
            else:
                if not torch.equal(out.tokens, torch.cat(docs) if docs else torch.zeros(0, d)):
                    raise Fail(f"{which}: tokens differ")
                if out.offsets.tolist() != [0] + np.cumsum(lens).tolist():
                    raise Fail(f"{which}: offsets differ")
    else:
        req = int(rng.choice([-2, -1, 0, 1, 2, 3, 7, -9]))
        must_refuse = req > 3 or req < -2

        def call():
            got = lk._C.cpu_isa(req)
            lk._C.cpu_isa(-2)  # back to the best for the next cases
            return got

        def check(out):
            if not 0 <= out <= 3:
                raise Fail(f"cpu_isa({req}) returned {out}")
    op = which if which == "cpu_isa" else f"lk.{which}"
    return op, run_checked(op, call, check, must_refuse)


FAMILIES = {"maxsim": fam_maxsim, "pool": fam_pool, "pool_hooks": fam_pool_hooks, "kmeans": fam_kmeans,
            "codec": fam_codec, "plaid": fam_plaid, "helpers": fam_helpers}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--progress", default=os.devnull)
    ap.add_argument("--families", default=",".join(FAMILIES))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    fams = args.families.split(",")
    counts: dict = {}
    failures = []
    with open(args.progress, "w") as prog:
        for case in range(args.cases):
            fam = fams[case % len(fams)]
            rng = np.random.default_rng([args.seed, case])
            prog.write(f"{args.seed} {case} {fam}\n")
            prog.flush()
            try:
                op, outcome = FAMILIES[fam](rng)
            except Fail as e:
                op, outcome = fam, "FAIL"
                failures.append({"case": case, "family": fam, "error": str(e)})
            except Exception as e:  # noqa: BLE001 (a bug of the harness itself, reported)
                op, outcome = fam, "FAIL"
                failures.append({"case": case, "family": fam, "error": f"harness: {type(e).__name__}: {e}",
                                 "trace": traceback.format_exc()[-1500:]})
            counts.setdefault(op, {}).setdefault(outcome, 0)
            counts[op][outcome] += 1
    print(json.dumps({"seed": args.seed, "cases": args.cases, "counts": counts, "failures": failures}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
