"""The file-based CLI: encode -> index build -> search -> evaluate, add/delete, bench, and its
errors (exit status 2 with the offending path or argument named). Runs `python -m lateint`
in subprocesses, as a user would."""
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")
try:
    from lateint.datasets import bbc_news
    from lateint.model import minilm_dir
    minilm_dir()
    ARTICLES = bbc_news()[::150]           # 15 articles over the 5 categories
except FileNotFoundError as e:  # pragma: no cover
    if os.environ.get("LATEINT_REQUIRE_MODEL") == "1":
        raise
    pytest.skip(f"model or corpus unavailable: {e}", allow_module_level=True)


def lateint(*args, cwd):
    return subprocess.run([sys.executable, "-m", "lateint", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    with open(d / "docs.jsonl", "w") as f:
        for i, a in enumerate(ARTICLES[:12]):
            f.write(json.dumps({"id": f"doc{i}", "text": a.body}) + "\n")
    with open(d / "more.jsonl", "w") as f:
        for i, a in enumerate(ARTICLES[12:], start=12):
            f.write(json.dumps({"id": f"doc{i}", "text": a.body}) + "\n")
    with open(d / "queries.jsonl", "w") as f:
        for i, a in enumerate(ARTICLES):
            f.write(json.dumps({"id": f"q{i}", "text": a.headline}) + "\n")
    with open(d / "qrels.txt", "w") as f:
        for i in range(len(ARTICLES)):
            f.write(f"q{i} 0 doc{i} 1\n")
    for args in (["encode", "--input", "docs.jsonl", "--output", "doc_emb", "--doc-len", "64"],
                 ["encode", "--input", "more.jsonl", "--output", "more_emb", "--doc-len", "64"],
                 ["encode", "--input", "queries.jsonl", "--output", "q_emb", "--kind", "queries"],
                 ["index", "build", "--embeddings", "doc_emb", "--index", "idx", "--nbits", "4"]):
        r = lateint(*args, cwd=d)
        assert r.returncode == 0, r.stderr[-2000:]
    return d


def _run(path):
    rows = [ln.split() for ln in open(path).read().splitlines()]
    out = {}
    for qid, q0, doc, rank, score, tag in rows:
        assert q0 == "Q0" and tag == "lateint"
        out.setdefault(qid, []).append((int(rank), doc, float(score)))
    return out


def test_encode_writes_consistent_embeddings(work):
    import numpy as np
    tokens = np.load(work / "doc_emb" / "tokens.npy")
    offsets = np.load(work / "doc_emb" / "offsets.npy")
    ids = json.load(open(work / "doc_emb" / "ids.json"))
    info = json.load(open(work / "doc_emb" / "info.json"))
    assert ids == [f"doc{i}" for i in range(12)] and offsets[0] == 0 and offsets[-1] == tokens.shape[0]
    assert tokens.dtype == np.float32 and tokens.shape[1] == info["dim"] == 384
    assert np.allclose(np.linalg.norm(tokens, axis=1), 1, atol=1e-5)
    assert (np.diff(offsets) <= 64).all() and info["kind"] == "documents"


def test_search_and_evaluate(work):
    r = lateint("search", "--index", "idx", "--queries", "q_emb", "--output", "run.trec", "--k", "5", cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    run = _run(work / "run.trec")
    assert set(run) == {f"q{i}" for i in range(len(ARTICLES))}
    for rows in run.values():
        assert [x[0] for x in rows] == list(range(1, len(rows) + 1)) and 1 <= len(rows) <= 5
        assert [x[2] for x in rows] == sorted((x[2] for x in rows), reverse=True)
    # queries given as texts are encoded with the index's model: the same run
    r = lateint("search", "--index", "idx", "--queries", "queries.jsonl", "--output", "run_text.trec", "--k", "5",
                cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (work / "run.trec").read_text() == (work / "run_text.trec").read_text()
    r = lateint("evaluate", "--run", "run.trec", "--qrels", "qrels.txt", "--k", "5", "--json", "ev.json", cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    ev = json.load(open(work / "ev.json"))
    # queries 12.. have no document in the index yet: recall is bounded by 12/15
    assert ev["queries"] == 15 and 0.6 <= ev["recall@5"] <= 12 / 15 + 1e-9
    hits = sum(1 for i in range(12) if any(d == f"doc{i}" for _, d, _ in run[f"q{i}"]))
    assert ev["recall@5"] == pytest.approx(hits / 15)


def test_add_then_delete(work):
    r = lateint("index", "add", "--index", "idx", "--embeddings", "more_emb", cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    r = lateint("index", "add", "--index", "idx", "--embeddings", "more_emb", cwd=work)
    assert r.returncode == 2 and "already in the index" in r.stderr
    assert lateint("search", "--index", "idx", "--queries", "q_emb", "--output", "run2.trec", cwd=work).returncode == 0
    run = _run(work / "run2.trec")
    assert any(d == "doc13" for _, d, _ in run["q13"])
    (work / "gone.txt").write_text("doc13\ndoc0\n")
    r = lateint("index", "delete", "--index", "idx", "--ids-file", "gone.txt", "--compact", cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    assert lateint("search", "--index", "idx", "--queries", "q_emb", "--output", "run3.trec", cwd=work).returncode == 0
    docs = {d for rows in _run(work / "run3.trec").values() for _, d, _ in rows}
    assert "doc13" not in docs and "doc0" not in docs and "doc14" in docs


def test_index_is_segmented_add_writes_a_segment_and_merge_joins_them(work):
    from lateint.plaid_store import SegmentedIndex

    assert lateint("index", "build", "--embeddings", "doc_emb", "--index", "seg", "--nbits", "2",
                   "--chunk-tokens", "100", cwd=work).returncode == 0
    # PLAID's quantile buckets on request: same codes, other bucket weights than the default
    assert lateint("index", "build", "--embeddings", "doc_emb", "--index", "segq", "--nbits", "2",
                   "--chunk-tokens", "100", "--buckets", "quantile", cwd=work).returncode == 0
    lloyd, quant = SegmentedIndex.open(str(work / "seg")), SegmentedIndex.open(str(work / "segq"))
    assert not torch.equal(lloyd._state.bucket_weights, quant._state.bucket_weights)
    w = lloyd._state.bucket_weights
    torch.testing.assert_close(lloyd._state.bucket_cutoffs, (w[1:] + w[:-1]) / 2)
    del lloyd, quant
    before = SegmentedIndex.open(str(work / "seg"))
    assert before.n_segments == 1 and before.n_docs == 12
    seg_files = sorted(os.listdir(work / "seg" / "seg-1"))
    r = lateint("index", "add", "--index", "seg", "--embeddings", "more_emb", cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    after = SegmentedIndex.open(str(work / "seg"))
    assert after.n_segments == 2 and after.n_docs == len(ARTICLES)
    assert sorted(os.listdir(work / "seg" / "seg-1")) == seg_files  # the first segment untouched
    assert lateint("search", "--index", "seg", "--queries", "q_emb", "--output", "seg1.trec", cwd=work).returncode == 0
    r = lateint("index", "merge", "--index", "seg", cwd=work)
    assert r.returncode == 0 and "merged 2 segments into 1" in r.stdout, r.stderr[-2000:]
    assert lateint("search", "--index", "seg", "--queries", "q_emb", "--output", "seg2.trec", cwd=work).returncode == 0
    assert (work / "seg1.trec").read_text() == (work / "seg2.trec").read_text()


def test_sharded_build_and_search_on_ray(work):
    pytest.importorskip("ray") if not os.environ.get("LATEINT_REQUIRE_RAY") else None
    r = lateint("index", "build", "--embeddings", "doc_emb", "--index", "sh", "--nbits", "2", "--shards", "3",
                "--chunk-tokens", "60", cwd=work)
    assert r.returncode == 0 and "3 shards" in r.stdout, r.stderr[-2000:]
    assert sorted(e for e in os.listdir(work / "sh") if e.startswith("shard-")) == ["shard-0", "shard-1", "shard-2"]
    r = lateint("search", "--index", "sh", "--queries", "q_emb", "--output", "sh.trec", "--k", "5", cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    run = _run(work / "sh.trec")
    hits = sum(any(d == f"doc{int(q[1:])}" for _, d, _ in rows) for q, rows in run.items() if int(q[1:]) < 12)
    assert hits >= 10, run
    r = lateint("index", "add", "--index", "sh", "--embeddings", "more_emb", cwd=work)
    assert r.returncode == 2 and "sharded index" in r.stderr
    r = lateint("search", "--index", "seg", "--queries", "q_emb", "--output", "x.trec", "--ray", "auto", cwd=work)
    assert r.returncode == 2 and "not a sharded index" in r.stderr


@pytest.mark.parametrize("args, needle", [
    (["encode", "--input", "missing.jsonl", "--output", "x"], "missing.jsonl"),
    (["encode", "--input", "bad.jsonl", "--output", "x"], "bad.jsonl:2"),
    (["encode", "--input", "queries.jsonl", "--output", "x", "--model", "/no/such"], "/no/such"),
    (["index", "build", "--embeddings", "q_emb", "--index", "qidx"], "holds queries"),
    (["index", "build", "--embeddings", "nowhere", "--index", "i2"], "not an embeddings directory"),
    (["index", "build", "--embeddings", "doc_emb", "--index", "idx"], "--overwrite"),
    (["index", "delete", "--index", "idx", "--ids", "no-such-doc"], "no-such-doc"),
    (["search", "--index", "doc_emb", "--queries", "q_emb", "--output", "r"], "not a lateint PLAID index"),
    (["evaluate", "--run", "bad.jsonl", "--qrels", "qrels.txt"], "bad.jsonl:1"),
    (["train", "--train", "missing.jsonl", "--output", "m"], "missing.jsonl"),
])
def test_errors_exit_2_naming_the_problem(work, args, needle):
    (work / "bad.jsonl").write_text('{"id": "a", "text": "fine"}\n{"id": "b"}\n')
    r = lateint(*args, cwd=work)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert needle in r.stderr
    assert "Traceback" not in r.stderr


def test_bench_smoke(work):
    r = lateint("bench", "--smoke", cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "maxsim" in r.stdout and "PLAID search" in r.stdout and "token_pool" in r.stdout


def test_help_texts():
    r = subprocess.run([sys.executable, "-m", "lateint", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "a first session" in r.stdout
    for cmd in ("demo", "train", "encode", "index", "search", "evaluate", "bench"):
        r = subprocess.run([sys.executable, "-m", "lateint", cmd, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage: lateint " + cmd in r.stdout


def test_build_takes_the_kmeans_budget_and_a_two_level_codec(work):
    r = lateint("index", "build", "--embeddings", "doc_emb", "--index", "idx2", "--nbits", "2",
                "--kmeans-niter", "3", "--max-points-per-centroid", "16", "--coarse-cells", "4", "--nprobe", "2",
                cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.load(open(work / "idx2" / open(work / "idx2" / "CURRENT").read().split()[0]))
    assert manifest["codec"]["nprobe"] == 2
    assert os.path.isfile(work / "idx2" / manifest["codec"]["dir"] / "coarse.npy")
    r = lateint("search", "--index", "idx2", "--queries", "q_emb", "--output", "run2.trec", cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    for bad in (["--coarse-cells", "0"], ["--kmeans-niter", "-1"], ["--max-points-per-centroid", "x"]):
        r = lateint("index", "build", "--embeddings", "doc_emb", "--index", "idx3", *bad, cwd=work)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (bad, r.stderr[-500:])
        assert not os.path.exists(work / "idx3") or not os.listdir(work / "idx3")
