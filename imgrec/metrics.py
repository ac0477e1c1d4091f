"""Classification scores from labels and class probabilities: accuracy,
per-class precision and recall, the confusion matrix. numpy only."""

from __future__ import annotations

from typing import Any

import numpy as np


def classification_metrics(labels: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    labels = np.asarray(labels, dtype=np.int64)
    pred = np.argmax(probs, axis=1) if len(probs) else np.zeros(0, np.int64)
    confusion = np.zeros((len(class_names),) * 2, dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    return confusion_metrics(confusion, class_names)


def confusion_metrics(confusion: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """The scores of a confusion matrix (rows: actual, columns: predicted); the
    matrices of disjoint parts sum, so big outputs are scored part by part."""
    confusion = np.asarray(confusion, dtype=np.int64)
    per_class = {}
    for i, name in enumerate(class_names):
        tp = confusion[i, i]
        predicted, actual = confusion[:, i].sum(), confusion[i, :].sum()
        per_class[name] = {
            "precision": float(tp / predicted) if predicted else 0.0,
            "recall": float(tp / actual) if actual else 0.0,
            "support": int(actual),
        }
    total = int(confusion.sum())
    return {
        "accuracy": float(np.trace(confusion) / total) if total else float("nan"),
        "count": total,
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "class_names": list(class_names),
    }
