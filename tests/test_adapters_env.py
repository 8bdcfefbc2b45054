"""Runs tests/adapters in the adapters' environment (.venv-st6: sentence-transformers 6.2.0
and colpali-engine 0.3.18, which cannot share this one with PyLate's sentence-transformers
5.3.0), so that the README's test command covers them. Skips where scripts/install.sh has
not made that environment, unless LATEINT_REQUIRE_ST6=1. In the main environment the
adapter files skip themselves; LATEINT_ADAPTERS_ENV=1, set here, makes them fail instead
when their packages are missing."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_PY = ROOT / ".venv-st6" / "bin" / "python"


def test_adapters_in_their_environment():
    if not VENV_PY.exists():
        if os.environ.get("LATEINT_REQUIRE_ST6") == "1":
            pytest.fail(f"LATEINT_REQUIRE_ST6=1 but {VENV_PY} is missing (scripts/install.sh makes it)")
        pytest.skip(f"{VENV_PY} missing: scripts/install.sh makes the adapters' environment")
    env = dict(os.environ, LATEINT_ADAPTERS_ENV="1")
    r = subprocess.run([str(VENV_PY), "-m", "pytest", str(ROOT / "tests" / "adapters"), "-q", "-p", "no:cacheprovider"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    tail = (r.stdout + r.stderr)[-4000:]
    assert r.returncode == 0, tail
    assert " passed" in tail and "skipped" not in tail.splitlines()[-1], tail
    print(tail.splitlines()[-1], file=sys.stderr)
