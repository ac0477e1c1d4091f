"""``train_baseline``: fit, judge and hold the result beside a CNN run's."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from imgrec import checkpoint, storage
from imgrec.data import split_records
from imgrec.features.classifier import LinearClassifier, judge
from imgrec.features.measure import COURSE_FEATURES, FEATURE_NAMES, FeatureError, resolve_features
from imgrec.features.plots import write_report
from imgrec.features.result import BaselineResult
from imgrec.features.table import FeatureTable, extract_tree_features
from imgrec.layout import RunLayout


def train_baseline(
    data: str | FeatureTable,
    *,
    features: str | Sequence[str] | None = None,
    image_size: tuple[int, int] = (64, 64),
    validation_split: float = 0.3,
    split_seed: int = 0,
    l2: float = 1e-3,
    plot_features: Sequence[str] = COURSE_FEATURES,
    out: str | None = None,
    cnn_run: str | None = None,
) -> BaselineResult:
    """Hand-made features + logistic regression on an image tree (URI) or an
    already extracted ``FeatureTable``.

    Accuracy is measured on the tree's ``test/`` images, or, without them, on a
    ``validation_split`` held out of ``train/`` (the same hash split as CNN
    training). With ``out``, writes ``baseline.json``, ``decision_boundary.png``
    and ``baseline.html`` there; with ``cnn_run``, reads that CNN run's result
    for a side-by-side comparison."""
    names = resolve_features(features)
    plot_names = list(plot_features)
    if len(plot_names) != 2 or any(n not in FEATURE_NAMES for n in plot_names):
        raise FeatureError(f"plot_features must be two names from {FEATURE_NAMES}, got {plot_features!r}")
    # The CNN side first: a wrong --cnn-run should fail before minutes of decoding.
    source = data.source if isinstance(data, FeatureTable) else storage.normalize(data)
    cnn = read_cnn_result(cnn_run, data_uri=source) if cnn_run else None
    table = data if isinstance(data, FeatureTable) else extract_tree_features(data, image_size=image_size)
    fit_rows, eval_rows, split = _split_rows(table, validation_split, split_seed)

    k = len(table.class_names)
    x = table.columns(names)
    y = table.labels
    model = LinearClassifier.fit(x[fit_rows], y[fit_rows], feature_names=names,
                                 class_names=table.class_names, l2=l2)
    pred = model.predict(x[eval_rows])
    truth = y[eval_rows]
    accuracy = float((pred == truth).mean())
    chance = float(np.bincount(truth, minlength=k).max() / len(truth))
    separated, verdict, p = judge(accuracy, chance, len(truth))
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (truth, pred), 1)
    per_class = {
        name: float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else float("nan")
        for i, name in enumerate(table.class_names)
    }

    # The picture gets its own 2-feature model: a boundary drawn in 2-D must be one fitted in 2-D.
    xy = table.columns(plot_names)
    plot_model = LinearClassifier.fit(xy[fit_rows], y[fit_rows], feature_names=plot_names,
                                      class_names=table.class_names, l2=l2)
    plot_acc = float((plot_model.predict(xy[eval_rows]) == truth).mean())

    result = BaselineResult(
        source=table.source, class_names=list(table.class_names), features=names, split=split,
        accuracy=accuracy, chance=chance, p_value=p, separated=separated, verdict=verdict,
        per_class_accuracy=per_class, confusion=confusion.tolist(),
        counts={"train": int(len(fit_rows)), split: int(len(eval_rows))}, model=model,
        train_accuracy=float((model.predict(x[fit_rows]) == y[fit_rows]).mean()),
        plot={"features": plot_names, "accuracy": plot_acc, "model": plot_model, "x": xy, "y": y,
              "fit_rows": fit_rows, "eval_rows": eval_rows},
        bad_files=list(table.bad_files), cnn=cnn,
    )
    if out:
        result.outputs = write_report(result, out)
    return result


def _split_rows(table: FeatureTable, validation_split: float, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Row indices to fit on and to measure on: the test tree, else a held-out part of train."""

    is_test = table.splits == "test"
    train_idx = np.flatnonzero(~is_test)
    if is_test.any():
        return train_idx, np.flatnonzero(is_test), "test"
    if validation_split <= 0:
        raise FeatureError(
            f"{table.source}: no test/ images and validation_split=0: nothing to measure accuracy on; "
            "add <root>/test/<class>/ images or give validation_split > 0"
        )
    records = [{"rel": table.rels[i], "label": int(table.labels[i]), "row": i} for i in train_idx]
    fit, held = split_records(records, validation_split, seed)
    if not held:
        raise FeatureError(f"{table.source}: too few images to hold out a validation split; add images")
    return np.array([r["row"] for r in fit]), np.array([r["row"] for r in held]), "val"


# --------------------------------------------------------------------------- CNN comparison


def read_cnn_result(run_uri: str, *, data_uri: str | None = None) -> dict[str, Any]:
    """A CNN run's held-out accuracy: its ``evaluation.json`` (written by
    ``imgrec.evaluate.evaluate_run``), else its best checkpoint's ``val_accuracy``."""

    run_uri = storage.normalize(run_uri)
    evaluation = RunLayout(run_uri).evaluation
    if storage.exists(evaluation):
        metrics = json.loads(storage.read_text(evaluation))
        if "accuracy" not in metrics:
            raise FeatureError(f"{evaluation}: has no 'accuracy'; is it an imgrec evaluation?")
        result = {"accuracy": float(metrics["accuracy"]), "count": metrics.get("count"),
                  "split": metrics.get("split", "test"), "source": evaluation}
        trained_on = _cnn_data_uri(metrics["checkpoint"]) if metrics.get("checkpoint") else None
    else:
        try:
            ref = checkpoint.resolve(run_uri, "best")
        except checkpoint.CheckpointError as exc:
            raise FeatureError(f"--cnn-run {run_uri}: no evaluation.json and no usable checkpoint ({exc})") from None
        score = ref.manifest.get("metrics", {}).get("val_accuracy")
        if score is None:
            raise FeatureError(f"{ref.uri}: the checkpoint records no val_accuracy and the run no evaluation.json")
        data = ref.manifest.get("data", {})
        result = {"accuracy": float(score), "count": data.get("counts", {}).get("val"), "split": "val",
                  "source": ref.uri}
        trained_on = data.get("uri")
    # Comparing accuracies on different data would be meaningless: say so when we can tell.
    if data_uri and trained_on and trained_on != "cifar10" and storage.normalize(trained_on) != storage.normalize(data_uri):
        result["warning"] = f"the CNN was trained on {trained_on}, the baseline on {data_uri}"
    return result


def _cnn_data_uri(checkpoint_uri: str) -> str | None:

    try:
        return checkpoint.read_manifest(checkpoint_uri).get("data", {}).get("uri")
    except Exception:  # the comparison still stands without the provenance check
        return None
