"""Classification scores from labels and class probabilities: accuracy,
per-class precision and recall, the confusion matrix. numpy only."""

from __future__ import annotations

from typing import Any

import numpy as np


def classification_metrics(labels: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    labels = np.asarray(labels, dtype=np.int64)
    pred = np.argmax(probs, axis=1) if len(probs) else np.zeros(0, np.int64)
    k = len(class_names)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    per_class = {}
    for i, name in enumerate(class_names):
        tp = confusion[i, i]
        predicted, actual = confusion[:, i].sum(), confusion[i, :].sum()
        per_class[name] = {
            "precision": float(tp / predicted) if predicted else 0.0,
            "recall": float(tp / actual) if actual else 0.0,
            "support": int(actual),
        }
    return {
        "accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
        "count": int(len(labels)),
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "class_names": list(class_names),
    }
