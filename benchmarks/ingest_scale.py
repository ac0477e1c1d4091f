"""Ingest at scale (issue #21.3): each path over N images, cold and warm, every path in its own process.

    .venv/bin/python benchmarks/ingest_scale.py --ns 1000 --sizes 32 --where local      # a smoke run
    .venv/bin/python benchmarks/ingest_scale.py --ns 1000,5000,20000 --sizes 32,128 --json rows.json
    .venv/bin/python benchmarks/ingest_scale.py --ns 2000 --sizes 32 --where s3 --json rows.json
    .venv/bin/python benchmarks/ingest_scale.py --datasets cifar10-dev --json rows.json
    .venv/bin/python benchmarks/ingest_scale.py --report rows.json                       # tables only

Data: N generated JPEGs of varied sizes (each side 200-500 px, random per image: a smooth gradient
and a few soft blobs, plus pixel noise; quality 90, ~30 KB each), generated once under ``--workdir``
for the largest N and hard-linked for smaller ones; or ``cifar10-dev`` (the real 32x32 photos of
``/work/shared/data/cifar10-dev/train``, read in place). Each image is decoded to SxS (``--sizes``)
and augmented as in ``ingest.py`` (its ``AUGMENT``), in batches of 32, two epochs.

Paths (``--paths``), each child a fresh process (peak RSS and CPU cover its whole process tree:
``ingest.Sampler``), every Ray child a fresh Ray cluster:

* ``imgrec``: ``load_dataset(..., storage_uri=STORE)`` + ``augmented()`` + ``shard_batches``.
  Two children: **cold** (the decoded cache emptied first; epoch 1 decodes and writes it) and
  **warm** (right after: epoch 1 reads the cache's shards).
* ``imgrec-stream``: in a cluster started with ``object_store_memory`` 100 MB and
  ``memory_budget=0``, so the train split is never materialized: every epoch streams the shards
  (``ImageDataset.streamed``). Cold (the cache emptied: the write pass, then streamed epochs) and warm.
* ``tfdata``: ``keras.utils.image_dataset_from_directory`` at SxS + Keras augmentation layers in an
  AUTOTUNE map, prefetched (``ingest.py``'s path): decodes every epoch.
* ``tfdata-cache``: the same with ``.cache()`` (in memory) before the augmentation.
* ``tfdata-snapshot``: ``.snapshot(dir)`` instead; cold (the snapshot removed first) and warm (a
  fresh process reading the snapshot the cold one wrote).
* ``raydata``: ``ray.data.read_images(dir, size=(S, S), mode="RGB").materialize()``, then per epoch
  ``augmented()`` and ``iter_batches(32)``; Ray Data's own reader against imgrec's.
* ``plain-s3`` (S3 only): ``ingest.run_plain_s3``, a 16-thread boto3 + PIL reader, every epoch.

On S3 (moto's server, started here) only ``imgrec``, ``imgrec-stream`` and ``plain-s3`` run, N capped at 20k (moto
serves ~150 GETs/s). Object-store bytes (used at the end of each epoch) and spilled bytes (the
cluster's total so far) come from the raylet's ``FormatGlobalMemoryInfo`` (what ``ray memory
--stats-only`` prints). Ray workers run at nice 0 (``--ray-niceness``) as in ``ingest.py``: the
baselines run at the default priority. The 1-minute load average is recorded with every epoch.
The header prints what a first touch of memory costs in a fresh process (``first_touch``): on this
VM it is what a fresh worker's first pass pays over later ones.
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
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ingest  # noqa: E402 - the Sampler, record() and moto machinery
from ingest import AUGMENT, BATCH, EPOCHS, Sampler, child_rows, loadavg, psutil, record  # noqa: E402

PATHS = ("imgrec", "imgrec-stream", "tfdata", "tfdata-cache", "tfdata-snapshot", "raydata", "plain-s3")
S3_PATHS = ("imgrec", "imgrec-stream", "plain-s3")
LOCAL_PATHS = tuple(p for p in PATHS if p != "plain-s3")
S3_MAX_N = 20_000
CIFAR10_DEV = "/work/shared/data/cifar10-dev"
CLASSES = 5
SIDES = (200, 500)  # each generated image's height and width, uniform per image
STREAM_STORE = 100 * 2**20  # the streaming cluster's object store (Ray's floor is ~75 MB)
BUCKET = "ingest-scale"


# --------------------------------------------------------------------------- object-store figures


def store_stats() -> dict:
    """Object-store MB in use now (the fallback files included) and MB spilled so far, across the cluster
    (the raylet's stats, as ``ray memory --stats-only``)."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    stats = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address)).store_stats
    mb = 2**20
    return {"store_mb": round(stats.object_store_bytes_used / mb), "spilled_mb": round(stats.spilled_bytes_total / mb),
            # past a full store: objects created in files outside it, and spilled objects read back
            "fallback_mb": round(stats.object_store_bytes_fallback / mb),
            "restored_mb": round(stats.restored_bytes_total / mb)}


# --------------------------------------------------------------------------- the paths (child processes)


def run_imgrec(args, sampler: Sampler) -> list[dict]:
    """``imgrec`` cold or warm, or ``imgrec-stream`` (warm, a 100 MB object store, streamed)."""
    import ray

    from imgrec import data, storage
    from imgrec.config import AugmentConfig, DataConfig, DecodeConfig
    from imgrec.layout import DecodedCacheLayout
    from imgrec.runtime import ensure_ray, local_cluster_cpus, runtime_env

    stream = args.child == "imgrec-stream"
    with sampler.phase() as ph:
        if stream:  # ensure_ray's local cluster, with a small object store
            ray.init(num_cpus=local_cluster_cpus(), object_store_memory=STREAM_STORE, include_dashboard=False,
                     runtime_env=runtime_env()[0])
        ensure_ray()  # as train() does (connected already: only imgrec's console settings)
        ray.data.DataContext.get_current().enable_progress_bars = False
        ingest.warm_up_ray_data(s3=args.uri.startswith("s3://"))
    out = [record(args.child, "start-up", 0, ph, **store_stats())]
    cfg = DataConfig(uri=args.uri, validation_split=0.0, decode=DecodeConfig(image_size=(args.size, args.size)),
                     memory_budget=0.0 if stream else 0.5)
    if args.phase == "cold":
        storage.delete_prefix(DecodedCacheLayout.default_root(args.store))
    with sampler.phase() as ph:
        t0 = time.perf_counter()
        ds = data.load_dataset(cfg, storage_uri=args.store)
        load_s = time.perf_counter() - t0
        train = data.augmented(ds.train, AugmentConfig(**AUGMENT), shuffled=ds.streamed)
        n = sum(len(x) for x, _ in data.shard_batches(train, BATCH))
    use = ds.cache_use
    note = (f"load_dataset {load_s:.1f} s + augmented epoch {ph.seconds - load_s:.1f} s; "
            f"{use.shards_read} shards read, {use.shards_decoded} decoded; "
            + ("streamed" if ds.streamed else "materialized"))
    out.append(record(args.child, 1, n, ph, note=note, **store_stats()))
    for epoch in range(2, EPOCHS + 1):
        with sampler.phase() as ph:
            n = sum(len(x) for x, _ in data.shard_batches(train, BATCH))
        out.append(record(args.child, epoch, n, ph, **store_stats()))
    return out


def run_tfdata(args, sampler: Sampler) -> list[dict]:
    """``tfdata`` (decodes every epoch), ``tfdata-cache`` (``.cache()``), ``tfdata-snapshot``."""
    with sampler.phase() as ph:
        import keras
        import tensorflow as tf
        from keras import layers
    out = [record(args.child, "start-up", 0, ph)]
    augment = ingest.keras_augmentation(keras, layers)
    snapshot = os.path.join(args.workdir, "tf-snapshots", f"{os.path.basename(os.path.dirname(args.uri))}-{args.size}")
    if args.child == "tfdata-snapshot" and args.phase == "cold":
        shutil.rmtree(snapshot, ignore_errors=True)
    ds = None
    for epoch in range(1, EPOCHS + 1):
        with sampler.phase() as ph:
            if ds is None:  # listing counts in epoch 1, as it does for imgrec
                ds = keras.utils.image_dataset_from_directory(
                    args.uri, image_size=(args.size, args.size), batch_size=BATCH, seed=0, verbose=False)
                if args.child == "tfdata-cache":
                    ds = ds.cache()
                elif args.child == "tfdata-snapshot":
                    ds = ds.snapshot(snapshot, compression=None)  # AUTO (snappy): "Output buffer too small"
                ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
                ds = ds.prefetch(tf.data.AUTOTUNE)
            n = sum(int(x.shape[0]) for x, _ in ds)
        out.append(record(args.child, epoch, n, ph))
    return out


def run_raydata(args, sampler: Sampler) -> list[dict]:
    """Ray Data's ``read_images`` + ``materialize()``, then imgrec's augmentation per epoch."""
    import ray

    from imgrec import data
    from imgrec.config import AugmentConfig
    from imgrec.runtime import ensure_ray

    with sampler.phase() as ph:
        ensure_ray()
        ray.data.DataContext.get_current().enable_progress_bars = False
        ingest.warm_up_ray_data(s3=False)
    out = [record(args.child, "start-up", 0, ph, **store_stats())]
    train = None
    for epoch in range(1, EPOCHS + 1):
        with sampler.phase() as ph:
            if train is None:
                images = ray.data.read_images(args.uri, size=(args.size, args.size), mode="RGB").materialize()
                train = data.augmented(images, AugmentConfig(**AUGMENT))
            n = sum(len(b["image"]) for b in train.iter_batches(batch_size=BATCH, batch_format="numpy"))
        out.append(record(args.child, epoch, n, ph, **store_stats()))
    return out


def run_plain_s3(args, sampler: Sampler) -> list[dict]:
    ingest.SIZE = args.size  # ingest's reader resizes to its module's SIZE
    return ingest.run_plain_s3(args.child, args.uri, sampler)


RUNNERS = {"imgrec": run_imgrec, "imgrec-stream": run_imgrec, "tfdata": run_tfdata, "tfdata-cache": run_tfdata,
           "tfdata-snapshot": run_tfdata, "raydata": run_raydata, "plain-s3": run_plain_s3}


def child(args) -> None:
    sampler = Sampler()
    sampler.start()
    rows = RUNNERS[args.child](args, sampler)
    sampler.stop()
    print("RESULT " + json.dumps(rows), flush=True)


# --------------------------------------------------------------------------- data


def _make_images(job: tuple[str, int, int]) -> None:
    """Images start..stop-1 of a generated tree (a worker of generate())."""
    import numpy as np
    from PIL import Image

    root, start, stop = job
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        h, w = (int(v) for v in rng.integers(SIDES[0], SIDES[1] + 1, size=2))
        # The smooth part at 1/16 scale (a ramp and three soft blobs), upscaled; then pixel noise.
        sh, sw = -(-h // 16), -(-w // 16)
        yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
        a, b = rng.uniform(-1, 1, 2)
        img = rng.uniform(0, 255, 3) + rng.uniform(-120, 120, 3) * (a * yy / sh + b * xx / sw)[..., None]
        for _ in range(3):
            cy, cx, r = rng.uniform(0, sh), rng.uniform(0, sw), rng.uniform(1.5, 8)
            img += rng.uniform(-80, 80, 3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        small = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        pixels = np.asarray(small.resize((w, h), Image.BILINEAR)).astype(np.int16)
        pixels += rng.integers(-8, 9, size=(h, w, 1), dtype=np.int16)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            os.path.join(root, "train", f"c{i % CLASSES}", f"{i:06d}.jpg"), quality=90)


def generate(workdir: str, n: int) -> str:
    """The tree of n generated images: made once for the largest n asked for, hard-linked
    for smaller ones (the first n images, so a smaller tree is a subset of a bigger one)."""
    root = os.path.join(workdir, f"varied-{n}")
    if os.path.exists(root + ".complete"):
        return root
    done = sorted(int(f[7:-9]) for f in os.listdir(workdir) if f.startswith("varied-") and f.endswith(".complete"))
    source = next((m for m in done if m >= n), None)
    for cls in range(CLASSES):
        os.makedirs(os.path.join(root, "train", f"c{cls}"), exist_ok=True)
    if source is not None:
        for i in range(n):
            name = os.path.join("train", f"c{i % CLASSES}", f"{i:06d}.jpg")
            if not os.path.exists(os.path.join(root, name)):
                os.link(os.path.join(workdir, f"varied-{source}", name), os.path.join(root, name))
    else:
        import multiprocessing

        t0 = time.time()
        print(f"generating {n} JPEGs ({SIDES[0]}-{SIDES[1]} px a side) in {root} (once)", flush=True)
        step = 500
        with multiprocessing.Pool(os.cpu_count()) as pool:
            pool.map(_make_images, [(root, s, min(n, s + step)) for s in range(0, n, step)])
        print(f"  {time.time() - t0:.0f} s", flush=True)
    open(root + ".complete", "w").close()  # outside the tree: the listing must not see it
    return root


def upload(local: str, n: int) -> str:
    from imgrec import storage

    uri = f"s3://{BUCKET}/varied-{n}"
    storage.ensure_bucket(f"s3://{BUCKET}")
    t0 = time.time()

    def items():
        for cls in sorted(os.listdir(os.path.join(local, "train"))):
            for name in sorted(os.listdir(os.path.join(local, "train", cls))):
                with open(os.path.join(local, "train", cls, name), "rb") as fh:
                    yield f"train/{cls}/{name}", fh.read()

    storage.write_many(uri, items(), workers=16)
    print(f"uploaded {n} files to {uri} on moto in {time.time() - t0:.0f} s", flush=True)
    return uri + "/train"


# --------------------------------------------------------------------------- orchestration


def run_child(path: str, phase: str, case: dict, args, env: dict, log) -> list[dict]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", path, "--phase", phase, "--uri", case["uri"],
           "--size", str(case["size"]), "--store", case["store"], "--dataset", case["dataset"],
           "--workdir", args.workdir]
    env = {**env, "RAY_worker_niceness": str(args.ray_niceness)}
    print(f"  {case['dataset']} {case['where']} {case['size']}px {path} {phase} (load {loadavg()}) ...",
          end="", flush=True)
    t0 = time.time()
    rows = child_rows(cmd, env, log)
    if not rows:
        return []
    e = {r["epoch"]: r["images_per_s"] for r in rows if r["images"]}
    print(f" {time.time() - t0:.0f} s: {' / '.join(f'{v:.0f}' for v in e.values())} img/s", flush=True)
    tags = {k: case[k] for k in ("dataset", "where", "size", "n")}
    return [{**r, **tags, "phase": phase, "at": dt.datetime.now(dt.UTC).strftime("%H:%M")} for r in rows]


def phases(path: str) -> list[str]:
    """The children a path runs, in order: cold, then warm where a second start differs."""
    if path in ("imgrec", "imgrec-stream", "tfdata-snapshot"):
        return ["cold", "warm"]  # imgrec-stream cold: the cache emptied, its write pass, then streamed
    return ["cold"]


def first_touch(gb: float = 1.0, idle_s: float = 10.0) -> str:
    """Seconds per GB a fresh process pays to touch memory for the first time, after ``idle_s``
    with nothing running, and to touch it again. On this machine (a Firecracker VM whose balloon
    has free page reporting) memory freed for a few seconds goes back to the host, and each first
    touch is a host fault: ~2 s/GB against ~0.15 s/GB for a page the VM holds. Every fresh worker
    process pays it on its first pass; a cold pass over new memory is slower here than on a machine
    without page reporting, and this figure is how much."""
    time.sleep(idle_s)
    code = ("import time, numpy as np\n"
            f"a = np.empty(int({gb} * 2**30), np.uint8)\n"
            "t0 = time.perf_counter(); a.fill(1); t1 = time.perf_counter(); a.fill(2); t2 = time.perf_counter()\n"
            "print(f'{t1 - t0:.2f} {t2 - t1:.2f}')")
    first, again = (float(v) / gb for v in subprocess.run([sys.executable, "-c", code], capture_output=True,
                                                          text=True, check=True).stdout.split())
    return f"{first:.2f} s/GB in a fresh process after {idle_s:.0f} s idle, {again:.2f} s/GB touched again"


def cases(args) -> list[dict]:
    out = []
    for dataset in args.datasets.split(","):
        if dataset == "cifar10-dev":
            out.append(dict(dataset=dataset, where="local", size=32, n=None,
                            uri=os.path.join(CIFAR10_DEV, "train"), store=os.path.join(args.workdir, "runs-cifar")))
            continue
        for where in args.where.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                for n in (int(s) for s in args.ns.split(",")):
                    if where == "s3" and n > S3_MAX_N:
                        print(f"skipping s3 N={n}: over {S3_MAX_N} (moto's GET rate)")
                        continue
                    out.append(dict(dataset=dataset, where=where, size=size, n=n))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ns", default="1000,5000,20000,50000", help="image counts of the generated sets")
    parser.add_argument("--sizes", default="32,128", help="decode sizes (square)")
    parser.add_argument("--where", default="local,s3", help="local, s3 or both")
    parser.add_argument("--datasets", default="generated", help="generated, cifar10-dev or both")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {PATHS}")
    parser.add_argument("--workdir", default="/tmp/imgrec-bench-scale", help="generated images, caches, the log")
    parser.add_argument("--json", help="add the rows to this file (kept across runs; --report prints it)")
    parser.add_argument("--report", help="print the tables of a --json file and exit")
    parser.add_argument("--ray-niceness", type=int, default=0, help="RAY_worker_niceness (Ray's default: 15)")
    for hidden in ("--child", "--phase", "--uri", "--store", "--dataset"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.report:
        with open(args.report) as fh:
            report(json.load(fh))
        return
    paths = [p for p in args.paths.split(",") if p]
    if set(paths) - set(PATHS):
        parser.error(f"unknown paths {sorted(set(paths) - set(PATHS))}; choose from {PATHS}")
    os.makedirs(args.workdir, exist_ok=True)
    todo = cases(args)
    for case in sorted(todo, key=lambda c: -(c["n"] or 0)):  # the largest first: the others link to it
        if case["dataset"] == "generated":
            case["local"] = generate(args.workdir, case["n"])
    env, moto = dict(os.environ), None
    log_path = os.path.join(args.workdir, "ingest_scale.log")
    print(f"ingest scale: {len(todo)} cases, {os.cpu_count()} cores, load {loadavg()}; child logs in {log_path}",
          flush=True)
    print(f"memory first touch: {first_touch()}", flush=True)
    rows: list[dict] = []
    try:
        if any(c["where"] == "s3" for c in todo):
            moto, endpoint = ingest.start_moto()
            # Dummy credentials for the loopback moto server only.
            env.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                       AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
            env.pop("AWS_PROFILE", None)
            env.pop("AWS_SESSION_TOKEN", None)
            os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
        with open(log_path, "a") as log:
            for case in todo:
                if case["dataset"] == "generated":
                    if case["where"] == "s3":
                        case["uri"] = upload(case["local"], case["n"])
                        case["store"] = f"s3://{BUCKET}/runs"
                    else:
                        case["uri"] = os.path.join(case["local"], "train")
                        case["store"] = os.path.join(args.workdir, "runs")
                for path in paths:
                    if path not in (S3_PATHS if case["where"] == "s3" else LOCAL_PATHS):
                        continue
                    for phase in phases(path):
                        rows += run_child(path, phase, case, args, env, log)
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(10)
    if args.json:
        old = json.load(open(args.json)) if os.path.exists(args.json) else []
        with open(args.json, "w") as fh:
            json.dump(old + rows, fh, indent=1)
    print(f"\n{dt.date.today()}, {platform.node()}: {os.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GB, load at the end {loadavg()}")
    report(rows)


# --------------------------------------------------------------------------- tables and verdicts


def summarize(rows: list[dict]) -> list[dict]:
    """One line per (dataset, where, size, N, path): epoch-1 cold and warm, epoch 2 (the warm
    child's where there is one: the same process as the warm epoch 1), and the maxima over its children."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["where"], r["size"], r["n"], r["path"]), []).append(r)
    out = []
    for (dataset, where, size, n, path), rs in groups.items():
        ep = {(r["phase"], r["epoch"]): r for r in rs if r["images"]}
        e2 = ep.get(("warm", 2)) or ep.get(("cold", 2))
        e1c, e1w = ep.get(("cold", 1)), ep.get(("warm", 1))
        images = next(r["images"] for r in ep.values())
        loads = [float(r["load"].split("/")[0]) for r in ep.values()]
        out.append(dict(
            dataset=dataset, where=where, size=size, n=n or images, path=path,
            cold=e1c and e1c["images_per_s"], warm=e1w and e1w["images_per_s"], e2=e2 and e2["images_per_s"],
            rss=max(r["peak_rss_mb"] for r in rs),
            store=max((r["store_mb"] for r in rs if "store_mb" in r), default=None),
            spilled=max((r["spilled_mb"] for r in rs if "spilled_mb" in r), default=None),
            fallback=max((r.get("fallback_mb", 0) for r in rs), default=0),
            restored=max((r.get("restored_mb", 0) for r in rs), default=0),
            cpu_e1=(e1c or e1w)["cpu_ms_per_image"], cpu_e2=e2 and e2["cpu_ms_per_image"],
            load=f"{min(loads):.1f}-{max(loads):.1f}", at=min(r.get("at", "") for r in rs),
            note="; ".join(f"{ph}: {r['note']}" for (ph, e), r in sorted(ep.items()) if e == 1 and r.get("note"))))
    order = {p: i for i, p in enumerate(PATHS)}
    return sorted(out, key=lambda s: (s["dataset"], s["size"], s["where"], s["n"], order[s["path"]]))


def _f(v, fmt="{:.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def report(rows: list[dict]) -> None:
    lines = summarize(rows)
    for dataset, size in sorted({(s["dataset"], s["size"]) for s in lines}):
        print(f"\n{dataset}, decoded to {size}x{size}:\n")
        print("| path | where | N | epoch-1 cold img/s | epoch-1 warm img/s | epoch-2 img/s | peak RSS MB | "
              "object-store MB | spilled MB | CPU ms/img (e1 / e2) | load (1 min) | at (UTC) |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for s in lines:
            if (s["dataset"], s["size"]) == (dataset, size):
                store = _f(s["store"]) + (f" ({s['fallback']} in fallback files)" if s["fallback"] else "")
                spilled = _f(s["spilled"]) + (f" ({s['restored']} restored)" if s["restored"] else "")
                print(f"| {s['path']} | {s['where']} | {s['n']} | {_f(s['cold'])} | {_f(s['warm'])} | {_f(s['e2'])} | "
                      f"{s['rss']} | {store} | {spilled} | {_f(s['cpu_e1'], '{:.1f}')} / "
                      f"{_f(s['cpu_e2'], '{:.1f}')} | {s['load']} | {s['at']} |")
    print("\nVerdicts:")
    for line in verdicts(lines):
        print(f"- {line}")
    print("\nEpoch-1 notes (imgrec):")
    for s in lines:
        if s["note"]:
            print(f"- {s['dataset']} {s['where']} {s['size']}px N={s['n']} {s['path']}: {s['note']}")


def verdicts(lines: list[dict]) -> list[str]:
    at = {(s["dataset"], s["where"], s["size"], s["n"], s["path"]): s for s in lines}
    out = []
    for s in lines:  # 1. warm epoch 1 >= 0.9x epoch 2
        if s["path"] == "imgrec" and s["warm"] and s["e2"]:
            ratio = s["warm"] / s["e2"]
            out.append(f"warm epoch 1 >= 0.9x epoch 2, {s['dataset']} {s['where']} {s['size']}px N={s['n']}: "
                       f"{s['warm']:.0f} vs {s['e2']:.0f} img/s = {ratio:.2f}x "
                       f"({'meets' if ratio >= 0.9 else 'misses'})")
    for s in lines:  # 3. cold epoch 1 from local disk >= tf.data's epoch 1
        tf = at.get((s["dataset"], s["where"], s["size"], s["n"], "tfdata"))
        if s["path"] == "imgrec" and s["where"] == "local" and s["cold"] and tf and tf["cold"]:
            ratio = s["cold"] / tf["cold"]
            out.append(f"cold epoch 1 >= tf.data's epoch 1, {s['dataset']} {s['size']}px N={s['n']}: "
                       f"{s['cold']:.0f} vs {tf['cold']:.0f} img/s = {ratio:.2f}x ({'meets' if ratio >= 1 else 'misses'})")
    streams = [s for s in lines if s["path"] == "imgrec-stream" and s["e2"]]
    for s in streams:  # 2. streaming: epoch 2 >= 0.7x the in-memory path; RSS flat in N
        mem = at.get((s["dataset"], s["where"], s["size"], s["n"], "imgrec"))
        pixels = s["n"] * s["size"] ** 2 * 3 / 2**20
        if mem and mem["e2"]:
            ratio = s["e2"] / mem["e2"]
            out.append(f"streaming epoch 2 >= 0.7x in-memory, {s['where']} {s['size']}px N={s['n']} "
                       f"({pixels:.0f} MB decoded, 100 MB object store): {s['e2']:.0f} vs {mem['e2']:.0f} img/s = "
                       f"{ratio:.2f}x ({'meets' if ratio >= 0.7 else 'misses'}); peak RSS {s['rss']} vs {mem['rss']} MB")
    by_set: dict[tuple, list[dict]] = {}
    for s in streams:
        by_set.setdefault((s["dataset"], s["where"], s["size"]), []).append(s)
    for (_dataset, where, size), ss in by_set.items():
        if len(ss) > 1:
            ss.sort(key=lambda s: s["n"])
            growth = ss[-1]["rss"] / ss[0]["rss"]
            out.append(f"streaming peak RSS flat in N, {where} {size}px: "
                       + ", ".join(f"N={s['n']} {s['rss']} MB" for s in ss)
                       + f" ({growth:.2f}x over {ss[-1]['n'] / ss[0]['n']:.0f}x the images; "
                       f"{'flat' if growth <= 1.15 else 'not flat'} at <= 1.15x)")
    return out


if __name__ == "__main__":
    main()
