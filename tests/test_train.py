"""Training on Ray Train under MultiWorkerMirroredStrategy, end to end: the core
path (S3 images -> Ray Data -> 2 workers -> checkpoint in S3 -> a Ray Data actor
predicts), fault recovery, resume, bad files, reports, the course's CIFAR path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imgrec import checkpoint as ckpt
from imgrec import storage


def test_core_path_checkpoint_lands_in_s3(trained_run):
    cfg, result = trained_run
    assert result.run_uri == f"{cfg.storage}/shared"
    assert result.best_checkpoint.startswith(f"{cfg.storage}/shared/checkpoint_")
    keys = {o.path for o in storage.list_objects(result.best_checkpoint)}
    assert keys == {"model.keras", "manifest.json"}
    manifest = ckpt.read_manifest(result.best_checkpoint)
    assert manifest["class_names"] == result.class_names and len(result.class_names) == 3
    assert manifest["image_size"] == [32, 32]
    assert manifest["data"]["uri"].endswith("/data/shapes") and manifest["data"]["split_seed"] == 0
    assert manifest["backbone"] is None and manifest["model"]["name"] == "small_cnn"


def test_both_workers_end_with_identical_weights(trained_run):
    _, result = trained_run
    digests = [json.loads(storage.read_text(f"{result.run_uri}/replicas/rank-{r}.json")) for r in (0, 1)]
    assert digests[0]["weights_sha256"] == digests[1]["weights_sha256"]
    # BatchNorm statistics included: they are averaged across workers every epoch.
    assert digests[0]["weights_sha256"]["non_trainable"]


def test_training_learns_far_above_chance(trained_run):
    _, result = trained_run
    assert result.test_metrics["split"] == "test"
    assert result.test_metrics["count"] == 60
    assert result.test_metrics["accuracy"] > 0.8, result.test_metrics  # chance is 1/3


def test_ray_data_actor_reloads_checkpoint_and_predicts(trained_run):
    """A Ray Data actor loads the S3 checkpoint (safe mode) and predicts raw pixels
    exactly as the driver's own copy of the model does."""
    import ray

    from imgrec.predict import predict_dataset

    _, result = trained_run
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    ds = ray.data.from_items([{"image": im} for im in images])
    probs = np.concatenate([b["probs"] for b in predict_dataset(ds, result.run_uri).iter_batches(
        batch_size=8, batch_format="numpy")])
    model = ckpt.load_model(result.run_uri)
    expected = model.predict(images, verbose=0)
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_killed_worker_is_recovered_and_run_finishes(trained_run):
    cfg, result = trained_run
    marker = storage.read_text(f"{result.run_uri}/.fault-injected")  # the worker really died
    killed_in = int(marker.split("epoch")[-1])
    assert killed_in == 2  # the fixture's fault_injection("crash", epoch=2)
    history = json.loads(storage.read_text(f"{result.run_uri}/history.json"))
    assert history["status"] == "finished"
    # Restarted from the checkpoint of the epoch before the failure, not from scratch.
    assert history["restarts"] == result.restarts == [{"from_epoch": killed_in - 1}]
    assert "Worker failures (1)" in storage.read_text(result.report_uri)
    assert [h["epoch"] for h in history["epochs"]] == list(range(1, cfg.epochs + 1))


def test_corrupt_images_are_skipped_and_reported(trained_run):
    _, result = trained_run
    reasons = {storage.basename(b["path"]): b["reason"] for b in result.bad_files}
    assert set(reasons) == {"corrupt.jpg", "empty.png"}
    assert "zero" in reasons["empty.png"].lower()
    report = storage.read_text(result.report_uri)
    assert "corrupt.jpg" in report and "Skipped files (2)" in report


def test_checkpoints_pruned_to_best_k_plus_latest(trained_run):
    """Ray Train keeps the best K by val_accuracy plus the latest. Across a worker
    group restart it may keep one more (the checkpoint it restored from is
    pinned while the new group starts), so the bound allows that one."""
    cfg, result = trained_run
    refs = ckpt.list_checkpoints(result.run_uri)
    assert 1 <= len(refs) <= cfg.keep_checkpoints + 2 < cfg.epochs
    assert refs[-1].epoch == cfg.epochs  # the latest is always kept
    history = json.loads(storage.read_text(f"{result.run_uri}/history.json"))["epochs"]
    # The best epoch is among those kept (ties may keep either of the tied ones).
    assert max(r.score for r in refs) == max(h["val_accuracy"] for h in history)
    best = ckpt.resolve(result.run_uri)
    assert best.score == max(r.score for r in refs)


def test_report_and_plots_in_run_folder(trained_run):
    _, result = trained_run
    names = {o.path for o in storage.list_objects(result.run_uri)}
    for name in ("report.html", "history.png", "confusion.png", "evaluation.json", "history.json"):
        assert name in names, names
    assert any(n.startswith("tensorboard/") for n in names)
    assert storage.read_bytes(f"{result.run_uri}/history.png")[:8] == b"\x89PNG\r\n\x1a\n"
    html = storage.read_text(result.report_uri)
    assert "history.png" in html and "confusion.png" in html and "Test accuracy" in html


def test_evaluation_has_the_imbalance_scores(trained_run):
    """evaluation.json and the report carry macro-F1, balanced accuracy and per-class
    F1; the shared run is unweighted (--class-weight none), as its manifest records."""
    from imgrec.layout import RunLayout

    _, result = trained_run
    scores = json.loads(storage.read_text(RunLayout(result.run_uri).evaluation))
    assert 0 <= scores["macro_f1"] <= 1 and 0 <= scores["balanced_accuracy"] <= 1
    assert set(scores["per_class"]) == set(result.class_names)
    assert all({"precision", "recall", "f1", "support"} <= set(m) for m in scores["per_class"].values())
    assert scores["balanced_accuracy"] == pytest.approx(np.mean([m["recall"] for m in scores["per_class"].values()]))
    manifest = ckpt.read_manifest(result.best_checkpoint)
    assert manifest["class_weights"] is None and manifest["train_config"]["class_weight"] == "none"
    assert "macro-F1" in storage.read_text(result.report_uri)


def test_every_epoch_has_a_time_breakdown_with_little_unaccounted(trained_run):
    """history.json splits each epoch's wall clock into timed phases; what no phase
    covers stays under 10 %, and the report draws it ("Where the time went")."""
    from imgrec import timing

    cfg, result = trained_run
    assert [h["epoch"] for h in result.history] == list(range(1, cfg.epochs + 1))
    for record in result.history:  # the restored epoch 1 too: history.json keeps its whole record
        phases = timing.epoch_breakdown(record)
        assert phases["compute_s"] > 0 and phases["time_checkpoint_s"] > 0 and phases["val_time_s"] > 0
        # two workers: the gradient all-reduce is its own phase, timed on the same tensors
        assert record["allreduce_bytes_per_step"] > 0 and record["allreduce_s_per_step"] > 0
        assert phases["allreduce_s"] == pytest.approx(min(record["train_time_s"] - record["data_wait_s"],
                                                          record["allreduce_s_per_step"]
                                                          * (record["images"] // cfg.batch_size)))
        assert phases["unaccounted_s"] < 0.1 * record["epoch_time_s"], (record["epoch"], phases)
        assert sum(phases.values()) == pytest.approx(record["epoch_time_s"], rel=1e-6)
    startup = result.startup
    assert {"driver_ray_s", "driver_data_s", "ray_train_start_s", "worker_tensorflow_s", "worker_model_s"} <= set(
        startup)
    assert all(v >= 0 for v in startup.values())
    assert storage.read_bytes(f"{result.run_uri}/timing.png")[:4] == b"\x89PNG"
    assert "Where the time went" in storage.read_text(result.report_uri)


def test_load_model_from_run_and_checkpoint_uri(trained_run):
    _, result = trained_run
    by_run = ckpt.load_model(result.run_uri)
    by_ckpt = ckpt.load_model(result.best_checkpoint)
    manifest = ckpt.read_manifest(result.best_checkpoint)
    assert int(by_run.optimizer.iterations.numpy()) == manifest["optimizer_iterations"] > 0
    x = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(by_run.predict(x, verbose=0), by_ckpt.predict(x, verbose=0), rtol=1e-6)


def test_incomplete_checkpoint_is_never_used(trained_run, bucket):
    """A checkpoint folder whose model file is truncated (or whose manifest is
    missing) is ignored; the good one still resolves."""
    _, result = trained_run
    run = f"{bucket}/runs/partial"
    good = f"{run}/checkpoint_a"
    for obj in storage.list_objects(result.best_checkpoint):
        storage.atomic_write(f"{good}/{obj.path}", storage.read_bytes(obj.uri))
    manifest = json.loads(storage.read_text(f"{good}/manifest.json"))
    manifest.update(epoch=99, metrics={"val_accuracy": 1.0})
    storage.atomic_write(f"{run}/checkpoint_b/manifest.json", json.dumps(manifest))
    storage.atomic_write(f"{run}/checkpoint_b/model.keras", b"half a model")
    storage.atomic_write(f"{run}/checkpoint_c/model.keras", storage.read_bytes(f"{good}/model.keras"))
    assert [r.uri for r in ckpt.list_checkpoints(run)] == [good]
    assert ckpt.resolve(run).uri == good
    with pytest.raises(ckpt.CheckpointError, match="incomplete"):
        ckpt.resolve(f"{run}/checkpoint_b")
    with pytest.raises(ckpt.CheckpointError, match="no complete checkpoint"):
        ckpt.resolve(f"{bucket}/runs/nothing-here") if storage.exists(f"{bucket}/runs/nothing-here") else \
            ckpt.resolve(f"{run}/checkpoint_c")


def test_resume_continues_epochs_and_optimizer_state(trained_run):
    """The course's save / load_model / continue fit, on the cluster: --resume
    continues the epoch count and optimizer.iterations from the last checkpoint,
    and the run's MLflow run (``--tracking``) with the added epoch."""
    from mlflow import MlflowClient

    from imgrec import tracking
    from imgrec.config import TrainConfig
    from imgrec.train import train

    cfg, result = trained_run
    before = ckpt.resolve(result.run_uri, "latest")
    resumed = train(TrainConfig(resume=result.run_uri, epochs=cfg.epochs + 1, workers=2, evaluate=False,
                                report=False, tracking=cfg.tracking))
    assert resumed.run_uri == result.run_uri
    client = MlflowClient(tracking_uri=cfg.tracking)
    (run,) = client.search_runs([client.get_experiment_by_name("imgrec").experiment_id],
                                filter_string=f"tags.`{tracking.TAG_RUN}` = '{result.run_uri}'")
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    assert sorted(steps) == list(range(1, cfg.epochs + 2))  # the same run, each epoch once
    assert run.info.status == "FINISHED" and run.data.params["epochs"] == str(cfg.epochs)  # first values kept
    latest = ckpt.resolve(result.run_uri, "latest")
    assert latest.epoch == cfg.epochs + 1
    assert [h["epoch"] for h in latest.manifest["history"]] == list(range(1, cfg.epochs + 2))
    steps_per_epoch = before.manifest["optimizer_iterations"] // before.epoch
    assert latest.manifest["optimizer_iterations"] == before.manifest["optimizer_iterations"] + steps_per_epoch
    model = ckpt.load_model(latest.uri)
    assert int(model.optimizer.iterations.numpy()) == latest.manifest["optimizer_iterations"]
    if cfg.lr_schedule == "cosine":  # stretched over the new length, not stuck at zero for the added epoch
        assert model.optimizer._learning_rate.decay_steps == steps_per_epoch * (cfg.epochs + 1)


def test_resume_from_a_checkpoint_written_before_fault_injection_was_a_hook(trained_run, bucket):
    """Manifests written by earlier versions carry ``fail_at_epoch``/``fail_mode`` in
    their train_config; they are migrated on read, so such a run still resumes."""
    from imgrec.config import TrainConfig
    from imgrec.train import train

    cfg, result = trained_run
    latest = ckpt.resolve(result.run_uri, "latest")
    run = f"{bucket}/runs/legacy"
    old = f"{run}/checkpoint_2026-01-01_00-00-00.000000"
    storage.atomic_write(f"{old}/model.keras", storage.read_bytes(f"{latest.uri}/model.keras"))
    manifest = dict(latest.manifest)
    manifest["train_config"] = {**manifest["train_config"], "fail_at_epoch": 2, "fail_mode": "crash",
                                "storage": f"{bucket}/runs", "run_name": "legacy"}
    storage.atomic_write(f"{old}/manifest.json", json.dumps(manifest))
    epochs = latest.epoch + 1  # the shared run may have been resumed by another test already
    resumed = train(TrainConfig(resume=run, epochs=epochs, workers=1, evaluate=False, report=False))
    assert resumed.run_uri == run
    new = ckpt.resolve(run, "latest")
    assert new.epoch == epochs and [h["epoch"] for h in resumed.history] == list(range(1, epochs + 1))
    assert "fail_at_epoch" not in new.manifest["train_config"] and "fail_mode" not in new.manifest["train_config"]


def test_course_cifar_path_on_in_memory_arrays(ray_cluster, bucket):
    """The course's CIFAR-10 code path on small in-memory arrays shaped like
    ``keras.datasets.cifar10.load_data()``: seed_cifar, 0-1 pixels inside the
    model, a 30 % validation split, curves, and predict-one with 10 class names."""
    from typer.testing import CliRunner

    from imgrec.cli import app
    from imgrec.config import DataConfig, DecodeConfig, ModelConfig, TrainConfig
    from imgrec.data import CIFAR10_CLASSES
    from imgrec.train import train

    rng = np.random.default_rng(0)
    y_train = rng.integers(0, 10, size=(300, 1))  # CIFAR's (N, 1) label shape
    y_test = rng.integers(0, 10, size=(50, 1))
    # Class k is an image of mean brightness ~25k: learnable, and cheap to make.
    x_train = np.clip(rng.normal(25 * y_train[:, :, None, None] + 10, 8, (300, 32, 32, 3)), 0, 255).astype(np.uint8)
    x_test = np.clip(rng.normal(25 * y_test[:, :, None, None] + 10, 8, (50, 32, 32, 3)), 0, 255).astype(np.uint8)
    cfg = TrainConfig(
        data=DataConfig(uri="", validation_split=0.3, decode=DecodeConfig(image_size=(32, 32))),
        model=ModelConfig(name="seed_cifar"), storage=f"{bucket}/runs", run_name="cifar", workers=2,
        batch_size=32, epochs=2,
    )
    result = train(cfg, arrays=((x_train, y_train), (x_test, y_test)), class_names=CIFAR10_CLASSES)
    manifest = ckpt.read_manifest(result.best_checkpoint)
    assert manifest["class_names"] == CIFAR10_CLASSES
    counts = manifest["data"]["counts"]
    assert counts["train"] + counts["val"] == 300 and abs(counts["val"] / 300 - 0.3) < 0.06
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert {"loss", "val_loss", "accuracy", "val_accuracy"} <= set(result.history[-1])
    assert storage.exists(f"{result.run_uri}/history.png")
    model = ckpt.load_model(result.run_uri)
    assert [type(layer).__name__ for layer in model.layers if type(layer).__name__ in ("Conv2D", "Dense")] == [
        "Conv2D", "Conv2D", "Dense", "Dense"]

    # predict-one: the course's "answer / prediction" with class names.
    from PIL import Image

    image_uri = f"{bucket}/one.png"
    import io

    buf = io.BytesIO()
    Image.fromarray(x_test[0]).save(buf, format="PNG")
    storage.atomic_write(image_uri, buf.getvalue())
    out = CliRunner().invoke(app, ["predict-one", image_uri, "--model", result.run_uri])
    assert out.exit_code == 0, out.output
    named = [name for name in CIFAR10_CLASSES if name in out.output]
    assert len(named) >= 5, out.output


def test_course_cats_vs_dogs_on_a_two_class_tree(ray_cluster, bucket):
    """seed_catsdogs: a class-per-folder tree with two classes, one sigmoid unit,
    binary cross-entropy; predictions come back as two class probabilities."""
    from imgrec import synth
    from imgrec.config import DataConfig, DecodeConfig, ModelConfig, TrainConfig
    from imgrec.predict import predict_one
    from imgrec.train import train

    data = f"{bucket}/catsdogs"
    synth.make_dataset(data, task="brightness", classes=2, per_class=40, test_per_class=10, image_size=(48, 48))
    cfg = TrainConfig(
        data=DataConfig(uri=data, decode=DecodeConfig(image_size=(48, 48))),
        model=ModelConfig(name="seed_catsdogs"), storage=f"{bucket}/runs", run_name="catsdogs", workers=2,
        batch_size=16, epochs=2, report=False,
    )
    result = train(cfg)
    assert result.class_names == ["cat", "dog"]
    model = ckpt.load_model(result.run_uri)
    assert model.output_shape == (None, 1) and model.layers[-1].activation.__name__ == "sigmoid"
    assert result.test_metrics["count"] == 20
    ranked = predict_one(f"{data}/test/dog/00000.jpg", result.run_uri)
    assert {name for name, _ in ranked} == {"cat", "dog"}
    assert abs(sum(p for _, p in ranked) - 1.0) < 1e-5
