"""Evaluation of a checkpoint on a labelled split: accuracy, per-class precision
and recall, confusion matrix, and the images the report shows (``imgrec.gallery``,
with Grad-CAM overlays from ``imgrec.explain``). Predictions go through ``imgrec.predict``."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from imgrec import explain, storage
from imgrec.gallery import Gallery
from imgrec.layout import RunLayout
from imgrec.metrics import classification_metrics
from imgrec.predict import predict_dataset


def evaluate_dataset(ds, model_uri: str, class_names: list[str], *, actors: int = 1,
                     batch_size: int = 64, gallery: Gallery | None = None, tta: str = "none") -> dict[str, Any]:
    """Predict a decoded, labelled Ray dataset with the model actors and score it.
    With ``gallery``, each scored batch also passes through it (it keeps only the
    images it will show); ``tta``: the predictions' test-time augmentation
    (``imgrec.predict.Predictor``), recorded in the metrics."""
    labels, probs = [], []
    wanted = ["image", "label"] + (["path"] if gallery is not None else [])
    scored = predict_dataset(ds.select_columns(wanted), model_uri, actors=actors, batch_size=batch_size, tta=tta)
    if gallery is None:
        scored = scored.drop_columns(["image"])  # pixels stay in the actors
    for batch in scored.iter_batches(batch_size=1024, batch_format="numpy"):
        labels.append(batch["label"])
        probs.append(batch["probs"])
        if gallery is not None:
            gallery.add(batch["path"], batch["label"], batch["probs"], batch["image"])
    labels_arr = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    probs_arr = np.concatenate(probs) if probs else np.zeros((0, len(class_names)), np.float32)
    return {**classification_metrics(labels_arr, probs_arr, class_names), "tta": tta}


def add_heatmaps(gallery: Gallery, model_uri: str) -> bool:
    """Grad-CAM overlays for the gallery's images, each for its predicted class, in one
    Ray task (TensorFlow stays out of the driver). False for a model without a convolution."""
    import ray

    shown = gallery.rows()
    if not shown:
        return False
    images = np.stack([s.pixels for s in shown])
    classes = np.array([s.predicted for s in shown], np.int32)
    task = ray.remote(num_cpus=1)(explain.overlays)
    found = ray.get(task.remote(model_uri, images, classes))
    if found is None:
        return False
    for s, heat in zip(shown, found, strict=True):
        s.heatmap = heat
    return True


def evaluation_split(data) -> tuple[str, Any]:
    """What a finished run or sweep is scored on: the test split, else the validation split."""
    return ("test", data.test) if data.test is not None else ("val", data.val)


def evaluate_run(result, data, cfg) -> dict[str, Any]:
    """Score a finished run's best checkpoint on the test tree (or, without one,
    the validation split), write the gallery's thumbnails and ``evaluation.json``
    (its ``gallery`` record: what the report shows) into the run folder."""
    split, ds = evaluation_split(data)
    if ds is None:
        return {}
    gallery = Gallery(data.class_names)
    metrics = evaluate_dataset(ds, result.best_checkpoint, data.class_names, gallery=gallery, tta=cfg.tta)
    add_heatmaps(gallery, result.best_checkpoint)
    metrics.update(split=split, checkpoint=result.best_checkpoint, gallery=gallery.write(result.run_uri))
    storage.atomic_write(RunLayout(result.run_uri).evaluation, json.dumps(metrics, indent=1))
    return metrics
