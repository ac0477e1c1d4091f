"""Experiment tracking with MLflow (``--tracking``), read back through the MLflow
client from a real tracking server on loopback (``mlflow_server`` in conftest).

The shared training run (``trained_run``) is tracked, so the run checks ride it;
the sweep's parent and child runs are checked on the default suite's sweep
(``tests/test_tune.py``); an unreachable server is driven over the shared run's
folder without a new Ray Train launch (a whole training run against one is slow)."""

from __future__ import annotations

import json
import socket
import sys
import time

import pytest

from imgrec import storage, tracking
from imgrec.config import ConfigError, DataConfig, TrainConfig, replace, to_dict
from imgrec.layout import RunLayout


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def tracked_runs(server: str, tag: str, value: str) -> list:
    """The MLflow runs tagged ``tag=value`` (a run URI, a sweep URI, a parent run ID)."""
    client = _client(server)
    experiment = client.get_experiment_by_name("imgrec")
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`{tag}` = '{value}'")


def test_the_shared_run_is_tracked_whole(trained_run, mlflow_server, tmp_path):
    cfg, result = trained_run
    client = _client(mlflow_server)
    (run,) = tracked_runs(mlflow_server, tracking.TAG_RUN, result.run_uri)
    assert run.info.status == "FINISHED" and run.info.run_name == "shared"

    # params: the whole config, flattened
    params = run.data.params
    assert params["model.name"] == "small_cnn" and params["epochs"] == "10" and params["workers"] == "2"
    assert params["data.uri"] == cfg.data.uri and params["lr_schedule"] == "cosine"
    assert params["tracking"] == mlflow_server and params["augment.horizontal_flip"] == "true"
    assert set(tracking.flatten(to_dict(cfg))) <= set(params)

    # a metric per epoch, each the epoch's record in history.json, timings included
    # (test_train's resume may have added an epoch 11 to the run already)
    for name in ("loss", "accuracy", "val_loss", "val_accuracy", "images_per_s", "learning_rate",
                 "epoch_time_s", "data_wait_s", "val_time_s", "compute_s", "unaccounted_s"):
        logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, name)
                  if m.step <= cfg.epochs}
        assert logged == pytest.approx({h["epoch"]: h[name] for h in result.history}), name
    assert run.data.metrics["test_accuracy"] == pytest.approx(result.test_metrics["accuracy"])
    assert any(k.startswith("startup_") for k in run.data.metrics)
    # logged while training ran (history.json read every 2 s), not all at the end
    stamps = {m.step: m.timestamp for m in client.get_metric_history(run.info.run_id, "val_accuracy")}
    assert stamps[cfg.epochs] - stamps[1] >= 1000, stamps

    # tags: where the run and its best checkpoint are
    assert run.data.tags[tracking.TAG_RUN] == result.run_uri
    assert run.data.tags[tracking.TAG_BEST] == result.best_checkpoint

    # artifacts: the report with its plots and thumbnails, evaluation.json as the run wrote it
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    layout = RunLayout(result.run_uri)
    assert {storage.basename(u) for u in (layout.report, layout.evaluation, layout.history_plot,
                                          layout.confusion_plot, layout.gallery)} <= names
    thumbnails = client.list_artifacts(run.info.run_id, storage.basename(layout.gallery))
    assert thumbnails and all(a.path.endswith(".png") for a in thumbnails)
    local = client.download_artifacts(run.info.run_id, storage.basename(layout.evaluation), str(tmp_path))
    assert json.loads(open(local).read()) == json.loads(storage.read_text(layout.evaluation))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens on it once closed


def test_an_unreachable_server_warns_once_and_never_holds_training_up(trained_run, capfd):
    """The tracker of a run whose server refuses connections: one warning line, no
    error, and the block it wraps is not slowed (several polls happen meanwhile)."""
    cfg, result = trained_run
    down = replace(cfg, tracking=f"http://127.0.0.1:{_closed_port()}")
    t0 = time.monotonic()
    with tracking.track_run(down, result.run_uri):
        time.sleep(3)  # training: a poll every 2 s, which would fail again if it were tried
    elapsed = time.monotonic() - t0
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if "warning: tracking" in line]
    assert len(warnings) == 1, err
    assert down.tracking in warnings[0] and "training goes on untracked" in warnings[0]
    assert elapsed < 4.5, elapsed


@pytest.mark.slow
def test_a_server_that_never_answers_costs_the_run_seconds_not_minutes(trained_run, capfd):
    """A server that accepts connections and never answers (MLflow's defaults would
    retry for minutes): the run waits at most the shortened timeouts at its end."""
    cfg, result = trained_run
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # connections queue, nothing is ever read or answered
    try:
        hung = replace(cfg, tracking=f"http://127.0.0.1:{silent.getsockname()[1]}")
        t0 = time.monotonic()
        with tracking.track_run(hung, result.run_uri):
            time.sleep(1)
        elapsed = time.monotonic() - t0
    finally:
        silent.close()
    warnings = [line for line in capfd.readouterr().err.splitlines() if "warning: tracking" in line]
    assert len(warnings) == 1 and elapsed < 30, (warnings, elapsed)


@pytest.mark.slow
def test_a_training_run_against_an_unreachable_server_finishes(ray_cluster, shapes_data, bucket, capfd):
    from imgrec.config import DecodeConfig, ModelConfig
    from imgrec.train import train

    cfg = TrainConfig(data=DataConfig(uri=shapes_data, decode=DecodeConfig(image_size=(32, 32))),
                      model=ModelConfig(name="small_cnn"), storage=f"{bucket}/runs", workers=1, epochs=2,
                      batch_size=16, tracking=f"http://127.0.0.1:{_closed_port()}")
    result = train(cfg)
    assert result.best_checkpoint and len(result.history) == 2
    out = capfd.readouterr()
    assert sum("warning: tracking" in line for line in (out.out + out.err).splitlines()) == 1


def test_a_local_mlruns_folder_is_tracked_to(trained_run, tmp_path):
    """``--tracking ./mlruns``: MLflow's folder store, no server."""
    cfg, result = trained_run
    folder = str(tmp_path / "mlruns")
    with tracking.track_run(replace(cfg, tracking=folder), result.run_uri):
        pass
    (run,) = tracked_runs(folder, tracking.TAG_RUN, result.run_uri)
    history = _client(folder).get_metric_history(run.info.run_id, "val_accuracy")
    assert run.info.status == "FINISHED" and len({m.step for m in history}) >= 10


def test_tracking_uris_are_checked_before_anything_runs(tmp_path, monkeypatch):
    check = tracking.check_tracking
    for good in (None, "http://127.0.0.1:5000", "https://mlflow.example.org/path", str(tmp_path / "mlruns"),
                 f"file://{tmp_path}/mlruns", f"sqlite:///{tmp_path}/mlflow.db"):
        check(good)
    (tmp_path / "afile").write_text("x")
    for bad, says in (("s3://bucket/mlruns", "is not a place MLflow tracks to"), ("http://", "names no host"),
                      ("https://u:p@host", "holds credentials"), (str(tmp_path / "afile"), "is a file"),
                      ("", "tracking is empty")):
        with pytest.raises(ConfigError, match=says) as caught:
            check(bad)
        assert caught.value.field == "tracking"
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"pip install 'imgrec\[tracking\]'"):
        check("http://127.0.0.1:5000")

