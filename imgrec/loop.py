"""The Ray Train worker loop: Keras 3 under MultiWorkerMirroredStrategy, as small
functions plus hooks (``imgrec.hooks``) for everything around the loop.

Why a custom loop and not ``Model.fit``: Keras 3's ``fit`` fails under
MultiWorkerMirroredStrategy (keras-team/keras#20585, ``PerReplica`` errors), and
the tf-keras route needs a flag in every process and writes files plain Keras 3
cannot load. The route proven here:

* the model is built and compiled (optimizer, loss and metrics) inside ``strategy.scope()``,
  so ``model.keras`` carries optimizer state and resume continues it;
* each worker's Ray Data shard is fed straight into ``strategy.run``, batched at
  ``global batch // workers`` (Ray already split and prefetches it; a tf.data
  pipeline in between stalled every epoch on its iterator's teardown); losses use
  ``tf.nn.compute_average_loss`` with the global batch size (with ``--class-weight``, of
  the class-weighted per-example losses: Keras' ``class_weight``);
* every hook runs on every rank, in the same order: saving reads sync-on-read
  BatchNorm statistics, a collective, so a save on one rank alone can hang.

Global batch semantics: ``TrainConfig.batch_size`` is the batch of one optimizer
step across the whole cluster; each of W workers takes ``batch_size // W``.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import numpy as np

from imgrec import checkpoint as ckpt
from imgrec import hooks as hooklib
from imgrec import models
from imgrec.config import TrainConfig, from_dict, to_dict
from imgrec.data import shard_batches
from imgrec.data.cache import rows_per_shard
from imgrec.layout import RunLayout
from imgrec.loop_state import LoopOptions, WorkerLoop
from imgrec.stages import apply_freeze_depth, final_stage_trainable, stage_freeze_depth
from imgrec.timing import timed

# =========================================================================== entry point


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: build or restore, then epochs with hooks."""
    loop = _worker_loop(loop_config)
    options = LoopOptions(**loop_config.get("options", {}))
    # The direct feed starts its first epoch now, in a thread (_FirstBatch), beside TensorFlow's set-up
    started = _direct.started(loop, options) if options.feed == "direct" else None
    with timed(loop.startup, "worker_tensorflow_s"):
        _configure_tensorflow(options, loop.cfg.seed)
    with timed(loop.startup, "worker_model_s"):  # the strategy's collectives set up, then the model
        restore_or_build(loop, loop_config.get("resume_checkpoint"), fused_batch_norm=options.fused_batch_norm)
    with timed(loop.startup, "worker_datasets_s"):
        data = _datasets(loop, options, started)
    hooks = hooklib.HookList(hooklib.default_hooks(loop, loop_config.get("hooks")))
    hooks.on_train_begin(loop)
    if loop.start_epoch >= loop.cfg.epochs:
        loop.say(f"run already has {loop.start_epoch} epochs (epochs={loop.cfg.epochs}); nothing to train")
    steps = None
    sync_statistics = batchnorm_sync(loop.strategy, loop.model)
    for epoch in range(loop.start_epoch, loop.cfg.epochs):
        loop.epoch_started, loop.phases = time.perf_counter(), {}
        if stage_freeze_depth(loop.cfg, epoch) != loop.stage:
            with timed(loop.phases, "stage_s"):
                steps = enter_stage(loop, epoch)
        hooks.on_epoch_begin(loop, epoch)
        metrics = train_epoch(loop, epoch, steps[0], data["train"], hooks)
        if steps[2] is not None:
            with timed(loop.phases, "allreduce_probe_s"):
                split_allreduce(metrics, steps[2](), loop.steps_per_epoch)
        with timed(loop.phases, "bn_sync_s"):
            sync_statistics()  # before validation, so it scores the model the checkpoint holds
        metrics.update(validate(steps[1], data.get("val")) or _train_as_val(metrics))
        metrics.update(loop.phases)
        metrics["optimizer_iterations"] = int(loop.model.optimizer.iterations.numpy())
        # the stage in force: two-stage runs show where the head-only epochs ended
        metrics.update(freeze_depth=loop.stage, trainable_weights=len(loop.model.trainable_weights))
        loop.history.append(metrics)
        hooks.on_epoch_end(loop, epoch, metrics)
        if loop.stop_training:
            break
    if loop.status == "running":
        loop.status = "finished"
    hooks.on_train_end(loop)


def _worker_loop(loop_config: dict[str, Any]) -> WorkerLoop:
    """The worker's state; its start-up record begins with the driver's phases and
    the time from the driver handing over to Ray Train until this worker ran."""
    import ray.train

    started = time.time()
    cfg: TrainConfig = from_dict(TrainConfig, loop_config["train"])
    ctx = ray.train.get_context()
    world = ctx.get_world_size()
    per_worker = cfg.batch_size // world
    startup = {**loop_config.get("driver_phases", {}),
               "ray_train_start_s": max(0.0, started - loop_config.get("handed_over_at", started))}
    return WorkerLoop(
        cfg=cfg, run=RunLayout(loop_config["run_uri"]), rank=ctx.get_world_rank(), world=world,
        class_names=loop_config["class_names"], manifest_base=loop_config["manifest_base"],
        steps_per_epoch=max(1, loop_config["train_rows"] // world // per_worker), global_batch=per_worker * world,
        val_rows=loop_config["val_rows"], class_weights=loop_config.get("class_weights"),
        startup=startup, progress=loop_config.get("progress"),
    )


def _configure_tensorflow(options: LoopOptions, seed: int) -> None:
    import keras
    import tensorflow as tf

    if options.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(options.intra_op_threads)
    if options.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(options.inter_op_threads)
    keras.utils.set_random_seed(seed)


# =========================================================================== model: new, restored or resumed


def restore_or_build(loop: WorkerLoop, resume_checkpoint: str | None, *, fused_batch_norm: bool = True) -> None:
    """Ray's checkpoint after a worker-group restart, else ``--resume``'s, else a new model;
    its batch norms on TensorFlow's fused kernel unless ``fused_batch_norm`` is False."""
    import ray.train
    import tensorflow as tf

    loop.strategy = tf.distribute.MultiWorkerMirroredStrategy()
    restored = ray.train.get_checkpoint()
    with loop.strategy.scope():
        if restored is not None:
            with restored.as_directory() as local:
                _restore(loop, local, "ray")
        elif resume_checkpoint:
            _restore(loop, ckpt.local_copy(ckpt.resolve(resume_checkpoint, "latest")), "uri")
        else:
            cfg = loop.cfg
            loop.model = models.build_model(cfg.model, len(loop.class_names), tuple(cfg.data.decode.image_size))
            if cfg.model.precision != "float32":
                loop.say(f"precision {cfg.model.precision}: computing in {loop.model.dtype_policy.name}"
                         " (weights in float32)")
            if cfg.head_epoch_count() > 0:
                apply_freeze_depth(loop.model, cfg, "all")
            # With loss and metrics, for plain Keras users of a checkpoint; the loop computes its own.
            models.compile_model(loop.model, make_optimizer(cfg, loop.steps_per_epoch), len(loop.class_names))
            # The optimizer must know every variable that any stage will train, so
            # stage two can continue its state: build it on the stage-two set.
            with final_stage_trainable(loop.model, cfg, "all" if cfg.head_epoch_count() > 0 else cfg.model.freeze_depth):
                loop.model.optimizer.build(loop.model.trainable_variables)
    if loop.model.optimizer is None:
        raise RuntimeError("checkpoint has no optimizer state; cannot resume training from it")
    # TensorFlow's one-pass batch norm in place of Keras's elementwise ops: the same numbers,
    # the saved file unchanged, a train step 1.1-1.35x faster (benchmarks/batchnorm.py).
    if fused_batch_norm and (fused := models.fuse_batch_norm(loop.model)):
        loop.say(f"batch norm: {fused} layers on TensorFlow's fused kernel")


def _restore(loop: WorkerLoop, local_dir: str, source: str) -> None:
    """Load a local checkpoint folder (its model file's hash verified) into the loop."""
    loop.model, manifest = ckpt.load_local(local_dir, label=f"{loop.run.uri} ({source} checkpoint)")
    loop.start_epoch = int(manifest["epoch"])
    loop.history = list(manifest.get("history", []))
    loop.restored_from = source
    loop.say(f"restored epoch {loop.start_epoch} from {source} checkpoint; optimizer step",
             int(loop.model.optimizer.iterations.numpy()))
    stretch_cosine_schedule(loop.model.optimizer, total_steps(loop.cfg, loop.steps_per_epoch), loop.say)
    decay_kernels_only(loop.model.optimizer)


def learning_rate(cfg: TrainConfig, steps_per_epoch: int, peak: float | None = None) -> Any:
    """The run's rate: ``peak`` (default ``cfg.learning_rate``) as a constant, or the
    Keras schedule ``cfg.lr_schedule`` names with that peak, over the whole run."""
    import keras

    peak = cfg.learning_rate if peak is None else peak
    if cfg.lr_schedule == "cosine":
        return cosine_schedule(peak, total_steps(cfg, steps_per_epoch), warmup_steps(cfg, steps_per_epoch))
    if cfg.lr_schedule == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(peak, decay_steps=max(1, steps_per_epoch), decay_rate=0.9)
    if cfg.lr_schedule != "constant":
        raise ValueError(f"lr_schedule must be constant, cosine or exponential, got {cfg.lr_schedule!r}")
    return peak


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int):
    import keras

    lr = learning_rate(cfg, steps_per_epoch)
    decay = {"weight_decay": float(cfg.weight_decay)} if cfg.weight_decay else {}
    optimizers = {
        "adam": lambda: keras.optimizers.Adam(lr, **decay),
        "adamw": lambda: keras.optimizers.AdamW(lr, weight_decay=float(cfg.weight_decay)),
        "sgd": lambda: keras.optimizers.SGD(lr, momentum=0.9, **decay),
        "rmsprop": lambda: keras.optimizers.RMSprop(lr, **decay),
    }
    if cfg.optimizer not in optimizers:
        raise ValueError(f"optimizer must be one of {sorted(optimizers)}, got {cfg.optimizer!r}")
    return decay_kernels_only(optimizers[cfg.optimizer]())


# Variables weight decay leaves alone: BatchNorm's scale and shift, and biases (Keras
# names them so). Decaying them only fights the normalisation (the usual recipe).
NO_DECAY_NAMES = r"(^|/)(gamma|beta|bias)(:\d+)?$"  # "bias", or a tf.Variable's "conv/bias:0"


def decay_kernels_only(optimizer):
    """Restrict the optimizer's weight decay to kernels. The exclusion is not part of
    Keras' saved optimizer config, so a restored optimizer gets it again here (set
    directly: ``exclude_from_weight_decay`` refuses a built optimizer)."""
    import re

    optimizer._exclude_from_weight_decay = set()
    optimizer._exclude_from_weight_decay_pattern = re.compile(NO_DECAY_NAMES)
    optimizer._exclude_from_weight_decay_cache = {}
    return optimizer


def cosine_schedule(peak_lr: float, steps: int, warmup: int):
    """Keras' CosineDecay over ``steps`` in all: ``warmup`` steps linear from 0 to ``peak_lr``
    first, then the cosine over the rest."""
    import keras

    if not warmup:
        return keras.optimizers.schedules.CosineDecay(peak_lr, decay_steps=steps)
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=max(1, steps - warmup), warmup_target=peak_lr,
                                                  warmup_steps=warmup)


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The run's length in optimizer steps: what a cosine schedule decays over."""
    return max(1, steps_per_epoch * cfg.epochs)


def warmup_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The warmup's length in steps, at most half the run."""
    return min(steps_per_epoch * cfg.warmup_epochs, total_steps(cfg, steps_per_epoch) // 2)


def stretch_cosine_schedule(optimizer, steps: int, say) -> None:
    """``--resume --epochs N`` makes the run N epochs long. A cosine schedule saved
    with the old length would sit at zero for every added epoch (the optimizer step
    continues past its ``decay_steps``), so it is rebuilt over the new length (its
    warmup kept); the step counter and moment estimates are kept. No optimizer or
    another schedule: no-op."""
    import keras

    schedule = getattr(optimizer, "_learning_rate", None)
    if not isinstance(schedule, keras.optimizers.schedules.CosineDecay):
        return
    decay_steps = max(1, steps - int(schedule.warmup_steps or 0))
    if schedule.decay_steps == decay_steps:
        return
    config = {**schedule.get_config(), "decay_steps": decay_steps}
    optimizer.learning_rate = keras.optimizers.schedules.CosineDecay.from_config(config)
    say(f"cosine schedule stretched from {schedule.decay_steps} to {decay_steps} steps for the new epoch count")


# =========================================================================== stages and step functions


def enter_stage(loop: WorkerLoop, epoch: int):
    """Apply the epoch's freeze depth and trace step functions for its trainable set:
    (train_step, eval_step, all-reduce timer or None)."""
    cfg = loop.cfg
    loop.stage = stage_freeze_depth(cfg, epoch)
    apply_freeze_depth(loop.model, cfg, loop.stage)
    if cfg.head_epoch_count() and epoch == cfg.head_epoch_count():
        enter_fine_tuning_rate(loop.model.optimizer, cfg, loop.steps_per_epoch)
    loop.say(f"epoch {epoch + 1}: freeze_depth={loop.stage}, trainable weights={len(loop.model.trainable_weights)}")
    return (*step_functions(loop), allreduce_timer(loop.strategy, loop.model) if loop.world > 1 else None)


def enter_fine_tuning_rate(optimizer, cfg: TrainConfig, steps_per_epoch: int) -> None:
    """Stage two's rate: the run's rate, or its whole schedule, with the peak times
    ``fine_tune_lr_factor``. The step counter carries on, so a schedule goes on from
    where stage one left it, scaled. The step functions are traced after this."""
    optimizer.learning_rate = learning_rate(cfg, steps_per_epoch, cfg.learning_rate * cfg.fine_tune_lr_factor)


def step_functions(loop: WorkerLoop):
    """(train_step, eval_step): each takes a distributed batch and returns the
    all-reduced (loss sum, correct count, images) of the global batch."""
    import tensorflow as tf

    model, strategy = loop.model, loop.strategy
    loss_fn, correct_count = per_example_loss(len(loop.class_names)), correct_counter(len(loop.class_names))
    train_loss_fn = per_example_loss(len(loop.class_names), loop.cfg.label_smoothing)
    weigh = class_weighting(loop.class_weights)
    variables = model.trainable_variables  # traced again per stage: the trainable set differs

    def train_step(x, y):
        with tf.GradientTape() as tape:
            probs = model(x, training=True)
            per_example = weigh(y, train_loss_fn(y, probs))
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=loop.global_batch)
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


def allreduce_timer(strategy, model):
    """A function returning the seconds of one all-reduce of a step's gradients.

    The collective runs inside the train step, so its share cannot be timed
    there without splitting the step; instead the same call Keras's optimizer
    makes (``ReplicaContext.all_reduce`` of SUM over tensors shaped like the
    trainable weights) is timed once per epoch, after the steps, on every rank."""
    import tensorflow as tf

    grads = [tf.zeros(v.shape, v.dtype) for v in model.trainable_variables]

    @tf.function
    def allreduce(tensors):
        def replica(t):  # identity: placed on the replica's device, as gradients are (a collective needs one)
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM,
                                                                  [tf.identity(x) for x in t])

        reduced = strategy.run(replica, args=(tensors,))
        first = strategy.experimental_local_results(reduced[0])[0]
        return tf.reshape(first, [-1])[:1]  # a tiny slice to read: the host waits for the collective

    def seconds() -> float:
        if not grads:
            return 0.0
        if not getattr(seconds, "traced", False):
            allreduce(grads).numpy()  # traced and its collective set up: not timed
            seconds.traced = True
        t0 = time.perf_counter()
        allreduce(grads).numpy()
        return time.perf_counter() - t0

    return seconds


def split_allreduce(metrics: dict[str, Any], per_step_s: float, steps: int) -> None:
    """Move the all-reduce's share out of ``compute_s`` into ``allreduce_s`` (the
    timed collective × steps, at most the whole of compute)."""
    share = min(metrics["compute_s"], per_step_s * steps)
    metrics.update(allreduce_s_per_step=per_step_s, allreduce_s=share, compute_s=metrics["compute_s"] - share)


def per_example_loss(num_classes: int, label_smoothing: float = 0.0):
    """``(y, probs) -> per-example cross-entropy`` for integer labels, or for soft
    targets (float (N, classes): mixed images, ``imgrec.augment.mix``); ``label_smoothing``
    mixes the target with the uniform one (Keras' own ``label_smoothing``)."""
    import keras
    import tensorflow as tf

    smooth = float(label_smoothing)

    def categorical(y, probs):
        if not _soft(y) and not smooth:
            return keras.losses.sparse_categorical_crossentropy(y, probs)
        target = tf.cast(y, probs.dtype) if _soft(y) else tf.one_hot(y, probs.shape[-1], dtype=probs.dtype)
        return keras.losses.categorical_crossentropy(target, probs, label_smoothing=smooth)

    if num_classes == 2:
        def binary(y, probs):
            if probs.shape[-1] == 1:  # one sigmoid unit: the target is class 1's share
                target = y[:, 1:] if _soft(y) else y[:, None]
                return keras.losses.binary_crossentropy(tf.cast(target, probs.dtype), probs,
                                                        label_smoothing=smooth)
            return categorical(y, probs)
        return binary
    return categorical


def _soft(y) -> bool:
    """Soft targets (one row of class shares per example), not integer labels."""
    return y.dtype.is_floating


def class_weighting(class_weights: list[float] | None):
    """``(y, per_example_loss) -> weighted per-example loss``: each example's loss times
    its class's weight (identity without weights). Summed and divided by the GLOBAL
    batch by ``compute_average_loss``, this is Keras' ``class_weight``: a sample-weighted
    sum over the batch size, not over the sum of the weights. Validation stays unweighted."""
    import tensorflow as tf

    if class_weights is None:
        return lambda y, per_example: per_example
    table = tf.constant(class_weights, tf.float32)

    def weigh(y, per_example):
        # a soft target weighs its classes' weights in its shares: a mixed pair, its mix of the two
        weight = tf.linalg.matvec(tf.cast(y, tf.float32), table) if _soft(y) else tf.gather(table, y)
        return per_example * tf.cast(weight, per_example.dtype)

    return weigh


def correct_counter(num_classes: int):
    import tensorflow as tf

    def correct_count(y, probs):
        if _soft(y):  # mixed images count as correct for their larger share's class
            y = tf.argmax(y, axis=-1)
        if num_classes == 2 and probs.shape[-1] == 1:
            pred = tf.cast(probs[:, 0] > 0.5, tf.int64)
        else:
            pred = tf.argmax(probs, axis=-1)
        return tf.reduce_sum(tf.cast(tf.equal(pred, y), tf.float32))

    return correct_count


def batchnorm_sync(strategy, model):
    """A function that averages BatchNorm moving statistics across workers.

    Keras 3 creates them as on-write mirrored variables that each worker updates
    from its own batches only, so workers drift apart. The moving averages are
    linear in the batch statistics, so their mean across workers equals the
    statistics of the global batches. Run once per epoch, after training."""
    import keras
    import tensorflow as tf

    stats = [v for layer in models.all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)
             for v in (layer.moving_mean, layer.moving_variance)]
    if not stats:
        return lambda: None

    @tf.function
    def sync():
        local = strategy.run(lambda: [tf.identity(v.value) for v in stats])
        for var, value in zip(stats, local, strict=True):
            var.value.assign(strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None))

    return sync


# =========================================================================== data


def _datasets(loop: WorkerLoop, options: LoopOptions, train: _direct | None = None) -> dict[str, Any]:
    """Per-epoch iterables of distributed batches over this worker's Ray Data shards;
    ``train``: the training feed, made (and its first epoch started) already."""
    import ray.train

    feed = _direct if options.feed == "direct" else _distributed
    out = {"train": train or feed(loop, options, ray.train.get_dataset_shard("train"), training=True)}
    if loop.val_rows:  # 0: no validation split (too small to split across the workers)
        out["val"] = feed(loop, options, ray.train.get_dataset_shard("val"), training=False)
    if options.persistent_iterator and options.feed == "tf.data":
        out["train"] = _PersistentEpochs(iter(out["train"]), loop.steps_per_epoch)
    return out


class _direct:
    """Ray Data batches as the step's arguments: each iteration is one epoch of the
    shard (local shuffle for training), converted to tensors as they come; with
    several local replicas (GPUs) a batch is split between them. A validation
    shard within ``LoopOptions.val_cache_mb`` is kept from its first pass: later
    epochs skip starting a Ray Data execution for it (0.2-0.5 s an epoch here)."""

    def __init__(self, loop: WorkerLoop, options: LoopOptions, shard, training: bool):
        self.loop, self.shard, self.training, self.prefetch = loop, shard, training, max(0, options.prefetch)
        self.first: _FirstBatch | None = None  # the next epoch, already started in a thread
        self.per_worker = loop.global_batch // loop.world
        # Decided from global figures, so every rank decides alike (a rank still
        # iterating the shard would wait forever for the others at Ray's split barrier).
        h, w = loop.cfg.data.decode.image_size
        self.keep = not training and 0 < loop.val_rows * h * w * 3 / loop.world <= options.val_cache_mb * 2**20
        self.kept: list | None = None

    def __iter__(self):
        if self.kept is not None:
            yield from self.kept
            return
        kept = [] if self.keep else None
        source, self.first = (self.first.batches() if self.first else self._epoch()), None
        for x, y in source:
            batch = self._distribute(x, y)
            if kept is not None:
                kept.append(batch)
            yield batch
        self.kept = kept  # only after a whole pass

    @classmethod
    def started(cls, loop: WorkerLoop, options: LoopOptions) -> _direct:
        """The training feed with its first epoch started in a thread (``_FirstBatch``):
        made before the model, so it needs no strategy yet."""
        import ray.train

        feed = cls(loop, options, ray.train.get_dataset_shard("train"), training=True)
        feed.first = _FirstBatch(feed._epoch())
        return feed

    def _epoch(self):
        """One epoch of the shard: training shuffled locally, full batches only."""
        shuffle = _shuffle_buffer(self.per_worker, self.loop.cfg.data.decode.image_size) if self.training else 0
        return shard_batches(self.shard, self.per_worker, shuffle_buffer=shuffle, drop_last=self.training,
                             prefetch=self.prefetch, soft=self.training and self.loop.cfg.mixes)

    def _distribute(self, x, y):
        import tensorflow as tf

        local_replicas = max(1, self.loop.strategy.num_replicas_in_sync // self.loop.world)
        if local_replicas == 1:
            return tf.constant(x), tf.constant(y)
        first = self.loop.rank * local_replicas  # this worker's first global replica id
        xs, ys = np.array_split(x, local_replicas), np.array_split(y, local_replicas)

        def part(ctx, parts):
            return tf.constant(parts[ctx.replica_id_in_sync_group - first])

        values = self.loop.strategy.experimental_distribute_values_from_function
        return values(lambda ctx: part(ctx, xs)), values(lambda ctx: part(ctx, ys))


class _FirstBatch:
    """The first epoch's first batch, fetched in a thread while TensorFlow loads and
    the model is built: a shard's first Ray Data execution waits 1-2 s on other
    processes (the split coordinator starting its executor and tasks), which used to
    follow the model build as epoch 1's data wait. The rest of the epoch comes from
    the same iterator; an error in the thread is raised where the batches are read."""

    def __init__(self, batches):
        self._batches, self._first, self._error = batches, None, None
        self._thread = threading.Thread(target=self._fetch, name="imgrec-first-batch", daemon=True)
        self._thread.start()

    def _fetch(self) -> None:
        try:
            self._first = next(self._batches, None)
        except BaseException as exc:  # noqa: BLE001 - raised again in batches()
            self._error = exc

    def batches(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._first is not None:
            yield self._first
            yield from self._batches


def _distributed(loop: WorkerLoop, options: LoopOptions, shard, training: bool):
    import tensorflow as tf

    image_size = tuple(loop.cfg.data.decode.image_size)
    endless = training and options.persistent_iterator
    soft = training and loop.cfg.mixes
    labels = (tf.TensorSpec((None, len(loop.class_names)), tf.float32) if soft
              else tf.TensorSpec((None,), tf.int64))

    def batches(per_replica: int):
        shuffle = _shuffle_buffer(per_replica, image_size) if training else 0
        while True:
            yield from shard_batches(shard, per_replica, shuffle_buffer=shuffle, drop_last=training, soft=soft)
            if not endless:
                return

    def dataset_fn(input_context):
        per_replica = input_context.get_per_replica_batch_size(loop.global_batch)
        ds = tf.data.Dataset.from_generator(
            lambda: batches(per_replica),
            output_signature=(tf.TensorSpec((None, *image_size, 3), tf.uint8), labels),
        )
        opts = tf.data.Options()
        opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        opts.autotune.enabled = options.tf_data_autotune
        return ds.with_options(opts).prefetch(tf.data.AUTOTUNE if options.prefetch < 0 else options.prefetch)

    return loop.strategy.distribute_datasets_from_function(dataset_fn)


class _PersistentEpochs:
    """One iterator for the whole run, ``steps`` batches per epoch (Ray's equal
    split gives every worker that many full batches): nothing is torn down between epochs."""

    def __init__(self, iterator, steps: int):
        self.iterator, self.steps = iterator, steps

    def __iter__(self):
        return itertools.islice(self.iterator, self.steps)


# =========================================================================== one epoch, validation


def train_epoch(loop: WorkerLoop, epoch: int, train_step, batches, hooks: hooklib.HookList) -> dict[str, Any]:
    """One pass over this worker's shard. Sums stay on the device (no per-step host
    sync); waiting for the next batch is timed apart from the steps."""
    import keras
    import numpy as np

    totals, wait, step, first_step = None, 0.0, -1, 0.0
    t0 = time.perf_counter()
    iterator = iter(batches)
    while True:
        t_wait = time.perf_counter()
        batch = next(iterator, None)
        t_step = time.perf_counter()
        wait += t_step - t_wait
        if batch is None:
            break
        step += 1
        out = train_step(batch)
        first_step = first_step or time.perf_counter() - t_step  # epoch 1: tracing the step function
        totals = _add(totals, out)
        hooks.on_train_batch_end(loop, step, totals)
    train_time = time.perf_counter() - t0
    with timed(loop.phases, "data_teardown_s"):  # the epoch's tf.data and Ray Data iterators end here
        del iterator
    loss_sum, correct, seen = _values(totals)
    return {
        "epoch": epoch + 1,
        "loss": loss_sum / max(seen, 1),
        "accuracy": correct / max(seen, 1),
        "images_per_s": seen / max(train_time, 1e-9),
        "train_time_s": train_time,
        "data_wait_s": wait,
        "compute_s": train_time - wait,
        "first_step_s": first_step,
        "images": seen,
        "allreduce_bytes_per_step": gradient_bytes(loop.model) if loop.world > 1 else 0,
        "learning_rate": float(np.asarray(keras.ops.convert_to_numpy(loop.model.optimizer.learning_rate))),
    }


def gradient_bytes(model) -> int:
    """Bytes each worker all-reduces per step: one gradient per trainable weight."""
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.trainable_weights)


def validate(eval_step, batches) -> dict[str, float] | None:
    """Loss and accuracy over the whole validation split (sums all-reduced)."""
    if batches is None:
        return None
    t0 = time.perf_counter()
    totals = None
    for batch in batches:
        out = eval_step(batch)
        totals = _add(totals, out)
    loss_sum, correct, seen = _values(totals)
    return {"val_loss": loss_sum / max(seen, 1), "val_accuracy": correct / max(seen, 1),
            "val_time_s": time.perf_counter() - t0}


def _shuffle_buffer(batch: int, image_size: tuple[int, int]) -> int:
    """Rows in the local shuffle buffer for training batches of ``batch``: at least a
    block (a decoded-cache shard), so a batch mixes more than one block's rows."""
    return max(rows_per_shard(image_size), 4 * batch)


def _add(totals, out):
    """Running (loss sum, correct, images) as device tensors: no host sync per step."""
    return out if totals is None else [a + b for a, b in zip(totals, out, strict=True)]


def _values(totals) -> tuple[float, float, float]:
    """The running sums read once, at the end of an epoch or of validation."""
    return tuple(float(v) for v in totals) if totals else (0.0, 0.0, 0.0)


def _train_as_val(metrics: dict[str, Any]) -> dict[str, float]:
    """No validation split: checkpoints are ranked by training accuracy."""
    return {"val_loss": metrics["loss"], "val_accuracy": metrics["accuracy"]}


def loop_config(cfg: TrainConfig, *, class_names: list[str], run: RunLayout, train_rows: int, val_rows: int,
                manifest_base: dict[str, Any], resume_checkpoint: str | None, options: LoopOptions | None,
                hooks: list | None, driver_phases: dict[str, float],
                class_weights: list[float] | None = None, progress=None) -> dict[str, Any]:
    """What the driver sends every worker (JSON-ready but for the extra hooks and
    the progress board). ``handed_over_at``: when the driver hands the run to Ray
    Train (wall clock); ``class_weights``: the resolved loss weight per class, or
    None; ``progress``: the driver's ``imgrec.progress`` board (an actor handle)."""
    return {
        "train": to_dict(cfg), "class_names": class_names, "class_weights": class_weights, "run_uri": run.uri,
        "train_rows": train_rows, "val_rows": val_rows, "manifest_base": manifest_base,
        "resume_checkpoint": resume_checkpoint,
        "options": to_dict(options or LoopOptions()), "hooks": list(hooks or []),
        "driver_phases": dict(driver_phases), "handed_over_at": time.time(), "progress": progress,
    }
