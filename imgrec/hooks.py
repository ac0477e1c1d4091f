"""Hooks around the worker loop (``imgrec.loop``), in the manner of Keras callbacks.

Every rank runs every hook, in the same order: a hook that reads model variables
(saving, digests) performs collectives, and a collective entered on one rank alone
hangs. A hook that should act on one rank only (writing a file, reporting a
checkpoint) still runs everywhere and checks ``loop.rank`` inside.

Entry points: ``on_train_begin``, ``on_epoch_begin``, ``on_train_batch_end``
(given the epoch's running sums as device tensors: reading them is a host sync,
so a step hook reads them rarely), ``on_epoch_end`` (given the epoch's metrics,
which are also the last entry of ``loop.history``) and ``on_train_end``.

``default_hooks`` is the order imgrec runs; ``train(cfg, hooks=[...])`` adds more
before the timing hook.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import threading
import time
from typing import Any

from imgrec import checkpoint as ckpt
from imgrec import progress, storage, timing
from imgrec.layout import RunLayout
from imgrec.loop_state import WorkerLoop
from imgrec.runtime import FAULT_ENV, worker_echo
from imgrec.stages import final_stage_trainable


class Hook:
    """Override any entry point; each gets the worker's ``WorkerLoop``."""

    name = "hook"  # the key of this hook's time in the epoch record (``time_<name>_s``)
    hook_list: HookList | None = None  # set by the HookList that runs it

    def on_train_begin(self, loop: WorkerLoop) -> None:
        pass

    def on_epoch_begin(self, loop: WorkerLoop, epoch: int) -> None:
        pass

    def on_train_batch_end(self, loop: WorkerLoop, step: int, totals) -> None:
        pass

    def on_epoch_end(self, loop: WorkerLoop, epoch: int, metrics: dict[str, Any]) -> None:
        pass

    def on_train_end(self, loop: WorkerLoop) -> None:
        pass


class HookList:
    """Calls the hooks in order and times each one's ``on_epoch_end`` into
    ``timings`` (read by ``TimingHook``)."""

    def __init__(self, hooks: list[Hook]):
        self.hooks = list(hooks)
        self.timings: dict[str, float] = {}
        # Only hooks that override the step entry point are called per step.
        self._step_hooks = [h for h in self.hooks if type(h).on_train_batch_end is not Hook.on_train_batch_end]
        for hook in self.hooks:
            hook.hook_list = self

    def on_train_begin(self, loop: WorkerLoop) -> None:
        for hook in self.hooks:
            hook.on_train_begin(loop)

    def on_epoch_begin(self, loop: WorkerLoop, epoch: int) -> None:
        self.timings = {}
        for hook in self.hooks:
            hook.on_epoch_begin(loop, epoch)

    def on_train_batch_end(self, loop: WorkerLoop, step: int, totals) -> None:
        for hook in self._step_hooks:
            hook.on_train_batch_end(loop, step, totals)

    def on_epoch_end(self, loop: WorkerLoop, epoch: int, metrics: dict[str, Any]) -> None:
        for hook in self.hooks:
            t0 = time.perf_counter()
            hook.on_epoch_end(loop, epoch, metrics)
            self.timings[hook.name] = self.timings.get(hook.name, 0.0) + time.perf_counter() - t0

    def on_train_end(self, loop: WorkerLoop) -> None:
        for hook in self.hooks:
            hook.on_train_end(loop)


def default_hooks(loop: WorkerLoop, extra: list[Hook] | None = None) -> list[Hook]:
    """imgrec's hooks in the order they run. Early stopping decides before the
    checkpoint hook, which always saves the last epoch; timing comes after every
    other hook, and the history last, so ``history.json`` holds each epoch whole.
    (Writing it after the report is safe: Ray Train's controller learns of a report
    only at its next poll of the workers, seconds later, so Tune cannot stop a
    trial in between.) The replica digests come before the final history, which
    marks the run finished."""
    hooks: list[Hook] = []
    fault = FaultInjection.from_env(loop.run.name)
    if fault is not None:
        hooks.append(fault)
    hooks += [TerminateOnNonFinite(), ProgressHook(), TensorBoardHook(), ReplicaDigestHook()]
    if loop.cfg.early_stopping_patience:
        hooks.append(EarlyStopping(loop.cfg.early_stopping_patience))
    return hooks + [CheckpointHook()] + list(extra or []) + [TimingHook(), HistoryHook()]


def finite(metrics: dict[str, Any]) -> bool:
    return math.isfinite(metrics["loss"]) and math.isfinite(metrics["val_loss"])


# =========================================================================== the hooks


class TerminateOnNonFinite(Hook):
    """A NaN or infinite loss ends the run on every rank (they all see the same
    all-reduced loss). Not retried: a restart from the last checkpoint would
    diverge the same way, so the driver raises ``NonFiniteLossError``."""

    name = "nonfinite"

    def on_epoch_end(self, loop, epoch, metrics):
        if not finite(metrics):
            loop.status = "nonfinite"
            loop.stop_training = True


class ProgressHook(Hook):
    """Rank 0's progress, sent to the driver, which draws it (``imgrec.progress``):
    a step event at most every ``STEP_EVERY_S`` (loss and accuracy so far, img/s),
    the epoch's metrics, and at the end one event it waits for. Without a board (a loop run outside ``train``) rank 0
    prints the epoch line itself."""

    name = "progress"

    def on_epoch_begin(self, loop, epoch):
        self.epoch, self.started, self.sent = epoch, time.perf_counter(), 0.0

    def on_train_batch_end(self, loop, step, totals):
        now = time.perf_counter()
        if loop.rank != 0 or loop.progress is None or now - self.sent < progress.STEP_EVERY_S:
            return
        self.sent = now
        loss_sum, correct, seen = (float(v) for v in totals)  # a host sync, at most twice a second
        loop.tell({"kind": "step", "epoch": self.epoch + 1, "epochs": loop.cfg.epochs, "step": step + 1,
                   "steps": loop.steps_per_epoch, "loss": loss_sum / max(seen, 1.0),
                   "accuracy": correct / max(seen, 1.0), "images_per_s": seen / max(now - self.started, 1e-9)})  # seen: all ranks'

    def on_epoch_end(self, loop, epoch, metrics):
        if loop.rank != 0:
            return
        event = {"kind": "epoch", "epoch": epoch + 1, "epochs": loop.cfg.epochs,
                 "metrics": {k: metrics[k] for k in progress.EPOCH_METRICS}}
        if not loop.tell(event):
            worker_echo(progress.epoch_line(event))

    def on_train_end(self, loop):
        if loop.rank == 0:  # the last epoch's line is on the board before fit() returns in the driver
            loop.tell({"kind": "end"}, wait=True)


class TensorBoardHook(Hook):
    """Rank 0 writes scalars to a local event file and uploads it to
    ``<run>/tensorboard/`` every epoch (TensorFlow cannot write ``s3://`` here)."""

    name = "tensorboard_events"
    SCALARS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")

    def on_train_begin(self, loop):
        import tensorflow as tf

        self.local = tempfile.mkdtemp(prefix="imgrec-tb-") if loop.rank == 0 else None
        self.writer = tf.summary.create_file_writer(self.local) if self.local else None

    def on_epoch_end(self, loop, epoch, metrics):
        if self.writer is None:
            return
        import tensorflow as tf

        with self.writer.as_default(step=epoch + 1):
            for key in self.SCALARS:
                tf.summary.scalar(key, metrics[key])
        self.writer.flush()
        storage.upload_dir(self.local, loop.run.tensorboard, progress=False)

    def on_train_end(self, loop):
        if self.writer is not None:
            self.writer.close()
            shutil.rmtree(self.local, ignore_errors=True)


class HistoryHook(Hook):
    """Rank 0 keeps ``history.json``: every epoch, the run's status, and each time
    Ray Train restarted the worker group from a checkpoint (``restarts``: the
    epoch it resumed after)."""

    name = "history"

    def on_train_begin(self, loop):
        self.restarts: list[dict[str, int]] = []
        if loop.rank == 0 and loop.restored_from is not None:
            previous = read_history(loop.run.uri)
            self.restarts = previous.get("restarts", [])
            if loop.restored_from == "ray":
                self.restarts = [*self.restarts, {"from_epoch": loop.start_epoch}]
            # A checkpoint's history was written before its epoch's timing was complete;
            # history.json has each epoch's whole record.
            recorded = {h["epoch"]: h for h in previous.get("epochs", [])}
            loop.history = [{**h, **recorded.get(h["epoch"], {})} for h in loop.history]

    def on_epoch_end(self, loop, epoch, metrics):
        self._write(loop)

    def on_train_end(self, loop):
        self._write(loop)

    def _write(self, loop):
        if loop.rank == 0:
            write_history(loop.run, loop.history, loop.status, self.restarts, loop.startup)


class CheckpointHook(Hook):
    """Reports every epoch's metrics; saves a checkpoint every ``checkpoint_every``
    epochs, on an improving epoch and on the last one (the run's end, or early
    stopping). Every rank saves (saving reads sync-on-read BatchNorm statistics:
    a collective); rank 0 alone hands its folder to ``ray.train.report``, which
    uploads it in the background (``CheckpointUploadMode.ASYNC``: one upload
    thread, the local folder deleted once uploaded, a failed upload fails the run,
    and the run ends only when its uploads have). The upload is ours (``upload``):
    ``model.keras`` first, ``manifest.json`` last, so a manifest in storage always
    means a whole checkpoint. Rank 0 waits for the previous upload before handing
    on the next: at most one is in flight, none queue up. A non-finite epoch
    reports without a checkpoint."""

    name = "checkpoint"

    def on_train_begin(self, loop):
        self.best = max([h.get("val_accuracy", float("-inf")) for h in loop.history] or [float("-inf")])
        self.uploaded = threading.Event()
        self.uploaded.set()  # nothing in flight
        self.last_upload_s = 0.0

    def on_epoch_end(self, loop, epoch, metrics):
        import ray.train

        if loop.status == "nonfinite":
            ray.train.report({**metrics, "status": "nonfinite"})
            return
        if not self.due(loop, epoch, metrics):
            ray.train.report(metrics)
            return
        t0 = time.perf_counter()
        self.uploaded.wait()
        metrics["upload_wait_s"], metrics["last_upload_s"] = time.perf_counter() - t0, self.last_upload_s
        local = tempfile.mkdtemp(prefix=f"imgrec-ckpt-r{loop.rank}-")
        self.save(loop, epoch, metrics, local)
        mode = ray.train.CheckpointUploadMode.ASYNC
        if loop.rank == 0:
            self.uploaded.clear()
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(local),
                             checkpoint_upload_mode=mode, checkpoint_upload_fn=self.upload,
                             delete_local_checkpoint_after_upload=True)
        else:
            shutil.rmtree(local, ignore_errors=True)
            ray.train.report(metrics, checkpoint_upload_mode=mode)

    def due(self, loop, epoch: int, metrics: dict[str, Any]) -> bool:
        """Save this epoch? Every ``checkpoint_every`` epochs, an improving one, the
        last one. val_accuracy is all-reduced, so every rank decides alike."""
        improved = metrics["val_accuracy"] > self.best
        self.best = max(self.best, metrics["val_accuracy"])
        every = loop.cfg.checkpoint_every
        return improved or (epoch + 1) % every == 0 or epoch + 1 == loop.cfg.epochs or loop.stop_training

    def upload(self, checkpoint, dir_name: str):
        """Ray's upload thread: the checkpoint's files into ``<run>/<dir_name>/``,
        the manifest last; signals the loop when done, whether or not it worked."""
        import pyarrow.fs
        import ray.train

        t0 = time.perf_counter()
        try:
            run = ray.train.get_context().get_storage()
            dest = f"{run.experiment_fs_path}/{dir_name}"
            names = sorted(os.listdir(checkpoint.path), key=lambda n: n == ckpt.MANIFEST_FILE)  # manifest last
            run.storage_filesystem.create_dir(dest, recursive=True)  # on S3: a HeadBucket and an empty marker per parent
            for name in names:
                pyarrow.fs.copy_files(os.path.join(checkpoint.path, name), f"{dest}/{name}",
                                      source_filesystem=pyarrow.fs.LocalFileSystem(),
                                      destination_filesystem=run.storage_filesystem)
            return ray.train.Checkpoint(dest, filesystem=run.storage_filesystem)
        finally:
            self.last_upload_s = time.perf_counter() - t0
            self.uploaded.set()

    @staticmethod
    def save(loop, epoch, metrics, directory: str) -> None:
        manifest = {**loop.manifest_base, "epoch": epoch + 1, "metrics": metrics, "history": loop.history,
                    "freeze_depth": loop.stage, "optimizer_iterations": metrics["optimizer_iterations"]}
        # In scope, sync-on-read BatchNorm statistics are all-reduced while saving.
        with loop.strategy.scope(), final_stage_trainable(loop.model, loop.cfg, loop.stage):
            ckpt.write_checkpoint(loop.model, directory, manifest)


class EarlyStopping(Hook):
    """Stop when val_accuracy has not improved for ``patience`` epochs (counted
    from the best epoch of a restored history too)."""

    name = "early_stopping"

    def __init__(self, patience: int):
        self.patience = patience

    def on_train_begin(self, loop):
        self.best = max([h.get("val_accuracy", -1) for h in loop.history] or [-1])
        self.stale = 0

    def on_epoch_end(self, loop, epoch, metrics):
        if loop.status == "nonfinite":
            return
        if metrics["val_accuracy"] > self.best:
            self.best, self.stale = metrics["val_accuracy"], 0
            return
        self.stale += 1
        if self.stale >= self.patience:
            loop.say(f"early stopping: val_accuracy has not improved for {self.stale} epochs "
                     f"(best {self.best:.4f})")
            loop.stop_training = True


class TimingHook(Hook):
    """Completes the epoch's breakdown (``imgrec.timing``): every hook's time
    before it (``time_<hook>_s``), the epoch's wall clock (``epoch_time_s``) and
    what no phase covers (``unaccounted_s``). Only the history hook runs after it."""

    name = "timing"

    def on_epoch_end(self, loop, epoch, metrics):
        for name, seconds in self.hook_list.timings.items():
            metrics[f"time_{name}_s"] = seconds
        metrics["epoch_time_s"] = time.perf_counter() - loop.epoch_started
        metrics["ended_at"] = time.time()  # wall clock, for rates between epoch ends (benchmarks)
        metrics[timing.UNACCOUNTED] = timing.unaccounted(metrics)


class ReplicaDigestHook(Hook):
    """Every rank records a digest of its final weights in ``<run>/replicas/``, so a
    divergence between workers (a broken all-reduce) is visible, not silent."""

    name = "replica_digest"

    def on_train_end(self, loop):
        if loop.status == "nonfinite":
            return
        with loop.strategy.scope():
            digest = weights_digest(loop.model)
        storage.atomic_write(loop.run.replica(loop.rank), json.dumps({"rank": loop.rank, "weights_sha256": digest}))


def weights_digest(model) -> dict[str, str]:
    """SHA-256 of the trainable and of the non-trainable weights. Reading a
    sync-on-read variable (BatchNorm statistics) aggregates across workers, so
    every rank must call this, in the same order."""
    import numpy as np

    digests = {}
    for name, weights in (("trainable", model.trainable_weights), ("non_trainable", model.non_trainable_weights)):
        digest = hashlib.sha256()
        for weight in weights:
            digest.update(np.ascontiguousarray(np.asarray(weight.value.read_value())).tobytes())
        digests[name] = digest.hexdigest()
    return digests


# =========================================================================== history.json


def write_history(run: RunLayout, history: list[dict], status: str, restarts: list[dict],
                  startup: dict[str, float] | None = None) -> None:
    record = {"status": status, "epochs": history, "restarts": restarts, "startup": startup or {}}
    storage.atomic_write(run.history, json.dumps(record, indent=1))


def read_history(run_uri: str) -> dict[str, Any]:
    uri = RunLayout(run_uri).history
    if not storage.exists(uri):
        return {"status": "missing", "epochs": []}
    return json.loads(storage.read_text(uri))


# =========================================================================== fault injection (tests)

FAULT_MODES = ("crash", "nan")


class FaultInjection(Hook):
    """Test hook, switched on by ``$IMGREC_FAULT_INJECTION`` (JSON: ``mode``,
    ``epoch``, optional ``runs``: run names it applies to). ``crash``: the last
    rank's process dies once, at the start of ``epoch`` (1-based), and Ray Train
    restarts the worker group from the last checkpoint. ``nan``: the loss of
    ``epoch`` and later becomes NaN, exercising the non-finite path end to end."""

    name = "fault"

    def __init__(self, mode: str, epoch: int):
        if mode not in FAULT_MODES:
            raise ValueError(f"{FAULT_ENV}: mode must be one of {FAULT_MODES}, got {mode!r}")
        self.mode, self.epoch = mode, int(epoch)

    @classmethod
    def from_env(cls, run_name: str) -> FaultInjection | None:
        raw = os.environ.get(FAULT_ENV)
        if not raw:
            return None
        spec = json.loads(raw)
        if spec.get("runs") is not None and run_name not in spec["runs"]:
            return None
        return cls(spec["mode"], spec["epoch"])

    def on_epoch_begin(self, loop, epoch):
        if self.mode != "crash" or epoch + 1 != self.epoch or loop.rank != loop.world - 1:
            return
        marker = loop.run.fault_marker
        if storage.exists(marker):
            return  # once per run: the restarted group goes on
        storage.atomic_write(marker, f"worker {loop.rank} killed in epoch {epoch + 1}\n")
        # Train V2's controller learns of a reported checkpoint when it next polls the
        # workers (every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default). Dying right
        # after the report would restart the group from scratch, not from that
        # checkpoint, and the test would not exercise recovery; so wait two polls.
        time.sleep(2 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 2.0)) + 1)
        worker_echo(f"[imgrec] fault injection: killing worker {loop.rank} in epoch {epoch + 1}")
        os._exit(1)

    def on_epoch_end(self, loop, epoch, metrics):
        if self.mode == "nan" and epoch + 1 >= self.epoch:
            metrics["loss"] = float("nan")


@contextlib.contextmanager
def fault_injection(mode: str, epoch: int, runs: list[str] | None = None):
    """Switch ``FaultInjection`` on for the runs started inside the block (tests)."""
    FaultInjection(mode, epoch)  # validates
    previous = os.environ.get(FAULT_ENV)
    os.environ[FAULT_ENV] = json.dumps({"mode": mode, "epoch": epoch, "runs": runs})
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(FAULT_ENV, None)
        else:
            os.environ[FAULT_ENV] = previous
