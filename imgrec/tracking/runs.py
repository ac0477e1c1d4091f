"""What a run and a sweep log to MLflow, each step run on the session's thread
(``imgrec.tracking.session``): a run's per-epoch metrics from its ``history.json``
as they appear, then its config as params, its report, plots and
``evaluation.json`` as artifacts, its test scores, and its run and best
checkpoint URIs as tags; a sweep as a parent run with a child run per trial."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from typing import Any

import pyarrow.fs as pafs

from imgrec import checkpoint as ckpt
from imgrec import storage
from imgrec.hooks import read_history
from imgrec.layout import RunLayout, SweepLayout
from imgrec.tracking.session import Session

TAG_RUN = "imgrec.run_uri"
TAG_SWEEP = "imgrec.sweep_uri"
TAG_BEST = "imgrec.best_checkpoint"
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own: the UI nests a sweep's trials under it
# the files of a folder logged as artifacts (layout attributes), and its folders of files
RUN_FILES = ("report", "history_plot", "confusion_plot", "timing_plot", "evaluation")
RUN_FOLDERS = ("gallery",)  # the report's thumbnails
SWEEP_FILES = ("config", "results_csv", "plot", "best", "evaluation")
PARAM_MAX = 6000  # MLflow's longest param value
DONE_METRIC = "epoch_time_s"  # in every epoch's record (imgrec.timing): its steps are the epochs logged


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A config as MLflow params: ``{"model.name": "small_cnn", "epochs": "10", ...}``."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = (value if isinstance(value, str) else json.dumps(value, default=str))[:PARAM_MAX]
    return out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class TrackedRun:
    """One MLflow run following one imgrec run folder (or, ``tag=TAG_SWEEP``, a sweep's)."""

    def __init__(self, uri: str, name: str | None, params: dict[str, str] | None = None,
                 parent: TrackedRun | None = None, tag: str = TAG_RUN):
        self.uri, self.name, self.params, self.parent, self.tag = storage.normalize(uri), name, params, parent, tag
        self.run_id: str | None = None
        self.logged: dict[int, dict] = {}  # epoch -> the record logged for it
        self.done: set[int] = set()  # epochs a resumed run logged before (not logged twice)
        self.startup_logged = False

    def start(self, session: Session, watch: bool = True) -> None:
        """Continue the run tracked for this URI before (``--resume``), or create it."""
        client = session.client
        found = session.find_run(self.tag, self.uri)
        if found is not None:
            self.run_id, existing = found.info.run_id, found.data.params
            self.done = {m.step for m in client.get_metric_history(self.run_id, DONE_METRIC)}
            self.startup_logged = True
            client.update_run(self.run_id, status="RUNNING")
        else:
            tags = {self.tag: self.uri}
            if self.parent is not None and self.parent.run_id:
                tags[TAG_PARENT] = self.parent.run_id
            self.run_id, existing = client.create_run(session.experiment_id, run_name=self.name,
                                                      tags=tags).info.run_id, {}
        if self.params:
            self.log_params(session, self.params, existing)
        if watch:
            session.watched.append(self)

    def log_params(self, session: Session, params: dict[str, str], existing: dict[str, str]) -> None:
        """Params not logged yet (MLflow refuses to change one: a resumed run keeps its first values)."""
        from mlflow.entities import Param

        new = [Param(k, v) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), 100):  # MLflow takes at most 100 params a call
            session.client.log_batch(self.run_id, params=new[i:i + 100])

    def poll(self, session: Session) -> None:
        """Log the epochs of ``history.json`` not logged yet (or changed since: a restart redid them)."""
        from mlflow.entities import Metric

        if self.run_id is None:
            return
        try:
            history = read_history(self.uri)
        except (storage.StorageError, OSError, ValueError):
            return  # read again at the next poll
        now = int(time.time() * 1000)
        metrics = []
        for record in history.get("epochs", []):
            epoch = int(record.get("epoch", 0))
            if epoch in self.done and epoch not in self.logged:
                self.logged[epoch] = record
            if self.logged.get(epoch) != record:
                metrics += [Metric(k, float(v), now, epoch) for k, v in record.items() if k != "epoch" and _number(v)]
                self.logged[epoch] = record
        if history.get("startup") and not self.startup_logged:  # the start-up phases, at step 0
            metrics += [Metric(f"startup_{k}", float(v), now, 0) for k, v in history["startup"].items() if _number(v)]
            self.startup_logged = True
        self._log_metrics(session, metrics)

    def _log_metrics(self, session: Session, metrics: list) -> None:
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics a call
            session.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def finish(self, session: Session, status: str, best: str | None = None, tags: dict[str, str] | None = None,
               files: tuple[str, ...] = RUN_FILES, folders: tuple[str, ...] = RUN_FOLDERS) -> None:
        """The last epochs, test scores, artifacts and tags; then the run's end."""
        if self.run_id is None:
            return
        if self in session.watched:
            session.watched.remove(self)
        self.poll(session)
        layout = (SweepLayout if self.tag == TAG_SWEEP else RunLayout)(self.uri)
        if best is None and status == "FINISHED" and self.tag == TAG_RUN:
            best = _best_checkpoint(self.uri)
        for key, value in {**({TAG_BEST: best} if best else {}), **(tags or {})}.items():
            session.client.set_tag(self.run_id, key, str(value)[:PARAM_MAX])
        self._log_metrics(session, _test_metrics(layout))
        _upload(session, self.run_id, layout, files, folders)
        session.client.set_terminated(self.run_id, status)


def _best_checkpoint(run_uri: str) -> str | None:
    try:
        return ckpt.resolve(run_uri, "best").uri
    except (ckpt.CheckpointError, storage.StorageError):
        return None


def _test_metrics(layout: RunLayout | SweepLayout) -> list:
    """``evaluation.json``'s scores as ``test_<name>`` metrics (the run's table in MLflow shows them)."""
    from mlflow.entities import Metric

    if not storage.exists(layout.evaluation):
        return []
    scores = json.loads(storage.read_text(layout.evaluation))
    now = int(time.time() * 1000)
    return [Metric(f"test_{k}", float(v), now, 0) for k, v in scores.items() if _number(v)]


def _upload(session: Session, run_id: str, layout, files: tuple[str, ...], folders: tuple[str, ...]) -> None:
    """The folder's files (and folders of files) that exist, as the run's artifacts, names kept
    (``report.html`` links its plots and thumbnails by relative path)."""
    with tempfile.TemporaryDirectory(prefix="imgrec-tracking-") as tmp:
        for attr in files:
            uri = getattr(layout, attr)
            if storage.exists(uri):
                with open(os.path.join(tmp, storage.basename(uri)), "wb") as fh:
                    fh.write(storage.read_bytes(uri))
        if os.listdir(tmp):
            session.client.log_artifacts(run_id, tmp)
        for attr in folders:
            uri = getattr(layout, attr)
            local = os.path.join(tmp, storage.basename(uri))
            try:
                storage.download_prefix(uri, local, progress=False)
            except storage.StorageError:  # not there (no report, or no images to show)
                continue
            session.client.log_artifacts(run_id, local, artifact_path=storage.basename(uri))


class TrackedSweep:
    """A sweep's parent run and, for each trial's run folder under ``trials/`` as it
    appears, a child run following it; ``finish`` completes every trial from the
    results table (trials that failed before writing anything too)."""

    def __init__(self, uri: str, name: str, params: dict[str, str]):
        self.layout = SweepLayout(uri)
        self.parent = TrackedRun(uri, name, params, tag=TAG_SWEEP)
        self.children: dict[str, TrackedRun] = {}

    def start(self, session: Session) -> None:
        self.parent.start(session, watch=False)
        session.watched.append(self)

    def poll(self, session: Session) -> None:
        for run in _folders(self.layout.trials):
            self._child(session, storage.basename(run))

    def _child(self, session: Session, trial: str) -> TrackedRun:
        if trial not in self.children:
            child = TrackedRun(self.layout.trial(trial).uri, trial, parent=self.parent)
            child.start(session)
            self.children[trial] = child
        return self.children[trial]

    def finish(self, session: Session, status: str, rows: list[dict[str, Any]] | None = None,
               best: dict[str, Any] | None = None) -> None:
        if self in session.watched:
            session.watched.remove(self)
        for row in rows or []:
            child = self._child(session, row["trial"])
            config = _trial_config(row["checkpoint"])
            params = flatten(config) if config else \
                {k: str(row[k]) for k in ("freeze_depth", "learning_rate", "batch_size", "augment")}
            child.log_params(session, params, session.client.get_run(child.run_id).data.params)
            tags = {"imgrec.trial_status": row["status"], **({"imgrec.error": row["error"]} if row["error"] else {})}
            child.finish(session, "FAILED" if row["status"] == "error" else "FINISHED", best=row["checkpoint"],
                         tags=tags)
        for child in self.children.values():  # trials not in the table: the sweep itself failed
            if child in session.watched:
                child.finish(session, "KILLED")
        if best:
            now = int(time.time() * 1000)
            from mlflow.entities import Metric

            self.parent._log_metrics(session, [Metric("best_val_accuracy", float(best["val_accuracy"]), now, 0)])
        self.parent.finish(session, status, best=best["checkpoint"] if best else None,
                           tags={"imgrec.best_trial": best["trial"]} if best else None, files=SWEEP_FILES, folders=())


def _trial_config(checkpoint: str | None) -> dict[str, Any] | None:
    """The trial's whole TrainConfig, from its checkpoint's manifest (None: no checkpoint)."""
    try:
        return ckpt.resolve(checkpoint).manifest.get("train_config") if checkpoint else None
    except (ckpt.CheckpointError, storage.StorageError):
        return None


def _folders(uri: str) -> list[str]:
    """The folders right under ``uri`` (one listing level: a trial's checkpoints are not walked)."""
    fs, path = storage.resolve(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    except OSError:
        return []  # listed again at the next poll
    return sorted(storage.join(uri, os.path.basename(i.path)) for i in infos if i.type == pafs.FileType.Directory)
