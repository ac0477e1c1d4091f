"""Plots and ``report.html`` for a run: the course's loss and accuracy curves,
the confusion matrix, the run's config, bad files. Images are linked from the
report, and everything is written into the run folder (local or S3)."""

from __future__ import annotations

import html
import io
import json
from typing import Any

from imgrec import storage, timing
from imgrec.config import to_dict
from imgrec.layout import RunLayout


def _figure_bytes(fig) -> bytes:
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
    return _figure_bytes(fig)


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
    return _figure_bytes(fig)


def _phase_label(name: str) -> str:
    return name.removeprefix("time_").removesuffix("_s").replace("_", " ")


def _timing_section(result) -> str:
    rows = [[h["epoch"], h.get("epoch_time_s", ""), *timing.epoch_breakdown(h).values()] for h in result.history]
    names = list(timing.epoch_breakdown(result.history[0])) if result.history else []
    startup = _table([[_phase_label(k), v] for k, v in result.startup.items()], ["start-up phase", "seconds"])
    return (f"<img src='{RunLayout.timing_plot.name}' alt='time per epoch, by phase'>"
            + _table(rows, ["epoch", "epoch s", *(_phase_label(n) for n in names)]) + startup)


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
    return _figure_bytes(fig)


def _table(rows: list[list[Any]], header: list[str]) -> str:
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
    return _table(rows, ["score", "value"])


def render_html(title: str, sections: list[tuple[str, str]]) -> str:
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;}table{border-collapse:collapse;}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;}pre{background:#f6f6f6;padding:1em;}")
    body = "".join(f"<h2>{html.escape(name)}</h2>{content}" for name, content in sections)
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>" \
           f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"


def write_run_report(result, cfg) -> str:
    """Write history.png, confusion.png and report.html into the run folder."""
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
                         + _table([[h.get(k, "") for k in keys] for h in result.history], keys)))
    if result.history and "epoch_time_s" in result.history[0]:
        storage.atomic_write(run.timing_plot, timing_png(result.history))
        sections.append(("Where the time went", _timing_section(result)))
    if test:
        storage.atomic_write(run.confusion_plot, confusion_png(test["confusion"], test["class_names"]))
        rows = [[name, m["precision"], m["recall"], m.get("f1", ""), m["support"]]
                for name, m in test["per_class"].items()]
        sections.append(("Confusion matrix", f"<img src='{RunLayout.confusion_plot.name}' alt='confusion matrix'>"
                         + _table(rows, ["class", "precision", "recall", "F1", "support"])))
    if result.restarts:
        epochs = ", ".join(str(r["from_epoch"]) for r in result.restarts)
        sections.append((f"Worker failures ({len(result.restarts)})",
                         f"<p>Ray Train restarted the worker group from the checkpoint of epoch(s) {epochs}.</p>"))
    if result.bad_files:
        rows = [[b["path"], b["reason"]] for b in result.bad_files[:500]]
        sections.append((f"Skipped files ({len(result.bad_files)})", _table(rows, ["file", "reason"])))
    sections.append(("TensorBoard", f"<p><code>tensorboard --logdir {html.escape(run.tensorboard)}"
                                    "</code></p>"))
    sections.append(("Configuration", f"<pre>{html.escape(json.dumps(to_dict(cfg), indent=2))}</pre>"))
    uri = run.report
    storage.atomic_write(uri, render_html(f"imgrec run {run.name}", sections))
    return uri
