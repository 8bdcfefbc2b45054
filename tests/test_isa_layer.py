"""The one instruction-set layer (csrc/common/isa.h): every family's CPU kernels choose their
vector variant through it, so the cap (LATEINT_CPU_ISA, lk.cpu_isa(set=...)) reaches all of
them. Proven per family with the dispatch trace (lateint_kernels.testing.isa_trace), and
statically: no ISA selection anywhere else in csrc/ (outside csrc/common/)."""
import os
import re
import subprocess
import sys
import textwrap

import pytest

import lateint_kernels as lk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = ("maxsim", "pool", "kmeans", "codec", "plaid")

# One call of every CPU kernel of a family on small clustered data (float32; bf16 too where
# the family has a bf16 path), printing the levels its kernels dispatched to.
_RUN = textwrap.dedent("""
    import json, sys, torch
    sys.path.insert(0, {tests!r})
    import lateint_kernels as lk
    import lateint_kernels.testing as lkt
    from _data import corpus
    fam = {family!r}
    if {runtime!r}:
        lk.cpu_isa(set={runtime!r})
    torch.manual_seed(0)
    q, x, off = corpus([7, 40, 65, 3, 120], 32, nq=3, lq=9, seed=1)
    c = x[::9].contiguous()
    codes = lk.kmeans_assign(x, c)
    cut, w = lk.residual_buckets(x - c[codes.long()], 2)
    packed = lk.compress_residuals(x, c, codes, cut, 2)
    s = lk.centroid_scores(q, c)
    k = c.shape[0]
    ivf_docs = torch.arange(off.shape[0] - 1).repeat_interleave(off[1:] - off[:-1])
    order = torch.sort(codes.long(), stable=True).indices
    ivf_off = torch.zeros(k + 1, dtype=torch.long)
    ivf_off[1:] = torch.cumsum(torch.bincount(codes.long(), minlength=k), 0)
    with lkt.isa_trace() as levels:
        if fam == "maxsim":
            for dt in (torch.float32, torch.bfloat16):
                qq, xx = q.to(dt).requires_grad_(), x.to(dt).requires_grad_()
                lk.maxsim(qq, xx, off).sum().backward()
        elif fam == "pool":
            lk.token_pool(x, off, 2)
            lk.token_pool(x.double(), off, 2, distance="euclidean")
            lk.token_pool_list([x[:40], x[40:105]], 3)
        elif fam == "kmeans":
            lk.kmeans_assign(x, c)
        elif fam == "codec":
            lk.compress_residuals(x, c, codes, cut, 2)
            lk.decompress_residuals(codes, packed, c, w, 2)
        elif fam == "plaid":
            cand = lk.ivf_candidates(s, ivf_off, ivf_docs[order], off.shape[0] - 1, 2)
            lk.approx_scores(s, codes, off, cand, threshold=0.1)
            lk.decompress_maxsim(q, codes, packed, off, c, w, 2, cand)
            lk.lut_maxsim(q, s, codes, packed, off, w, 2, cand)
    print(json.dumps({{f: sorted(v) for f, v in levels.items()}}))
""")


def _levels(family, env_cap=None, runtime_cap=None):
    env = {key: v for key, v in os.environ.items() if key != "LATEINT_CPU_ISA"}
    if env_cap:
        env["LATEINT_CPU_ISA"] = env_cap
    code = _RUN.format(tests=os.path.join(ROOT, "tests"), family=family, runtime=runtime_cap)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    return {f: set(v) for f, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}


native = pytest.mark.skipif(not lk.NATIVE_LOADED, reason="native extension not built")


@native
@pytest.mark.parametrize("family", FAMILIES)
def test_the_cap_reaches_every_kernel_of_the_family(family):
    best = lk.isa.cpu_best_isa()
    free = _levels(family)
    assert free[family], f"{family}: no kernel went through the ISA layer"
    assert free[family] <= {best}, free
    if best != "scalar":
        # the trace can fail: uncapped, the family runs above the baseline on this CPU
        assert free[family] == {best}, free
    for how in ("env", "runtime"):
        capped = _levels(family, env_cap="scalar" if how == "env" else None,
                         runtime_cap="scalar" if how == "runtime" else None)
        assert capped[family] == {"scalar"}, (how, capped)
    if best in ("avx512", "avx512bf16", "amx"):
        assert _levels(family, env_cap="avx2")[family] == {"avx2"}
    if family == "maxsim":  # a cap above the processor's best clamps to the best
        assert _levels(family, env_cap="amx")[family] == {best}


def _cpuinfo_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


@native
def test_amx_is_the_level_only_where_the_tiles_are_usable():
    """cpu_amx() reads CPUID / XCR0 / the permission; "amx" is the best level exactly when
    all of them say yes on a CPU with AVX512-BF16. Printed, so a CI log says which AMX
    paths could run."""
    amx = lk.cpu_amx()
    usable = all(amx[k] for k in ("tile", "bf16", "int8", "os_enabled", "permitted"))
    print(f"cpu_amx: {amx}; best level {lk.isa.cpu_best_isa()}")
    flags = _cpuinfo_flags()
    if flags is not None:
        # Linux lists an AMX flag only when CPUID has it (and may hide it when the OS lacks support)
        for key in ("tile", "bf16", "int8", "fp16"):
            if f"amx_{key}" in flags:
                assert amx[key], (key, amx)
    if not amx["tile"]:
        assert not amx["permitted"]
    if lk.isa.cpu_best_isa() == "amx":
        assert usable
    elif usable:  # tiles usable: only a CPU without AVX512-BF16 may stay below "amx"
        assert flags is not None and "avx512_bf16" not in flags
    if not usable:
        pytest.skip(f"no usable AMX on this CPU ({amx}): AMX paths not exercised")


_SELECTORS = re.compile(r"target_clones|__builtin_cpu_supports|__builtin_cpu_init|\bcpu_(active|best)_isa\(\)")


def test_nothing_outside_the_isa_layer_selects_an_instruction_set():
    """Kernels choose a variant with isa_for(family); target_clones (an ifunc the cap cannot
    reach) and direct CPUID queries exist only in csrc/common/, the layer itself."""
    bad = []
    for root, _, files in os.walk(os.path.join(ROOT, "csrc")):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, ROOT)
            if rel.startswith((os.path.join("csrc", "common", ""), os.path.join("csrc", "tests", ""))) \
                    or not name.endswith((".h", ".cpp", ".inc")):
                continue
            for i, line in enumerate(open(path, encoding="utf-8"), 1):
                code = line.split("//")[0]
                if _SELECTORS.search(code):
                    bad.append(f"{rel}:{i}: {line.strip()}")
    assert not bad, "ISA selection outside csrc/common/:\n" + "\n".join(bad)


def test_the_static_check_finds_a_selector(tmp_path):
    assert _SELECTORS.search('__attribute__((target_clones("avx2", "default"))) void f();')
    assert _SELECTORS.search("if (lateint::cpu_active_isa() >= Isa::Avx2)")
    assert _SELECTORS.search("transpose(x, cpu_best_isa() >= Isa::Avx2)")
    assert not _SELECTORS.search("const Isa isa = isa_for(Family::Pool);")
