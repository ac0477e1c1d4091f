"""Training end to end: ``imgrec train`` (the CLI, as a user runs it) against plain
Keras 3 ``image_dataset_from_directory`` + ``fit`` on the same photos, rows
interleaved in one run, each row a process of its own.

    .venv/bin/python benchmarks/train_throughput.py                       # both suites
    .venv/bin/python benchmarks/train_throughput.py --suite s3 --models small_cnn --rows plain,auto
    .venv/bin/python benchmarks/train_throughput.py --table-from out.json

Suites:

* ``s3``: ``--n`` (2,000) generated JPEGs of varied sizes (59-1023 px a side,
  2 classes, ``imgrec.synth`` shapes re-encoded at a random size each), imgrec
  reading them from a local S3 endpoint (moto's server on loopback, started here)
  with its run and checkpoints there too; plain Keras reads the same files from
  local disk. Models: ``seed_catsdogs`` (the course's 29M-parameter CNN, 128²)
  and ``small_cnn`` (128²).
* ``cifar10-dev``: ``../shared/data/cifar10-dev`` (real CIFAR-10 JPEGs, read in
  place, local disk for both) with ``seed_cifar`` and ``resnet_tiny`` at 32², both sides in float32.

Rows: ``plain`` (Keras ``fit``, one process), ``auto`` (imgrec's default worker
plan), ``w1`` (``--workers 1``), ``w2`` (``--workers 2``), ``auto-disk`` (``auto``
with the run and its checkpoints on local disk, data still from S3: the s3 suite
only, to show what the S3 server's own CPU costs). Same global batch (32),
same 30 % validation split (validated every epoch), no augmentation on either side,
``--epochs`` (5) epochs; imgrec with ``--no-evaluate --no-report`` (plain Keras
does neither). Columns:

* start-up s: process start to the first epoch's start (plain: TensorFlow import,
  listing, model build; imgrec: Ray, listing, decode, Train, workers);
* steady img/s: training images x (epochs - 1) / wall clock between the ends of
  epoch 1 and of the last epoch (validation and checkpoints included on both sides);
* spread: slowest / fastest epoch over epochs >= 2, from the same epoch ends;
* end to end s: the whole process, exit included;
* CPU s/img: user + system CPU of the whole process tree (Ray's processes included)
  per training image seen;
* peak RSS: summed resident memory of the tree (shared pages count in every process
  mapping them, so Ray's sums overstate), sampled every 0.5 s;
* load: the 1-minute load average when the row started;
* S3 server CPU s: what the loopback S3 server (moto, one process) spent during
  the row. On a real cluster object storage runs elsewhere; here it shares the
  2 cores with training (moto spends ~9 CPU-s storing a 338 MiB checkpoint, the
  uploading client ~0.5);
* breakdown (imgrec): mean seconds per epoch >= 2 of each phase in ``history.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CIFAR_DEV = os.path.join(ROOT, "..", "shared", "data", "cifar10-dev")
SUITES = {"s3": {"models": ("seed_catsdogs", "small_cnn"), "size": 128},
          "cifar10-dev": {"models": ("seed_cifar", "resnet_tiny"), "size": 32}}
ROWS = ("plain", "auto", "w1", "w2", "auto-disk")
BATCH, VALIDATION = 32, 0.3

try:
    import psutil
except ImportError:  # Ray ships its own copy
    import ray  # noqa: F401, I001
    import psutil


# --------------------------------------------------------------------------- measuring a process tree


class TreeSampler(threading.Thread):
    """Peak summed RSS and total CPU of a process and its descendants; a process
    that exits keeps the CPU last seen for it (sampled every ``interval`` s)."""

    def __init__(self, pid: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.root, self.interval = psutil.Process(pid), interval
        self.cpu: dict[int, float] = {}
        self.peak_rss = 0
        self._halt = threading.Event()

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        rss = 0
        for p in procs:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    self.cpu[p.pid] = t.user + t.system + t.children_user + t.children_system
                    rss += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        self.peak_rss = max(self.peak_rss, rss)

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample()

    def stop(self) -> float:
        self._halt.set()
        self.join()
        return sum(self.cpu.values())


# --------------------------------------------------------------------------- data


def varied_jpegs(root: str, n: int) -> str:
    """``n`` JPEGs, 2 classes, each side 59-1023 px, under ``root/data`` (cached)."""
    import numpy as np
    from PIL import Image

    from imgrec import synth

    out = os.path.join(root, f"varied-{n}")
    if os.path.exists(os.path.join(out, ".done")):
        return out
    base = os.path.join(root, f"base-{n}")
    synth.make_dataset(base, task="shapes", classes=2, per_class=n // 2, image_size=(256, 256), seed=7,
                       test_per_class=1, overwrite=True)
    rng = np.random.default_rng(7)
    for dirpath, _, files in os.walk(os.path.join(base, "train")):
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(dirpath, name), base)
            dest = os.path.join(out, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            w, h = (int(v) for v in rng.integers(59, 1024, 2))
            Image.open(os.path.join(dirpath, name)).convert("RGB").resize((w, h)).save(dest, quality=90)
    shutil.rmtree(base)
    open(os.path.join(out, ".done"), "w").close()
    return out


def s3_env(endpoint: str) -> dict[str, str]:
    # Dummy credentials for the loopback moto server only.
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


# --------------------------------------------------------------------------- one row


def run_row(row: str, model: str, size: int, args, data_local: str, data_uri: str, storage_uri: str,
            env: dict, log, server: psutil.Process | None = None) -> dict:
    """Run one row as a child process; its figures (``server``: the S3 server, whose CPU is counted apart)."""
    run_name = f"{model}-{row}-{os.urandom(3).hex()}"
    events = os.path.join(args.workdir, f"{run_name}.epochs.json")
    if row == "plain":
        cmd = [sys.executable, os.path.abspath(__file__), "--plain-child", data_local, "--model", model,
               "--size", str(size), "--epochs", str(args.epochs), "--events", events]
    else:
        workers = {"auto": "auto", "w1": "1", "w2": "2", "auto-disk": "auto"}[row]
        if row == "auto-disk":
            storage_uri = os.path.join(args.workdir, "runs")
        cmd = [os.path.join(os.path.dirname(sys.executable), "imgrec"), "train", "--data", data_uri,
               "--storage", storage_uri, "--run-name", run_name, "--model", model, "--image-size", str(size),
               "--epochs", str(args.epochs), "--batch-size", str(BATCH), "--validation-split", str(VALIDATION),
               "--augment", "none", "--workers", workers, "--no-evaluate", "--no-report",
               "--precision", "float32"]  # plain Keras' precision (train's default, auto, is bfloat16 here)
    load = os.getloadavg()[0]
    print(f"# {model} {row}: {' '.join(cmd[1:3])} ... (load {load:.1f})", flush=True)
    log.write(f"\n===== {model} {row} {dt.datetime.now():%H:%M:%S}: {' '.join(cmd)}\n")
    log.flush()
    server_cpu = _cpu(server)
    started = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    code = proc.wait()
    ended = time.time()
    cpu = sampler.stop()
    server_cpu = _cpu(server) - server_cpu if server else None
    if code != 0:
        return {"model": model, "row": row, "error": f"exit {code}, see {log.name}", "load": load}
    if row == "plain":
        with open(events) as f:
            epochs = json.load(f)
        breakdown: dict[str, float] = {}
    else:
        epochs, breakdown = imgrec_epochs(storage_uri, run_name)
    return {"model": model, "row": row, "load": load, **rates(epochs, started, ended), "breakdown": breakdown,
            "cpu_s_per_img": cpu / max(1, sum(e["images"] for e in epochs)), "peak_rss_mb": sampler.peak_rss / 2**20,
            "server_cpu_s": server_cpu}


def _cpu(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    t = proc.cpu_times()
    return t.user + t.system


def imgrec_epochs(storage_uri: str, run_name: str) -> tuple[list[dict], dict[str, float]]:
    """Epoch records (start, end, images) and the mean breakdown of epochs >= 2 from the run's history."""
    from imgrec import storage, timing
    from imgrec.layout import RunLayout

    history = json.loads(storage.read_bytes(RunLayout.of(storage_uri, run_name).history))
    records = history["epochs"]
    epochs = [{"start": r["ended_at"] - r["epoch_time_s"], "end": r["ended_at"], "images": r["images"]}
              for r in records]
    steady = records[1:] or records
    phases: dict[str, float] = {}
    for r in steady:
        for k, v in timing.epoch_breakdown(r).items():
            phases[k] = phases.get(k, 0.0) + v / len(steady)
    phases["epoch_time_s"] = sum(r["epoch_time_s"] for r in steady) / len(steady)
    phases["allreduce_MiB_per_step"] = records[-1].get("allreduce_bytes_per_step", 0) / 2**20
    phases["allreduce_s_per_step"] = sum(r.get("allreduce_s_per_step", 0.0) for r in steady) / len(steady)
    phases.update({f"startup:{k}": v for k, v in history.get("startup", {}).items()})
    return epochs, phases


def rates(epochs: list[dict], started: float, ended: float) -> dict:
    ends = [e["end"] for e in epochs]
    intervals = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    steady_images = sum(e["images"] for e in epochs[1:])
    return {
        "startup_s": epochs[0]["start"] - started,
        "steady_ips": steady_images / (ends[-1] - ends[0]) if len(ends) > 1 else None,
        "spread": max(intervals) / min(intervals) if intervals else None,
        "e2e_s": ended - started,
        "epoch_s": [round(epochs[0]["end"] - epochs[0]["start"], 1)] + [round(v, 1) for v in intervals],
    }


# --------------------------------------------------------------------------- the plain Keras child


def plain_child(args) -> None:
    """What a user writes without imgrec: image_dataset_from_directory + fit."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from imgrec import models
    from imgrec.config import ModelConfig

    train, val = keras.utils.image_dataset_from_directory(
        os.path.join(args.plain_child, "train"), validation_split=VALIDATION, subset="both", seed=0,
        image_size=(args.size, args.size), batch_size=BATCH)
    classes, files = len(train.class_names), train.file_paths
    # imgrec's models take uint8 pixels (scaling is inside the model).
    train, val = (d.map(lambda x, y: (tf.cast(x, tf.uint8), y)) for d in (train, val))
    model = models.build_model(ModelConfig(name=args.model), classes, (args.size, args.size))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=models.loss_name(classes), metrics=["accuracy"])
    epochs: list[dict] = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.time()

        def on_epoch_end(self, epoch, logs=None):
            epochs.append({"start": self.t0, "end": time.time(), "images": n_train})

    n_train = len(files)
    model.fit(train, validation_data=val, epochs=args.epochs, verbose=2, callbacks=[Clock()])
    with open(args.events, "w") as f:
        json.dump(epochs, f)


# --------------------------------------------------------------------------- table


def table(rows: list[dict]) -> str:
    head = ("model", "row", "start-up s", "steady img/s", "vs plain", "spread", "end to end s",
            "e2e vs plain", "CPU s/img", "peak RSS MB", "load", "S3 server CPU s", "epoch s (1st, then between ends)")
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    plain = {r["model"]: r for r in rows if r["row"] == "plain" and "error" not in r}

    def f(v, p=1):
        return "-" if v is None else f"{v:.{p}f}"

    for r in rows:
        if "error" in r:
            out.append(f"| {r['model']} | {r['row']} | - | {r['error']} |")
            continue
        p = plain.get(r["model"])
        vs = f"{r['steady_ips'] / p['steady_ips']:.2f}x" if p and r.get("steady_ips") and p.get("steady_ips") else "-"
        e2e = f"{r['e2e_s'] / p['e2e_s']:.2f}x" if p else "-"
        out.append("| " + " | ".join([
            r["model"], r["row"], f(r["startup_s"]), f(r["steady_ips"]), vs,
            f(r["spread"], 2), f(r["e2e_s"]), e2e, f(r["cpu_s_per_img"], 4), f(r["peak_rss_mb"], 0),
            f(r["load"]), f(r.get("server_cpu_s"), 0), ", ".join(str(v) for v in r["epoch_s"])]) + " |")
    return "\n".join(out)


def breakdowns(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        b = r.get("breakdown")
        if not b:
            continue
        phases = ", ".join(f"{k.removesuffix('_s')} {v:.2f}" for k, v in b.items()
                           if not k.startswith("startup:") and k != "epoch_time_s" and v >= 0.005)
        start = ", ".join(f"{k.removeprefix('startup:').removesuffix('_s')} {v:.1f}" for k, v in b.items()
                          if k.startswith("startup:"))
        lines.append(f"* {r['model']} {r['row']}: epoch {b['epoch_time_s']:.2f} s = {phases}; start-up: {start}")
    return "\n".join(lines)


def report(rows: list[dict]) -> None:
    print("\n" + table(rows) + "\n\nimgrec breakdown, mean s per epoch >= 2 (rank 0's wall clock):\n")
    print(breakdowns(rows), flush=True)


# --------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", action="append", choices=sorted(SUITES), help="default: every suite")
    p.add_argument("--models", help="comma-separated subset of the suites' models")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    p.add_argument("--n", type=int, default=2000, help="generated JPEGs in the s3 suite")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--cifar10-dev", default=CIFAR_DEV, help="the cifar10-dev suite's photos (read in place)")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "imgrec-bench-train"))
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--table-from", nargs="+", metavar="JSON", help="only print the tables of earlier --json files")
    p.add_argument("--plain-child", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--events", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain_child:
        return plain_child(args)
    if args.table_from:
        return report([r for path in args.table_from for r in json.load(open(path))])
    suites = args.suite or list(SUITES)
    rows_wanted = args.rows.split(",")
    if unknown := set(rows_wanted) - set(ROWS):
        p.error(f"--rows: unknown {', '.join(sorted(unknown))}; choose from {','.join(ROWS)}")
    known_models = {m for suite in suites for m in SUITES[suite]["models"]}
    if args.models and (unknown := set(args.models.split(",")) - known_models):
        p.error(f"--models: {', '.join(sorted(unknown))} not in the suites run ({', '.join(sorted(known_models))})")
    if "cifar10-dev" in suites and not os.path.isdir(os.path.join(args.cifar10_dev, "train")):
        p.error(f"--cifar10-dev: no train/ folder under {os.path.abspath(args.cifar10_dev)}; pass the photos' "
                "path, or --suite s3")
    os.makedirs(args.workdir, exist_ok=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "RAY_USAGE_STATS_ENABLED": "0"}
    print(f"# train_throughput {dt.datetime.now():%Y-%m-%d %H:%M} on {platform.node()}: {os.cpu_count()} logical "
          f"CPUs, {psutil.cpu_count(logical=False)} cores, load {os.getloadavg()[0]:.1f}; {args.epochs} epochs, "
          f"batch {BATCH}, validation {VALIDATION}; child logs in {args.workdir}/children.log", flush=True)
    rows: list[dict] = []
    moto = None
    try:
        with open(os.path.join(args.workdir, "children.log"), "a") as log:
            for suite in suites:
                if suite == "s3":
                    from ingest import start_moto

                    local = varied_jpegs(args.workdir, args.n)
                    moto, endpoint = start_moto()
                    env.update(s3_env(endpoint))
                    os.environ.update(s3_env(endpoint))
                    from imgrec import storage

                    storage.ensure_bucket("s3://bench")
                    storage.upload_dir(local, "s3://bench/photos", progress=False)
                    data_uri, storage_uri = "s3://bench/photos", "s3://bench/runs"
                else:
                    local = data_uri = os.path.abspath(args.cifar10_dev)
                    storage_uri = os.path.join(args.workdir, "runs")
                models_wanted = args.models.split(",") if args.models else SUITES[suite]["models"]
                for model in [m for m in SUITES[suite]["models"] if m in models_wanted]:
                    for row in [r for r in ROWS if r in rows_wanted and (suite == "s3" or r != "auto-disk")]:
                        rows.append(run_row(row, model, SUITES[suite]["size"], args, local, data_uri, storage_uri,
                                            env, log, psutil.Process(moto.pid) if moto else None))
                        print("#   " + json.dumps({k: v for k, v in rows[-1].items() if k != "breakdown"}),
                              flush=True)
                if moto is not None:
                    moto.terminate()
                    moto.wait(10)
                    moto = None
    finally:
        if moto is not None:
            moto.terminate()
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    report(rows)


if __name__ == "__main__":
    main()
