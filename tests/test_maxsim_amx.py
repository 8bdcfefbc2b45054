"""The bf16 MaxSim engine of the "amx" level: torch's brgemm micro-kernel (oneDNN on AMX tiles
where the CPU has them, torch's portable loops elsewhere). The testing hook runs it on any
CPU, so its folding, masks, candidates, edges and NaN detection are checked everywhere;
the tests that need real tiles skip with a reason on a CPU without usable AMX.

Tolerance: the inputs are bf16 (compared with float64 on the same rounded values), products
are exact in float32 and sums are float32 in the micro-kernel's order, so the error is
float32 accumulation only: rtol = atol = 2e-5 at d <= 300, as the vector kernels' bf16 path."""
import pytest
import torch

import lateint_kernels as lk
import lateint_kernels.testing as lkt
from lateint_kernels import reference as ref

from _data import corpus

pytestmark = pytest.mark.skipif(not lk.NATIVE_LOADED, reason="native extension not built")

TOL = 2e-5
EDGE_LENGTHS = [1, 15, 16, 17, 0, 31, 33, 300, 2, 257, 16, 1]


def _engine(q, d, off, cand=None, qm=None, padded=None, mode="ignore"):
    return lkt.ops.maxsim_argmax_brgemm(q, qm, d, off, cand, padded, mode)


def _ref64(q, d, off, cand=None, **kw):
    return ref.maxsim_argmax_ref(q.double(), d.double(), off, cand, **kw)


def _check(got, want):
    s, a = got
    ws, wa = want
    finite = torch.isfinite(ws)
    assert torch.equal(finite, torch.isfinite(s.double())), "non-finite entries differ"
    torch.testing.assert_close(s.double()[finite], ws[finite], rtol=TOL, atol=TOL)
    return s, a, wa


def _argmax_agrees(q, d, a, wa, qm=None):
    """The winner is the reference's wherever it is clear: where two tokens score within
    the tolerance, either may win in float32."""
    qd, dd = q.double(), d.double()
    agree = a.long() == wa
    for i, r, s in (~agree).nonzero().tolist():
        x, y = int(a[i, r, s]), int(wa[i, r, s])
        assert x >= 0 and y >= 0, (i, r, s, x, y)
        gap = abs(float(qd[i, r] @ dd[x]) - float(qd[i, r] @ dd[y]))
        assert gap <= 4 * TOL, (i, r, s, x, y, gap)


@pytest.mark.parametrize("lq", [1, 15, 16, 17, 31, 33])
@pytest.mark.parametrize("dim", [64, 96, 128, 300])
def test_engine_matches_reference_on_edges(lq, dim):
    q, d, off = corpus(EDGE_LENGTHS, dim, nq=2, lq=lq, seed=lq * 7 + dim, dtype=torch.bfloat16)
    s, a, wa = _check(_engine(q, d, off), _ref64(q, d, off))
    assert s.dtype == torch.float32 and a.dtype == torch.int32
    assert torch.all(s[:, 4] == 0) and torch.all(a[:, :, 4] == -1), "an empty document scores 0, no winner"
    _argmax_agrees(q, d, a, wa)


@pytest.mark.parametrize("mask_mode", ["ignore", "zero"])
def test_engine_masks(mask_mode):
    g = torch.Generator().manual_seed(5)
    q, d, off = corpus([3, 40, 0, 17, 16, 90, 1, 65], 128, nq=4, lq=32, seed=3, dtype=torch.bfloat16)
    qm = torch.rand(4, 32, generator=g) > 0.3
    qm[2] = False
    padded = torch.tensor([True, False, True, True, False, True, False, True])
    s, a, wa = _check(_engine(q, d, off, qm=qm, padded=padded, mode=mask_mode),
                      _ref64(q, d, off, query_mask=qm, mask_mode=mask_mode, doc_padded=padded))
    assert torch.all(s[2] == 0) and torch.all(a[2] == -1)
    assert torch.all(a[~qm] == -1), "masked query rows have no winner"
    _argmax_agrees(q, d, a, wa)


def test_engine_candidates_with_none_and_repeats():
    q, d, off = corpus([5, 0, 17, 33, 120, 16, 1, 64, 15, 200], 96, nq=3, lq=17, seed=8, dtype=torch.bfloat16)
    cand = torch.tensor([[4, -1, 4, 0, 9], [1, 1, 1, 1, 1], [-1, -1, 3, 7, 2]])
    qm = torch.ones(3, 17, dtype=torch.bool)
    qm[0, 5:9] = False
    s, a, wa = _check(_engine(q, d, off, cand=cand, qm=qm), _ref64(q, d, off, cand, query_mask=qm))
    assert torch.all(s[cand < 0] == float("-inf"))
    assert torch.equal(s[0, 0], s[0, 2]) and torch.all(s[1] == 0)
    _argmax_agrees(q, d, a, wa)
    # the same scores as the all-pairs call, gathered
    full, _ = _engine(q, d, off, qm=qm)
    ok = cand >= 0
    assert torch.equal(s[ok], full.gather(1, cand.clamp_min(0))[ok])


def test_engine_odd_dim_and_many_documents():
    lengths = torch.randint(1, 40, (600,), generator=torch.Generator().manual_seed(1)).tolist() + [1000]
    q, d, off = corpus(lengths, 33, nq=3, lq=32, seed=4, dtype=torch.bfloat16)
    _check(_engine(q, d, off), _ref64(q, d, off))


def test_engine_nan_is_an_error_naming_the_argument():
    q, d, off = corpus([4, 9, 3], 64, nq=1, lq=8, seed=2, dtype=torch.bfloat16)
    d = d.clone()
    d[6, 10] = float("nan")
    with pytest.raises(RuntimeError, match="doc_tokens"):
        _engine(q, d, off)
    q2 = q.clone()
    q2[0, 3, 0] = float("inf")
    with pytest.raises(RuntimeError, match="queries"):
        _engine(q2, d[:4].clone(), torch.tensor([0, 4]))


def test_engine_deterministic_across_runs_and_threads():
    q, d, off = corpus(torch.randint(1, 80, (300,), generator=torch.Generator().manual_seed(2)).tolist(),
                       128, nq=5, lq=32, seed=6, dtype=torch.bfloat16)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        s1, a1 = _engine(q, d, off)
        torch.set_num_threads(2)
        s2, a2 = _engine(q, d, off)
        s3, a3 = _engine(q, d, off)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(s1, s2) and torch.equal(s2, s3)
    assert torch.equal(a1, a2) and torch.equal(a2, a3)


def test_engine_refuses_float32():
    q, d, off = corpus([3, 4], 64, nq=1, lq=4, seed=1)
    with pytest.raises(RuntimeError, match="bfloat16"):
        _engine(q, d, off)


def test_amx_level_runs_maxsim_on_the_engine():
    """At the "amx" level lk.maxsim on bf16 inputs (even dim) is the engine, bit for bit;
    capped one level lower it is the vector kernel again."""
    if lk.isa.cpu_best_isa() != "amx":
        pytest.skip(f"no usable AMX on this CPU (best level {lk.isa.cpu_best_isa()}, {lk.cpu_amx()})")
    q, d, off = corpus(EDGE_LENGTHS, 128, nq=3, lq=32, seed=12, dtype=torch.bfloat16)
    s_engine, _ = _engine(q, d, off)
    assert torch.equal(lk.maxsim(q, d, off), s_engine)
    try:
        lk.cpu_isa("avx512bf16")
        s_vec = lk.maxsim(q, d, off)
    finally:
        lk.cpu_isa("best")
    torch.testing.assert_close(s_vec, s_engine, rtol=TOL, atol=TOL)
