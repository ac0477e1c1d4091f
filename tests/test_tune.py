"""Hyperparameter sweeps (imgrec.tune): Ray Tune trials, each a Ray Train V2 run,
on the session's local Ray cluster with checkpoints in (moto) S3.

Each trial is a whole Train launch (tens of seconds here), so the default suite
runs ONE 4-trial sweep (with an injected failure) and checks everything on it,
including a resume that must not rerun anything. The driver-kill test is slow.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from imgrec import checkpoint as ckpt
from imgrec import storage
from imgrec.config import (
    ConfigError,
    DataConfig,
    DecodeConfig,
    ModelConfig,
    SweepConfig,
    TrainConfig,
    replace,
    to_dict,
)

SIZE = (32, 32)


def _base(data_uri: str, **changes) -> TrainConfig:
    """The smallest transfer job: MobileNet at width 0.25 on 32x32 images, one worker."""
    settings = dict(
        data=DataConfig(uri=data_uri, decode=DecodeConfig(image_size=SIZE)),
        model=ModelConfig(name="mobilenet", alpha=0.25, weights="none"),
        workers=1,
        batch_size=8,
        epochs=2,
    )
    return TrainConfig(**{**settings, **changes})


def _make_data(uri: str) -> str:
    from imgrec import synth

    synth.make_dataset(uri, task="shapes", classes=3, per_class=12, test_per_class=3, image_size=SIZE, seed=0)
    return uri


def _trial_objects(sweep_uri: str, trial: str) -> dict[str, tuple]:
    """Every object of a trial's Train run with its size, ETag and modification
    time: any retraining (new checkpoints, rewritten history) changes this."""
    bucket, _, prefix = sweep_uri[len("s3://"):].partition("/")
    pages = storage.boto3_client().get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{prefix}/trials/{trial}/")
    return {o["Key"]: (o["Size"], o["ETag"], o["LastModified"]) for page in pages for o in page.get("Contents", [])
            if not o["Key"].endswith("/")}  # pyarrow's empty folder markers are re-created freely


# --------------------------------------------------------------------------- config and helpers (no Ray Train)


def test_sweep_config_validates_and_round_trips():
    from imgrec.config import from_dict

    cfg = SweepConfig(base=_base("/data"), freeze_depths=[0, 9, "all"], batch_sizes=[8, 16],
                      augment_presets=["none", "light"])
    assert from_dict(SweepConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg
    # A sweep.json written before fault injection became a test hook still loads.
    legacy = {**to_dict(cfg), "fail_trials": [1], "base": {**to_dict(cfg.base), "fail_at_epoch": None}}
    assert from_dict(SweepConfig, legacy) == cfg
    with pytest.raises(ConfigError, match="lr_min"):
        SweepConfig(lr_min=1e-2, lr_max=1e-3)
    with pytest.raises(ConfigError, match="scheduler"):
        SweepConfig(scheduler="pbt")
    with pytest.raises(ConfigError, match="preset"):
        SweepConfig(augment_presets=["strong"])
    with pytest.raises(ConfigError, match="workers"):
        SweepConfig(base=_base("/data", workers=2, batch_size=8), batch_sizes=[1])


def test_search_space_and_trial_config():
    from ray import tune as ray_tune

    from imgrec import tune

    cfg = SweepConfig(base=_base("/data"), freeze_depths=[0, 9], lr_min=1e-4, lr_max=1e-2,
                      augment_presets=["none", "course"], storage="/sweeps", name="s")
    space = tune.search_space(cfg)
    assert isinstance(space["learning_rate"], ray_tune.search.sample.Float)
    assert space["freeze_depth"].categories == [0, 9]
    assert "batch_size" not in space  # not swept: the base's
    grid = tune.search_space(replace(cfg, search="grid"))
    assert grid["freeze_depth"] == {"grid_search": [0, 9]}

    trial = tune.trial_config(cfg, {"freeze_depth": 9, "learning_rate": 3e-3, "augment": "course"}, "trial_001")
    assert (trial.model.freeze_depth, trial.learning_rate, trial.batch_size) == (9, 3e-3, 8)
    assert trial.augment.rotation_range == 40  # the course preset
    assert trial.storage == "/sweeps/s/trials" and trial.run_name == "trial_001"
    assert (trial.evaluate, trial.report) == (False, False)

    # No backbone, no freezing to sweep; a backbone: frozen, its top blocks, all of it.
    assert tune.freeze_depth_choices(SweepConfig(base=TrainConfig(model=ModelConfig(name="small_cnn")))) == [0]
    assert tune.freeze_depth_choices(SweepConfig(base=TrainConfig(model=ModelConfig(name="mobilenet")))) == [
        "all", "all-1", "all-2", "all-4", "all-8", 0]


def test_prepare_saves_the_config_and_resume_reuses_it(tmp_path, monkeypatch):
    from imgrec import tune

    monkeypatch.chdir(tmp_path)
    base = TrainConfig(data=DataConfig(uri="data"), model=ModelConfig(name="mobilenet"), workers=1)
    cfg = tune._prepare(SweepConfig(base=base, storage="sweeps", name="a", num_samples=3))
    # absolute URIs (Tune runs trials in their own folders) and the model's input size
    assert cfg.storage == str(tmp_path / "sweeps") and cfg.base.data.uri == str(tmp_path / "data")
    assert cfg.base.data.decode.image_size == (224, 224)
    assert json.loads((tmp_path / "sweeps/a/sweep.json").read_text())["num_samples"] == 3

    with pytest.raises(ConfigError, match="already holds a sweep"):
        tune._prepare(SweepConfig(base=base, storage="sweeps", name="a"))
    resumed = tune._prepare(SweepConfig(storage="sweeps", name="a", resume=True))  # the saved config wins
    assert resumed == replace(cfg, resume=True)
    with pytest.raises(ConfigError, match="nothing to resume"):
        tune._prepare(SweepConfig(storage="sweeps", name="b", resume=True))
    with pytest.raises(ConfigError, match="name"):
        tune._prepare(SweepConfig(storage="sweeps", resume=True))


def test_results_files_from_rows():
    import pyarrow.parquet as pq

    from imgrec import tune

    rows = [
        {"rank": 1, "trial": "trial_000", "freeze_depth": "all", "learning_rate": 1e-3, "batch_size": 8,
         "augment": "none", "best_val_accuracy": 0.9, "epochs": 2, "wall_time_s": 10.0, "status": "finished",
         "error": None, "checkpoint": "/c", "run": "/r"},
        {"rank": None, "trial": "trial_001", "freeze_depth": 9, "learning_rate": 1e-2, "batch_size": 8,
         "augment": "none", "best_val_accuracy": None, "epochs": 1, "wall_time_s": 5.0, "status": "error",
         "error": "NonFiniteLossError: boom", "checkpoint": None, "run": "/r1"},
    ]
    assert tune.table_csv(rows).splitlines()[0].split(",") == tune.TABLE_COLUMNS
    table = pq.read_table(io.BytesIO(tune.table_parquet(rows)))
    assert table.num_rows == 2 and table.column("freeze_depth").to_pylist() == ["all", "9"]
    assert tune.sweep_png(rows).startswith(b"\x89PNG")
    text = tune.format_table(rows)
    assert "trial_001" in text and "NonFiniteLossError" in text


def test_cli_parses_into_a_sweep_config(monkeypatch):
    from typer.testing import CliRunner

    from imgrec import tune
    from imgrec.cli import app

    seen = {}

    def fake_sweep(cfg, **_):
        seen["cfg"] = cfg
        return tune.SweepResult("s3://b/sweeps/x", [], {"checkpoint": "s3://b/sweeps/x/trials/trial_000/c"})

    monkeypatch.setattr(tune, "sweep", fake_sweep)
    out = CliRunner().invoke(app, [
        "tune", "--data", "s3://b/pets", "--model", "mobilenet", "--weights", "s3://b/w.h5", "--storage",
        "s3://b/sweeps", "--samples", "4", "--epochs", "2", "--freeze-depths", "0,20,all", "--lr-min", "1e-4",
        "--lr-max", "1e-2", "--batch-sizes", "16,32", "--augment-presets", "none,light", "--max-concurrent", "2",
    ])
    assert out.exit_code == 0, out.output
    assert "best checkpoint: s3://b/sweeps/x/trials/trial_000/c" in out.output
    cfg = seen["cfg"]
    assert (cfg.num_samples, cfg.base.epochs, cfg.base.model.weights) == (4, 2, "s3://b/w.h5")
    assert cfg.freeze_depths == [0, 20, "all"] and cfg.batch_sizes == [16, 32]
    assert cfg.augment_presets == ["none", "light"] and (cfg.lr_min, cfg.lr_max) == (1e-4, 1e-2)
    assert cfg.max_concurrent == 2 and cfg.resume is False

    bad = CliRunner().invoke(app, ["tune", "--data", "/d", "--lr-min", "1", "--lr-max", "0.1"])
    assert bad.exit_code == 2 and "lr_min" in bad.output


# --------------------------------------------------------------------------- one real sweep


def test_sweep_four_trials_with_a_failed_trial_then_resume(ray_cluster, bucket, mlflow_server):
    """4 trials (1 Train worker each, 2 epochs, 2 at a time, ASHA), trial 1 given a
    NaN loss: the sweep finishes, ranks the others, writes table, plot and best.json;
    resuming the finished sweep reruns nothing. Tracked to MLflow: a parent run, a child per trial."""
    from imgrec import tune
    from imgrec.data import load_dataset
    from imgrec.hooks import fault_injection

    base = _base(_make_data(f"{bucket}/shapes"), tracking=mlflow_server)
    cfg = SweepConfig(base=base, num_samples=4, freeze_depths=[0, 16], lr_min=1e-3, lr_max=1e-2,
                      max_concurrent=2, storage=f"{bucket}/sweeps", name="s4")
    data = load_dataset(base.data)  # decoded once, shared by both calls below
    t0 = time.time()
    with fault_injection("nan", epoch=1, runs=["trial_001"]):
        result = tune.sweep(cfg, dataset=data)
    print(f"4-trial sweep: {time.time() - t0:.0f} s")

    uri = f"{bucket}/sweeps/s4"
    assert result.sweep_uri == uri
    rows = {r["trial"]: r for r in result.rows}
    assert sorted(rows) == ["trial_000", "trial_001", "trial_002", "trial_003"]

    failed = rows["trial_001"]
    assert failed["status"] == "error" and failed["rank"] is None
    assert "NonFiniteLossError" in failed["error"] and "non-finite" in failed["error"]
    assert result.rows[-1]["trial"] == "trial_001"  # errored trials sort last

    ranked = [r for r in result.rows if r["rank"] is not None]
    assert [r["rank"] for r in ranked] == [1, 2, 3]
    accs = [r["best_val_accuracy"] for r in ranked]
    assert accs == sorted(accs, reverse=True) and all(0.0 <= a <= 1.0 for a in accs)
    for r in ranked:
        assert r["status"] in ("finished", "stopped")  # ASHA may stop a weak trial after epoch 1
        assert 1 <= r["epochs"] <= 2 and r["freeze_depth"] in (0, 16) and 1e-3 <= r["learning_rate"] <= 1e-2
        # each trial's Train run lives under the sweep, with the trial's own hyperparameters
        manifest = ckpt.resolve(r["checkpoint"]).manifest
        assert r["run"] == f"{uri}/trials/{r['trial']}"
        assert manifest["train_config"]["model"]["freeze_depth"] == r["freeze_depth"]
        assert manifest["train_config"]["learning_rate"] == pytest.approx(r["learning_rate"])

    # Table (CSV + Parquet), plot and best.json in the sweep's storage.
    import pyarrow.parquet as pq

    csv_lines = storage.read_text(f"{uri}/results.csv").splitlines()
    assert len(csv_lines) == 5 and csv_lines[0].startswith("rank,trial,freeze_depth,learning_rate")
    table = pq.read_table(io.BytesIO(storage.read_bytes(f"{uri}/results.parquet")))
    assert table.num_rows == 4 and table.column("trial").to_pylist()[0] == ranked[0]["trial"]
    assert storage.read_bytes(f"{uri}/sweep.png").startswith(b"\x89PNG")

    best = json.loads(storage.read_text(f"{uri}/best.json"))
    assert best["trial"] == ranked[0]["trial"] and best["val_accuracy"] == ranked[0]["best_val_accuracy"]
    ref = ckpt.resolve(best["checkpoint"])  # a complete checkpoint, ready for `imgrec predict --model`
    assert ref.uri == best["checkpoint"] == result.best_checkpoint
    assert best["run"] == f"{uri}/trials/{best['trial']}"
    assert best["config"]["model"]["freeze_depth"] == ranked[0]["freeze_depth"]
    assert best["test_metrics"]["split"] == "test" and best["test_metrics"]["count"] == 9

    # Resume the (finished) sweep: nothing is trained again, the failed trial stays failed.
    before = {r: _trial_objects(uri, r) for r in rows}
    again = tune.sweep(replace(cfg, resume=True), dataset=data)
    assert {r: _trial_objects(uri, r) for r in rows} == before
    assert [(r["trial"], r["status"], r["best_val_accuracy"]) for r in again.rows] == \
        [(r["trial"], r["status"], r["best_val_accuracy"]) for r in result.rows]
    _check_tracked_sweep(mlflow_server, uri, result.rows)

    with pytest.raises(ConfigError, match="already holds a sweep"):
        tune.sweep(cfg, dataset=data)  # the same name again without resume: refused, not overwritten


def _check_tracked_sweep(server: str, uri: str, rows: list[dict]) -> None:
    """The sweep's parent MLflow run and one child per trial nested under it, read back
    through the MLflow client (after the sweep was resumed once: still one of each)."""
    from mlflow import MlflowClient

    from imgrec import tracking

    client = MlflowClient(tracking_uri=server)
    experiment = client.get_experiment_by_name("imgrec").experiment_id

    def tracked_runs(tag, value):
        return client.search_runs([experiment], filter_string=f"tags.`{tag}` = '{value}'")

    (parent,) = tracked_runs(tracking.TAG_SWEEP, uri)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["num_samples"] == str(len(rows)) and parent.data.params["base.tracking"] == server
    best = json.loads(storage.read_text(f"{uri}/best.json"))
    assert parent.data.tags[tracking.TAG_BEST] == best["checkpoint"]
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(best["val_accuracy"])
    assert {"best.json", "results.csv", "sweep.png", "sweep.json"} <= {a.path for a in client.list_artifacts(
        parent.info.run_id)}
    children = {c.info.run_name: c for c in tracked_runs(tracking.TAG_PARENT, parent.info.run_id)}
    assert sorted(children) == sorted(r["trial"] for r in rows)
    for row in rows:
        child = children[row["trial"]]
        assert child.data.tags[tracking.TAG_RUN] == row["run"]
        assert child.info.status == ("FAILED" if row["status"] == "error" else "FINISHED")
        if row["status"] != "error":  # a trial's params are its own config, its metrics every epoch it ran
            assert child.data.params["model.freeze_depth"] == json.dumps(row["freeze_depth"])
            steps = {m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")}
            assert steps == set(range(1, row["epochs"] + 1)), (row, steps)


# --------------------------------------------------------------------------- the driver dies mid-sweep

_DRIVER = """
import json, sys
from imgrec.config import SweepConfig, from_dict
from imgrec.tune import sweep
sweep(from_dict(SweepConfig, json.loads(sys.argv[1])))
"""


@pytest.mark.slow
def test_sweep_resumes_after_its_driver_dies(ray_cluster, bucket, tmp_path):
    """A 2-trial sweep (one at a time) whose driver process is killed once the first
    trial finished and the second has a checkpoint: resuming keeps the first as it
    is and continues the second from its checkpoint."""
    from imgrec import tune
    from imgrec.train import read_history

    base = _base(_make_data(f"{bucket}/shapes"))
    cfg = SweepConfig(base=base, num_samples=2, freeze_depths=[16], lr_min=1e-3, lr_max=1e-2, max_concurrent=1,
                      scheduler="fifo", search="random", storage=f"{bucket}/sweeps", name="killed")
    uri = f"{bucket}/sweeps/killed"
    first, second = f"{uri}/trials/trial_000", f"{uri}/trials/trial_001"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    log = open(tmp_path / "driver.log", "wb")
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, json.dumps(to_dict(cfg))], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        # Kill whether or not Tune has persisted trial 0's end yet (it saves its
        # experiment state every ~10 s): either way it must not be trained again.
        deadline = time.time() + 600
        while read_history(first)["status"] != "finished" or not ckpt.list_checkpoints(second):
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.time() < deadline, "trial_001 did not reach a checkpoint in 10 minutes"
            time.sleep(0.5)
    finally:
        driver.send_signal(signal.SIGKILL)  # the driver dies: no cleanup, no final results
        driver.wait(30)
        log.close()
    assert not storage.exists(f"{uri}/results.csv")
    finished = _trial_objects(uri, "trial_000")
    partial = {k: v for k, v in _trial_objects(uri, "trial_001").items() if "/checkpoint_" in k}

    result = tune.sweep(replace(cfg, resume=True))
    assert _trial_objects(uri, "trial_000") == finished  # not retrained: no new checkpoint, same history
    after = _trial_objects(uri, "trial_001")
    changed = sorted(k for k, v in partial.items() if after.get(k) != v)
    assert partial and not changed, changed  # its epoch-1 checkpoint was kept and continued, not redone
    rows = {r["trial"]: r for r in result.rows}
    assert sorted(rows) == ["trial_000", "trial_001"]
    assert rows["trial_001"]["status"] == "finished" and rows["trial_001"]["epochs"] == 2
    history = ckpt.resolve(second, "latest").manifest["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    # continued, not restarted: the optimizer's step count carried over from epoch 1
    assert history[1]["optimizer_iterations"] == 2 * history[0]["optimizer_iterations"]
    assert storage.exists(f"{uri}/best.json")
