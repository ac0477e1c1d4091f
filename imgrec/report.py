"""Plots and ``report.html`` for a run: the course's loss and accuracy curves,
the confusion matrix (each cell linking to its images), the mistakes gallery with
its Grad-CAM heatmaps (``evaluation.json``'s ``gallery``), the run's config, bad
files. Images are linked from the report, and everything is written into the run
folder (local or S3). The HTML helpers serve the other pages (prediction, baseline)."""

from __future__ import annotations

import html
import io
import json
import os
import urllib.parse
from typing import Any

from imgrec import storage, timing
from imgrec.config import to_dict
from imgrec.layout import RunLayout


def figure_bytes(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def history_png(history: list[dict[str, Any]]) -> bytes:
    """loss and val_loss; accuracy and val_accuracy, as the course plots them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((ax1, "loss", "Loss"), (ax2, "accuracy", "Accuracy")):
        ax.plot(epochs, [h[key] for h in history], "o-", label=key)
        ax.plot(epochs, [h[f"val_{key}"] for h in history], "o-", label=f"val_{key}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 1.5" ticks
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
    return figure_bytes(fig)


def timing_png(history: list[dict[str, Any]]) -> bytes:
    """Where the time went: one stacked bar per epoch, a segment per phase
    (``imgrec.timing.epoch_breakdown``), unaccounted time hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = [timing.epoch_breakdown(h) for h in history]
    tallest = max((sum(r.values()) for r in rows), default=0.0)
    # Phases too small to see (under 0.5 % of the tallest bar) stay out of the legend; the table has them.
    names = [n for n in rows[0] if any(r.get(n, 0.0) > 0.005 * tallest for r in rows)] if rows else []
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(epochs) + 4), 4))
    bottom = [0.0] * len(rows)
    for i, name in enumerate(names):
        values = [r.get(name, 0.0) for r in rows]
        ax.bar(epochs, values, bottom=bottom, label=_phase_label(name), color=plt.cm.tab20(i % 20),
               hatch="//" if name == timing.UNACCOUNTED else None, edgecolor="white")
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xlabel("epoch")
    ax.set_ylabel("seconds (rank 0, wall clock)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Where the time went")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    return figure_bytes(fig)


def _phase_label(name: str) -> str:
    return name.removeprefix("time_").removesuffix("_s").replace("_", " ")


def _timing_section(result) -> str:
    rows = [[h["epoch"], h.get("epoch_time_s", ""), *timing.epoch_breakdown(h).values()] for h in result.history]
    names = list(timing.epoch_breakdown(result.history[0])) if result.history else []
    startup = html_table([[_phase_label(k), v] for k, v in result.startup.items()], ["start-up phase", "seconds"])
    return (f"<img src='{RunLayout.timing_plot.name}' alt='time per epoch, by phase'>"
            + html_table(rows, ["epoch", "epoch s", *(_phase_label(n) for n in names)]) + startup)


def confusion_png(confusion: list[list[int]], class_names: list[str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.asarray(confusion)
    size = max(4, 0.6 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_title("Confusion matrix")
    return figure_bytes(fig)


def html_table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _balance_table(test: dict[str, Any], cfg) -> str:
    """Scores that an imbalanced test set does not flatter, and the loss's class weighting."""
    rows = [["accuracy", test["accuracy"]]]
    rows += [[label, test[key]] for key, label in (("balanced_accuracy", "balanced accuracy"),
                                                   ("macro_f1", "macro-F1")) if key in test]
    weight = getattr(cfg, "class_weight", "none")
    rows.append(["class weight", weight if isinstance(weight, str) else json.dumps(weight)])
    rows.append(["test-time augmentation", test.get("tta", "none")])
    return html_table(rows, ["score", "value"])


_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;}table{border-collapse:collapse;}"
          "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;}pre{background:#f6f6f6;padding:1em;}"
          ".thumbs{display:flex;flex-wrap:wrap;gap:6px;margin:4px 0 12px;}"
          ".thumbs figure{margin:0;padding:4px;border:1px solid #ddd;text-align:center;font-size:11px;width:200px;}"
          ".thumbs img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;background:#eee;}"
          ".thumbs figcaption{overflow-wrap:anywhere;}.wrong{color:#b00;}.right{color:#070;}"
          "table.cm td{text-align:center;min-width:3em;}table.cm a{color:inherit;}"
          ".bad td{text-align:left;}")


def source_href(path: str) -> str:
    """A link to an image's source: ``s3://`` as it is, a local path as ``file://``."""
    if "://" in path:
        return path
    return "file://" + urllib.parse.quote(os.path.abspath(path))


def thumb_figure(item: dict[str, Any], caption: str, css: str = "") -> str:
    """One thumbnail (and its heatmap, if any), each linking to the source image."""
    href = html.escape(source_href(item["path"]), quote=True)
    title = html.escape(item["path"], quote=True)
    imgs = f"<a href='{href}' title='{title}'><img src='{html.escape(item['thumbnail'])}' alt='{title}'></a>"
    if item.get("heatmap"):
        imgs += (f"<a href='{href}' title='Grad-CAM: where the model looked'>"
                 f"<img src='{html.escape(item['heatmap'])}' alt='Grad-CAM of {title}'></a>")
    return f"<figure class='{css}'>{imgs}<figcaption>{caption}</figcaption></figure>"


def _verdict(item: dict[str, Any]) -> str:
    if item["true"] == item["predicted"]:
        return f"<span class='right'>{html.escape(item['true'])}</span> p={item['confidence']:.3f}"
    return (f"true <b>{html.escape(item['true'])}</b>, predicted <span class='wrong'>"
            f"{html.escape(item['predicted'])}</span> p={item['confidence']:.3f}")


def _thumbs(items: list[dict[str, Any]], empty: str) -> str:
    if not items:
        return f"<p><i>{html.escape(empty)}</i></p>"
    return "<div class='thumbs'>" + "".join(thumb_figure(i, _verdict(i)) for i in items) + "</div>"


def _cell_id(true: int, predicted: int) -> str:
    return f"cell-{true}-{predicted}"


def confusion_table(test: dict[str, Any]) -> str:
    """The confusion matrix as a table; a cell with images in the gallery links to them."""
    names, cm = test["class_names"], test["confusion"]
    with_images = {(c["true"], c["predicted"]) for c in test.get("gallery", {}).get("cells", [])}
    top = max((v for row in cm for v in row), default=0) or 1
    head = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>"
    rows = []
    for i, (name, row) in enumerate(zip(names, cm, strict=True)):
        cells = []
        for j, v in enumerate(row):
            shade = f"rgba({'31,119,180' if i == j else '214,39,40'},{0.08 + 0.6 * v / top:.2f})" if v else "#fff"
            text = str(v)
            if (name, names[j]) in with_images:
                text = f"<a href='#{_cell_id(i, j)}' title='the images of this cell'>{v}</a>"
            cells.append(f"<td style='background:{shade}'>{text}</td>")
        rows.append(f"<tr><th>{html.escape(name)}</th>{''.join(cells)}</tr>")
    return f"<table class='cm'>{head}{''.join(rows)}</table>"


def gallery_sections(test: dict[str, Any]) -> list[tuple[str, str]]:
    """The mistakes gallery (per class) and the images behind each confusion cell."""
    gallery = test.get("gallery")
    if not gallery:
        return []
    names = test["class_names"]
    note = (" Each thumbnail is followed by its Grad-CAM heatmap (red: what the prediction rests on)."
            if gallery.get("heatmaps") else "")
    parts = [f"<p>The {gallery['per_class']} most confident wrong predictions of each true class on the "
             f"{html.escape(test['split'])} split, and its {gallery['per_class']} least confident right ones. "
             f"Click a thumbnail for the source image.{note}</p>"]
    for name in names:
        shown = gallery["classes"][name]
        parts.append(f"<h3>{html.escape(name)}</h3><p>wrong, most confident first</p>"
                     + _thumbs(shown["wrong"], "no wrong predictions")
                     + "<p>right, least confident first</p>" + _thumbs(shown["unsure_right"], "none right"))
    index = {n: i for i, n in enumerate(names)}
    cells = []
    for cell in gallery["cells"]:
        i, j = index[cell["true"]], index[cell["predicted"]]
        count = test["confusion"][i][j]
        which = "least confident" if i == j else "most confident"
        cells.append(f"<h3 id='{_cell_id(i, j)}'>true {html.escape(cell['true'])}, predicted "
                     f"{html.escape(cell['predicted'])}: {count} images (the {len(cell['images'])} {which} shown)"
                     f"</h3>" + _thumbs(cell["images"], ""))
    return [("Mistakes gallery", "".join(parts)), ("Images behind the confusion matrix", "".join(cells))]


def render_html(title: str, sections: list[tuple[str, str]]) -> str:
    style = _STYLE
    body = "".join(f"<h2>{html.escape(name)}</h2>{content}" for name, content in sections)
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>" \
           f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"


def write_run_report(result, cfg) -> str:
    """Write history.png, confusion.png and report.html into the run folder (the gallery's
    thumbnails are there already: ``imgrec.evaluate.evaluate_run``)."""
    run = RunLayout(result.run_uri)
    sections: list[tuple[str, str]] = []
    test = result.test_metrics
    if test:
        sections.append(("Result", f"<p>Test accuracy <b>{test['accuracy']:.4f}</b> on {test['count']} images "
                                   f"({html.escape(test['split'])} split), best checkpoint "
                                   f"<code>{html.escape(str(result.best_checkpoint))}</code>.</p>"
                                   + _balance_table(test, cfg)))
    if result.history:
        storage.atomic_write(run.history_plot, history_png(result.history))
        keys = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "images_per_s"]
        sections.append(("Training curves", f"<img src='{RunLayout.history_plot.name}' alt='loss and accuracy curves'>"
                         + html_table([[h.get(k, "") for k in keys] for h in result.history], keys)))
    if result.history and "epoch_time_s" in result.history[0]:
        storage.atomic_write(run.timing_plot, timing_png(result.history))
        sections.append(("Where the time went", _timing_section(result)))
    if test:
        storage.atomic_write(run.confusion_plot, confusion_png(test["confusion"], test["class_names"]))
        rows = [[name, m["precision"], m["recall"], m.get("f1", ""), m["support"]]
                for name, m in test["per_class"].items()]
        sections.append(("Confusion matrix", confusion_table(test)
                         + f"<p>Click a count for its images; also as <a href='{RunLayout.confusion_plot.name}'>"
                         "a picture</a>.</p>" + html_table(rows, ["class", "precision", "recall", "F1", "support"])))
        sections += gallery_sections(test)
    if result.restarts:
        epochs = ", ".join(str(r["from_epoch"]) for r in result.restarts)
        sections.append((f"Worker failures ({len(result.restarts)})",
                         f"<p>Ray Train restarted the worker group from the checkpoint of epoch(s) {epochs}.</p>"))
    if result.bad_files:
        rows = [[b["path"], b["reason"]] for b in result.bad_files[:500]]
        sections.append((f"Skipped files ({len(result.bad_files)})", html_table(rows, ["file", "reason"])))
    sections.append(("TensorBoard", f"<p><code>tensorboard --logdir {html.escape(run.tensorboard)}"
                                    "</code></p>"))
    sections.append(("Configuration", f"<pre>{html.escape(json.dumps(to_dict(cfg), indent=2))}</pre>"))
    uri = run.report
    storage.atomic_write(uri, render_html(f"imgrec run {run.name}", sections))
    return uri
