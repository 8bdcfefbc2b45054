"""The main job (`lateint demo`) end to end on its smallest setting."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))

from lateint import cli  # noqa: E402


def test_real_text_demo_smoke(capsys, tmp_path):
    """README command one's job on its smallest setting: BBC News through MiniLM, pooled,
    PLAID vs exact MaxSim, with the JSON report."""
    pytest.importorskip("transformers")
    report = tmp_path / "report.json"
    assert cli.main(["demo", "--smoke", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "bytes per token on disk" in out and "PLAID latency at batch 1" in out
    data = json.loads(report.read_text())
    assert data["articles"] == 200 and data["queries"] == 50 and data["pool_factor"] == 2
    by = {(r["search"], r["documents"]): r for r in data["results"]}
    exact, plaid = by[("exact MaxSim", "all tokens")], by[("PLAID nbits 4", "pooled")]
    assert exact["mrr@10"] > 0.8 and plaid["mrr@10"] > 0.8           # MiniLM finds headlines' articles
    assert 0 < data["bytes_per_token"] < 4 * 384
    assert data["indexed_tokens"] < data["document_tokens"]            # pooled


def test_demo_bad_arguments(capsys):
    assert cli.main(["demo", "--docs", "0"]) == 2
    assert "--docs" in capsys.readouterr().err
    assert cli.main(["demo", "--model", "/no/such/dir"]) == 2
    assert "/no/such/dir" in capsys.readouterr().err
