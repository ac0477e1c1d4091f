"""Accuracy per CPU budget on real photos: the course CNN, the old default and the new
from-scratch default, each with augmentation none / light / course / randaugment (and mixup, CutMix), on cifar10-dev.

    .venv/bin/python benchmarks/quality.py                    # every row, 1 seed (~1.5 h on 2 idle cores)
    .venv/bin/python benchmarks/quality.py --quick            # the three models, light augmentation only
    .venv/bin/python benchmarks/quality.py --rows resnet_small:light --seeds 0,1,2
    .venv/bin/python benchmarks/quality.py --rows small_cnn@64:light         # model@size: --image-size
    .venv/bin/python benchmarks/quality.py --rows resnet_small:none+mixup0.2  # +mixupA / +cutmixA: Beta alphas
    .venv/bin/python benchmarks/quality.py --table-from a.json b.json   # re-print earlier --json files

Each row is one ``imgrec train`` process (the real CLI: Ray Train on 1 worker,
10 epochs), on ``../shared/data/cifar10-dev`` (4,000 train / 1,000 test JPEGs, 32x32).
Decisions use validation only: ``train/`` is split 70/30 (the default
``--validation-split``); checkpoints and recipe choices go by val accuracy, and the
``test/`` photos are read once per row, by the run's own final evaluation of its best
checkpoint. Columns: test accuracy (mean ± half the range over seeds), best val
accuracy, epochs, CPU-minutes of the whole process tree (the CLI, the Ray cluster it
starts and every worker, sampled every 0.5 s), wall seconds, and the load average
when the row started (other work on the machine slows every figure).

Each model trains with its own recipe:

* ``seed_cifar`` (the course CNN) and ``small_cnn`` (the old default): Adam 1e-3,
  constant, batch 32, no weight decay or label smoothing, as the course and
  imgrec before issue #19 trained them;
* ``resnet_tiny``: the ``train`` command's defaults (``config.SCRATCH_RECIPE``, bfloat16 where
  the CPU has it); ``resnet_small``: the same recipe in float32, as it was measured as the default.

Every model decodes at the photos' own 32x32 (the size default since issue #19), except a
``model@size`` row: ``small_cnn@64`` is the old default as it ran before, upsampled to 64x64.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time

from train_throughput import TreeSampler  # the process-tree CPU sampler (this folder)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CIFAR_DEV = next((p for p in (os.environ.get("IMGREC_CIFAR10_DEV", ""), os.path.join(ROOT, "..", "shared", "data",
                  "cifar10-dev"), "/work/shared/data/cifar10-dev") if p and os.path.isdir(os.path.join(p, "test"))),
                 None)
# The recipe imgrec trained the course models and small_cnn with before issue #19.
OLD_RECIPE = ["--optimizer", "adam", "--lr", "1e-3", "--lr-schedule", "constant", "--warmup-epochs", "0",
              "--weight-decay", "0", "--label-smoothing", "0", "--batch-size", "32"]
# resnet_small: the train recipe as it was measured when it was the default (float32)
RECIPES = {"seed_cifar": OLD_RECIPE, "small_cnn": OLD_RECIPE, "resnet_small": ["--precision", "float32"],
           "resnet_tiny": []}  # []: the train defaults
AUGMENTS = ("none", "flip", "light", "course", "randaugment")
MIXES = ("mixup", "cutmix")  # a row's "+mixup0.2" / "+cutmix1.0": --mixup / --cutmix with that Beta alpha
# small_cnn@64: the old default as `imgrec train` ran it before issue #19, upsampling the 32x32 photos
# to its 64x64 input size (the baseline: 0.485 test accuracy in 386 s).
ALL_ROWS = ["small_cnn@64:light", *(f"{m}:{a}" for m in RECIPES for a in AUGMENTS),
            "resnet_small:none+mixup0.2", "resnet_small:none+cutmix1.0"]
QUICK_ROWS = [f"{m}:light" for m in RECIPES]


def run_row(row: str, seed: int, args, log) -> dict:
    """One ``imgrec train`` process; its figures from the run's files and the sampler."""
    from imgrec import storage
    from imgrec.layout import RunLayout

    model, augment = row.split(":")
    model, _, size = model.partition("@")
    augment, *mixes = augment.split("+")
    mix_args = [a for m in mixes for a in (f"--{m.rstrip('0123456789.')}", m.lstrip("abcdefghijklmnopqrstuvwxyz"))]
    run_name = f"{model}{size}-{augment}{''.join(mixes)}-s{seed}-{os.urandom(2).hex()}"
    cmd = [sys.executable, "-m", "imgrec.cli", "train", "--data", args.data, "--storage", args.storage,
           "--run-name", run_name, "--model", model, "--augment", augment, "--epochs", str(args.epochs),
           "--workers", "1", "--seed", str(seed), "--no-report", *RECIPES[model], *(["--image-size", size] if size else []), *mix_args,
           *args.train_args.split()]
    load = os.getloadavg()[0]
    print(f"# {row} seed {seed} (load {load:.1f}) ...", flush=True)
    log.write(f"\n===== {row} seed {seed} {dt.datetime.now():%H:%M:%S}: {' '.join(cmd)}\n")
    log.flush()
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": ROOT})
    sampler = TreeSampler(proc.pid)
    sampler.start()
    code = proc.wait()
    wall, cpu = time.time() - started, sampler.stop()
    label = f"{row} {args.train_args}".strip()  # a row with --train-args is a row of its own
    base = {"row": label, "model": model, "size": size or "data", "augment": augment, "seed": seed, "load": load,
            "load_end": os.getloadavg()[0], "wall_s": wall, "cpu_min": cpu / 60}
    if code != 0:
        return {**base, "error": f"exit {code}, see {log.name}"}
    run = RunLayout.of(args.storage, run_name)
    history = json.loads(storage.read_bytes(run.history))
    evaluation = json.loads(storage.read_bytes(run.evaluation))
    return {**base, "test_accuracy": evaluation["accuracy"], "test_images": evaluation["count"],
            "epochs": len(history["epochs"]), "val_accuracy": max(e["val_accuracy"] for e in history["epochs"])}


def summarise(results: list[dict]) -> list[dict]:
    """One line per row: the mean and half the range over its seeds."""
    lines = []
    for row in dict.fromkeys(r["row"] for r in results):
        done = [r for r in results if r["row"] == row and "error" not in r]
        if not done:
            lines.append({"row": row, "error": next(r["error"] for r in results if r["row"] == row)})
            continue

        def stat(key: str, runs=done) -> tuple[float, float]:
            values = [r[key] for r in runs]
            return sum(values) / len(values), (max(values) - min(values)) / 2

        ends = [r["load_end"] for r in done if "load_end" in r]  # not recorded by the first runs
        lines.append({"row": row, "seeds": len(done), **{k: stat(k) for k in
                      ("test_accuracy", "val_accuracy", "cpu_min", "wall_s", "load")}, "epochs": done[0]["epochs"],
                      "load_end": sum(ends) / len(ends) if len(ends) == len(done) else None})
    return lines


def table(results: list[dict]) -> str:
    out = ["| model : augment | test accuracy | val accuracy | epochs | CPU-min | wall s | seeds | load start-end |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for line in summarise(results):
        if "error" in line:
            out.append(f"| {line['row']} | {line['error']} | | | | | | |")
            continue
        end = "?" if line["load_end"] is None else f"{line['load_end']:.0f}"
        out.append(f"| {line['row']} | {_pm(line, 'test_accuracy', 3)} | {_pm(line, 'val_accuracy', 3)} | "
                   f"{line['epochs']} | {_pm(line, 'cpu_min', 1)} | {_pm(line, 'wall_s', 0)} | {line['seeds']} | "
                   f"{line['load'][0]:.0f}-{end} |")
    return "\n".join(out)


def _valid_row(row: str) -> bool:
    """``model[@size]:augment[+mixupA][+cutmixA]`` with a known model and augmentation, a size of 16..512."""
    model, _, augment = row.partition(":")
    model, _, size = model.partition("@")
    augment, *mixes = augment.split("+")

    def mix_ok(mix: str) -> bool:
        name, alpha = mix.rstrip("0123456789."), mix.lstrip("abcdefghijklmnopqrstuvwxyz")
        return name in MIXES and alpha.replace(".", "", 1).isdigit() and float(alpha) > 0

    return (model in RECIPES and augment in AUGMENTS and all(map(mix_ok, mixes))
            and (not size or (size.isdigit() and 16 <= int(size) <= 512)))


def _pm(line: dict, key: str, digits: int) -> str:
    """mean, or mean ± half the range over seeds"""
    mean, half = line[key]
    return f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if line["seeds"] > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", help=f"comma-separated model[@size]:augment[+mixupA][+cutmixA] (default: all of {', '.join(ALL_ROWS)})")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_ROWS)}")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds per row (e.g. 0,1,2)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--data", default=CIFAR_DEV, help="an image tree with train/ and test/ (cifar10-dev)")
    parser.add_argument("--storage", help="run folders (default: a new temporary folder)")
    parser.add_argument("--json", help="write every run's figures here")
    parser.add_argument("--train-args", default="", help="more `imgrec train` options for every row, e.g. '--tta flip'")
    parser.add_argument("--table-from", nargs="+", help="print the table of earlier --json files and stop")
    args = parser.parse_args()
    if args.table_from:
        results = [r for path in args.table_from for r in json.load(open(path))]
        print(table(results))
        return
    if not args.data:
        parser.error("no cifar10-dev here: pass --data (a tree with train/ and test/) or set IMGREC_CIFAR10_DEV")
    rows = args.rows.split(",") if args.rows else QUICK_ROWS if args.quick else ALL_ROWS
    unknown = [r for r in rows if not _valid_row(r)]
    if unknown:
        parser.error(f"--rows {unknown}: give model[@size]:augment[+mixupA][+cutmixA] with model in {sorted(RECIPES)}, augment in "
                     f"{AUGMENTS}, size a side in pixels (default: the photos' own)")
    seeds = [int(s) for s in args.seeds.split(",")]
    workdir = tempfile.mkdtemp(prefix="imgrec-quality-")
    args.storage = args.storage or os.path.join(workdir, "runs")
    print(f"# quality {dt.datetime.now():%Y-%m-%d %H:%M}: {args.data}, {args.epochs} epochs, 1 worker, "
          f"seeds {seeds}; log {workdir}/runs.log", flush=True)
    results = []
    with open(os.path.join(workdir, "runs.log"), "w") as log:
        for seed in seeds:
            for row in rows:
                results.append(run_row(row, seed, args, log))
                print(json.dumps(results[-1]), flush=True)
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump(results, f, indent=1)
    print(table(results))


if __name__ == "__main__":
    main()
