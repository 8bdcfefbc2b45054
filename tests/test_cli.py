"""The main job (`lateint demo`) end to end on its smallest setting."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))

from lateint import cli  # noqa: E402


def test_demo_smoke(capsys):
    assert cli.main(["demo", "--smoke"]) == 0
    out = capsys.readouterr().out
    assert "recall@10" in out and "MRR@10" in out
    rel = float(out.split("check vs float64 reference (2 queries): max rel err ")[1].split()[0])
    assert rel < 1e-5
    agree = float(out.split("PyLate-mode scores agree to ")[1].split()[0])
    assert agree < 1e-5


def test_demo_with_token_pooling(capsys):
    assert cli.main(["demo", "--smoke", "--pool-factor", "2"]) == 0
    out = capsys.readouterr().out
    before, after = out.split("token pooling (pool_factor 2, PyLate's Ward clustering): ")[1].split()[0:3:2]
    assert int(after) < int(before)
    assert "recall@10" in out
