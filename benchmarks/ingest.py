"""Ingest throughput: read -> decode -> resize -> augment -> batches of 32, two epochs.

    .venv/bin/python benchmarks/ingest.py            # 5000 images, every path
    .venv/bin/python benchmarks/ingest.py --n 2000   # a quicker run
    .venv/bin/python benchmarks/ingest.py --paths imgrec-local,tfdata-local

Photo-sized synthetic JPEGs (500x375, ``synth.make_dataset``, cached under
``--workdir``) decoded to 128x128 and augmented the same way on every path
(flip, rotation +-36 deg, zoom 0.1, translation 0.1, brightness 0.2):

* ``imgrec-local`` / ``imgrec-s3``: ``load_dataset`` (list, read, decode once,
  materialize) + ``augmented()`` + ``shard_batches(ds, 32)``, as a training
  worker iterates. Epoch 1 includes listing and decoding, and writing the decoded
  cache (its storage's ``.cache/``, emptied first: a cold start); epoch 2 only augments.
* ``imgrec-local-warm`` / ``imgrec-s3-warm``: the same in a fresh process and a fresh
  Ray cluster after the cold path: epoch 1 lists the files and reads the decoded
  cache's shards instead of decoding (the target: >= 0.9x epoch 2).
* ``tfdata-local``: ``keras.utils.image_dataset_from_directory`` (128x128, batch
  32) + Keras augmentation layers in a ``tf.data`` map with AUTOTUNE, prefetched:
  the course's pipeline. It decodes every epoch (no cache).
* ``plain-s3``: a thread pool of boto3 ``get_object`` + PIL decode + resize and
  the same ``augment.augment_batch``, every epoch (a straightforward reader).

S3 is moto's server, started here on a free loopback port (output discarded):
slow (~170 small GETs/s), so it bounds both S3 paths' first epoch.

Ray starts its workers at nice 15; on a machine shared with other work that
starves them against the baselines (default priority), so the imgrec paths run
with ``RAY_worker_niceness=0`` (``--ray-niceness 15`` for Ray's default).

Every path runs in its own child process, so its figures cover exactly its own
process tree: peak RSS is the sum over the child and every process it started
(the Ray cluster included; shared object-store pages count once per process
that maps them, so the sum overstates), sampled every 0.2 s. CPU ms per image
(the tree's user+system time) moves less than wall time on a shared machine.
Ray start-up and the TensorFlow import are outside the timings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

try:
    import psutil
except ImportError:  # Ray ships its own copy (on the path after `import ray`)
    import ray  # noqa: F401, I001
    import psutil

PATHS = ("imgrec-local", "imgrec-local-warm", "tfdata-local", "imgrec-s3", "imgrec-s3-warm", "plain-s3")
SIZE = 128
BATCH = 32
EPOCHS = 2
PHOTO = (375, 500)  # (height, width)
CLASSES = 5
BUCKET = "ingest-bench"
# The same augmentation on every path. Keras: RandomRotation(0.1) is +-0.1 of a
# turn (36 deg); RandomBrightness(0.2) adds U(-0.2, 0.2)*255 where imgrec multiplies.
AUGMENT = dict(rotation_range=36.0, width_shift_range=0.1, height_shift_range=0.1, zoom_range=0.1,
               brightness_range=(0.8, 1.2), horizontal_flip=True)


# --------------------------------------------------------------------------- measuring


class Sampler(threading.Thread):
    """Peak RSS and CPU time of this process and all its descendants."""

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak_rss = 0
        self._me = psutil.Process()
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def sample(self, per_kind: dict[str, float] | None = None) -> tuple[int, float]:
        """(RSS bytes, CPU seconds) summed over the tree; ``per_kind`` gets CPU by process kind."""
        rss, cpu = 0, 0.0
        for p in [self._me, *self._me.children(recursive=True)]:
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                    used = t.user + t.system + t.children_user + t.children_system
                    cpu += used
                    if per_kind is not None:
                        kind = _kind(p, self._me)
                        per_kind[kind] = per_kind.get(kind, 0.0) + used
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return rss, cpu

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            rss, _ = self.sample()
            with self._lock:
                self.peak_rss = max(self.peak_rss, rss)

    def phase(self) -> _Phase:
        return _Phase(self)

    def stop(self) -> None:
        self._halt.set()
        self.join()


class _Phase:
    """``with sampler.phase() as ph: ...`` -> ph.seconds, ph.cpu_s, ph.peak_rss."""

    def __init__(self, sampler: Sampler):
        self.s = sampler

    def __enter__(self):
        self.kinds0: dict[str, float] = {}
        rss, self.cpu0 = self.s.sample(self.kinds0)
        with self.s._lock:
            self.s.peak_rss = rss
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        kinds: dict[str, float] = {}
        rss, cpu = self.s.sample(kinds)
        self.cpu_s = cpu - self.cpu0
        # Processes that exited during the phase are missing here: a kind can come out slightly low.
        self.cpu_by_kind = {k: round(v - self.kinds0.get(k, 0.0), 1) for k, v in kinds.items()
                            if v - self.kinds0.get(k, 0.0) >= 0.05}
        with self.s._lock:
            self.peak_rss = max(self.s.peak_rss, rss)
        return False


def _kind(p: psutil.Process, me: psutil.Process) -> str:
    """driver, ray worker, raylet, gcs_server, ... (Ray workers title themselves ray::...)."""
    if p.pid == me.pid:
        return "driver"
    try:
        cmd = p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "?"
    first = cmd[0] if cmd else p.name()
    if first.startswith("ray::"):
        return "ray workers"
    if "python" in os.path.basename(first.split()[0]) and len(cmd) > 1:
        return os.path.basename(cmd[1]).removesuffix(".py")  # e.g. agent_manager, log_monitor
    return os.path.basename(first.split()[0])


def loadavg() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def record(path: str, epoch: int | str, images: int, ph: _Phase, **extra) -> dict:
    """One table row; a start-up row (images 0) keeps its CPU seconds instead."""
    return {"path": path, "epoch": epoch, "images": images, "seconds": round(ph.seconds, 2),
            "images_per_s": round(images / ph.seconds, 1), "peak_rss_mb": round(ph.peak_rss / 2**20),
            "cpu_ms_per_image": round(1000 * ph.cpu_s / images, 2) if images else None,
            "cpu_s": round(ph.cpu_s, 1), "cpu_by_kind": ph.cpu_by_kind, "load": loadavg(), **extra}


# --------------------------------------------------------------------------- the paths (child processes)


def run_imgrec(path: str, uri: str, sampler: Sampler, store: str) -> list[dict]:
    """``store``: the runs' storage whose ``.cache/`` holds the decoded cache; a cold path empties it."""
    import ray

    from imgrec import data, storage
    from imgrec.config import AugmentConfig, DataConfig, DecodeConfig
    from imgrec.layout import DecodedCacheLayout
    from imgrec.runtime import ensure_ray

    out = []
    with sampler.phase() as ph:
        ensure_ray()  # as train() does: a local cluster with 3 logical CPUs per core
        ray.data.DataContext.get_current().enable_progress_bars = False
        warm_up_ray_data(s3=uri.startswith("s3://"))
    out.append(record(path, "start-up", 0, ph, note="ray.init + a Ray Data worker per CPU, imgrec imported"
                      + (", S3 client made" if uri.startswith("s3://") else "")))
    cfg = DataConfig(uri=uri, validation_split=0.0, decode=DecodeConfig(image_size=(SIZE, SIZE)))
    if not path.endswith("-warm"):
        storage.delete_prefix(DecodedCacheLayout.default_root(store))
    with sampler.phase() as ph:
        t0 = time.perf_counter()
        ds = data.load_dataset(cfg, storage_uri=store)
        load_s = time.perf_counter() - t0
        train = data.augmented(ds.train, AugmentConfig(**AUGMENT))
        n = sum(len(x) for x, _ in data.shard_batches(train, BATCH))
    use = ds.cache_use
    note = (f"load_dataset {load_s:.1f} s + augmented epoch {ph.seconds - load_s:.1f} s; cache: "
            f"{use.shards_read} shards read, {use.shards_decoded} decoded ({use.rows_decoded} images)")
    out.append(record(path, 1, n, ph, note=note))
    for epoch in range(2, EPOCHS + 1):
        with sampler.phase() as ph:
            n = sum(len(x) for x, _ in data.shard_batches(train, BATCH))
        out.append(record(path, epoch, n, ph))
    return out


def warm_up_ray_data(s3: bool) -> None:
    """Start a Ray worker on every logical CPU and import there what imgrec's decode and
    cache tasks import (and make its S3 client): the equivalent of importing TensorFlow
    for tf.data, or boto3 for the plain reader. A worker's first Ray Data task imports
    ray.data, pyarrow, pandas and pyarrow.parquet, and its first GET imports boto3 and
    loads the S3 service model: ~1 CPU-second each, paid once per worker process.
    Plain tasks, all at once: Ray Data's own scheduling runs ~2 at a time here and
    would leave workers unstarted, which the measured load then started instead
    (3 of 6, 1-2.5 CPU-s each, probed 2026-12-07)."""
    import ray

    @ray.remote(num_cpus=1)
    def touch() -> int:
        import pyarrow.parquet  # noqa: F401
        import ray.data.extensions  # noqa: F401

        import imgrec.augment  # noqa: F401
        import imgrec.data.cache  # noqa: F401
        import imgrec.data.read

        if s3:
            imgrec.data.read._s3_client()
        time.sleep(1.0)  # hold the worker, so every task needs its own
        return os.getpid()

    cpus = int(ray.cluster_resources().get("CPU", 1))
    ray.get([touch.remote() for _ in range(cpus)])
    ray.data.range(cpus, override_num_blocks=cpus).materialize()  # Ray Data's own actors
    settle()


def settle(idle_percent: float = 15.0, timeout_s: float = 15.0) -> None:
    """Wait until the machine's CPU is idle: Ray Data's stats and autoscaling actors,
    started by a cluster's first dataset, spend ~1 CPU-second each importing after it
    returns (probed 2026-12-07), which would otherwise land in the first timed epoch."""
    deadline = time.time() + timeout_s
    while psutil.cpu_percent(interval=0.5) > idle_percent and time.time() < deadline:
        pass


def keras_augmentation(keras, layers):
    """The Keras layers that match ``AUGMENT`` (the tf.data baselines' augmentation)."""
    return keras.Sequential([
        layers.RandomFlip("horizontal"),
        layers.RandomRotation(0.1),
        layers.RandomZoom(0.1),
        layers.RandomTranslation(0.1, 0.1),
        layers.RandomBrightness(0.2, value_range=(0, 255)),
    ])


def run_tfdata(path: str, root: str, sampler: Sampler) -> list[dict]:
    with sampler.phase() as ph:
        import keras
        import tensorflow as tf
        from keras import layers
    out = [record(path, "start-up", 0, ph, note="import tensorflow + keras")]
    augment = keras_augmentation(keras, layers)
    ds = None
    for epoch in range(1, EPOCHS + 1):
        with sampler.phase() as ph:
            if ds is None:  # listing counts in epoch 1, as it does for imgrec
                ds = keras.utils.image_dataset_from_directory(
                    os.path.join(root, "train"), image_size=(SIZE, SIZE), batch_size=BATCH, seed=0,
                    verbose=False)
                ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
                ds = ds.prefetch(tf.data.AUTOTUNE)
            n = sum(int(x.shape[0]) for x, _ in ds)
        out.append(record(path, epoch, n, ph))
    return out


def run_plain_s3(path: str, uri: str, sampler: Sampler, threads: int = 16) -> list[dict]:
    import concurrent.futures as futures
    import io

    import numpy as np

    with sampler.phase() as ph:
        import boto3
        from botocore.config import Config
        from PIL import Image

        from imgrec.augment import augment_batch
        from imgrec.config import AugmentConfig
    out = [record(path, "start-up", 0, ph, note="import boto3, PIL, imgrec.augment")]

    bucket, _, prefix = uri[5:].partition("/")
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                          config=Config(max_pool_connections=threads))
    cfg = AugmentConfig(**AUGMENT)

    def listing() -> tuple[list[str], np.ndarray]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        names = sorted({k.split("/")[-2] for k in keys})
        return keys, np.array([names.index(k.split("/")[-2]) for k in keys])

    def load(key: str) -> np.ndarray:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        img = Image.open(io.BytesIO(body)).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
        return np.asarray(img)

    rng = np.random.default_rng(0)
    keys = None
    with futures.ThreadPoolExecutor(threads) as pool:
        for epoch in range(1, EPOCHS + 1):
            with sampler.phase() as ph:
                if keys is None:
                    keys, labels = listing()
                order = rng.permutation(len(keys))
                images = pool.map(load, [keys[i] for i in order])  # every GET in flight, results in order
                n = 0
                for start in range(0, len(order), BATCH):
                    idx = order[start:start + BATCH]
                    batch = np.stack([next(images) for _ in idx])
                    x, _y = augment_batch(batch, cfg), labels[idx]
                    n += len(x)
            out.append(record(path, epoch, n, ph))
    return out


def child(args) -> None:
    sampler = Sampler()
    sampler.start()
    rows = {
        "imgrec-local": lambda: run_imgrec(args.child, args.local, sampler, args.local_store),
        "imgrec-local-warm": lambda: run_imgrec(args.child, args.local, sampler, args.local_store),
        "imgrec-s3": lambda: run_imgrec(args.child, args.s3, sampler, args.s3_store),
        "imgrec-s3-warm": lambda: run_imgrec(args.child, args.s3, sampler, args.s3_store),
        "tfdata-local": lambda: run_tfdata(args.child, args.local, sampler),
        "plain-s3": lambda: run_plain_s3(args.child, args.s3, sampler),
    }[args.child]()
    sampler.stop()
    print("RESULT " + json.dumps(rows), flush=True)


# --------------------------------------------------------------------------- orchestration


def dataset(workdir: str, n: int) -> str:
    """The synthetic photo tree for n images: generated once, or hard-linked from a
    bigger cached one (the first files of each class, so the same images)."""
    from imgrec import synth

    root = os.path.join(workdir, f"photos-{n}")
    per_class = -(-n // CLASSES)
    if os.path.exists(root + ".complete"):
        return root
    done = [f for f in os.listdir(workdir) if f.startswith("photos-") and f.endswith(".complete")]
    bigger = sorted(int(f[len("photos-"):-len(".complete")]) for f in done)
    source = next((m for m in bigger if m >= n), None)
    if source is not None:
        src = os.path.join(workdir, f"photos-{source}", "train")
        for cls in sorted(os.listdir(src)):
            os.makedirs(os.path.join(root, "train", cls), exist_ok=True)
            for name in sorted(os.listdir(os.path.join(src, cls)))[:per_class]:
                dest = os.path.join(root, "train", cls, name)
                if not os.path.exists(dest):
                    os.link(os.path.join(src, cls, name), dest)
    else:
        print(f"generating {per_class * CLASSES} {PHOTO[1]}x{PHOTO[0]} JPEGs in {root} (once)", flush=True)
        synth.make_dataset(root, task="shapes", classes=CLASSES, per_class=per_class, test_per_class=0,
                           image_size=PHOTO, seed=0, overwrite=True)
    open(root + ".complete", "w").close()  # outside the tree: the listing must not see it
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto server did not start")


def run_child(path: str, args, env: dict, log) -> list[dict]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", path, "--local", args.local,
           "--s3", args.s3 or "", "--workdir", args.workdir]
    # Ray starts its workers at nice 15. On a machine busy with other work that
    # starves them against the baselines, which run at the default priority.
    env = {**env, "RAY_worker_niceness": str(args.ray_niceness)}
    print(f"  {path} ...", end="", flush=True)
    t0 = time.time()
    rows = child_rows(cmd, env, log)
    if rows:
        print(f" {time.time() - t0:.0f} s", flush=True)
    return rows


def child_rows(cmd: list[str], env: dict, log) -> list[dict]:
    """Run a child path and return the rows of its ``RESULT`` line ([] and a note if it failed)."""
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(f" failed (exit {proc.returncode}); see {log.name}", flush=True)
        return []
    return json.loads(lines[-1][7:])


def table(rows: list[dict]) -> str:
    header = ["path", "epoch", "images/s", "peak RSS MB", "CPU ms/img", "seconds", "load avg (1/5/15 min)"]
    cells = [header] + [[r["path"], str(r["epoch"]), f"{r['images_per_s']:.0f}" if r["images"] else "-",
                         str(r["peak_rss_mb"]),
                         f"{r['cpu_ms_per_image']:.1f}" if r["images"] else f"({r['cpu_s']:.0f} s)",
                         f"{r['seconds']:.1f}", r["load"]] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def verdict(rows: list[dict]) -> list[str]:
    rate = {(r["path"], r["epoch"]): r["images_per_s"] for r in rows}
    out = []
    if ("imgrec-local", 1) in rate and ("tfdata-local", 1) in rate:
        tf_epoch = min(rate[("tfdata-local", e)] for e in range(1, EPOCHS + 1) if ("tfdata-local", e) in rate)
        tf_best = max(rate[("tfdata-local", e)] for e in range(1, EPOCHS + 1) if ("tfdata-local", e) in rate)
        e1, e2 = rate[("imgrec-local", 1)], rate.get(("imgrec-local", 2), 0)
        out.append(f"local epoch 1: imgrec {e1:.0f} vs tf.data {tf_epoch:.0f}-{tf_best:.0f} img/s "
                   f"({'meets' if e1 >= tf_best else 'misses'} >= tf.data)")
        out.append(f"local epoch 2: imgrec {e2:.0f} = {e2 / tf_best:.1f}x tf.data's best epoch "
                   f"({'meets' if e2 >= 2 * tf_best else 'misses'} >= 2x; goal 3x)")
    if ("imgrec-s3", 1) in rate and ("plain-s3", 1) in rate:
        for e in range(1, EPOCHS + 1):
            a, b = rate.get(("imgrec-s3", e), 0), rate.get(("plain-s3", e), 0)
            out.append(f"S3 epoch {e}: imgrec {a:.0f} vs plain reader {b:.0f} img/s "
                       f"({'meets' if a >= b else 'misses'} >= plain)")
    for where in ("local", "s3"):
        warm = f"imgrec-{where}-warm"
        if (warm, 1) in rate and (warm, 2) in rate:
            e1, e2 = rate[(warm, 1)], rate[(warm, 2)]
            cold = rate.get((f"imgrec-{where}", 1))
            out.append(f"{where} warm-cache epoch 1 (fresh process and cluster): {e1:.0f} img/s = {e1 / e2:.2f}x "
                       f"its epoch 2 ({'meets' if e1 >= 0.9 * e2 else 'misses'} >= 0.9x)"
                       + (f", {e1 / cold:.1f}x the cold epoch 1" if cold else ""))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="images (photo-sized JPEGs)")
    parser.add_argument("--s3-n", type=int, default=None, help="images for the S3 paths (default: --n)")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {PATHS}")
    parser.add_argument("--workdir", default="/tmp/imgrec-bench-ingest", help="cached datasets and the log")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--ray-niceness", type=int, default=0,
                        help="RAY_worker_niceness for the imgrec paths (Ray's default: 15; "
                             "0: the baselines' priority)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--local", help=argparse.SUPPRESS)
    parser.add_argument("--s3", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # Where each imgrec path's runs (and so its decoded cache) live.
    args.local_store = os.path.join(args.workdir, "runs")
    args.s3_store = f"{args.s3.rsplit('/', 1)[0]}/runs" if args.s3 else None
    if args.child:
        child(args)
        return

    paths = [p for p in args.paths.split(",") if p]
    unknown = set(paths) - set(PATHS)
    if unknown:
        parser.error(f"unknown paths {sorted(unknown)}; choose from {PATHS}")
    os.makedirs(args.workdir, exist_ok=True)
    args.local = dataset(args.workdir, args.n)
    env = dict(os.environ)
    moto = None
    log_path = os.path.join(args.workdir, "ingest.log")
    print(f"ingest benchmark: {args.n} images {PHOTO[1]}x{PHOTO[0]} -> {SIZE}x{SIZE}, batch {BATCH}, "
          f"{EPOCHS} epochs, Ray workers at nice {args.ray_niceness}; {os.cpu_count()} cores, "
          f"load {loadavg()}; child logs in {log_path}", flush=True)
    rows: list[dict] = []
    try:
        if any(p.endswith("-s3") for p in paths):
            moto, endpoint = start_moto()
            # Dummy credentials for the loopback moto server only.
            env.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                       AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1",
                       AWS_EC2_METADATA_DISABLED="true")
            env.pop("AWS_PROFILE", None)
            env.pop("AWS_SESSION_TOKEN", None)
            os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
            args.s3 = upload(args.local, args.s3_n or args.n)
        with open(log_path, "w") as log:
            for path in paths:
                rows += run_child(path, args, env, log)
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(10)
    print()
    print(f"{dt.date.today()}, {platform.node()}: {os.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GB, load at the end {loadavg()}")
    print(table(rows))
    for line in verdict(rows):
        print(line)
    print("\nCPU seconds by process kind:")
    for r in rows:
        kinds = ", ".join(f"{k} {v:g}" for k, v in sorted(r["cpu_by_kind"].items(), key=lambda kv: -kv[1]))
        note = f" [{r['note']}]" if r.get("note") else ""
        print(f"  {r['path']} {r['epoch']}: {kinds}{note}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


def upload(local: str, n: int) -> str:
    """Copy the first n images (in listing order, whole classes first) to the moto bucket."""
    from imgrec import storage

    uri = f"s3://{BUCKET}/photos-{n}"
    storage.ensure_bucket(f"s3://{BUCKET}")
    files = [o for o in storage.list_objects(os.path.join(local, "train")) if not o.path.startswith(".")]
    per_class = -(-n // CLASSES)
    keep, seen = [], {}
    for o in files:
        cls = o.path.split("/")[0]
        if seen.get(cls, 0) < per_class:
            seen[cls] = seen.get(cls, 0) + 1
            keep.append(o)
    t0 = time.time()

    def items():
        for o in keep:
            with open(o.uri, "rb") as fh:
                yield f"train/{o.path}", fh.read()

    storage.write_many(uri, items(), workers=16)
    print(f"uploaded {len(keep)} files to {uri} on moto in {time.time() - t0:.0f} s "
          f"({len(keep) / (time.time() - t0):.0f} PUTs/s)", flush=True)
    return uri


if __name__ == "__main__":
    main()
