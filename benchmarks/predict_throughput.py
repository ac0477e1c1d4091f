"""Batch prediction throughput: ``imgrec.predict.predict_bucket`` on Ray Data
against a plain single-process loop, from a local tree and from an S3 endpoint.

    .venv/bin/python benchmarks/predict_throughput.py --n 1000

Model: MobileNet alpha 0.25 at 128x128, random weights (throughput does not
depend on them). Images: N photo-sized (500x375) synthetic JPEGs. Compared:

* plain loop, local: PIL open + convert + resize, batched ``model.predict_on_batch``;
* plain loop, local, imgrec decode: the same with ``imgrec.decode.decode_image``
  (JPEG draft decoding), to separate the decoder's gain from Ray's;
* plain loop, S3: the same, the bytes of each batch fetched by a boto3 thread pool;
* ``predict_bucket`` with 1 and 2 model actors, from the local tree and from S3.

S3 is moto's server, started here on a free loopback port (request log off).
Peak memory is the sum of the RSS of this process and every Ray process
(descendants of this process; moto excluded), sampled every 0.2 s. Shared
object-store pages count in every process that maps them, so the Ray sums
overstate real use somewhat.

Ray rows give two rates: ``e2e`` (files / wall time of the whole call: listing,
actor start with the TensorFlow import, model load, Parquet writes, summary) and
``steady`` (files after the first part / time from the first part to the last:
the pipeline's rate once warm, which is what a large bucket sees).
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

IMAGE_SIZE = (128, 128)
PHOTO_SIZE = (375, 500)  # (height, width)
CLASSES = 4


# --------------------------------------------------------------------------- helpers


class PeakMemory:
    """Peak of the summed RSS of this process and its descendants (Ray's
    processes), sampled in a background thread; ``exclude`` pids are skipped."""

    def __init__(self, exclude: set[int] = frozenset(), interval: float = 0.2):
        self.exclude, self.interval = set(exclude), interval
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> int:
        psutil = _psutil()
        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            if proc.pid in self.exclude:
                continue
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass  # exited between listing and reading
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self.peak = self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _psutil():
    """psutil, which Ray vendors (ray/thirdparty_files) and puts on sys.path when imported."""
    import importlib

    import ray  # noqa: F401

    return importlib.import_module("psutil")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> subprocess.Popen:
    """moto's S3 server on loopback; exports the endpoint and dummy credentials
    (before Ray starts, so its workers inherit them)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update({
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    })
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto server did not start in 60 s")


def make_images(root: str, n: int) -> None:
    from imgrec import synth

    per_class = -(-n // CLASSES)
    synth.make_dataset(root, task="shapes", classes=CLASSES, per_class=per_class, test_per_class=0,
                       image_size=PHOTO_SIZE, seed=0, overwrite=True, progress=False)


def make_checkpoint(directory: str) -> None:
    from imgrec.checkpoint import write_checkpoint
    from imgrec.config import DecodeConfig, ModelConfig, to_dict
    from imgrec.models import build_model

    cfg = ModelConfig(name="mobilenet", alpha=0.25)
    model = build_model(cfg, num_classes=CLASSES, image_size=IMAGE_SIZE)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    write_checkpoint(model, directory, {
        "class_names": [f"class{i}" for i in range(CLASSES)], "image_size": list(IMAGE_SIZE),
        "decode": to_dict(DecodeConfig(image_size=IMAGE_SIZE)), "model": to_dict(cfg), "epoch": 1,
        "metrics": {"val_accuracy": 0.0},
    })


# --------------------------------------------------------------------------- plain loops


def pil_decode(data: bytes):
    import numpy as np
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB").resize(IMAGE_SIZE[::-1], Image.BILINEAR)
    return np.asarray(img)


def imgrec_decode(data: bytes):
    from imgrec.config import DecodeConfig
    from imgrec.decode import decode_image

    return decode_image(data, DecodeConfig(image_size=IMAGE_SIZE))


def plain_loop(model, uris: list[str], batch_size: int, read, decode) -> None:
    """The obvious single-process loop: read a batch, decode it, predict it."""
    import numpy as np

    for start in range(0, len(uris), batch_size):
        batch = read(uris[start:start + batch_size])
        model.predict_on_batch(np.stack([decode(b) for b in batch]))


def read_local(uris: list[str]) -> list[bytes]:
    return [Path(u).read_bytes() for u in uris]


def s3_reader(threads: int = 16):
    from imgrec import storage

    client = storage.boto3_client()
    pool = futures.ThreadPoolExecutor(threads)

    def get(uri: str) -> bytes:
        bucket, _, key = uri[5:].partition("/")
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()

    return lambda uris: list(pool.map(get, uris))


# --------------------------------------------------------------------------- runs


def run_plain(name, model, uris, batch_size, read, decode, exclude) -> dict:
    load = os.getloadavg()[0]
    with PeakMemory(exclude) as mem:
        t = time.perf_counter()
        plain_loop(model, uris, batch_size, read, decode)
        seconds = time.perf_counter() - t
    rate = len(uris) / seconds
    print(f"  {name}: {rate:.1f} images/s", flush=True)
    return {"name": name, "e2e": rate, "steady": rate, "seconds": seconds, "first": None,
            "peak_mb": mem.peak / 2**20, "load": load}


def run_ray(name, ckpt_dir, input_uri, output_uri, n, actors, batch_size, exclude) -> dict:
    from imgrec.config import PredictConfig
    from imgrec.predict import predict_bucket

    marks: list[tuple[float, int]] = []
    cfg = PredictConfig(model=ckpt_dir, input=input_uri, output=output_uri, batch_size=batch_size,
                        actors=actors, files_per_output=max(25, n // 10), resume=False)
    load = os.getloadavg()[0]
    with PeakMemory(exclude) as mem:
        t = time.perf_counter()
        summary = predict_bucket(cfg, progress=False,
                                 on_chunk=lambda c: marks.append((time.perf_counter(), c.rows)))
        seconds = time.perf_counter() - t
    assert summary.files == n and summary.errors == 0, summary
    marks.sort()
    steady = (sum(r for _, r in marks[1:]) / (marks[-1][0] - marks[0][0])) if len(marks) > 2 else float("nan")
    first = marks[0][0] - t
    print(f"  {name}: e2e {n / seconds:.1f}, steady {steady:.1f} images/s, first part after {first:.1f} s",
          flush=True)
    return {"name": name, "e2e": n / seconds, "steady": steady, "seconds": seconds, "first": first,
            "peak_mb": mem.peak / 2**20, "load": load}


def best(runs: list[dict]) -> dict:
    return max(runs, key=lambda r: r["steady"])


def table(rows: list[dict]) -> str:
    lines = ["| run | images/s (steady) | images/s (end to end) | wall s | first part after s | peak RSS MB "
             "| load avg |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        first = "-" if r["first"] is None else f"{r['first']:.1f}"
        lines.append(f"| {r['name']} | {r['steady']:.1f} | {r['e2e']:.1f} | {r['seconds']:.1f} | {first} "
                     f"| {r['peak_mb']:.0f} | {r['load']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="predict_bucket vs a plain loop, local and S3.")
    p.add_argument("--n", type=int, default=5000, help="number of 500x375 JPEGs")
    p.add_argument("--actors", default="1,2", help="model actor counts to run, comma-separated")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--skip-s3", action="store_true")
    p.add_argument("--repeat", type=int, default=2, help="runs per configuration; the best is kept (the "
                   "machine may be shared: the best run is the least disturbed one)")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    actor_counts = [int(a) for a in args.actors.split(",")]

    work = tempfile.mkdtemp(prefix="imgrec-bench-")
    moto = start_moto()
    exclude = {moto.pid}
    try:
        import keras
        import numpy as np

        from imgrec import storage

        print(f"[bench] {args.n} JPEGs {PHOTO_SIZE[1]}x{PHOTO_SIZE[0]} -> MobileNet a=0.25 "
              f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, batch {args.batch_size}, {os.cpu_count()} cores, "
              f"load avg {os.getloadavg()[0]:.1f}", flush=True)
        images = os.path.join(work, "images")
        make_images(images, args.n)
        made = [o.uri for o in storage.list_objects(images)]
        for extra in made[args.n:]:  # classes x ceil(n / classes) >= n: keep exactly n
            os.unlink(extra)
        uris, n = made[: args.n], args.n
        ckpt_dir = os.path.join(work, "run", "checkpoint_000001")
        make_checkpoint(ckpt_dir)
        s3_images = "s3://bench/images"
        if not args.skip_s3:
            storage.ensure_bucket("s3://bench")
            storage.upload_dir(images, s3_images, progress=False)
        s3_uris = [o.uri for o in storage.list_objects(s3_images)] if not args.skip_s3 else []

        model = keras.models.load_model(os.path.join(ckpt_dir, "model.keras"), compile=False)
        model.predict_on_batch(np.zeros((args.batch_size, *IMAGE_SIZE, 3), "uint8"))  # trace once
        plain = [("plain loop, local, PIL", uris, read_local, pil_decode),
                 ("plain loop, local, imgrec decode", uris, read_local, imgrec_decode)]
        if s3_uris:
            plain.append(("plain loop, S3 (16 GET threads), PIL", s3_uris, s3_reader(), pil_decode))
        rows = [best([run_plain(name, model, u, args.batch_size, read, decode, exclude)
                      for _ in range(args.repeat)]) for name, u, read, decode in plain]
        del model

        from imgrec.runtime import ensure_ray

        ensure_ray()
        import ray

        ray.data.DataContext.get_current().enable_progress_bars = False
        for actors in actor_counts:
            sources = [("local", images, os.path.join(work, f"out-local-{actors}"))]
            if s3_uris:
                sources.append(("S3", s3_images, f"s3://bench/out-{actors}"))
            for where, input_uri, out in sources:
                rows.append(best([run_ray(f"predict_bucket, {where}, {actors} actor(s)", ckpt_dir, input_uri, out,
                                          n, actors, args.batch_size, exclude) for _ in range(args.repeat)]))
        print(f"\nload avg at the end {os.getloadavg()[0]:.1f}\n")
        print(table(rows))
    finally:
        try:
            import ray

            ray.shutdown()
        except Exception:
            pass
        moto.terminate()
        moto.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
