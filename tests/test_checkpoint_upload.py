"""Checkpoint uploads against slow and failing storage: a real TCP proxy on
loopback (``s3_proxy``) between the driver's Ray storage filesystem and moto."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest
from s3_proxy import S3Proxy

from imgrec import checkpoint as ckpt
from imgrec import storage
from imgrec.config import to_dict


@contextmanager
def storage_through(proxy: S3Proxy):
    """The driver's S3 clients (and the filesystem it hands Ray for uploads) go through ``proxy``."""
    saved = os.environ["AWS_ENDPOINT_URL"]
    os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
    try:
        yield
    finally:
        os.environ["AWS_ENDPOINT_URL"] = saved


def _config(shapes_data, bucket, name, **overrides):
    from imgrec.config import AugmentConfig, DataConfig, DecodeConfig, ModelConfig, TrainConfig

    settings = dict(workers=1, batch_size=16, epochs=3, max_failures=0, keep_checkpoints=3, evaluate=False,
                    report=False)
    return TrainConfig(
        data=DataConfig(uri=shapes_data, decode=DecodeConfig(image_size=(64, 64))),  # longer epochs than 32²
        model=ModelConfig(name="small_cnn"), augment=AugmentConfig(), storage=f"{bucket}/runs", run_name=name,
        **{**settings, **overrides})


def _moto_port() -> int:
    return int(os.environ["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])


def test_slow_uploads_overlap_training_and_in_flight_is_never_best(ray_cluster, shapes_data, bucket):
    """Uploads at 1 MB/s (about 2 s per checkpoint here) run beside the next epoch:
    the loop waits for far less than the uploads take; a checkpoint still being
    uploaded (model without manifest) never resolves as the run's best; the run
    returns only when its last upload is complete."""
    from imgrec.train import train

    run = f"{bucket}/runs/slow"
    partial: set[str] = set()  # checkpoint folders seen with a model and no manifest yet
    violations: list[str] = []
    stop = threading.Event()

    def watch():  # what a reader of the run sees while it trains (reads pass the proxy unthrottled)
        while not stop.is_set():
            try:
                best = ckpt.resolve(run, "best").uri
            except ckpt.CheckpointError:
                best = None  # no complete checkpoint yet
            # Listed after resolving: a folder still incomplete now was incomplete then.
            names = {o.path for o in storage.list_objects(run)}
            now = {storage.join(run, n.rsplit("/", 1)[0]) for n in names if n.endswith("/model.keras")
                   and n.replace("model.keras", "manifest.json") not in names}
            partial.update(now)
            if best in now:
                violations.append(best)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    with S3Proxy(_moto_port(), upload_bytes_per_s=1e6) as proxy, storage_through(proxy):
        watcher.start()
        try:
            result = train(_config(shapes_data, bucket, "slow"))
        finally:
            stop.set()
            watcher.join(10)
    uploads = [h["last_upload_s"] for h in result.history[1:]]  # the upload of the epoch before
    waits = [h["upload_wait_s"] for h in result.history[1:]]
    assert max(uploads) > 1.0, uploads  # the throttle bit
    assert sum(waits) < 0.5 * sum(uploads), (waits, uploads)
    assert not violations, f"a checkpoint still uploading resolved as best: {violations} (in flight: {partial})"
    latest = ckpt.resolve(run, "latest")
    assert latest.manifest["epoch"] == 3  # the last upload finished before train() returned
    _, manifest = ckpt.load(latest.uri)  # and it verifies
    assert manifest["epoch"] == 3


def test_failed_upload_fails_the_run_with_the_reason(ray_cluster, shapes_data, bucket):
    """Storage that cuts every checkpoint upload: the run fails, naming the
    upload, instead of finishing with checkpoints silently missing."""
    from imgrec.train import train

    with S3Proxy(_moto_port(), cut_after_bytes=256 * 1024) as proxy, storage_through(proxy):
        with pytest.raises(Exception) as failed:
            train(_config(shapes_data, bucket, "cut", epochs=2))
    assert proxy.cut_connections > 0, failed.value
    text = f"{failed.value}\n{failed.value.__cause__}"
    assert "upload" in text.lower() or "checkpoint" in text.lower(), text[-2000:]
    assert not list(ckpt.list_checkpoints(f"{bucket}/runs/cut"))  # nothing half-written counts as a checkpoint


_DRIVER = """
import json, sys
from imgrec.config import TrainConfig, from_dict
from imgrec.train import train
train(from_dict(TrainConfig, json.loads(sys.argv[1])))
"""


def test_run_killed_mid_upload_resumes_from_the_last_complete_checkpoint(ray_cluster, shapes_data, bucket,
                                                                        tmp_path):
    """The driver is killed while a checkpoint upload hangs half-sent: what was
    sent never counts as a checkpoint, and ``--resume`` continues from the last
    complete one (its epochs, its optimizer state), to the end of the run."""
    from imgrec.config import TrainConfig
    from imgrec.train import train

    run = f"{bucket}/runs/killed"
    cfg = _config(shapes_data, bucket, "killed", epochs=3)
    log = open(tmp_path / "driver.log", "wb")
    with S3Proxy(_moto_port()) as proxy:
        env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address,
               "AWS_ENDPOINT_URL": proxy.endpoint}  # the driver's, so Ray's uploads, go through the proxy
        driver = subprocess.Popen([sys.executable, "-c", _DRIVER, json.dumps(to_dict(cfg))], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 300
            while not ckpt.list_checkpoints(run):  # read past the proxy, from moto itself
                assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
                assert time.time() < deadline, "no checkpoint in 5 minutes"
                time.sleep(0.2)
            proxy.stall_uploads()  # the next checkpoint's upload hangs part-way
            while not proxy.stalled_chunks:
                assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
                assert time.time() < deadline, "no upload after the first checkpoint"
                time.sleep(0.1)
            complete = [c.epoch for c in ckpt.list_checkpoints(run)]
        finally:
            driver.send_signal(signal.SIGKILL)  # no cleanup, no waiting for the upload
            driver.wait(30)
            log.close()
    assert max(complete) < cfg.epochs  # killed before the end
    assert [c.epoch for c in ckpt.list_checkpoints(run)] == complete  # the half-sent one is not a checkpoint
    last = ckpt.resolve(run, "latest")
    assert last.epoch == max(complete)

    result = train(TrainConfig(resume=run, epochs=cfg.epochs, workers=1, evaluate=False, report=False))
    assert result.run_uri == run
    latest = ckpt.resolve(run, "latest")
    assert latest.epoch == cfg.epochs
    history = latest.manifest["history"]
    assert [h["epoch"] for h in history] == list(range(1, cfg.epochs + 1))
    scores = ("epoch", "loss", "val_loss", "optimizer_iterations")
    kept = [{k: h[k] for k in scores} for h in history[:last.epoch]]
    assert kept == [{k: h[k] for k in scores} for h in last.manifest["history"]]  # not trained again
    steps = history[0]["optimizer_iterations"]
    assert [h["optimizer_iterations"] for h in history] == [steps * e for e in range(1, cfg.epochs + 1)]
    ckpt.load(latest.uri)  # verifies
