"""Evaluation of a checkpoint on a labelled split: accuracy, per-class precision
and recall, confusion matrix. Predictions go through ``imgrec.predict``."""

from __future__ import annotations

from typing import Any

import numpy as np

from imgrec import storage
from imgrec.layout import RunLayout
from imgrec.metrics import classification_metrics
from imgrec.predict import predict_dataset


def evaluate_dataset(ds, model_uri: str, class_names: list[str], *, actors: int = 1,
                     batch_size: int = 64) -> dict[str, Any]:
    """Predict a decoded, labelled Ray dataset with the model actors and score it."""
    labels, probs = [], []
    scored = predict_dataset(ds.select_columns(["image", "label"]), model_uri, actors=actors,
                             batch_size=batch_size)
    for batch in scored.iter_batches(batch_size=1024, batch_format="numpy"):
        labels.append(batch["label"])
        probs.append(batch["probs"])
    labels_arr = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    probs_arr = np.concatenate(probs) if probs else np.zeros((0, len(class_names)), np.float32)
    return classification_metrics(labels_arr, probs_arr, class_names)


def evaluate_run(result, data, cfg) -> dict[str, Any]:
    """Score a finished run's best checkpoint on the test tree (or, without one,
    the validation split) and write ``evaluation.json`` into the run folder."""
    import json


    split, ds = ("test", data.test) if data.test is not None else ("val", data.val)
    if ds is None:
        return {}
    metrics = evaluate_dataset(ds, result.best_checkpoint, data.class_names)
    metrics.update(split=split, checkpoint=result.best_checkpoint)
    storage.atomic_write(RunLayout(result.run_uri).evaluation, json.dumps(metrics, indent=1))
    return metrics
