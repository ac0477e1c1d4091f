"""Classification scores from labels and class probabilities: accuracy,
balanced accuracy, macro-F1, per-class precision, recall and F1, the confusion
matrix. numpy only.

Definitions (scikit-learn's defaults): balanced accuracy is the mean recall over
the classes that occur in the labels; macro-F1 the mean F1 over the classes that
occur in the labels or the predictions; a class never predicted has precision 0,
one never present recall 0, and F1 is 0 when both precision and recall are."""

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
    per_class, recalls, f1s = {}, [], []
    for i, name in enumerate(class_names):
        tp = confusion[i, i]
        predicted, actual = confusion[:, i].sum(), confusion[i, :].sum()
        precision = float(tp / predicted) if predicted else 0.0
        recall = float(tp / actual) if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(actual)}
        if actual:
            recalls.append(recall)
        if actual or predicted:
            f1s.append(f1)
    total = int(confusion.sum())
    return {
        "accuracy": float(np.trace(confusion) / total) if total else float("nan"),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"),
        "macro_f1": float(np.mean(f1s)) if f1s else float("nan"),
        "count": total,
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "class_names": list(class_names),
    }
