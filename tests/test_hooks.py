"""Each hook of the worker loop on its own, in this process: a real small Keras
model under TensorFlow's default strategy, a real run folder on disk. The hooks
together, on 2 Ray Train workers, are checked through the shared training run
(every rank ran the same hooks in the same order, with the same step counts)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from imgrec import checkpoint as ckpt
from imgrec import hooks
from imgrec.config import DataConfig, DecodeConfig, ModelConfig, TrainConfig, to_dict
from imgrec.layout import RunLayout
from imgrec.loop_state import WorkerLoop

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def small_model():
    import keras

    from imgrec import models

    model = models.build_model(ModelConfig(name="small_cnn"), len(CLASSES), (32, 32))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.optimizer.build(model.trainable_variables)
    return model


def _loop(tmp_path, model=None, *, rank=0, world=1, history=None, **cfg_changes) -> WorkerLoop:
    import tensorflow as tf

    cfg = TrainConfig(data=DataConfig(uri=str(tmp_path / "data"), decode=DecodeConfig(image_size=(32, 32))),
                      storage=str(tmp_path / "runs"), run_name="r", workers=world, **cfg_changes)
    return WorkerLoop(cfg=cfg, run=RunLayout.of(cfg.storage, cfg.run_name), rank=rank, world=world,
                      class_names=CLASSES, steps_per_epoch=8, global_batch=cfg.batch_size,
                      manifest_base={"class_names": CLASSES, "image_size": [32, 32], "train_config": to_dict(cfg)},
                      strategy=tf.distribute.get_strategy(), model=model, history=list(history or []))


def _metrics(epoch: int, **changes) -> dict:
    metrics = {"epoch": epoch + 1, "loss": 1.0, "accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.4,
               "images_per_s": 100.0, "train_time_s": 1.0, "data_wait_s": 0.1, "images": 96.0,
               "learning_rate": 1e-3, "optimizer_iterations": 8 * (epoch + 1)}
    return {**metrics, **changes}


class Recorder(hooks.Hook):
    name = "recorder"

    def __init__(self, log: list, label: str):
        self.log, self.label = log, label

    def on_train_begin(self, loop):
        self.log.append((self.label, "train_begin"))

    def on_epoch_begin(self, loop, epoch):
        self.log.append((self.label, "epoch_begin", epoch))

    def on_train_batch_end(self, loop, step, totals):
        self.log.append((self.label, "batch_end", step))

    def on_epoch_end(self, loop, epoch, metrics):
        self.log.append((self.label, "epoch_end", epoch))

    def on_train_end(self, loop):
        self.log.append((self.label, "train_end"))


def test_hook_list_calls_in_order_times_each_and_skips_idle_step_hooks(tmp_path):
    log: list = []
    first, second = Recorder(log, "first"), Recorder(log, "second")
    idle = hooks.TerminateOnNonFinite()  # no step entry point: never called per step
    hook_list = hooks.HookList([first, idle, second])
    assert hook_list._step_hooks == [first, second]
    loop = _loop(tmp_path)
    hook_list.on_train_begin(loop)
    hook_list.on_epoch_begin(loop, 0)
    hook_list.on_train_batch_end(loop, 0, None)
    hook_list.on_epoch_end(loop, 0, _metrics(0))
    hook_list.on_train_end(loop)
    assert log == [("first", "train_begin"), ("second", "train_begin"), ("first", "epoch_begin", 0),
                   ("second", "epoch_begin", 0), ("first", "batch_end", 0), ("second", "batch_end", 0),
                   ("first", "epoch_end", 0), ("second", "epoch_end", 0), ("first", "train_end"),
                   ("second", "train_end")]
    assert set(hook_list.timings) == {"recorder", "nonfinite"} and all(t >= 0 for t in hook_list.timings.values())


def test_default_hooks_order_and_extra_hooks_before_timing(tmp_path, monkeypatch):
    monkeypatch.delenv(hooks.FAULT_ENV, raising=False)
    extra = Recorder([], "extra")
    names = [type(h).__name__ for h in hooks.default_hooks(_loop(tmp_path, early_stopping_patience=3), [extra])]
    assert names == ["TerminateOnNonFinite", "ProgressHook", "TensorBoardHook", "ReplicaDigestHook",
                     "EarlyStopping", "CheckpointHook", "Recorder", "TimingHook", "HistoryHook"]
    with hooks.fault_injection("crash", epoch=2, runs=["r"]):
        assert isinstance(hooks.default_hooks(_loop(tmp_path))[0], hooks.FaultInjection)
    assert not any(isinstance(h, hooks.FaultInjection) for h in hooks.default_hooks(_loop(tmp_path)))


def test_terminate_on_non_finite_stops_every_rank(tmp_path):
    loop = _loop(tmp_path)
    hooks.TerminateOnNonFinite().on_epoch_end(loop, 0, _metrics(0))
    assert (loop.status, loop.stop_training) == ("running", False)
    hooks.TerminateOnNonFinite().on_epoch_end(loop, 1, _metrics(1, loss=float("nan")))
    assert (loop.status, loop.stop_training) == ("nonfinite", True)
    other = _loop(tmp_path, rank=1, world=2)
    hooks.TerminateOnNonFinite().on_epoch_end(other, 0, _metrics(0, val_loss=float("inf")))
    assert other.status == "nonfinite"


def test_progress_without_a_board_prints_rank_zeros_epoch_line(tmp_path, capfd):
    """A loop run outside ``train`` (no driver board): rank 0 prints each epoch's
    line itself, no step lines (those feed the driver's bar: tests/test_progress.py)."""
    import tensorflow as tf

    totals = [tf.constant(48.0), tf.constant(20.0), tf.constant(48.0)]
    for rank in (0, 1):
        loop, progress = _loop(tmp_path, rank=rank, world=2), hooks.ProgressHook()
        progress.on_epoch_begin(loop, 2)
        for step in range(8):
            progress.on_train_batch_end(loop, step, totals)
        progress.on_epoch_end(loop, 2, _metrics(2))
        lines = [line for line in capfd.readouterr().out.splitlines() if line.startswith("[imgrec]")]
        if rank == 1:
            assert lines == []
            continue
        assert len(lines) == 1
        assert lines[0].startswith("[imgrec] epoch 3/10 loss 1.0000 acc 0.5000 val_loss 1.1000 val_acc 0.4000")


def test_tensorboard_events_uploaded_by_rank_zero(tmp_path):
    for rank, expected in ((1, 0), (0, 1)):
        loop, board = _loop(tmp_path, rank=rank, world=2), hooks.TensorBoardHook()
        board.on_train_begin(loop)
        board.on_epoch_end(loop, 0, _metrics(0))
        board.on_train_end(loop)
        events = list((tmp_path / "runs" / "r" / "tensorboard").glob("events.out.tfevents.*"))
        assert len(events) == expected and all(e.stat().st_size > 0 for e in events)


def test_history_records_epochs_status_and_restarts(tmp_path):
    loop = _loop(tmp_path)
    history = hooks.HistoryHook()
    history.on_train_begin(loop)
    loop.history.append(_metrics(0))
    history.on_epoch_end(loop, 0, loop.history[-1])
    record = hooks.read_history(loop.run.uri)
    assert record == {"status": "running", "epochs": [_metrics(0)], "restarts": [], "startup": {}}
    # A worker-group restart from the epoch-1 checkpoint: the restart is recorded.
    restarted = _loop(tmp_path, history=[_metrics(0)])
    restarted.restored_from, restarted.start_epoch = "ray", 1
    history = hooks.HistoryHook()
    history.on_train_begin(restarted)
    restarted.status = "finished"
    history.on_train_end(restarted)
    record = hooks.read_history(loop.run.uri)
    assert record["status"] == "finished" and record["restarts"] == [{"from_epoch": 1}]
    # Rank 1 never writes it.
    other = _loop(tmp_path, rank=1, world=2)
    other.status = "bogus"
    hooks.HistoryHook().on_train_end(other)
    assert hooks.read_history(loop.run.uri)["status"] == "finished"
    assert hooks.read_history(str(tmp_path / "elsewhere")) == {"status": "missing", "epochs": []}


def test_checkpoint_save_writes_a_complete_loadable_checkpoint(tmp_path, small_model):
    loop = _loop(tmp_path, small_model)
    loop.stage = 0
    loop.history = [_metrics(0)]
    folder = tmp_path / "ckpt"
    hooks.CheckpointHook.save(loop, 0, loop.history[-1], str(folder))
    assert sorted(os.listdir(folder)) == ["manifest.json", "model.keras"]
    model, manifest = ckpt.load(str(folder))
    assert manifest["epoch"] == 1 and manifest["class_names"] == CLASSES and manifest["freeze_depth"] == 0
    assert manifest["history"] == [_metrics(0)] and manifest["optimizer_iterations"] == 8
    assert manifest["model_bytes"] == os.path.getsize(folder / "model.keras")
    assert model.count_params() == small_model.count_params() and model.optimizer is not None


def test_checkpoint_every_n_epochs_with_improving_and_last_epochs_saved(tmp_path):
    loop = _loop(tmp_path, checkpoint_every=3, epochs=8, history=[_metrics(0, val_accuracy=0.5)])
    hook = hooks.CheckpointHook()
    hook.on_train_begin(loop)  # the restored epoch's 0.5 is the bar
    accuracy = {1: 0.4, 2: 0.45, 3: 0.6, 4: 0.55, 5: 0.5, 6: 0.58, 7: 0.59}
    saved = [epoch + 1 for epoch, acc in accuracy.items() if hook.due(loop, epoch, _metrics(epoch, val_accuracy=acc))]
    assert saved == [3, 4, 6, 8]  # every 3rd (3, 6), improving (4: 0.6), the last (8)
    loop.stop_training = True  # early stopping: the epoch it stops in is saved
    assert hook.due(loop, 4, _metrics(4, val_accuracy=0.1))


def test_early_stopping_counts_from_the_best_epoch(tmp_path):
    loop = _loop(tmp_path, history=[_metrics(0, val_accuracy=0.6)])
    stop = hooks.EarlyStopping(patience=2)
    stop.on_train_begin(loop)  # the restored history's best (0.6) is the bar
    stop.on_epoch_end(loop, 1, _metrics(1, val_accuracy=0.5))
    assert not loop.stop_training
    stop.on_epoch_end(loop, 2, _metrics(2, val_accuracy=0.7))  # improves: the count restarts
    stop.on_epoch_end(loop, 3, _metrics(3, val_accuracy=0.7))
    assert not loop.stop_training and stop.stale == 1
    stop.on_epoch_end(loop, 4, _metrics(4, val_accuracy=0.65))
    assert loop.stop_training and stop.best == 0.7


def test_timing_records_the_epoch_and_every_hook_before_it(tmp_path):
    loop = _loop(tmp_path)
    timing = hooks.TimingHook()
    hook_list = hooks.HookList([hooks.TerminateOnNonFinite(), Recorder([], "rec"), timing])
    hook_list.on_epoch_begin(loop, 0)
    metrics = _metrics(0)
    hook_list.on_epoch_end(loop, 0, metrics)
    assert {"time_nonfinite_s", "time_recorder_s", "epoch_time_s"} <= set(metrics)
    assert metrics["epoch_time_s"] >= metrics["time_nonfinite_s"] + metrics["time_recorder_s"] >= 0


def test_replica_digest_written_per_rank(tmp_path, small_model):
    loop = _loop(tmp_path, small_model, rank=0)
    hooks.ReplicaDigestHook().on_train_end(loop)
    record = json.loads(open(loop.run.replica(0)).read())
    assert record == {"rank": 0, "weights_sha256": hooks.weights_digest(small_model)}
    assert set(record["weights_sha256"]) == {"trainable", "non_trainable"}
    loop.status = "nonfinite"  # a diverged run records nothing
    os.remove(loop.run.replica(0))
    hooks.ReplicaDigestHook().on_train_end(loop)
    assert not os.path.exists(loop.run.replica(0))


def test_fault_injection_nan_and_run_scoping(tmp_path, monkeypatch):
    monkeypatch.delenv(hooks.FAULT_ENV, raising=False)
    assert hooks.FaultInjection.from_env("trial_001") is None
    with hooks.fault_injection("nan", epoch=2, runs=["trial_001"]):
        assert hooks.FaultInjection.from_env("trial_002") is None
        fault = hooks.FaultInjection.from_env("trial_001")
    assert os.environ.get(hooks.FAULT_ENV) is None  # the switch is off again after the block
    loop = _loop(tmp_path)
    first, second = _metrics(0), _metrics(1)
    fault.on_epoch_end(loop, 0, first)
    fault.on_epoch_end(loop, 1, second)
    assert first["loss"] == 1.0 and math.isnan(second["loss"])
    with pytest.raises(ValueError, match="mode must be one of"):
        hooks.FaultInjection("explode", 1)


_CRASH = """
import sys
from imgrec import hooks
from imgrec.config import TrainConfig
from imgrec.layout import RunLayout
from imgrec.loop_state import WorkerLoop

loop = WorkerLoop(cfg=TrainConfig(workers=2), run=RunLayout(sys.argv[1]), rank=int(sys.argv[2]), world=2,
                  class_names=["a", "b"], manifest_base={}, steps_per_epoch=1, global_batch=32)
fault = hooks.FaultInjection.from_env("r")
fault.on_epoch_begin(loop, 0)  # epoch 1: not the one
fault.on_epoch_begin(loop, 1)
print("survived")
"""


def test_fault_injection_crash_kills_the_last_rank_once(tmp_path):
    run = str(tmp_path / "runs" / "r")
    env = {**os.environ, hooks.FAULT_ENV: json.dumps({"mode": "crash", "epoch": 2}),
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0"}

    def worker(rank: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _CRASH, run, str(rank)], env=env, capture_output=True,
                              text=True, timeout=120)

    assert worker(0).stdout.strip() == "survived"  # not the last rank
    died = worker(1)
    assert died.returncode == 1 and "killing worker 1 in epoch 2" in died.stdout
    assert open(RunLayout(run).fault_marker).read() == "worker 1 killed in epoch 2\n"
    assert worker(1).stdout.strip() == "survived"  # once per run: the restarted group goes on


def test_every_rank_ran_the_same_hooks_in_the_same_order(trained_run, hook_traces):
    """The shared 2-worker run carried a recording hook: after the restart, both
    ranks saw the same hook list, entry points, epochs and step counts."""
    cfg, _ = trained_run
    traces = [json.loads(hook_traces.joinpath(f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert traces[0] == traces[1]
    trace = traces[0]
    assert trace["hooks"][-2:] == ["TimingHook", "HistoryHook"]
    epochs = [e[1] for e in trace["events"] if e[0] == "epoch_end"]
    assert epochs == list(range(1, cfg.epochs))  # the restarted group: epochs 2..10 (0-based 1..9)
    assert all(e[2] > 0 for e in trace["events"] if e[0] == "epoch_end")  # steps seen in the epoch
