"""Flip test-time augmentation: every checkpoint of ``--runs`` predicted on a labelled
test tree with ``imgrec predict --tta none`` and ``--tta flip`` (the CLI, as a user
runs it), accuracies side by side.

    .venv/bin/python benchmarks/tta.py --runs '/tmp/imgrec-bench-train/runs/*'
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TEST = os.path.join(HERE, "..", "..", "shared", "data", "cifar10-dev", "test")


def accuracy(run: str, test: str, tta: str, out: str) -> float:
    imgrec = os.path.join(os.path.dirname(sys.executable), "imgrec")
    subprocess.run([imgrec, "predict", "--model", run, "--input", test, "--output", out, "--tta", tta,
                    "--no-resume"], check=True, capture_output=True)
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)["metrics"]["accuracy"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True, help="glob of run (or checkpoint) folders")
    p.add_argument("--test", default=TEST, help="labelled test tree (class folders)")
    args = p.parse_args()
    runs = sorted(glob.glob(args.runs))
    if not runs:
        sys.exit(f"no run matches {args.runs}")
    gains = []
    print("| run | tta none | tta flip | gain |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for i, run in enumerate(runs):
            none, flip = (accuracy(run, args.test, t, os.path.join(tmp, f"{i}-{t}")) for t in ("none", "flip"))
            gains.append(flip - none)
            print(f"| {os.path.basename(run)} | {none:.3f} | {flip:.3f} | {flip - none:+.3f} |", flush=True)
    print(f"\nmean gain {sum(gains) / len(gains):+.4f} (min {min(gains):+.3f}, max {max(gains):+.3f}, "
          f"{sum(g > 0 for g in gains)} of {len(gains)} higher)")


if __name__ == "__main__":
    main()
