"""The state one worker's loop shares with its hooks, and the loop's tuning knobs.
A module of its own so that ``imgrec.loop`` and ``imgrec.hooks`` both import it
and neither imports the other's caller."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imgrec.config import TrainConfig
from imgrec.layout import RunLayout
from imgrec.runtime import worker_echo


@dataclass
class LoopOptions:
    """Knobs of the worker's input pipeline and TensorFlow pools, for experiments
    (``benchmarks/train_loop_variants.py``); the defaults are what imgrec runs."""

    # "direct": Ray Data batches straight into strategy.run (no tf.data: a tf.data iterator's
    # teardown waits for its autotune thread's next wake-up, up to 60 s, every epoch);
    # "tf.data": the distributed tf.data pipeline, kept to measure against.
    feed: str = "direct"
    prefetch: int = 2  # batches prefetched (Ray Data's; with feed="tf.data", tf.data's, -1: AUTOTUNE)
    tf_data_autotune: bool = True  # feed="tf.data" only: tf.data's autotuning model thread
    persistent_iterator: bool = False  # feed="tf.data" only: one training iterator for the whole run
    val_cache_mb: float = 256  # keep a worker's validation batches this small in memory after epoch 1 (0: never)
    # TensorFlow's fused batch norm in place of Keras's elementwise ops (models.fuse_batch_norm:
    # the same function, 1.1-1.5x a step); False: Keras's own layer, to measure against
    fused_batch_norm: bool = True
    intra_op_threads: int | None = None  # None: TensorFlow's default
    inter_op_threads: int | None = None

    def __post_init__(self) -> None:
        if self.feed not in ("direct", "tf.data"):
            raise ValueError(f"LoopOptions.feed must be 'direct' or 'tf.data', got {self.feed!r}")


@dataclass
class WorkerLoop:
    """What one worker's loop and its hooks share. Hooks read it and may set
    ``stop_training``; the loop owns everything else."""

    cfg: TrainConfig
    run: RunLayout
    rank: int
    world: int
    class_names: list[str]
    manifest_base: dict[str, Any]
    steps_per_epoch: int
    global_batch: int
    val_rows: int = 0
    class_weights: list[float] | None = None  # loss weight per class (class_names order); None: unweighted
    strategy: Any = None
    model: Any = None
    start_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    restored_from: str | None = None  # "ray" (a worker-group restart) | "uri" (--resume) | None
    stage: int | str | None = None  # the freeze depth in force
    status: str = "running"  # running | nonfinite | finished
    stop_training: bool = False
    startup: dict[str, float] = field(default_factory=dict)  # start-up phases, seconds (imgrec.timing)
    phases: dict[str, float] = field(default_factory=dict)  # this epoch's loop phases, seconds
    epoch_started: float = 0.0  # time.perf_counter() when this epoch began
    progress: Any = None  # the driver's progress board (imgrec.progress), an actor handle; None: print here

    def say(self, *parts: Any) -> None:
        """A line from rank 0 (every rank runs the same code), drawn by the driver."""
        if self.rank == 0:
            text = " ".join(str(p) for p in parts)
            if not self.tell({"kind": "say", "text": text}):
                worker_echo(f"[imgrec] {text}")

    def tell(self, event: dict[str, Any], wait: bool = False) -> bool:
        """An event for the driver's progress board, not waited on unless ``wait`` (then
        every earlier event of this worker is on the board too: one caller's actor calls
        run in order); False without a board."""
        if self.progress is None:
            return False
        sent = self.progress.put.remote(event)
        if wait:
            import ray

            try:
                ray.get(sent, timeout=30)
            except Exception:  # the driver's board gone or slow: progress never fails a run
                pass
        return True
