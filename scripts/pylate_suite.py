"""PyLate's own test suite as a client of lateint.pylate: the tests of PyLate's sdist, run
twice against the installed PyLate, once as they are and once with `lateint.pylate.enable()`
switched on for the whole session, and their outcomes compared test by test.

    python scripts/pylate_suite.py [--version 1.6.0] [-k EXPR]

The sdist comes from the package registry into ~/.cache/lateint/pylate-sdist (the tests
only; the installed PyLate is the one tested). Tests that need the network (model
downloads from the Hugging Face hub) fail both times with HF_HUB_OFFLINE=1 and are counted
apart as "offline"; a test whose outcome (passed, failed, skipped) changes with the switch
is a difference, and any difference makes the exit status 1. A test that fails both times
for different reasons (e.g. fast-plaid missing with the switch off, then the network once
lateint's index replaces PyLate's) is listed, not counted as a difference.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

CACHE = Path.home() / ".cache" / "lateint" / "pylate-sdist"
# Loaded into the suite's session (pytest -p): switches lateint on when asked, before any
# test module imports PyLate's functions.
PLUGIN = '''
import os
if os.environ.get("LATEINT_SWITCH") == "on":
    import lateint.pylate
    lateint.pylate.enable()
'''
NETWORK = ("huggingface", "HF_HUB_OFFLINE", "offline mode", "LocalEntryNotFoundError", "OfflineModeIsEnabled",
           "couldn't connect", "Cannot find the requested files", "is not a local folder")


def fetch_tests(version: str) -> Path:
    dest = CACHE / f"pylate-{version}"
    if not (dest / "tests").is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"pylate=={version}", "-d", str(CACHE)], check=True)
        with tarfile.open(CACHE / f"pylate-{version}.tar.gz") as tar:
            tar.extractall(CACHE, filter="data")
    return dest / "tests"


def run(tests: Path, switch: str, extra) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"pylate-suite-{switch}-"))
    shutil.copytree(tests, work / "tests")
    (work / "lateint_switch_plugin.py").write_text(PLUGIN)
    xml = work / "junit.xml"
    env = dict(os.environ, LATEINT_SWITCH=switch, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=f"{work}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [sys.executable, "-m", "pytest", "tests", "-q", "-p", "lateint_switch_plugin", "-p", "no:cacheprovider",
           f"--junitxml={xml}", *extra]
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    print(f"switch {switch}: {(r.stdout.strip().splitlines() or ['?'])[-1]}")
    out = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kind, why = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                kind = "skipped" if child.tag == "skipped" else "failed"
                text = (child.get("message") or "") + (child.text or "")
                why = "offline" if any(m in text for m in NETWORK) else (child.get("message") or "")[:100]
        out[name] = (kind, why)
    shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", default="1.6.0")
    ap.add_argument("-k", default=None, help="pytest -k expression")
    args = ap.parse_args(argv)
    import pylate
    if pylate.__version__ != args.version:
        print(f"installed PyLate is {pylate.__version__}, tests are {args.version}'s")
    tests = fetch_tests(args.version)
    extra = ["-k", args.k] if args.k else []
    off, on = run(tests, "off", extra), run(tests, "on", extra)
    for label, res in (("off", off), ("on", on)):
        vals = list(res.values())
        print(f"{label:>4}: {sum(k == 'passed' for k, _ in vals)} passed, "
              f"{sum(k == 'failed' and w == 'offline' for k, w in vals)} failed offline (network), "
              f"{sum(k == 'failed' and w != 'offline' for k, w in vals)} failed otherwise, "
              f"{sum(k == 'skipped' for k, _ in vals)} skipped")
    names = sorted(set(off) | set(on))
    diff = [n for n in names if off.get(n, ("absent",))[0] != on.get(n, ("absent",))[0]]
    for n in names:
        if n not in diff and off[n][0] == "failed" and off[n][1] != on[n][1]:
            print(f"failed both times, other reason: {n}: off {off[n][1]!r}, on {on[n][1]!r}")
    for n in diff:
        print(f"DIFFERENT: {n}: off {off.get(n)}, on {on.get(n)}")
    print(f"{len(diff)} tests changed outcome with the switch on")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
