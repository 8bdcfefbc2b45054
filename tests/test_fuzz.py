"""Fuzzing: the ops (tests/fuzz_ops.py, in a subprocess so that a signal or a hang is a
failure naming the case), the CLI (every argument given bad values: exit 2 and a message,
never a traceback) and index files (random bit flips and truncations of every file, CURRENT
and meta.json included: refused by name).

The default run is small and seeded. LATEINT_FUZZ_LONG=1 runs the long budget (and
LATEINT_FUZZ_SEED picks another seed), e.g.
    LATEINT_FUZZ_LONG=1 python3 -m pytest tests/test_fuzz.py -q -s
"""
import json
import os
import random
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
LONG = os.environ.get("LATEINT_FUZZ_LONG") == "1"
SEED = int(os.environ.get("LATEINT_FUZZ_SEED", "0"))
OP_CASES = 20000 if LONG else 600
CLI_CASES = 600 if LONG else 80
FILE_CASES = 1500 if LONG else 120


def test_fuzz_ops(tmp_path):
    progress = tmp_path / "progress.txt"
    out = subprocess.run([sys.executable, os.path.join(HERE, "fuzz_ops.py"), "--seed", str(SEED), "--cases",
                          str(OP_CASES), "--progress", str(progress)], capture_output=True, text=True,
                         timeout=3000 if LONG else 300, env=dict(os.environ, TRITON_INTERPRET="1"))
    last = progress.read_text().splitlines()[-1:] if progress.exists() else []
    assert out.returncode == 0, (f"the fuzzer died (exit {out.returncode}) on case (seed, case, family) {last}:\n"
                                 f"{out.stderr[-3000:]}")
    report = json.loads(out.stdout.strip().splitlines()[-1])
    outcomes = {}
    for c in report["counts"].values():
        for k, v in c.items():
            outcomes[k] = outcomes.get(k, 0) + v
    print(f"\nop fuzz: seed {SEED}, {OP_CASES} cases over {len(report['counts'])} op entries: {outcomes}")
    assert not report["failures"], json.dumps(report["failures"][:10], indent=1)
    assert outcomes.get("ok", 0) > OP_CASES // 4 and outcomes.get("refused", 0) > OP_CASES // 10
    # every op the registry knows, reached through its public wrapper or raw (a new op
    # without a fuzz case fails here)
    import lateint_kernels as lk

    fuzzed = {name.split(".")[-1] for name in report["counts"]}
    missing = set(lk._registry.known_ops()) - fuzzed
    assert not missing, f"ops without a fuzz case: {sorted(missing)}"


# ---------------------------------------------------------------------------------------
# CLI
def _cli_setup(d):
    from lateint.cli import main
    from lateint.commands import write_embeddings

    g = torch.Generator().manual_seed(0)
    for name, n, kind in (("docs", 40, "documents"), ("more", 5, "documents"), ("queries", 4, "queries")):
        lens = torch.randint(3, 12, (n,), generator=g)
        off = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lens, 0)])
        x = torch.nn.functional.normalize(torch.randn(int(off[-1]), 16, generator=g), dim=-1)
        write_embeddings(str(d / name), x, off, [f"{name[0]}{i}" for i in range(n)], {"kind": kind})
    assert main(["index", "build", "--embeddings", str(d / "docs"), "--index", str(d / "idx"), "--nbits", "2"]) == 0
    (d / "qrels.txt").write_text("q0 0 d1 1\n")
    (d / "run.txt").write_text("q0 Q0 d1 1 0.5 t\n")
    (d / "texts.jsonl").write_text('{"id": "a", "text": "x"}\n')
    (d / "binary.bin").write_bytes(bytes(range(256)))
    (d / "a_file").write_text("x")
    (d / "empty_dir").mkdir()


# every command with valid arguments, then its arguments that take values
_VALID = {
    "search": ["search", "--index", "{d}/idx", "--queries", "{d}/queries", "--output", "{d}/out/run.trec"],
    "evaluate": ["evaluate", "--run", "{d}/run.txt", "--qrels", "{d}/qrels.txt"],
    "index build": ["index", "build", "--embeddings", "{d}/docs", "--index", "{d}/out/new_idx", "--nbits", "2"],
    "index add": ["index", "add", "--index", "{d}/idx_copy", "--embeddings", "{d}/more"],
    "index delete": ["index", "delete", "--index", "{d}/idx_copy", "--ids", "d1"],
    "encode": ["encode", "--input", "{d}/texts.jsonl", "--output", "{d}/out/emb"],
    "train": ["train", "--train", "{d}/texts.jsonl", "--output", "{d}/out/model"],
    "demo": ["demo", "--docs", "20", "--queries", "5"],
}
_VALUE_ARGS = {
    "search": ["--index", "--queries", "--output", "--k", "--ncells", "--ndocs", "--threshold", "--model", "--tag"],
    "evaluate": ["--run", "--qrels", "--k", "--json"],
    "index build": ["--embeddings", "--index", "--nbits", "--pool-factor", "--seed"],
    "index add": ["--index", "--embeddings"],
    "index delete": ["--index", "--ids-file", "--ids"],
    "encode": ["--input", "--output", "--pool-factor", "--doc-len", "--batch-size", "--model", "--kind"],
    "train": ["--train", "--output", "--model", "--dim", "--epochs", "--batch-size", "--mini-batch-size", "--lr",
              "--encoder-lr", "--temperature", "--seed", "--max-steps", "--checkpoint-dir", "--checkpoint-every",
              "--query-length", "--document-length", "--train-layers"],
    "demo": ["--docs", "--k", "--nbits", "--pool-factor", "--doc-len", "--model", "--threads",
             "--queries", "--json"],
}
_BAD_VALUES = ["0", "-1", "-5", "nan", "inf", "abc", "", "1e400", "99999999999999999999", "2.5",
               "{d}/missing", "{d}/a_file", "{d}/empty_dir", "{d}/binary.bin", "{d}/a_file/below", "/dev/null"]


def test_fuzz_cli(tmp_path, capsys, monkeypatch):
    """Each case: one command's valid arguments with one argument replaced by a bad value.
    Whatever the outcome, no exception escapes `main` and the status is 0 or 2; a status 2
    comes with a message naming the command."""
    import shutil

    from lateint.cli import main

    monkeypatch.chdir(tmp_path)  # bad values used as relative paths land here
    _cli_setup(tmp_path)
    rng = random.Random(SEED)
    statuses = {}
    for case in range(CLI_CASES):
        cmd = rng.choice(sorted(_VALUE_ARGS))
        arg = rng.choice(_VALUE_ARGS[cmd])
        bad = rng.choice(_BAD_VALUES).format(d=tmp_path)
        if os.path.exists(tmp_path / "idx_copy"):
            shutil.rmtree(tmp_path / "idx_copy")
        shutil.copytree(tmp_path / "idx", tmp_path / "idx_copy")
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        argv = [a.format(d=tmp_path) for a in _VALID[cmd]]
        if arg in argv:
            argv[argv.index(arg) + 1] = bad
        else:
            argv += [arg, bad]
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse's refusals
            rc = e.code
        except BaseException as e:  # noqa: BLE001
            pytest.fail(f"case {case}: `lateint {' '.join(argv)}` raised {type(e).__name__}: {e}")
        err = capsys.readouterr().err
        assert rc in (0, 2), (case, argv, rc, err[-2000:])
        assert "Traceback" not in err, (case, argv, err[-2000:])
        if rc == 2:
            assert err.strip(), (case, argv)
        statuses[rc] = statuses.get(rc, 0) + 1
        # an empty directory may take a new index or output when named as the place to write
        if not (arg in ("--index", "--output") and bad == str(tmp_path / "empty_dir")):
            assert sorted(os.listdir(tmp_path / "empty_dir")) == [], (case, argv)
        shutil.rmtree(tmp_path / "empty_dir")
        (tmp_path / "empty_dir").mkdir()
        # a file is replaced only when it is named as the file to write (--output / --json)
        if not (arg in ("--output", "--json") and bad == str(tmp_path / "a_file")):
            assert (tmp_path / "a_file").read_text() == "x", (case, argv)
        (tmp_path / "a_file").write_text("x")
    print(f"\nCLI fuzz: seed {SEED}, {CLI_CASES} cases, exit statuses {statuses}")
    assert statuses.get(2, 0) > CLI_CASES // 2


# ---------------------------------------------------------------------------------------
# index files
def test_fuzz_index_files(tmp_path):
    """Random damage to one file of a saved index (a bit flip anywhere, a truncation, or
    the file removed): every load refuses it with IndexFormatError naming that file."""
    from lateint.plaid import IndexFormatError, PLAIDIndex

    g = torch.Generator().manual_seed(1)
    off = torch.arange(0, 30 * 12 + 1, 12)
    x = torch.nn.functional.normalize(torch.randn(int(off[-1]), 16, generator=g), dim=-1)
    index = PLAIDIndex.build(x, off, nbits=2, n_centroids=8, kmeans_niter=2)
    index.metadata = {"names": [f"d{i}" for i in range(30)]}
    clean = str(tmp_path / "clean")
    index.save(clean)
    vname = open(os.path.join(clean, "CURRENT")).read().split()[0]
    files = ["CURRENT"] + [os.path.join(vname, f) for f in sorted(os.listdir(os.path.join(clean, vname)))]
    originals = {f: open(os.path.join(clean, f), "rb").read() for f in files}
    path = str(tmp_path / "idx")
    rng = random.Random(SEED)
    kinds = {}
    for case in range(FILE_CASES):
        rel = rng.choice(files)
        data = bytearray(originals[rel])
        kind = rng.choice(["flip", "flip", "flip", "truncate", "remove"])
        if kind == "flip":
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            data = data[:rng.randrange(len(data))]
        for f, raw in originals.items():
            os.makedirs(os.path.dirname(os.path.join(path, f)), exist_ok=True)
            with open(os.path.join(path, f), "wb") as fh:
                fh.write(raw)
        if kind == "remove":
            os.remove(os.path.join(path, rel))
        else:
            with open(os.path.join(path, rel), "wb") as fh:
                fh.write(bytes(data))
        with pytest.raises(IndexFormatError) as err:
            PLAIDIndex.load(path)
        name = os.path.basename(rel)
        msg = str(err.value)
        # damage to CURRENT may show as the version it now names being absent
        assert name in msg or (rel == "CURRENT" and ("CURRENT" in msg or "meta.json" in msg)) or \
            (name == "meta.json" and "missing" in msg), (case, rel, kind, msg)
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"\nindex-file fuzz: seed {SEED}, {FILE_CASES} damaged copies over {len(files)} files {kinds}: all refused")
