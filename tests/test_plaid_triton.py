"""The CUDA path of the PLAID ops, run on CPU: the Triton kernels under TRITON_INTERPRET=1
(conftest) against the float64 references on fresh random data, the device-side torch
ivf_candidates, the CUDA entries' input checks, and the kernels compiled to sm_80 / sm_90
cubins (no GPU needed); run on an H100 by scripts/gpu_check.sh (bench/RESULTS.md)."""
import os
import sys

import pytest
import torch

import lateint_kernels as lk
from lateint_kernels import reference as ref

from _data import clustered
from _gpu_compile import compile_for_gpu

pytest.importorskip("triton")
from lateint_kernels.ops import plaid as lkp  # noqa: E402
from lateint_kernels.ops import codec as lkr  # noqa: E402
from lateint_kernels.triton import codec as tc  # noqa: E402
from lateint_kernels.triton import plaid as tp  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter


def seed():
    return int(torch.randint(0, 2**31 - 1, ()))


def codec_problem(n, k, dim, nbits, s, nd=None, noise=0.35):
    """Clustered tokens, k-means-like centroids, codes, bucket cutoffs/weights from the data."""
    g = torch.Generator().manual_seed(s)
    centres = torch.nn.functional.normalize(torch.randn(max(2, k // 2), dim, generator=g), dim=-1)
    c = clustered(k, dim, generator=g, centres=centres)
    x = clustered(n, dim, generator=g, centres=centres, noise=noise)
    codes = lk.kmeans_assign(x, c)
    cut, w = lk.residual_buckets(x - c[codes.long()], nbits)
    return g, centres, x, c, codes, cut, w


CODEC_CASES = [(nb, dim) for nb in (1, 2, 4, 8) for dim in (8, 40, 128) if dim * nb % 8 == 0]


@pytest.mark.parametrize("nbits,dim", CODEC_CASES)
def test_compress_bit_identical_to_reference(nbits, dim):
    _, _, x, c, codes, cut, _ = codec_problem(131, 13, dim, nbits, seed())
    got = tc.compress_residuals_triton(x.to(DEV), c.to(DEV), codes.to(DEV), cut.to(DEV), nbits).cpu()
    assert torch.equal(got, ref.compress_residuals_ref(x, c, codes, cut, nbits))
    assert torch.equal(got, lk.compress_residuals(x, c, codes, cut, nbits))  # = the C++ CPU op


@pytest.mark.parametrize("nbits,dim", CODEC_CASES)
def test_decompress_matches_float64_reference(nbits, dim):
    _, _, x, c, codes, cut, w = codec_problem(97, 11, dim, nbits, seed())
    packed = lk.compress_residuals(x, c, codes, cut, nbits)
    got = tc.decompress_residuals_triton(codes.to(DEV), packed.to(DEV), c.to(DEV), w.to(DEV), nbits).cpu()
    want = ref.decompress_residuals_ref(codes, packed, c.double(), w.double(), nbits)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-6)
    # and the round trip is a real reconstruction: closer to x with more bits
    assert (got * x).sum(1).mean() > {1: 0.5, 2: 0.8, 4: 0.9, 8: 0.9}[nbits]


def corpus_problem(nbits, dim, s, nq=3, lq=37, nd=23, k=17):
    g, centres, _, c, _, _, _ = codec_problem(64, k, dim, nbits, s)
    lens = torch.randint(0, 40, (nd,), generator=g)
    lens[1] = 0  # an empty document
    off = torch.zeros(nd + 1, dtype=torch.int64)
    off[1:] = torch.cumsum(lens, 0)
    tokens = clustered(int(off[-1]), dim, generator=g, centres=centres)
    codes = lk.kmeans_assign(tokens, c)
    cut, w = lk.residual_buckets(tokens - c[codes.long()], nbits)
    packed = lk.compress_residuals(tokens, c, codes, cut, nbits)
    q = clustered(nq * lq, dim, generator=g, centres=centres).reshape(nq, lq, dim)
    mask = torch.rand(nq, lq, generator=g) > 0.3
    mask[-1] = False  # a query with every token masked
    cand = torch.randint(-1, nd, (nq, 29), generator=g)
    cand[0, :3] = torch.tensor([1, -1, 0])
    return q, mask, codes, packed, off, c, w, cand


@pytest.mark.parametrize("nbits,dim", [(2, 128), (4, 40), (8, 16), (1, 64)])
@pytest.mark.parametrize("masked", [False, True])
def test_decompress_maxsim_matches_float64_reference(nbits, dim, masked):
    """lq 37 spans two query-row blocks; empty documents, -1 slots and a fully masked query."""
    q, mask, codes, packed, off, c, w, cand = corpus_problem(nbits, dim, seed())
    m = mask if masked else None
    got = tp.decompress_maxsim_triton(q.to(DEV), None if m is None else m.to(DEV), codes.to(DEV), packed.to(DEV),
                                      off.to(DEV), c.to(DEV), w.to(DEV), nbits, cand.to(DEV)).cpu()
    want = ref.decompress_maxsim_ref(q.double(), m, codes, packed, off, c.double(), w.double(), nbits, cand)
    assert torch.equal(torch.isinf(got), cand < 0)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-4)
    # the C++ CPU op computes the same scores
    torch.testing.assert_close(got, lk.decompress_maxsim(q, codes, packed, off, c, w, nbits, cand, query_mask=m),
                               rtol=0, atol=1e-4)


@pytest.mark.parametrize("threshold", [float("-inf"), 0.3, 0.7, 5.0])
@pytest.mark.parametrize("masked", [False, True])
def test_approx_scores_matches_float64_reference(threshold, masked):
    q, mask, codes, _, off, c, _, cand = corpus_problem(2, 32, seed())
    scores = lk.centroid_scores(q, c)
    m = mask if masked else None
    got = tp.approx_scores_triton(scores.to(DEV), None if m is None else m.to(DEV), codes.to(DEV), off.to(DEV),
                                  cand.to(DEV), threshold).cpu()
    want = ref.approx_scores_ref(scores, m, codes, off, cand, threshold)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)
    if threshold == 5.0:  # every centroid pruned: 0 for every document
        assert (got[cand >= 0] == 0).all()


@pytest.mark.parametrize("trial", range(6))
def test_ivf_candidates_torch_equals_reference(trial):
    g = torch.Generator().manual_seed(seed())
    k = int(torch.randint(1, 40, (), generator=g))
    nd = int(torch.randint(1, 60, (), generator=g))
    lens = torch.randint(0, 12, (nd,), generator=g)
    off = torch.zeros(nd + 1, dtype=torch.int64)
    off[1:] = torch.cumsum(lens, 0)
    codes = torch.randint(0, k, (int(off[-1]),), generator=g, dtype=torch.int32)
    doc_of = torch.repeat_interleave(torch.arange(nd), lens)
    pairs = torch.unique(codes.long() * nd + doc_of)
    ivf_docs, ivf_off = pairs % nd, torch.zeros(k + 1, dtype=torch.int64)
    ivf_off[1:] = torch.cumsum(torch.bincount(pairs // nd, minlength=k), 0)
    lq = int(torch.randint(1, 6, (), generator=g))
    scores = torch.randn(4, lq, k, generator=g)
    scores[0, 0] = 0.5  # every centroid tied: the lowest ids win
    mask = torch.rand(4, lq, generator=g) > 0.4
    mask[1] = False
    for m in (None, mask):
        for ncells in (1, 3, 100):
            got = tp.ivf_candidates_torch(scores.to(DEV), None if m is None else m.to(DEV), ivf_off.to(DEV),
                                          ivf_docs.to(DEV), nd, ncells).cpu()
            assert torch.equal(got, ref.ivf_candidates_ref(scores, m, ivf_off, ivf_docs, nd, ncells))


# ---------------------------------------------------------------------------------------
# The CUDA entries (checks + launch), called on CUDA tensors where there is a GPU, else on CPU
# tensors under the interpreter; answers compared with the CPU ops.
def test_cuda_entries_run_and_name_bad_arguments():
    cpu = corpus_problem(2, 32, seed(), lq=8)
    q, mask, codes, packed, off, c, w, cand = (t.to(DEV) for t in cpu)
    scores = lk.centroid_scores(q, c)
    qc, maskc, codesc, packedc, offc, cc, wc, candc = cpu
    dmaxsim = lkp.CUDA_ENTRIES["decompress_maxsim"][0]
    approx = lkp.CUDA_ENTRIES["approx_scores"][0]
    compress, decompress = lkr.CUDA_ENTRIES["compress_residuals"][0], lkr.CUDA_ENTRIES["decompress_residuals"][0]
    ok = dmaxsim(q, mask, codes, packed, off, c, w, 2, cand)
    assert ok.device == q.device
    torch.testing.assert_close(ok.cpu(), lk.decompress_maxsim(qc, codesc, packedc, offc, cc, wc, 2, candc,
                                                              query_mask=maskc), rtol=0, atol=1e-4)
    xc = lk.decompress_residuals(codesc, packedc, cc, wc, 2)
    x = xc.to(DEV)
    torch.testing.assert_close(decompress(codes, packed, c, w, 2).cpu(), xc, rtol=0, atol=2e-6)
    cut = torch.tensor([-0.05, 0.0, 0.05])
    assert torch.equal(compress(x, c, codes, cut.to(DEV), 2).cpu(), lk.compress_residuals(xc, cc, codesc, cut, 2))
    bad_codes = codes.clone()
    bad_codes[3] = c.shape[0]
    bad_cand = cand.clone()
    bad_cand[1, 2] = off.shape[0] - 1
    bad_off = off.clone()
    bad_off[4] = bad_off[3] - 1
    nan_q = q.clone()
    nan_q[0, 0, 0] = float("nan")
    mask_all = torch.ones_like(mask)
    cases = [
        (lambda: dmaxsim(q, mask, bad_codes, packed, off, c, w, 2, cand), "codes"),
        (lambda: dmaxsim(q, mask, codes, packed, off, c, w, 2, bad_cand), "candidates"),
        (lambda: dmaxsim(q, mask, codes, packed, bad_off, c, w, 2, cand), "doc_offsets"),
        (lambda: dmaxsim(nan_q, mask_all, codes, packed, off, c, w, 2, cand), "queries"),
        (lambda: dmaxsim(q, mask, codes, packed, off, c, w, 3, cand), "nbits"),
        (lambda: dmaxsim(q, mask, codes, packed[:, :4], off, c, w, 2, cand), "packed"),
        (lambda: dmaxsim(q, mask, codes, packed, off, c, w[:3], 2, cand), "bucket_weights"),
        (lambda: dmaxsim(q, mask, codes.long(), packed, off, c, w, 2, cand), "codes"),
        (lambda: approx(scores, mask, bad_codes, off, cand, 0.0), "codes"),
        (lambda: approx(scores, mask, codes, off, bad_cand, 0.0), "candidates"),
        (lambda: approx(scores.double(), mask, codes, off, cand, 0.0), "scores"),
        (lambda: approx(scores, mask[:, :3], codes, off, cand, 0.0), "query_mask"),
        (lambda: decompress(bad_codes, packed, c, w, 2), "codes"),
        (lambda: decompress(codes, packed, c, w * float("nan"), 2), "bucket_weights"),
        (lambda: compress(x, c, codes, torch.tensor([0.1, 0.0, 0.2]).to(DEV), 2), "bucket_cutoffs"),
        (lambda: compress(x, c, codes[1:], torch.tensor([0.0, 0.1, 0.2]).to(DEV), 2), "codes"),
        (lambda: compress(x[:, :16], c, codes, torch.tensor([0.0, 0.1, 0.2]).to(DEV), 2), "dim"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match=name):
            call()
    # ivf: an id past n_docs
    ivf = lkp.CUDA_ENTRIES["ivf_candidates"][0]
    with pytest.raises(ValueError, match="ivf_docs"):
        ivf(scores, None, torch.tensor([0] + [1] * c.shape[0], device=DEV), torch.tensor([99], device=DEV), 10, 1)
    with pytest.raises(ValueError, match="ncells"):
        ivf(scores, None, torch.zeros(c.shape[0] + 1, dtype=torch.int64, device=DEV),
            torch.zeros(0, dtype=torch.int64, device=DEV), 10, 0)


def test_backends_for_cuda_are_named():
    for op, want in (("compress_residuals", "triton"), ("decompress_residuals", "triton"),
                     ("approx_scores", "triton"), ("decompress_maxsim", "triton"), ("ivf_candidates", "torch"),
                     ("lut_maxsim", "reference")):
        assert lk.backend_for(op, "cuda") == want


# ---------------------------------------------------------------------------------------
_COMPILE = r"""
import sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from lateint_kernels.triton import codec as tc, plaid as tp
P32, P8, PI32, PI64, PI8 = "*fp32", "*u8", "*i32", "*i64", "*i8"
kernels = [
    (tc._compress_kernel, dict(X=P32, C=P32, CODES=PI32, CUT=P32, OUT=P8, n="i32", dim="i32", bpr="i32"),
     dict(NBITS=2, BLOCK_T=64, BLOCK_B=32)),
    (tc._decompress_kernel, dict(CODES=PI32, PACKED=P8, C=P32, W=P32, OUT=P32, n="i32", dim="i32", bpr="i32"),
     dict(NBITS=4, BLOCK_T=32, BLOCK_D=128)),
    (tp._decompress_maxsim_kernel, dict(Q=P32, QM=PI8, CODES=PI32, PACKED=P8, OFF=PI64, C=P32, W=P32, CAND=PI64,
                                        OUT=P32, nc="i32", lq="i32", dim="i32", bpr="i32"),
     dict(HAS_QM=True, NBITS=2, PRECISION="tf32x3", BLOCK_Q=32, BLOCK_T=32, BLOCK_D=128)),
    (tp._approx_scores_kernel, dict(S=P32, QM=PI8, KEEP=PI8, CODES=PI32, OFF=PI64, CAND=PI64, OUT=P32, nc="i32",
                                    lq="i32", k="i32"),
     dict(HAS_QM=True, BLOCK_Q=32, BLOCK_T=32)),
]
for fn, sig, const in kernels:
    sig = dict(sig, **{name: "constexpr" for name in const})
    try:
        out = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const),
                             target=GPUTarget("cuda", int(sys.argv[1]), 32))
    except (RuntimeError, FileNotFoundError, OSError) as e:
        if "ptxas" in str(e).lower():
            print("NO-PTXAS", e); sys.exit(0)
        raise
    assert "cubin" in out.asm, fn
print("COMPILED", len(kernels))
"""


@pytest.mark.parametrize("arch", [80, 90])
def test_triton_kernels_compile_for_gpu(arch):
    assert "COMPILED 4" in compile_for_gpu(_COMPILE, arch, timeout=600)


def _route_stages_to_cuda_entries(monkeypatch, entry):
    """PLAIDIndex.search's stage calls (lk.<stage>) -> the ops' CUDA entries, whatever the device."""
    monkeypatch.setattr(lk, "ivf_candidates", lambda s, io, idocs, nd, nc, query_mask=None, validate=True:
                        entry("ivf_candidates")(s, query_mask, io, idocs, nd, nc, validate))
    monkeypatch.setattr(lk, "approx_scores", lambda s, codes, offs, cand, threshold=float("-inf"), query_mask=None,
                        validate=True:
                        entry("approx_scores")(s, query_mask, codes, offs, cand, threshold, validate))
    monkeypatch.setattr(lk, "decompress_maxsim", lambda qq, codes, packed, offs, c, w, nb, cand, query_mask=None,
                        validate=True:
                        entry("decompress_maxsim")(qq, query_mask, codes, packed, offs, c, w, nb, cand, validate))


def test_search_through_the_cuda_kernels_equals_the_cpu_search(monkeypatch):
    """PLAIDIndex.search with every PLAID stage served by its CUDA entry (on the GPU where
    there is one, else on CPU tensors with Triton interpreted): the same top-k ids as the C++
    stages, scores to 1e-4."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
    from lateint.plaid import PLAIDIndex
    from lateint.synthetic import clustered_corpus

    q, tokens, off, _ = clustered_corpus(150, 10, 60, 32, nq=4, lq=12, n_topics=32, seed=seed() % 1000)
    index = PLAIDIndex.build(tokens, off, ids=list(range(500, 650)), nbits=2, n_centroids=32, kmeans_niter=3)
    mask = torch.ones(4, 12, dtype=torch.bool)
    mask[:, 9:] = False
    settings = dict(ncells=2, centroid_score_threshold=0.3, ndocs=40, query_mask=mask)
    want_ids, want_scores = index.search(q, 5, **settings)
    calls = []

    def entry(name):
        def run(*args):
            calls.append(name)
            return lkp.CUDA_ENTRIES[name][0](*args)
        return run

    _route_stages_to_cuda_entries(monkeypatch, entry)
    dev_settings = dict(settings, query_mask=mask.to(DEV))
    got_ids, got_scores = index.to(DEV).search(q.to(DEV), 5, **dev_settings)
    got_ids, got_scores = got_ids.cpu(), got_scores.cpu()
    assert calls == ["ivf_candidates", "approx_scores", "approx_scores", "decompress_maxsim"]  # stages 1-4
    assert torch.equal(got_ids, want_ids)
    torch.testing.assert_close(got_scores, want_scores, rtol=0, atol=1e-4)


def test_search_on_the_cuda_path_syncs_only_where_it_must(monkeypatch):
    """Host syncs of one PLAIDIndex.search batch on the CUDA path (the stages' CUDA entries,
    counted on CPU tensors; kernel launches, which do not sync, are not counted): the index's
    arrays were checked once when it came to be, so no stage re-checks them. What remains:
    the queries' NaN check and ivf_candidates' output sizes (two unique, the lists' total,
    the widest row). With every stage validating again the same batch takes more."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
    from _sync import SyncCounter
    from lateint.plaid import PLAIDIndex
    from lateint.synthetic import clustered_corpus

    q, tokens, off, _ = clustered_corpus(120, 10, 60, 32, nq=4, lq=12, n_topics=32, seed=3)
    index = PLAIDIndex.build(tokens, off, nbits=2, n_centroids=32, kmeans_niter=3)
    mask = torch.ones(4, 12, dtype=torch.bool)
    mask[:, 9:] = False
    counter = SyncCounter()
    for name in ("approx_scores_triton", "decompress_maxsim_triton"):
        launch = getattr(tp, name)
        monkeypatch.setattr(tp, name, lambda *a, _launch=launch: _paused(counter, _launch, a))

    def entry(name):
        return lkp.CUDA_ENTRIES[name][0]

    _route_stages_to_cuda_entries(monkeypatch, entry)
    want = index.search(q, 5, ncells=2, ndocs=40, query_mask=mask)
    with counter:
        got = index.search(q, 5, ncells=2, ndocs=40, query_mask=mask)
    assert torch.equal(got[0], want[0])
    assert counter.count == 5, counter.where

    def revalidating(name):
        def run(*args):
            return lkp.CUDA_ENTRIES[name][0](*args[:-1], True)
        return run

    _route_stages_to_cuda_entries(monkeypatch, revalidating)
    before = SyncCounter()
    for name in ("approx_scores_triton", "decompress_maxsim_triton"):
        launch = getattr(tp, name)
        monkeypatch.setattr(tp, name, lambda *a, _launch=launch: _paused(before, _launch, a))
    with before:
        index.search(q, 5, ncells=2, ndocs=40, query_mask=mask)
    assert before.count > counter.count, (before.where, counter.where)


def _paused(counter, launch, args):
    with counter.paused():
        return launch(*args)
