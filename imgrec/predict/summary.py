"""What a batch prediction did: ``PredictSummary`` (also ``<output>/summary.json``),
counted from the parts themselves, so resumed chunks count as much as new ones."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgrec import storage
from imgrec.layout import PredictionLayout
from imgrec.metrics import confusion_metrics
from imgrec.predict.errors import PredictError
from imgrec.predict.listing import EXAMPLES
from imgrec.predict.output import read_part


@dataclass
class PredictSummary:
    """What ``predict_bucket`` did; also written as ``<output>/summary.json``."""

    input: str
    output: str
    predictions_uri: str
    summary_uri: str
    model_uri: str
    checkpoint: str
    class_names: list[str]
    files: int  # rows in the output: one per input file
    errors: int
    chunks: int
    chunks_run: int  # predicted by this call
    chunks_skipped: int  # already there from an earlier run
    stale_parts_removed: int
    skipped_files: int  # not image files by their ending (prefix input only)
    seconds: float
    images_per_second: float  # this call's rows / time spent predicting
    labelled: int
    metrics: dict[str, Any] | None = None  # over labelled rows without error
    error_examples: list[dict[str, str]] = field(default_factory=list)
    skipped_examples: list[str] = field(default_factory=list)
    report_uri: str | None = None  # report.html, the page to look at

    def __str__(self) -> str:
        lines = [
            f"predicted {self.files} files from {self.input} -> {self.predictions_uri}",
            f"  checkpoint {self.checkpoint}",
            f"  chunks: {self.chunks} ({self.chunks_run} run now, {self.chunks_skipped} already done"
            + (f", {self.stale_parts_removed} stale parts removed" if self.stale_parts_removed else "")
            + ")",
            f"  {self.images_per_second:.1f} images/s over {self.seconds:.1f} s",
            f"  errors: {self.errors}" + (f" (e.g. {self.error_examples[0]['path']}: "
                                          f"{self.error_examples[0]['error']})" if self.error_examples else ""),
        ]
        if self.skipped_files:
            lines.append(f"  skipped {self.skipped_files} non-image files (e.g. {self.skipped_examples[0]})")
        if self.metrics:
            lines.append(f"  accuracy {self.metrics['accuracy']:.4f} on {self.metrics['count']} labelled images")
        if self.report_uri:
            lines.append(f"  report: {self.report_uri}")
        return "\n".join(lines)


def summarize(cfg, ref, out, plan, listing, runner, done, stale, t0) -> PredictSummary:
    """Read back every part of this listing (three small columns) for exact counts
    and the metrics: resumed chunks count as much as the ones run now."""

    class_names = ref.class_names
    index = {name: i for i, name in enumerate(class_names)}
    rows = errors = 0
    examples: list[dict[str, str]] = []
    confusion = np.zeros((len(class_names),) * 2, dtype=np.int64)  # parts' matrices sum: memory stays per part
    for name in plan.names:
        table = read_part(PredictionLayout(out).part(name), ["path", "label", "predicted_index", "error"])
        rows += table.num_rows
        error = table.column("error").to_pylist()
        errors += sum(e is not None for e in error)
        if len(examples) < EXAMPLES:
            paths = table.column("path").to_pylist()
            examples += [{"path": p, "error": e} for p, e in zip(paths, error, strict=True) if e][
                : EXAMPLES - len(examples)]
        scored = [(index[lab], pred) for lab, pred, e in zip(table.column("label").to_pylist(),
                                                             table.column("predicted_index").to_pylist(),
                                                             error, strict=True)
                  if lab is not None and e is None]
        if scored:
            labels, preds = np.array(scored, dtype=np.int64).T
            np.add.at(confusion, (labels, preds), 1)
    if rows != plan.files:
        raise PredictError(f"{out}: the parts hold {rows} rows but the input has {plan.files} files; "
                           "rerun with --no-resume to rebuild the output")
    return PredictSummary(
        input=listing.input,
        output=out,
        predictions_uri=PredictionLayout(out).predictions,
        summary_uri=PredictionLayout(out).summary,
        model_uri=storage.normalize(cfg.model),
        checkpoint=ref.uri,
        class_names=class_names,
        files=rows,
        errors=errors,
        chunks=len(plan.names),
        chunks_run=runner.chunks_run,
        chunks_skipped=len(done),
        stale_parts_removed=stale,
        skipped_files=listing.skipped,
        seconds=round(time.time() - t0, 3),
        images_per_second=round(runner.rows_run / runner.predict_seconds, 2) if runner.predict_seconds else 0.0,
        labelled=plan.labelled,
        metrics=confusion_metrics(confusion, class_names) if confusion.sum() else None,
        error_examples=examples,
        skipped_examples=listing.skipped_examples,
    )

