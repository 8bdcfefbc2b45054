"""The CLI on bad arguments and bad files: exit status 2 and one message naming the argument
or file, never a traceback. Runs `lateint.cli.main` in-process on synthetic embeddings (no
model needed)."""
import json
import os

import pytest
import torch

from lateint.cli import main
from lateint.commands import write_embeddings


def _emb(path, n, dim=32, kind="documents", seed=0, ids=None):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(4, 20, (n,), generator=g)
    off = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lens, 0)])
    x = torch.nn.functional.normalize(torch.randn(int(off[-1]), dim, generator=g), dim=-1)
    write_embeddings(str(path), x, off, ids or [f"d{i}" for i in range(n)], {"kind": kind, "dim": dim})
    return x, off


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("badcli")
    _emb(d / "docs", 80)
    _emb(d / "more", 10, seed=1, ids=[f"m{i}" for i in range(10)])
    _emb(d / "queries", 5, kind="queries", seed=2, ids=[f"q{i}" for i in range(5)])
    assert main(["index", "build", "--embeddings", str(d / "docs"), "--index", str(d / "idx"), "--nbits", "2"]) == 0
    (d / "empty_model").mkdir()
    (d / "a_file").write_text("x")
    (d / "bad.jsonl").write_bytes(b'{"id": "a", "text": "caf\xe9"}\n')
    (d / "bad_qrels.txt").write_bytes(b"q0 0 d\xff1 1\n")
    (d / "bad_run.txt").write_bytes(b"q0 Q0 d1 1 0.5 t\xfe\n")
    (d / "qrels.txt").write_text("q0 0 d1 1\n")
    (d / "run.txt").write_text("q0 Q0 d1 1 0.5 t\n")
    (d / "texts.jsonl").write_text('{"id": "a", "text": "hello"}\n')
    (d / "pairs.jsonl").write_text('{"query": "q", "positive": "p"}\n')
    return d


def _bad(capsys, argv, *needles):
    rc = None
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own refusals
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, (argv, rc, err)
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (argv, n, err)
    return err


def test_search_settings(work, capsys):
    base = ["search", "--index", work / "idx", "--queries", work / "queries", "--output", work / "run_out.trec"]
    for extra, needle in ((["--k", "0"], "--k"), (["--k", "-1"], "--k"), (["--k", "2.5"], "--k"),
                          (["--ncells", "0"], "--ncells"), (["--ndocs", "0"], "--ndocs"),
                          (["--threshold", "nan"], "--threshold"), (["--threshold", "abc"], "--threshold")):
        _bad(capsys, base + extra, needle)
    assert main([str(a) for a in base]) == 0


def test_encode_arguments(work, capsys):
    base = ["encode", "--input", work / "texts.jsonl", "--output", work / "enc_out"]
    for extra, needle in ((["--pool-factor", "0"], "--pool-factor"), (["--pool-factor", "-1"], "--pool-factor"),
                          (["--batch-size", "0"], "--batch-size"), (["--doc-len", "0"], "--doc-len"),
                          (["--doc-len", "-5"], "--doc-len"), (["--model", work / "empty_model"], "not a model"),
                          (["--model", work / "a_file"], "not a directory")):
        _bad(capsys, base + extra, needle)
    _bad(capsys, ["encode", "--input", work / "bad.jsonl", "--output", work / "enc_out"], "bad.jsonl:1", "UTF-8")
    _bad(capsys, ["encode", "--input", work / "missing.jsonl", "--output", work / "x"], "--input")
    assert not os.path.exists(work / "enc_out")


def test_model_arguments_elsewhere(work, capsys):
    _bad(capsys, ["search", "--index", work / "idx", "--queries", work / "texts.jsonl", "--output",
                  work / "r.trec", "--model", work / "empty_model"], "not a model")
    _bad(capsys, ["train", "--train", work / "pairs.jsonl", "--output", work / "m", "--model", work / "empty_model"],
         "not a model")
    _bad(capsys, ["demo", "--model", work / "empty_model"], "not a model")
    for arg, value in (("--lr", "inf"), ("--lr", "-1"), ("--encoder-lr", "nan"), ("--temperature", "0"),
                       ("--temperature", "1e400")):
        _bad(capsys, ["train", "--train", work / "pairs.jsonl", "--output", work / "m", arg, value], arg)


def test_outputs_that_cannot_be_written(work, capsys, tmp_path):
    _emb(tmp_path / "out_is_file_src", 3)
    # a search whose --output is a directory: refused before searching, nothing left behind
    (tmp_path / "outdir").mkdir()
    _bad(capsys, ["search", "--index", work / "idx", "--queries", work / "queries", "--output", tmp_path / "outdir"],
         "--output", "directory")
    assert os.listdir(tmp_path / "outdir") == [] and not any(".tmp" in n for n in os.listdir(tmp_path))
    # an --output under a file
    _bad(capsys, ["search", "--index", work / "idx", "--queries", work / "queries", "--output",
                  work / "a_file" / "run.trec"], "--output")
    _bad(capsys, ["evaluate", "--run", work / "run.txt", "--qrels", work / "qrels.txt", "--json",
                  work / "a_file" / "x.json"], "--json")
    # the demo's report path is checked before the (minutes-long) run
    _bad(capsys, ["demo", "--json", work / "a_file" / "x.json"], "--json")
    _bad(capsys, ["demo", "--json", work / "empty_model"], "--json", "directory")
    # an index path that is a file
    _bad(capsys, ["index", "build", "--embeddings", work / "docs", "--index", work / "a_file"], "--index")
    # evaluate --json into a directory that does not exist yet: created
    assert main(["evaluate", "--run", str(work / "run.txt"), "--qrels", str(work / "qrels.txt"), "--json",
                 str(tmp_path / "new" / "dir" / "e.json")]) == 0
    assert json.load(open(tmp_path / "new" / "dir" / "e.json"))["queries"] == 1
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "new" / "dir" / "e.json").st_mode & 0o777 == 0o666 & ~umask  # as open() makes it
    # encode: an --output that is a file or a foreign directory is never replaced
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "info.json").write_text("{}")
    (tmp_path / "foreign" / "mine.txt").write_text("mine")
    from lateint.commands import UsageError
    x = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    for target in (work / "a_file", tmp_path / "foreign"):
        with pytest.raises(UsageError, match="not an embeddings directory"):
            write_embeddings(str(target), x, torch.tensor([0, 4]), ["a"], {"kind": "documents"})
    assert (tmp_path / "foreign" / "mine.txt").read_text() == "mine"


def test_bad_input_files(work, capsys, tmp_path):
    _bad(capsys, ["evaluate", "--run", work / "run.txt", "--qrels", work / "bad_qrels.txt"], "bad_qrels.txt:1", "UTF-8")
    _bad(capsys, ["evaluate", "--run", work / "bad_run.txt", "--qrels", work / "qrels.txt"], "bad_run.txt:1", "UTF-8")
    _bad(capsys, ["evaluate", "--run", work / "run.txt", "--qrels", work / "qrels.txt", "--k", "0"], "--k")
    _bad(capsys, ["search", "--index", work / "idx", "--queries", work / "nope.jsonl", "--output", work / "r"],
         "--queries")
    # an info.json that is a list
    _emb(tmp_path / "listinfo", 5)
    (tmp_path / "listinfo" / "info.json").write_text("[1, 2]")
    _bad(capsys, ["index", "build", "--embeddings", tmp_path / "listinfo", "--index", tmp_path / "i1"], "info.json")
    # NaN tokens, a wrong dimension, query embeddings, pool factor 0
    x, off = _emb(tmp_path / "nan", 6)
    x[3, 1] = float("nan")
    write_embeddings(str(tmp_path / "nan"), x, off, [f"n{i}" for i in range(6)], {"kind": "documents"})
    _bad(capsys, ["index", "build", "--embeddings", tmp_path / "nan", "--index", tmp_path / "i2"], "NaN")
    _bad(capsys, ["index", "add", "--index", work / "idx", "--embeddings", tmp_path / "nan"], "NaN")
    _emb(tmp_path / "dim16", 4, dim=16)
    _bad(capsys, ["index", "add", "--index", work / "idx", "--embeddings", tmp_path / "dim16"], "dim 16")
    _bad(capsys, ["index", "add", "--index", work / "idx", "--embeddings", work / "queries"], "queries")
    _bad(capsys, ["index", "build", "--embeddings", work / "queries", "--index", tmp_path / "i3"], "queries")
    _bad(capsys, ["index", "build", "--embeddings", work / "docs", "--index", tmp_path / "i4", "--pool-factor", "0"],
         "--pool-factor")
    _bad(capsys, ["index", "build", "--embeddings", work / "docs", "--index", tmp_path / "i4", "--buckets", "kmeans"],
         "--buckets", "lloyd", "quantile")
    assert not os.path.exists(tmp_path / "i2") and not os.path.exists(tmp_path / "i4")


def test_delete_counts_each_id_once(work, capsys, tmp_path):
    import shutil
    idx = tmp_path / "idx"
    shutil.copytree(work / "idx", idx)
    assert main(["index", "delete", "--index", str(idx), "--ids", "d3", "d3", "d5"]) == 0
    out = capsys.readouterr().out
    assert "deleted 2 documents" in out and "holds 78" in out
    _bad(capsys, ["index", "delete", "--index", idx, "--ids", "d3"], "not in the index")
