"""The decision-boundary picture and the baseline's HTML report."""

from __future__ import annotations

import html
import json
from typing import Any

import numpy as np

from imgrec import storage
from imgrec.features.classifier import judge
from imgrec.features.result import BaselineResult
from imgrec.layout import BaselineLayout
from imgrec.report import render_html


def decision_boundary_png(result: BaselineResult) -> bytes:
    """The course's picture: two features as axes, one dot per image coloured by
    class, and the regions a 2-feature linear classifier assigns to each class."""
    import io

    from matplotlib.figure import Figure  # Agg, without touching pyplot's global state

    plot = result.plot
    xname, yname = plot["features"]
    xy, labels, model = plot["x"], plot["y"], plot["model"]
    k = len(result.class_names)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    pad = np.maximum((hi - lo) * 0.06, 1e-3)
    gx, gy = np.meshgrid(np.linspace(lo[0] - pad[0], hi[0] + pad[0], 300),
                         np.linspace(lo[1] - pad[1], hi[1] + pad[1], 300))
    regions = model.predict(np.column_stack([gx.ravel(), gy.ravel()])).reshape(gx.shape)

    fig = Figure(figsize=(7, 5.5))
    ax = fig.subplots()
    colours = [f"C{i % 10}" for i in range(k)]
    ax.contourf(gx, gy, regions, levels=np.arange(k + 1) - 0.5, colors=colours, alpha=0.15)
    if k > 1:
        ax.contour(gx, gy, regions, levels=np.arange(k - 1) + 0.5, colors="black", linewidths=1.2)
    for rows, marker, split in ((plot["fit_rows"], "o", "train"), (plot["eval_rows"], "^", result.split)):
        for i, name in enumerate(result.class_names):
            sel = rows[labels[rows] == i]
            ax.scatter(xy[sel, 0], xy[sel, 1], s=14, marker=marker, color=colours[i], alpha=0.75,
                       edgecolors="white", linewidths=0.3, label=f"{name} ({split})")
    ax.set_xlabel(_axis_label(xname))
    ax.set_ylabel(_axis_label(yname))
    n_eval = len(plot["eval_rows"])
    alone = "" if judge(plot["accuracy"], result.chance, n_eval)[0] else " (no better than chance)"
    ax.set_title(f"{xname} × {yname}: linear boundary, {result.split} accuracy {plot['accuracy']:.2f}{alone}\n"
                 f"(all {len(result.features)} features: {result.accuracy:.2f}, chance {result.chance:.2f})",
                 fontsize=10)
    ax.legend(fontsize=7, loc="best", ncol=2 if k > 3 else 1)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _axis_label(name: str) -> str:
    units = {"brightness": "brightness (mean grey level, 0-255)",
             "object_height": "object height (fraction of image height)",
             "object_width": "object width (fraction of image width)",
             "object_fraction": "object area (fraction of image)"}
    return units.get(name, name)


def write_report(result: BaselineResult, out: str) -> dict[str, str]:
    """Write ``baseline.json``, ``decision_boundary.png`` and ``baseline.html`` under
    ``out`` (a local folder or ``s3://`` prefix). Returns their URIs."""

    out = storage.normalize(out)
    if storage.is_s3(out):
        storage.check_bucket(out)
    layout = BaselineLayout(out)
    uris = {f.name: getattr(layout, attr) for attr, f in BaselineLayout.files().items()}
    storage.atomic_write(layout.boundary_plot, decision_boundary_png(result))
    storage.atomic_write(layout.result, json.dumps(result.to_dict(), indent=1))

    def row(*cells: Any) -> str:
        return "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"

    compare = row("hand-made features + logistic regression", f"{result.accuracy:.4f}", result.split,
                  result.counts[result.split])
    if result.cnn:
        compare += row(f"CNN ({result.cnn['source']})", f"{result.cnn['accuracy']:.4f}",
                       result.cnn.get("split", "?"), result.cnn.get("count", "?"))
    compare += row("always the most common class", f"{result.chance:.4f}", result.split,
                   result.counts[result.split])
    per_class = "".join(row(c, f"{a:.4f}") for c, a in result.per_class_accuracy.items())
    bad = "".join(row(b["path"], b["reason"]) for b in result.bad_files[:200])
    sections = [
        ("Verdict", f"<p><b>{html.escape(result.verdict)}</b></p>"),
        ("Accuracy", "<table><tr><th>model</th><th>accuracy</th><th>split</th><th>images</th></tr>"
                     f"{compare}</table>"),
        ("Decision boundary", f"<img src='{BaselineLayout.boundary_plot.name}' alt='two features and the learned boundary'>"),
        ("Per class", f"<table><tr><th>class</th><th>accuracy</th></tr>{per_class}</table>"),
        ("Features", "<p>" + html.escape(", ".join(result.features)) + "</p>"),
    ]
    if result.bad_files:
        sections.append((f"Skipped files ({len(result.bad_files)})",
                         f"<table><tr><th>file</th><th>reason</th></tr>{bad}</table>"))
    storage.atomic_write(layout.report, render_html(f"imgrec baseline: {result.source}", sections))
    return uris
