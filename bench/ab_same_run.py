"""Runs a benchmark against two checkouts of the library in one session, alternating, so
both see the same machine state: the "before" tree (another worktree, e.g.
`git worktree add /tmp/base <commit>` built with `python setup.py build_ext --inplace`)
and this one. Each run is a fresh process with the tree first on PYTHONPATH.

    python bench/ab_same_run.py --before /tmp/base --rounds 2 \\
        --cmd "python bench/bench_kmeans.py" [--before-cmd "python bench/bench_kmeans.py"]

Prints each run's output under a header; the lines to compare are the benchmark's own.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(tree: str, cmd: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tree, os.path.join(tree, "python")]))
    argv = [sys.executable if a == "python" else a for a in shlex.split(cmd)]
    r = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True)
    return r.stdout + (f"\n[exit {r.returncode}]\n{r.stderr[-2000:]}" if r.returncode else "")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="root of the other checkout (built in place)")
    ap.add_argument("--cmd", required=True, help="command, run from each tree's root")
    ap.add_argument("--before-cmd", help="the command in the before tree, when it differs")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    for i in range(args.rounds):
        for label, tree, cmd in (("before", os.path.abspath(args.before), args.before_cmd or args.cmd),
                                 ("after", ROOT, args.cmd)):
            print(f"===== round {i + 1} {label}: {tree}: {cmd}", flush=True)
            print(run(tree, cmd), flush=True)


if __name__ == "__main__":
    main()
