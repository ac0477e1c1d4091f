"""Distributed training on Ray Train with Keras 3 under MultiWorkerMirroredStrategy.

Why a custom loop and not ``Model.fit``: Keras 3's ``fit`` fails under
MultiWorkerMirroredStrategy (keras-team/keras#20585, ``PerReplica`` errors), and
the tf-keras route needs a flag in every process and writes files plain Keras 3
cannot load. The loop below is the route proven here:

* the model is built and compiled (optimizer included) inside ``strategy.scope()``,
  so ``model.keras`` carries optimizer state and resume continues it;
* each worker's Ray Data shard becomes a tf.data pipeline fed through
  ``distribute_datasets_from_function`` (no auto-sharding: Ray already split it),
  batched at ``global batch // workers``; losses use ``tf.nn.compute_average_loss``
  with the global batch size;
* every rank saves the model to its own temp dir (BatchNorm statistics are
  sync-on-read: a save on one rank alone can hang); rank 0 alone hands its
  checkpoint to ``ray.train.report``, which uploads it to the run's storage.

Global batch semantics: ``TrainConfig.batch_size`` is the batch of one optimizer
step across the whole cluster; each of W workers takes ``batch_size // W``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from imgrec import checkpoint as ckpt
from imgrec import storage
from imgrec.config import ConfigError, TrainConfig, from_dict, replace, to_dict

log = logging.getLogger(__name__)

HISTORY_FILE = "history.json"
FAULT_MARKER = ".fault-injected"


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
    elapsed_s: float = 0.0


def default_run_name(prefix: str = "run") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"


def run_uri(cfg: TrainConfig) -> str:
    return storage.join(cfg.storage, cfg.run_name)


# =========================================================================== worker side


def _make_optimizer(cfg: TrainConfig, steps_per_epoch: int):
    import keras

    lr: Any = cfg.learning_rate
    if cfg.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=_total_steps(cfg, steps_per_epoch))
    elif cfg.lr_schedule == "exponential":
        lr = keras.optimizers.schedules.ExponentialDecay(cfg.learning_rate, decay_steps=max(1, steps_per_epoch),
                                                         decay_rate=0.9)
    elif cfg.lr_schedule != "constant":
        raise ValueError(f"lr_schedule must be constant, cosine or exponential, got {cfg.lr_schedule!r}")
    optimizers = {
        "adam": lambda: keras.optimizers.Adam(lr),
        "sgd": lambda: keras.optimizers.SGD(lr, momentum=0.9),
        "rmsprop": lambda: keras.optimizers.RMSprop(lr),
    }
    if cfg.optimizer not in optimizers:
        raise ValueError(f"optimizer must be one of {sorted(optimizers)}, got {cfg.optimizer!r}")
    return optimizers[cfg.optimizer]()


def _total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The run's length in optimizer steps: what a cosine schedule decays over."""
    return max(1, steps_per_epoch * cfg.epochs)


def _worker_echo(message: str) -> None:
    """One line from a Train worker to the driver, once. Train V2 patches ``print`` to
    log through Train's logger and also tee to the stdout wrapper Ray gives workers,
    so printed lines reached the driver twice; writing to the stream skips the patch."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def _stretch_cosine_schedule(optimizer, total_steps: int, say) -> None:
    """``--resume --epochs N`` makes the run N epochs long. A cosine schedule saved
    with the old length would sit at zero for every added epoch (the optimizer step
    continues past its ``decay_steps``), so it is rebuilt over the new length; the
    step counter and moment estimates are kept. No optimizer or another schedule: no-op."""
    import keras

    schedule = getattr(optimizer, "_learning_rate", None)
    if not isinstance(schedule, keras.optimizers.schedules.CosineDecay) or schedule.decay_steps == total_steps:
        return
    config = {**schedule.get_config(), "decay_steps": total_steps}
    optimizer.learning_rate = keras.optimizers.schedules.CosineDecay.from_config(config)
    say(f"cosine schedule stretched from {schedule.decay_steps} to {total_steps} steps for the new epoch count")


def _stage_freeze_depth(cfg: TrainConfig, epoch: int) -> int | str:
    """Two-stage transfer: the whole backbone frozen for the first ``head_epochs``."""
    return "all" if epoch < cfg.head_epochs else cfg.model.freeze_depth


def _train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import keras
    import numpy as np
    import ray.train
    import tensorflow as tf

    from imgrec import models
    from imgrec.data import shard_batches

    cfg: TrainConfig = from_dict(TrainConfig, loop_config["train"])
    class_names: list[str] = loop_config["class_names"]
    run = loop_config["run_uri"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    say = (lambda *a: _worker_echo(f"[imgrec] {' '.join(str(x) for x in a)}")) if rank == 0 else (lambda *a: None)

    keras.utils.set_random_seed(cfg.seed)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    num_classes = len(class_names)
    image_size = tuple(cfg.data.decode.image_size)
    per_worker = cfg.batch_size // world
    global_batch = per_worker * world
    steps_per_epoch = max(1, loop_config["train_rows"] // world // per_worker)

    # ------------------------------------------------------------- model: new, restored or resumed
    start_epoch, history, restarts = 0, [], []
    restored = ray.train.get_checkpoint()
    source = None
    if restored is not None:
        source = ("ray", restored)
    elif loop_config.get("resume_checkpoint"):
        source = ("uri", loop_config["resume_checkpoint"])
    with strategy.scope():
        if source is None:
            model = models.build_model(cfg.model, num_classes, image_size)
            if cfg.head_epochs > 0:
                models.set_freeze_depth(model, "all")
            model.compile(optimizer=_make_optimizer(cfg, steps_per_epoch))
            # The optimizer must know every variable that any stage will train, so
            # stage two can continue its state: build it on the stage-two set.
            _build_optimizer_for_all_stages(model, cfg)
        else:
            with (source[1].as_directory() if source[0] == "ray" else _nullcontext(
                    ckpt.local_copy(ckpt.resolve(source[1], "latest")))) as local:
                manifest = json.load(open(os.path.join(local, ckpt.MANIFEST_FILE)))
                model = keras.models.load_model(os.path.join(local, ckpt.MODEL_FILE), safe_mode=True)
            start_epoch = int(manifest["epoch"])
            history = list(manifest.get("history", []))
            if rank == 0:  # the only rank that writes history.json
                restarts = read_history(run).get("restarts", [])
                if source[0] == "ray":  # Ray Train restarted the worker group after a failure
                    restarts = [*restarts, {"from_epoch": start_epoch}]
            say(f"restored epoch {start_epoch} from {source[0]} checkpoint; optimizer step",
                int(model.optimizer.iterations.numpy()))
            _stretch_cosine_schedule(model.optimizer, _total_steps(cfg, steps_per_epoch), say)  # no-op on restarts

    if model.optimizer is None:
        raise RuntimeError("checkpoint has no optimizer state; cannot resume training from it")
    loss_fn = _per_example_loss(num_classes)

    def correct_count(y, probs):
        if num_classes == 2 and probs.shape[-1] == 1:
            pred = tf.cast(probs[:, 0] > 0.5, tf.int64)
        else:
            pred = tf.argmax(probs, axis=-1)
        return tf.reduce_sum(tf.cast(tf.equal(pred, y), tf.float32))

    def make_steps():
        # Traced again per stage: the trainable set differs between stages.
        variables = model.trainable_variables

        def train_step(x, y):
            with tf.GradientTape() as tape:
                probs = model(x, training=True)
                per_example = loss_fn(y, probs)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            grads = tape.gradient(loss, variables)
            model.optimizer.apply_gradients(zip(grads, variables, strict=True))
            return tf.reduce_sum(per_example), correct_count(y, probs), tf.cast(tf.shape(y)[0], tf.float32)

        def eval_step(x, y):
            probs = model(x, training=False)
            return tf.reduce_sum(loss_fn(y, probs)), correct_count(y, probs), tf.cast(tf.shape(y)[0], tf.float32)

        def distributed(step):
            @tf.function(reduce_retracing=True)
            def run(batch):
                out = strategy.run(step, args=batch)
                return [strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in out]

            return run

        return distributed(train_step), distributed(eval_step)

    sync_statistics = _batchnorm_sync(strategy, model)

    # ------------------------------------------------------------- data
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if loop_config["has_val"] else None

    def dist_dataset(shard, training: bool):
        def dataset_fn(input_context):
            per_replica = input_context.get_per_replica_batch_size(global_batch)
            ds = tf.data.Dataset.from_generator(
                lambda: shard_batches(shard, per_replica, shuffle_buffer=max(256, 4 * per_replica) if training else 0,
                                      drop_last=training),
                output_signature=(tf.TensorSpec((None, *image_size, 3), tf.uint8), tf.TensorSpec((None,), tf.int64)),
            )
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
            return ds.with_options(options).prefetch(2)

        return strategy.distribute_datasets_from_function(dataset_fn)

    train_data = dist_dataset(train_shard, training=True)
    val_data = dist_dataset(val_shard, training=False) if val_shard is not None else None

    tb_dir = tempfile.mkdtemp(prefix="imgrec-tb-") if rank == 0 else None
    writer = tf.summary.create_file_writer(tb_dir) if rank == 0 else None
    best_val, stale = max([h.get("val_accuracy", -1) for h in history] or [-1]), 0
    stage = None
    steps = None
    if start_epoch >= cfg.epochs:
        say(f"run already has {start_epoch} epochs (epochs={cfg.epochs}); nothing to train")
    for epoch in range(start_epoch, cfg.epochs):
        if _stage_freeze_depth(cfg, epoch) != stage:
            stage = _stage_freeze_depth(cfg, epoch)
            models.set_freeze_depth(model, stage)
            if cfg.head_epochs and epoch == cfg.head_epochs and cfg.lr_schedule == "constant":
                model.optimizer.learning_rate.assign(cfg.learning_rate * cfg.fine_tune_lr_factor)
            steps = make_steps()
            say(f"epoch {epoch + 1}: freeze_depth={stage}, trainable weights={len(model.trainable_weights)}")
        train_step, eval_step = steps
        _maybe_inject_fault(cfg, epoch, rank, run)
        t0 = time.time()
        loss_sum = correct = seen = 0.0
        for i, batch in enumerate(train_data):
            ls, c, n = train_step(batch)
            loss_sum, correct, seen = loss_sum + float(ls), correct + float(c), seen + float(n)
            if rank == 0 and (i + 1) % max(1, steps_per_epoch // 4) == 0:
                say(f"epoch {epoch + 1}/{cfg.epochs} step {i + 1}/{steps_per_epoch} loss {loss_sum / max(seen, 1):.4f}")
        train_time = time.time() - t0
        metrics = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(seen, 1),
            "accuracy": correct / max(seen, 1),
            "images_per_s": seen / max(train_time, 1e-9),
            "train_time_s": train_time,
            "learning_rate": float(np.asarray(keras.ops.convert_to_numpy(model.optimizer.learning_rate))),
        }
        if cfg.fail_at_epoch is not None and cfg.fail_mode == "nan" and epoch + 1 >= cfg.fail_at_epoch:
            metrics["loss"] = float("nan")  # injected: exercises the non-finite path end to end
        if val_data is not None:
            vl = vc = vn = 0.0
            for batch in val_data:
                ls, c, n = eval_step(batch)
                vl, vc, vn = vl + float(ls), vc + float(c), vn + float(n)
            metrics["val_loss"] = vl / max(vn, 1)
            metrics["val_accuracy"] = vc / max(vn, 1)
        else:  # no validation split: rank by training accuracy
            metrics["val_loss"], metrics["val_accuracy"] = metrics["loss"], metrics["accuracy"]
        metrics["optimizer_iterations"] = int(model.optimizer.iterations.numpy())
        finite = math.isfinite(metrics["loss"]) and math.isfinite(metrics["val_loss"])
        history.append(metrics)
        say(
            f"epoch {epoch + 1}/{cfg.epochs} loss {metrics['loss']:.4f} acc {metrics['accuracy']:.4f} "
            f"val_loss {metrics['val_loss']:.4f} val_acc {metrics['val_accuracy']:.4f} "
            f"({seen:.0f} images, {metrics['images_per_s']:.0f} img/s)"
        )
        if rank == 0:
            with writer.as_default(step=epoch + 1):
                for k in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
                    tf.summary.scalar(k, metrics[k])
            writer.flush()
        if not finite:
            # Every rank sees the same all-reduced loss, so all stop together. The
            # driver raises NonFiniteLossError: a restart would diverge again.
            if rank == 0:
                _write_history(run, history, "nonfinite", restarts)
            ray.train.report({**metrics, "status": "nonfinite"})
            return

        sync_statistics()

        # ------------------------------------------------------------- checkpoint (every rank saves)
        local = tempfile.mkdtemp(prefix=f"imgrec-ckpt-r{rank}-")
        manifest = dict(loop_config["manifest_base"])
        manifest.update(epoch=epoch + 1, metrics=metrics, history=history, freeze_depth=stage,
                        optimizer_iterations=metrics["optimizer_iterations"])
        with strategy.scope():  # in scope, sync-on-read BatchNorm statistics are all-reduced
            _save_for_all_stages(model, cfg, stage, local, manifest)
        improved = metrics["val_accuracy"] > best_val
        best_val, stale = (metrics["val_accuracy"], 0) if improved else (best_val, stale + 1)
        if rank == 0:
            _write_history(run, history, "running", restarts)
            if tb_dir:
                storage.upload_dir(tb_dir, storage.join(run, "tensorboard"), progress=False)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(local))
        else:
            ray.train.report(metrics)
        shutil.rmtree(local, ignore_errors=True)
        if cfg.early_stopping_patience and stale >= cfg.early_stopping_patience:
            say(f"early stopping: val_accuracy has not improved for {stale} epochs (best {best_val:.4f})")
            break
    # Replica consistency: every rank records a digest of its final weights, so a
    # divergence between workers (a broken all-reduce) is visible, not silent.
    with strategy.scope():
        digest = _weights_digest(model)
    storage.atomic_write(storage.join(run, "replicas", f"rank-{rank}.json"),
                         json.dumps({"rank": rank, "weights_sha256": digest}))
    if rank == 0:
        _write_history(run, history, "finished", restarts)


def _weights_digest(model) -> dict[str, str]:
    """SHA-256 of the trainable and of the non-trainable weights. Reading a
    sync-on-read variable (BatchNorm statistics) aggregates across workers, so
    every rank must call this, in the same order."""
    import hashlib

    import numpy as np

    digests = {}
    for name, weights in (("trainable", model.trainable_weights), ("non_trainable", model.non_trainable_weights)):
        digest = hashlib.sha256()
        for weight in weights:
            digest.update(np.ascontiguousarray(np.asarray(weight.value.read_value())).tobytes())
        digests[name] = digest.hexdigest()
    return digests


def _batchnorm_sync(strategy, model):
    """A function that averages BatchNorm moving statistics across workers.

    Keras 3 creates them as on-write mirrored variables that each worker updates
    from its own batches only, so workers drift apart. The moving averages are
    linear in the batch statistics, so their mean across workers equals the
    statistics of the global batches. Run once per epoch, before saving."""
    import keras
    import tensorflow as tf

    stats = [v for layer in model._flatten_layers(include_self=False, recursive=True)
             if isinstance(layer, keras.layers.BatchNormalization)
             for v in (layer.moving_mean, layer.moving_variance)]
    if not stats:
        return lambda: None

    @tf.function
    def sync():
        local = strategy.run(lambda: [tf.identity(v.value) for v in stats])
        for var, value in zip(stats, local, strict=True):
            var.value.assign(strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None))

    return sync


class _nullcontext:
    def __init__(self, value):
        self.value = value

    def __enter__(self):
        return self.value

    def __exit__(self, *exc):
        return False


def _per_example_loss(num_classes: int):
    import keras
    import tensorflow as tf

    if num_classes == 2:
        def binary(y, probs):
            if probs.shape[-1] == 1:
                return keras.losses.binary_crossentropy(tf.cast(y[:, None], probs.dtype), probs)
            return keras.losses.sparse_categorical_crossentropy(y, probs)
        return binary
    return lambda y, probs: keras.losses.sparse_categorical_crossentropy(y, probs)


def _build_optimizer_for_all_stages(model, cfg: TrainConfig) -> None:
    from imgrec import models

    if cfg.head_epochs > 0:
        models.set_freeze_depth(model, cfg.model.freeze_depth)
        model.optimizer.build(model.trainable_variables)
        models.set_freeze_depth(model, "all")
    else:
        model.optimizer.build(model.trainable_variables)


def _save_for_all_stages(model, cfg: TrainConfig, stage, directory: str, manifest: dict) -> None:
    """Save with the final stage's trainable flags: loading builds the optimizer
    on the trainable variables, so its saved state (built for every stage) fits."""
    from imgrec import models

    if cfg.head_epochs > 0 and stage != cfg.model.freeze_depth:
        models.set_freeze_depth(model, cfg.model.freeze_depth)
        try:
            ckpt.write_checkpoint(model, directory, manifest)
        finally:
            models.set_freeze_depth(model, stage)
    else:
        ckpt.write_checkpoint(model, directory, manifest)


def _write_history(run: str, history: list[dict], status: str, restarts: list[dict]) -> None:
    """The run's own record: every epoch, and each time Ray Train restarted the
    worker group from a checkpoint (``restarts``: the epoch it resumed after)."""
    record = {"status": status, "epochs": history, "restarts": restarts}
    storage.atomic_write(storage.join(run, HISTORY_FILE), json.dumps(record, indent=1))


def _maybe_inject_fault(cfg: TrainConfig, epoch: int, rank: int, run: str) -> None:
    """Test hook: the last rank's process dies once in ``fail_at_epoch``; Ray Train
    restarts the worker group from the last checkpoint."""
    if cfg.fail_at_epoch is None or cfg.fail_mode != "crash" or epoch + 1 != cfg.fail_at_epoch:
        return
    import ray.train

    if rank != ray.train.get_context().get_world_size() - 1:
        return
    marker = storage.join(run, FAULT_MARKER)
    if storage.exists(marker):
        return
    storage.atomic_write(marker, f"worker {rank} killed in epoch {epoch + 1}\n")
    # Train V2's controller learns of a reported checkpoint when it next polls the
    # workers (every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default). Dying right
    # after the report would restart the group from scratch, not from that
    # checkpoint, and the test would not exercise recovery; so wait two polls.
    time.sleep(2 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 2.0)) + 1)
    _worker_echo(f"[imgrec] fault injection: killing worker {rank} in epoch {epoch + 1}")
    os._exit(1)


# =========================================================================== driver side


def read_history(run: str) -> dict[str, Any]:
    uri = storage.join(run, HISTORY_FILE)
    if not storage.exists(uri):
        return {"status": "missing", "epochs": []}
    return json.loads(storage.read_text(uri))


def _resume_config(cfg: TrainConfig) -> tuple[TrainConfig, str | None]:
    """``--resume RUN_URI``: continue that run (same folder, config from its manifest)
    from its latest checkpoint; only ``epochs`` and cluster shape may change."""
    if not cfg.resume:
        return cfg, None
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
        "fail_at_epoch": cfg.fail_at_epoch,
        "evaluate": cfg.evaluate,
        "report": cfg.report,
    })
    return resumed, latest.uri


def train(cfg: TrainConfig, *, arrays: tuple | None = None, class_names: list[str] | None = None,
          dataset=None, run_config_overrides: dict | None = None, allow_existing: bool = False) -> RunResult:
    """Train on a Ray cluster (started locally if none is running) and return the run.

    One call for the common case: ``train(TrainConfig(data=DataConfig(uri=...)))``.
    ``arrays`` takes CIFAR-style in-memory ``((x_train, y_train), (x_test, y_test))``.
    An existing run folder is an error unless ``cfg.resume`` names it (or
    ``allow_existing``, for callers such as Tune that restart their own trials):
    Ray Train would otherwise silently continue the old run.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    from imgrec import models
    from imgrec.data import augmented, load_dataset

    t_start = time.time()
    cfg, resume_checkpoint = _resume_config(cfg)
    if cfg.run_name is None:
        cfg = from_dict(TrainConfig, {**to_dict(cfg), "run_name": default_run_name()})
    spec = models.get_spec(cfg.model.name)
    if cfg.data.decode.image_size is None:  # not given: the model's own input size
        cfg = replace(cfg, **{"data.decode.image_size": tuple(spec.default_size)})
    run = run_uri(cfg)
    if not resume_checkpoint and not allow_existing and storage.exists(storage.join(run, HISTORY_FILE)):
        raise ConfigError(f"run {run} already exists; continue it with --resume {run}, or choose another "
                          "--run-name")
    storage.ensure_bucket(cfg.storage) if not storage.is_s3(cfg.storage) else storage.check_bucket(cfg.storage)
    ensure_ray()

    data = dataset or load_dataset(cfg.data, arrays=arrays, class_names=class_names)
    print(f"[imgrec] data: {data.summary()}", flush=True)
    if data.counts["train"] < cfg.batch_size:
        raise ValueError(f"only {data.counts['train']} training images for a global batch of {cfg.batch_size}; "
                         "lower --batch-size")
    manifest_base = {
        "run_name": cfg.run_name,
        "class_names": data.class_names,
        "image_size": list(cfg.data.decode.image_size),
        "decode": to_dict(cfg.data.decode),
        "model": to_dict(cfg.model),
        "backbone": cfg.model.name if spec.kind == "backbone" else None,
        "augment": to_dict(cfg.augment),
        "data": {"uri": data.source, "split_seed": data.split_seed, "validation_split": data.validation_split,
                 "counts": data.counts, "bad_files": len(data.bad_files)},
        "train_config": to_dict(cfg),
    }
    datasets = {"train": augmented(data.train, cfg.augment)}
    if data.val is not None and data.counts["val"] >= cfg.workers:
        datasets["val"] = data.val
    fs, path = storage.resolve(cfg.storage)
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
        **(run_config_overrides or {}),
    )
    trainer = TensorflowTrainer(
        _train_loop_per_worker,
        train_loop_config={
            "train": to_dict(cfg),
            "class_names": data.class_names,
            "run_uri": run,
            "train_rows": data.counts["train"],
            "has_val": "val" in datasets,
            "manifest_base": manifest_base,
            "resume_checkpoint": resume_checkpoint,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.workers,
            use_gpu=cfg.gpus_per_worker > 0,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker}
                                                                  if cfg.gpus_per_worker else {})},
        ),
        datasets=datasets,
        run_config=run_config,
    )
    print(f"[imgrec] training {cfg.model.name} on {cfg.workers} worker(s), run {run}", flush=True)
    trainer.fit()
    hist = read_history(run)
    if hist["status"] == "nonfinite":
        raise NonFiniteLossError(
            f"run {run}: loss became non-finite in epoch {len(hist['epochs'])}; "
            f"lower the learning rate (now {cfg.learning_rate}) or check the data"
        )
    best = ckpt.resolve(run, "best")
    latest = ckpt.resolve(run, "latest")
    result = RunResult(
        run_uri=run,
        best_checkpoint=best.uri,
        latest_checkpoint=latest.uri,
        history=latest.manifest["history"],
        class_names=data.class_names,
        bad_files=data.bad_files,
        restarts=hist.get("restarts", []),
    )
    if cfg.evaluate:
        from imgrec import evaluate

        result.test_metrics = evaluate.evaluate_run(result, data, cfg)
    if cfg.report:
        from imgrec import report

        result.report_uri = report.write_run_report(result, cfg)
    result.elapsed_s = time.time() - t_start
    if result.test_metrics:
        print(f"[imgrec] test accuracy: {result.test_metrics['accuracy']:.4f} "
              f"on {result.test_metrics['count']} images ({result.test_metrics['split']})", flush=True)
    if result.report_uri:
        print(f"[imgrec] report: {result.report_uri}", flush=True)
    return result


def ensure_ray(num_cpus: int | None = None) -> None:
    """Connect to the running cluster (``RAY_ADDRESS`` or a job's own), or start a
    local one with more logical CPUs than cores so Ray Data and Train never starve."""
    import ray

    # Progress is shown by imgrec's own per-epoch lines; Ray Data's per-operator
    # progress logs would drown them in a job's output.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    # Workers of a local cluster inherit this process's environment, so the AWS
    # credential chain and AWS_ENDPOINT_URL reach them without being copied into
    # Ray's job config (where keys would be stored and shown).
    ray.init(num_cpus=num_cpus or max(6, (os.cpu_count() or 2) * 3), include_dashboard=False)
