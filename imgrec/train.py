"""The training driver: ``train(cfg)`` prepares the run, loads the data, starts
Ray Train's workers (``imgrec.loop``, with hooks from ``imgrec.hooks``) and then
evaluates and reports the finished run. Nothing here runs on a worker."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgrec import checkpoint as ckpt
from imgrec import console, evaluate, models, preflight, report, storage, tracking
from imgrec.augment import Mixing
from imgrec.config import (
    ConfigError,
    TrainConfig,
    from_dict,
    parse_class_weight,
    replace,
    resolve_class_weights,
    to_dict,
)
from imgrec.data import augmented, load_dataset, typical_image_size
from imgrec.hooks import Hook, read_history
from imgrec.layout import RunLayout
from imgrec.loop import loop_config, train_loop_per_worker
from imgrec.loop_state import LoopOptions
from imgrec.placement import cluster_view, plan_workers
from imgrec.progress import TrainingProgress
from imgrec.runtime import controller_env, ensure_ray, forwarded_env, own_progress
from imgrec.timing import timed

__all__ = ["NonFiniteLossError", "RunResult", "default_run_name", "read_history", "run_uri", "train"]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss. Not retried: restarting from the
    last checkpoint would diverge the same way. Lower the learning rate."""


@dataclass
class RunResult:
    run_uri: str
    best_checkpoint: str | None
    latest_checkpoint: str | None
    history: list[dict[str, Any]]
    class_names: list[str]
    test_metrics: dict[str, Any] = field(default_factory=dict)
    report_uri: str | None = None
    bad_files: list[dict[str, str]] = field(default_factory=list)
    restarts: list[dict[str, int]] = field(default_factory=list)  # worker-group restarts, from history.json
    startup: dict[str, float] = field(default_factory=dict)  # start-up phases, seconds, from history.json
    elapsed_s: float = 0.0


def default_run_name(prefix: str = "run") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"


def run_uri(cfg: TrainConfig) -> str:
    return RunLayout.of(cfg.storage, cfg.run_name).uri


@own_progress
def train(cfg: TrainConfig, *, arrays: tuple | None = None, class_names: list[str] | None = None,
          dataset=None, run_config_overrides: dict | None = None, allow_existing: bool = False,
          hooks: list[Hook] | None = None, loop_options: LoopOptions | None = None,
          concurrent_trials: int = 1) -> RunResult:
    """Train on a Ray cluster (started locally if none is running) and return the run.

    One call for the common case: ``train(TrainConfig(data=DataConfig(uri=...)))``.
    ``arrays`` takes CIFAR-style in-memory ``((x_train, y_train), (x_test, y_test))``.
    An existing run folder is an error unless ``cfg.resume`` names it (or
    ``allow_existing``, for callers such as Tune that restart their own trials):
    Ray Train would otherwise silently continue the old run. ``hooks`` run on
    every worker after imgrec's own (``imgrec.hooks``); ``loop_options`` tunes the
    worker's input pipeline (``imgrec.loop.LoopOptions``). ``concurrent_trials``:
    the runs sharing the cluster at once (Tune), which ``workers="auto"`` divides by.
    Progress is drawn here, from rank 0's events (``imgrec.progress``).
    """
    t_start = time.time()
    cfg, resume_checkpoint = _prepare(cfg, allow_existing, data=arrays is None and dataset is None)
    run = RunLayout.of(cfg.storage, cfg.run_name)
    phases: dict[str, float] = {}  # the driver's start-up, in the run's history (imgrec.timing)
    with timed(phases, "driver_ray_s"):
        ensure_ray()
    with timed(phases, "driver_placement_s"):
        cfg, loop_options, data_tasks = _place_workers(cfg, loop_options, concurrent_trials)
    with timed(phases, "driver_data_s"):  # listing, decoding once, materializing
        data = dataset or load_dataset(cfg.data, arrays=arrays, class_names=class_names, tasks=data_tasks,
                                       storage_uri=cfg.storage, shuffle_seed=cfg.augment.seed)
    print(f"[imgrec] data: {data.summary()}", flush=True)
    if data.counts["train"] < cfg.batch_size:
        raise ValueError(f"only {data.counts['train']} training images for a global batch of {cfg.batch_size}; "
                         "lower --batch-size")
    class_weights = _class_weights(cfg, data)  # before Ray Train starts: an unknown class name is refused here
    mixing = Mixing(len(data.class_names), cfg.mixup, cfg.cutmix) if cfg.mixes else None
    datasets = {"train": augmented(data.train, cfg.augment, tasks=data_tasks, mixing=mixing, shuffled=data.streamed)}
    if data.val is not None and data.counts["val"] >= cfg.workers:
        datasets["val"] = data.val
    progress = TrainingProgress()  # the board rank 0 reports to; drawn here while fit() runs
    config = loop_config(cfg, class_names=data.class_names, run=run, train_rows=data.counts["train"],
                         val_rows=data.counts["val"] if "val" in datasets else 0,
                         manifest_base=_manifest_base(cfg, data, class_weights), class_weights=class_weights,
                         resume_checkpoint=resume_checkpoint, options=loop_options, hooks=hooks,
                         driver_phases=phases, progress=progress.board)
    trainer = _trainer(cfg, config, datasets, run_config_overrides)
    print(f"[imgrec] training {cfg.model.name} on {cfg.workers} worker(s), run {run.uri}", flush=True)
    with tracking.track_run(cfg, run.uri):  # MLflow, from this process only (imgrec.tracking)
        with progress, controller_env():
            trainer.fit()
        result = _finish(cfg, run, data)
    result.elapsed_s = time.time() - t_start
    if result.test_metrics:
        print(f"[imgrec] test accuracy: {result.test_metrics['accuracy']:.4f} "
              f"on {result.test_metrics['count']} images ({result.test_metrics['split']})", flush=True)
    if result.report_uri:
        print(f"[imgrec] report: {result.report_uri}", flush=True)
    return result


def _prepare(cfg: TrainConfig, allow_existing: bool, data: bool = True) -> tuple[TrainConfig, str | None]:
    """The run's full config (resumed, named, sized) and the checkpoint it resumes
    from; refuses a bad config or URI (``imgrec.preflight``; ``data``: check the data
    tree too) and an existing run folder before Ray starts and before anything is written."""
    cfg, resume_checkpoint = _resume_config(cfg)
    preflight.check_train(cfg, data=data)
    if cfg.run_name is None:
        cfg = from_dict(TrainConfig, {**to_dict(cfg), "run_name": default_run_name()})
    if cfg.data.decode.image_size is None:
        cfg = replace(cfg, **{"data.decode.image_size": default_image_size(cfg, data)})
    run = RunLayout.of(cfg.storage, cfg.run_name)
    if not resume_checkpoint and not allow_existing and storage.exists(run.history):
        raise ConfigError(f"run {run.uri} already exists; continue it with --resume {run.uri}, or choose another "
                          "--run-name")
    if not storage.is_s3(cfg.storage):  # an S3 bucket is never created here; preflight checked it
        storage.ensure_bucket(cfg.storage)
    return cfg, resume_checkpoint


def default_image_size(cfg: TrainConfig, data: bool = True) -> tuple[int, int]:
    """The size to decode to when none is given: the model's input size, or the data's
    own (median of a header sample) where both its sides are smaller, down to the
    model's smallest; upsampling 32x32 CIFAR photos 4x per side costs 16x the
    compute for no accuracy (issue #19). ``data``: an image tree or manifest to sample."""
    spec = models.get_spec(cfg.model.name)
    model_h, model_w = spec.default_size
    if not data or cfg.data.uri in ("", *preflight.NAMED_DATASETS):  # in memory: nothing to sample
        return (model_h, model_w)
    sampled = typical_image_size(cfg.data.uri)
    if sampled is None or not (sampled[0] < model_h and sampled[1] < model_w):
        return (model_h, model_w)
    size = (max(sampled[0], spec.min_size), max(sampled[1], spec.min_size))
    print(f"[imgrec] image size {size[0]}x{size[1]}: the data's own (median of a header sample), smaller than "
          f"{spec.name}'s default {model_h}x{model_w}; --image-size sets it", flush=True)
    return size


def _place_workers(cfg: TrainConfig, options: LoopOptions | None,
                   concurrent_trials: int) -> tuple[TrainConfig, LoopOptions, int | None]:
    """Resolve ``workers`` ("auto" or a count) on the connected cluster into a count,
    CPUs and GPUs per worker, and TensorFlow pools the caller did not set; and the
    cap on Ray Data's concurrent tasks (``imgrec.placement.data_tasks``)."""
    plan = plan_workers(cluster_view(), cfg.workers, cpus_per_worker=cfg.cpus_per_worker,
                        gpus_per_worker=cfg.gpus_per_worker, concurrent_trials=concurrent_trials)
    print(f"[imgrec] workers: {plan.describe()}", flush=True)
    options = options or LoopOptions()
    options = dataclasses.replace(options, intra_op_threads=options.intra_op_threads or plan.intra_op_threads,
                                  inter_op_threads=options.inter_op_threads or plan.inter_op_threads)
    cfg = replace(cfg, workers=plan.workers, cpus_per_worker=plan.cpus_per_worker,
                  gpus_per_worker=plan.gpus_per_worker)
    return cfg, options, plan.data_tasks


def _resume_config(cfg: TrainConfig) -> tuple[TrainConfig, str | None]:
    """``--resume RUN_URI``: continue that run (same folder, config from its manifest)
    from its latest checkpoint; only ``epochs`` and cluster shape may change."""
    if not cfg.resume:
        return cfg, None
    with preflight.blame("resume"):
        latest = ckpt.resolve(cfg.resume, "latest")
    saved = from_dict(TrainConfig, latest.manifest["train_config"])
    run = storage.normalize(cfg.resume) if not storage.exists(storage.join(cfg.resume, ckpt.MANIFEST_FILE)) \
        else storage.parent(latest.uri)
    resumed = from_dict(TrainConfig, {
        **to_dict(saved),
        "epochs": cfg.epochs,
        "workers": cfg.workers,
        "cpus_per_worker": cfg.cpus_per_worker,
        "gpus_per_worker": cfg.gpus_per_worker,
        "storage": storage.parent(run),
        "run_name": storage.basename(run),
        "resume": None,
        "evaluate": cfg.evaluate,
        "report": cfg.report,
        "tracking": cfg.tracking,
    })
    return resumed, latest.uri


def _class_weights(cfg: TrainConfig, data) -> list[float] | None:
    """The loss weight of each class (``cfg.class_weight`` resolved on the training
    split's class counts), or None: unweighted."""
    counts = data.class_counts.get("train")
    if counts is None and parse_class_weight(cfg.class_weight) == "balanced":  # a dataset made without counting
        counts = [0] * len(data.class_names)
        for batch in data.train.select_columns(["label"]).iter_batches(batch_size=4096, batch_format="numpy"):
            for label, n in zip(*np.unique(batch["label"], return_counts=True), strict=True):
                counts[int(label)] += int(n)
    weights = resolve_class_weights(cfg.class_weight, data.class_names, counts)
    if weights is not None:
        print("[imgrec] class weights: " + ", ".join(f"{n} {w:.4g}" for n, w in zip(data.class_names, weights,
                                                                                   strict=True)), flush=True)
    return weights


def _manifest_base(cfg: TrainConfig, data, class_weights: list[float] | None = None) -> dict[str, Any]:
    """What every checkpoint of the run records besides its epoch and metrics;
    ``class_weights``: the resolved loss weight per class name (None: unweighted)."""
    spec = models.get_spec(cfg.model.name)
    return {
        "run_name": cfg.run_name,
        "class_names": data.class_names,
        "image_size": list(cfg.data.decode.image_size),
        "decode": to_dict(cfg.data.decode),
        "model": to_dict(cfg.model),
        "backbone": cfg.model.name if spec.kind == "backbone" else None,
        "augment": to_dict(cfg.augment),
        "data": {"uri": data.source, "split_seed": data.split_seed, "validation_split": data.validation_split,
                 "counts": data.counts, "bad_files": len(data.bad_files), "manifest_sha256": data.manifest_sha256},
        "train_config": to_dict(cfg),
        "class_weights": None if class_weights is None else dict(zip(data.class_names, class_weights, strict=True)),
    }


def _trainer(cfg: TrainConfig, config: dict[str, Any], datasets: dict, run_config_overrides: dict | None):
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from imgrec.tf_backend import TFConfigBackend

    fs, path = storage.resolve(cfg.storage)
    env = forwarded_env()
    run_config = RunConfig(
        name=cfg.run_name,
        storage_path=path,
        storage_filesystem=fs,
        checkpoint_config=CheckpointConfig(
            num_to_keep=max(1, cfg.keep_checkpoints),
            checkpoint_score_attribute="val_accuracy",
            checkpoint_score_order="max",
        ),
        failure_config=FailureConfig(max_failures=cfg.max_failures),
        worker_runtime_env={"env_vars": env} if env else None,
        # Ray Train's own INFO lines (resources requested, worker group started) only with -v
        logging_config=LoggingConfig(log_level="DEBUG" if console.verbose() else "WARNING"),
        **(run_config_overrides or {}),
    )
    gpus = {"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker else {}
    return DataParallelTrainer(  # not TensorflowTrainer: see imgrec.tf_backend
        train_loop_per_worker,
        train_loop_config=config,
        backend_config=TFConfigBackend(),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpus_per_worker > 0,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker, **gpus}),
        datasets=datasets,
        run_config=run_config,
    )


def _finish(cfg: TrainConfig, run: RunLayout, data) -> RunResult:
    """The finished run: its checkpoints, then evaluation and report as configured."""
    hist = read_history(run.uri)
    if hist["status"] == "nonfinite":
        raise NonFiniteLossError(
            f"run {run.uri}: loss became non-finite in epoch {len(hist['epochs'])}; "
            f"lower the learning rate (now {cfg.learning_rate}) or check the data"
        )
    best = ckpt.resolve(run.uri, "best")
    latest = ckpt.resolve(run.uri, "latest")
    result = RunResult(
        run_uri=run.uri,
        best_checkpoint=best.uri,
        latest_checkpoint=latest.uri,
        history=hist["epochs"] or latest.manifest["history"],  # history.json also has the last epoch's timings
        class_names=data.class_names,
        bad_files=data.bad_files,
        restarts=hist.get("restarts", []),
        startup=hist.get("startup", {}),
    )
    if cfg.evaluate:
        result.test_metrics = evaluate.evaluate_run(result, data, cfg)
    if cfg.report:
        result.report_uri = report.write_run_report(result, cfg)
    return result
