"""The page of a batch prediction, ``<output>/report.html``: counts per predicted class,
the confidence histogram, the error rows with their reasons, a sample grid per class
(the most confident few, as thumbnails in ``samples/``) and links to the checkpoint
and its run's training report. Read back from the parts, a few columns at a time."""

from __future__ import annotations

import hashlib
import heapq
import html
from collections import Counter

import numpy as np

from imgrec import storage
from imgrec.decode import decode_image
from imgrec.gallery import png_bytes, thumbnail
from imgrec.layout import PredictionLayout, RunLayout
from imgrec.predict.output import part_uris, read_part
from imgrec.report import figure_bytes, html_table, render_html, source_href, thumb_figure

SAMPLES_PER_CLASS = 8
ERROR_ROWS = 200
BINS = 20


def _plots(counts: Counter, class_names: list[str], hist: np.ndarray) -> tuple[bytes, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(class_names) + 2), 3.5))
    ax.bar(class_names, [counts.get(n, 0) for n in class_names], color="#1f77b4")
    ax.set_ylabel("images")
    ax.set_title("Predicted class")
    ax.tick_params(axis="x", rotation=45)
    bars = figure_bytes(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(np.linspace(0, 1, BINS, endpoint=False), hist, width=1 / BINS, align="edge", color="#ff7f0e",
           edgecolor="white")
    ax.set_xlabel("confidence (probability of the predicted class)")
    ax.set_ylabel("images")
    ax.set_title("Confidence")
    return bars, figure_bytes(fig)


def write_prediction_page(summary, decode) -> str:
    """Write ``report.html``, its two plots and the sample thumbnails under the output;
    ``decode`` is the checkpoint's (the samples are shown as the model saw them)."""
    out = PredictionLayout(summary.output)
    names = summary.class_names
    counts: Counter = Counter()
    hist = np.zeros(BINS, np.int64)
    errors: list[list[str]] = []
    best: dict[str, list] = {n: [] for n in names}  # min-heaps of (confidence, -row, path, label)
    row = 0
    for uri in part_uris(summary.output):
        # Column-wise per part (a part can hold a million rows): counts and histogram in numpy,
        # only the error rows and each class's best few become Python objects.
        part = read_part(uri, ["path", "label", "predicted", "confidence", "error"])
        err = part.column("error").is_valid().to_numpy(zero_copy_only=False)
        for i in np.flatnonzero(err)[: max(0, ERROR_ROWS - len(errors))]:
            errors.append([part.column("path")[int(i)].as_py(), part.column("error")[int(i)].as_py()])
        ok = ~err
        predicted = np.asarray(part.column("predicted").to_pylist(), dtype=object)[ok]
        conf = part.column("confidence").to_numpy(zero_copy_only=False)[ok].astype(np.float64)
        rows = np.flatnonzero(ok)
        counts.update(predicted.tolist())
        hist += np.bincount(np.minimum(BINS - 1, (conf * BINS).astype(np.int64)), minlength=BINS)
        for name in set(predicted.tolist()):
            mine = np.flatnonzero(predicted == name)
            top = mine[np.argsort(-conf[mine], kind="stable")[:SAMPLES_PER_CLASS]]
            heap = best.setdefault(name, [])
            for j in top:
                i = int(rows[j])
                entry = (float(conf[j]), -(row + i), part.column("path")[i].as_py(), part.column("label")[i].as_py())
                if len(heap) < SAMPLES_PER_CLASS:
                    heapq.heappush(heap, entry)
                elif entry > heap[0]:
                    heapq.heapreplace(heap, entry)
        row += part.num_rows
    bars, confidence = _plots(counts, names, hist)
    storage.atomic_write(out.class_plot, bars)
    storage.atomic_write(out.confidence_plot, confidence)
    grids, files = [], []
    for name in names:
        items = []
        for conf, _, path, label in sorted(best[name], reverse=True):
            key = hashlib.sha1(path.encode()).hexdigest()[:16]
            files.append((PredictionLayout.sample(key), png_bytes(thumbnail(decode_image(storage.read_bytes(path),
                                                                                       decode)))))
            verdict = "" if label is None else (" <span class='right'>right</span>" if label == name else
                                                f" <span class='wrong'>labelled {html.escape(label)}</span>")
            items.append(thumb_figure({"path": path, "thumbnail": PredictionLayout.sample(key)},
                                      f"p={conf:.3f}{verdict}"))
        grids.append(f"<h3>{html.escape(name)} ({counts.get(name, 0)})</h3>"
                     + (f"<div class='thumbs'>{''.join(items)}</div>" if items else "<p><i>none</i></p>"))
    storage.write_many(out.uri, files)
    run_report = RunLayout(storage.parent(summary.checkpoint)).report
    links = (f"<p>Input <code>{html.escape(summary.input)}</code>, {summary.files} files, {summary.errors} errors."
             f" Checkpoint <a href='{html.escape(source_href(summary.checkpoint))}'>"
             f"<code>{html.escape(summary.checkpoint)}</code></a>")
    if storage.exists(run_report):
        links += f"; its <a href='{html.escape(source_href(run_report))}'>training report</a>"
    links += ".</p>"
    if summary.metrics:
        links += (f"<p>Accuracy <b>{summary.metrics['accuracy']:.4f}</b> on {summary.metrics['count']} "
                  "labelled images.</p>")
    sections = [
        ("Run", links),
        ("Predicted classes", f"<img src='{PredictionLayout.class_plot.name}' alt='images per predicted class'>"
         + html_table([[n, counts.get(n, 0)] for n in names], ["class", "images"])),
        ("Confidence", f"<img src='{PredictionLayout.confidence_plot.name}' alt='confidence histogram'>"),
        (f"Errors ({summary.errors})", "<p><i>none</i></p>" if not errors else
         html_table(errors, ["file", "reason"]).replace("<table>", "<table class='bad'>")
         + ("" if summary.errors <= len(errors) else f"<p>the first {len(errors)} shown</p>")),
        (f"Samples (the {SAMPLES_PER_CLASS} most confident per predicted class)", "".join(grids)),
    ]
    storage.atomic_write(out.report, render_html(f"imgrec prediction {storage.basename(out.uri)}", sections))
    return out.report
