"""The native library must run on any x86-64 CPU: AVX2/AVX-512 code may only sit in functions
that are chosen at run time after a CPU check. A function with vague linkage (a weak symbol:
template instantiations, inline functions emitted out of line) compiled in an ISA-specific
translation unit is the hazard: the linker keeps one of its copies for the whole library, and
if it keeps the AVX-512 one, baseline callers crash with SIGILL on CPUs without AVX-512.
This test disassembles the built extension and fails when any weak function uses ymm/zmm
registers (baseline x86-64 code, as the library is compiled outside those units, never does)."""
import platform
import re
import shutil
import subprocess

import pytest

import lateint_kernels as lk

pytestmark = [
    pytest.mark.skipif(not lk.NATIVE_LOADED, reason="native extension not built"),
    pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 only"),
    pytest.mark.skipif(shutil.which("objdump") is None or shutil.which("nm") is None,
                       reason="binutils (objdump, nm) not installed"),
]


def _weak_functions_with_vector_code(path):
    weak = set()
    for line in subprocess.run(["nm", "--defined-only", path], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in ("W", "V", "u"):
            weak.add(parts[2])
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], capture_output=True,
                         text=True, check=True).stdout
    header = re.compile(r"^[0-9a-f]+ <(.+)>:$")
    vector_reg = re.compile(r"%[yz]mm\d+")
    bad, current, seen = set(), None, 0
    for line in dis.splitlines():
        m = header.match(line)
        if m:
            current = m.group(1) if m.group(1) in weak else None
            seen += current is not None
            continue
        if current is not None and vector_reg.search(line):
            bad.add(current)
    return weak, seen, sorted(bad)


def test_no_weak_function_carries_avx_code():
    import lateint_kernels._C as C

    _, seen, bad = _weak_functions_with_vector_code(C.__file__)
    assert seen > 0, "no weak function found in the disassembly: the parser is broken"
    assert not bad, ("weak (linker-chosen) functions with AVX/AVX-512 code, a SIGILL hazard "
                     f"on older CPUs: {bad[:10]}")


def test_parser_flags_a_weak_avx_function(tmp_path):
    """The check itself: a weak template instantiated under an AVX-512 target is caught."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    src = tmp_path / "weak.cpp"
    src.write_text(
        "#pragma GCC target(\"avx512f\")\n"
        "template <typename T> T total(const T* x, int n) { T s = 0;"
        " for (int i = 0; i < n; ++i) s += x[i] * x[i]; return s; }\n"
        "float use(const float* x, int n) { return total(x, n); }\n"
        "template float total<float>(const float*, int);\n")
    so = tmp_path / "weak.so"
    subprocess.run([cxx, "-O3", "-shared", "-fPIC", str(src), "-o", str(so)], check=True)
    _, seen, bad = _weak_functions_with_vector_code(str(so))
    assert seen >= 1 and any("total" in b for b in bad), bad


_TILE_INSN = re.compile(r"\b(ldtilecfg|sttilecfg|tileloadd|tileloaddt1|tilestored|tilezero|tilerelease|"
                        r"tdpbf16ps|tdpfp16ps|tdpbssd|tdpbsud|tdpbusd|tdpbuud)\b")


def _functions_with_tile_code(path):
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], capture_output=True,
                         text=True, check=True).stdout
    header = re.compile(r"^[0-9a-f]+ <(.+)>:$")
    found, current = set(), None
    for line in dis.splitlines():
        m = header.match(line)
        if m:
            current = m.group(1)
        elif current is not None and _TILE_INSN.search(line):
            found.add(current)
    return sorted(found)


def test_tile_instructions_only_in_amx_kernels():
    """AMX tile instructions fault (SIGILL) on a CPU without AMX and, on Linux, in a process
    that was not granted the tile state: they may only sit in functions named for AMX
    (`*amx*`), which run after the ISA layer's detection and permission request said yes."""
    import lateint_kernels._C as C

    bad = [f for f in _functions_with_tile_code(C.__file__) if "amx" not in f.lower()]
    assert not bad, f"tile instructions outside AMX kernels: {bad[:10]}"


def test_the_tile_check_finds_tile_code(tmp_path):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    src = tmp_path / "tile.cpp"
    src.write_text('#include <immintrin.h>\n'
                   '__attribute__((target("amx-tile"))) void release_tiles() { _tile_release(); }\n')
    so = tmp_path / "tile.so"
    r = subprocess.run([cxx, "-O2", "-shared", "-fPIC", str(src), "-o", str(so)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"the compiler has no AMX support: {r.stderr.strip()[:200]}")
    assert any("release_tiles" in f for f in _functions_with_tile_code(str(so)))
