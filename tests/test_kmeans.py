"""kmeans_assign against the float64 reference, ties, dtypes, bad input, opcheck, compile,
the Triton kernel under the interpreter, and the deterministic k-means built on it."""
import os
import sys

import pytest
import torch

import lateint_kernels as lk
from lateint_kernels import reference as ref

from _data import clustered
from _gpu_compile import compile_for_gpu

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
from lateint import kmeans as lkm  # noqa: E402


def data(n, k, dim, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(max(k // 4, 1), dim, generator=g), dim=-1)
    x = clustered(n, dim, generator=g, centres=centres)
    c = clustered(k, dim, generator=g, centres=centres)
    return x.to(dtype), c.to(dtype)


@pytest.mark.parametrize("n,k,dim", [(1, 1, 1), (63, 31, 7), (64, 32, 128), (65, 33, 128),
                                     (300, 1500, 64), (1000, 257, 96), (0, 5, 8)])
def test_vs_float64_reference(n, k, dim):
    seed = int(torch.randint(0, 2**31 - 1, ()))  # fresh inputs every run
    x, c = data(n, k, dim, seed)
    codes, scores = lk.kmeans_assign(x, c, return_scores=True)
    want_codes, want_scores = ref.kmeans_assign_ref(x.double(), c.double())
    assert codes.dtype == torch.int32 and scores.dtype == torch.float32
    assert torch.equal(codes, want_codes), f"seed {seed}"
    torch.testing.assert_close(scores.double(), want_scores, rtol=0, atol=2e-6)
    assert torch.equal(lk.kmeans_assign(x, c), codes)


def test_ties_take_the_first_centroid():
    x, c = data(50, 1100, 16, 1)
    # exact duplicates in different lanes (3, 37), the same lane of one tile row (3, 35) and
    # another centroid chunk (1027): the first index wins everywhere
    c[3] = c[35] = c[37] = c[1027] = torch.nn.functional.normalize(torch.ones(16), dim=0)
    x[:10] = c[3]
    codes = lk.kmeans_assign(x, c)
    assert (codes[:10] == 3).all()
    want, _ = ref.kmeans_assign_ref(x.double(), c.double())
    assert torch.equal(codes, want)


def _int8_screen_available():
    """The int8 screen needs AVX512-VNNI; without it both paths below are the float32 kernel
    and the comparison still runs (and holds trivially)."""
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512_vnni" in f.read()
    except OSError:
        return False


@pytest.mark.parametrize("n,k,dim,dtype", [(2000, 4096, 128, torch.float32), (700, 1000, 96, torch.float32),
                                           (300, 8200, 384, torch.float32), (513, 37, 5, torch.float32),
                                           (400, 257, 130, torch.float16), (400, 257, 64, torch.bfloat16)])
def test_int8_screen_is_bit_identical_to_the_float32_kernel(n, k, dim, dtype):
    """With AVX512-VNNI (and cpu_isa at avx512 or above) kmeans_assign scores every
    centroid on int8 codes and rescores in float32 only those within its error bound of the
    best; its codes and scores must be the float32 kernel's at the same ISA level, bit for
    bit (the testing hook runs that kernel with the screen off; another level is another
    kernel: FMA contraction at avx512 only). Clustered data (many near-ties) and shapes off
    every tile size."""
    import lateint_kernels.testing as lkt

    seed = int(torch.randint(0, 2**31 - 1, ()))
    x, c = data(n, k, dim, seed, dtype)
    # centroids like k-means': means of tokens (norms below 1), and a few exact duplicates
    c = c.float()
    c[: k // 3] *= 0.7
    if k > 40:
        c[17] = c[5]
        c[k - 1] = c[5]
        x[:5] = c[5].to(dtype)
    c = c.to(dtype)
    x[7] = 0  # an all-zero row: every centroid ties at 0 (the float32 kernel takes it)
    before = lk.cpu_isa()
    try:
        lk.cpu_isa("best")
        want = lkt.ops.kmeans_assign_float32(x, c)
        got = lk.kmeans_assign(x, c, return_scores=True)
    finally:
        lk.cpu_isa(before)
    assert torch.equal(got[0], want[0]), f"seed {seed}: {(got[0] != want[0]).sum()} codes differ"
    assert torch.equal(got[1], want[1]), f"seed {seed}"
    if _int8_screen_available():
        assert int(got[0][7]) == 0  # all tie: the first centroid


def test_int8_screen_hands_mass_near_ties_back():
    """Hundreds of centroids within the error bound of a row's best (more than a row's
    candidate list holds) and non-finite rows: those rows go to the float32 kernel, the
    answer is still exact and NaN is still refused by name."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    base = torch.nn.functional.normalize(torch.randn(64, generator=g), dim=0)
    c = base + 1e-4 * torch.randn(900, 64, generator=g)  # 900 near-identical centroids
    c = torch.cat([torch.nn.functional.normalize(torch.randn(100, 64, generator=g), dim=-1), c])
    x = base + 1e-3 * torch.randn(300, 64, generator=g)
    got = lk.kmeans_assign(x, c, return_scores=True)
    want_codes, want_scores = ref.kmeans_assign_ref(x.double(), c.double())
    s = x.double() @ c.double().T
    top2 = s.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-5
    assert torch.equal(got[0][clear], want_codes[clear])
    torch.testing.assert_close(got[1].double(), want_scores, rtol=0, atol=2e-6)
    x[11, 3] = float("nan")
    with pytest.raises((ValueError, RuntimeError), match="`x` contains NaN"):
        lk.kmeans_assign(x, c)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    x, c = data(500, 300, 64, 2, dtype)
    codes, scores = lk.kmeans_assign(x, c, return_scores=True)
    s = x.double() @ c.double().T
    top2 = s.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4  # rows whose best centroid is unambiguous
    assert clear.float().mean() > 0.9
    assert torch.equal(codes[clear].long(), s.argmax(1)[clear])
    torch.testing.assert_close(scores.double(), top2[:, 0], rtol=0, atol=1e-5)


def _bad():
    x, c = data(20, 8, 16, 3)
    nan_x, nan_c = x.clone(), c.clone()
    nan_x[4, 2] = float("nan")
    nan_c[1, 0] = float("inf")
    return [((x[None], c), "x"), ((x, c[None]), "centroids"), ((x.int(), c.int()), "float32"),
            ((x, c.half()), "dtype"), ((x, c[:, :8]), "dim"), ((x, c[:0]), "at least one"),
            ((nan_x, c), "x"), ((x, nan_c), "centroids")]


@pytest.mark.parametrize("case", range(8))
def test_bad_input(case):
    args, match = _bad()[case]
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        lk.kmeans_assign(*args)
    if lk.NATIVE_LOADED and case not in (0, 1):  # (3-D inputs fail the schema's own checks too)
        with pytest.raises(RuntimeError, match=match):
            torch.ops.lateint_kernels.kmeans_assign(*args)


def test_opcheck_and_compile():
    x, c = data(70, 40, 32, 4)
    torch.library.opcheck(torch.ops.lateint_kernels.kmeans_assign.default, (x, c))
    f = torch.compile(lambda x, c: lk.kmeans_assign(x, c).long().bincount(minlength=40), fullgraph=True,
                      backend="aot_eager")
    assert torch.equal(f(x, c), lk.kmeans_assign(x, c).long().bincount(minlength=40))


def test_triton_kernel():
    pytest.importorskip("triton")
    from lateint_kernels.triton.kmeans import kmeans_assign_triton

    dev = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: TRITON_INTERPRET=1 (conftest)
    for n, k, dim in [(5, 3, 8), (130, 70, 40)]:
        x, c = data(n, k, dim, int(torch.randint(0, 2**31 - 1, ())))
        codes, scores = kmeans_assign_triton(x.to(dev), c.to(dev))
        want_codes, want_scores = ref.kmeans_assign_ref(x.double(), c.double())
        assert torch.equal(codes.cpu(), want_codes)
        torch.testing.assert_close(scores.cpu().double(), want_scores, rtol=0, atol=2e-6)


# ---------------------------------------------------------------------------------------
def test_kmeans_fit_is_deterministic_across_threads():
    x, _ = data(3000, 64, 32, 5)
    a = lkm.fit(x, 48, niter=6, seed=7)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        b = lkm.fit(x, 48, niter=6, seed=7)
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(a, b)
    assert not torch.equal(a, lkm.fit(x, 48, niter=6, seed=8))


def test_kmeans_fit_sums_in_chunks_like_one_pass(monkeypatch):
    """The float64 centroid sums are accumulated chunk by chunk (no float64 copy of x):
    the result must not depend on the chunk size, nor on the input's precision path."""
    x, _ = data(3000, 64, 32, 9)
    a = lkm.fit(x, 40, niter=4, seed=3)
    monkeypatch.setattr(lkm, "_SUM_CHUNK", 7)
    assert torch.equal(a, lkm.fit(x, 40, niter=4, seed=3))
    monkeypatch.setattr(lkm, "_SUM_CHUNK", 1 << 30)
    assert torch.equal(a, lkm.fit(x, 40, niter=4, seed=3))


def test_kmeans_fit_finds_planted_clusters():
    g = torch.Generator().manual_seed(9)
    centres = torch.nn.functional.normalize(torch.randn(8, 64, generator=g), dim=-1)
    x = clustered(4000, 64, generator=g, centres=centres, noise=0.1)
    # random starts (as PLAID's k-means) with twice as many centroids as planted clusters:
    # every planted centre ends with a fitted centroid next to it, and the fit beats its start
    c = lkm.fit(x, 16, niter=15, seed=0)
    assert (centres @ c.T).max(1).values.min() > 0.95
    start = lkm.fit(x, 16, niter=0, seed=0)
    inertia = lambda cc: lk.kmeans_assign(x, cc, return_scores=True)[1].sum()
    assert inertia(c) > inertia(start)


def test_kmeans_fit_bad_arguments():
    x, _ = data(10, 4, 8, 10)
    with pytest.raises(ValueError, match="k"):
        lkm.fit(x, 11)
    with pytest.raises(ValueError, match="niter"):
        lkm.fit(x, 2, niter=-1)
    assert lkm.plaid_num_centroids(199_000) == 4096


_COMPILE = r"""
import sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from lateint_kernels.triton import kmeans as tk
sig = {"X": "*fp32", "C": "*fp32", "CODES": "*i32", "SCORES": "*fp32", "n": "i32", "k": "i32", "dim": "i32",
       "PRECISION": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_D": "constexpr"}
try:
    out = triton.compile(ASTSource(fn=tk._kmeans_assign_kernel, signature=sig,
                                   constexprs={"PRECISION": "tf32x3", "BLOCK_M": 64, "BLOCK_N": 64,
                                               "BLOCK_D": 128}),
                         target=GPUTarget("cuda", int(sys.argv[1]), 32))
except (RuntimeError, FileNotFoundError, OSError) as e:
    print("NO-PTXAS", e); sys.exit(0)
assert "cubin" in out.asm
print("COMPILED")
"""


@pytest.mark.parametrize("arch", [80, 90])
def test_triton_kernel_compiles_for_gpu(arch):
    """The Triton kernel compiled to an sm_80 / sm_90 cubin (no GPU needed; a subprocess,
    outside the interpreter)."""
    pytest.importorskip("triton")
    assert "COMPILED" in compile_for_gpu(_COMPILE, arch)
