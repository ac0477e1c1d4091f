"""A sweep's results: the table of trials (best first), the best trial evaluated once,
results.csv / results.parquet / sweep.png / best.json."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from typing import Any

from imgrec import checkpoint as ckpt
from imgrec import storage
from imgrec.config import SweepConfig
from imgrec.evaluate import evaluate_dataset, evaluation_split
from imgrec.layout import SweepLayout
from imgrec.report import figure_bytes
from imgrec.text_table import text_table
from imgrec.train import read_history, run_uri
from imgrec.tune.space import sweep_layout, sweep_uri, trial_config

METRIC, MODE = "val_accuracy", "max"
BEST_FILE = SweepLayout.best.name
TABLE_COLUMNS = [
    "rank", "trial", "freeze_depth", "learning_rate", "batch_size", "augment", "best_val_accuracy",
    "epochs", "wall_time_s", "status", "error", "checkpoint", "run",
]


# =========================================================================== results


def results_table(grid, cfg: SweepConfig) -> list[dict[str, Any]]:
    """One row per trial (see TABLE_COLUMNS), ranked by best val accuracy;
    errored trials last, without a rank."""
    rows = [_row(result, cfg) for result in grid]
    ok = sorted((r for r in rows if r["status"] != "error" and r["best_val_accuracy"] is not None),
                key=lambda r: (-r["best_val_accuracy"], r["trial"]))
    rest = sorted((r for r in rows if r not in ok), key=lambda r: r["trial"])
    for rank, row in enumerate(ok, start=1):
        row["rank"] = rank
    return ok + rest


def _row(result, cfg: SweepConfig) -> dict[str, Any]:

    name = _trial_name(result)
    trial = trial_config(cfg, result.config, name)
    run = run_uri(trial)
    history = read_history(run)["epochs"]
    finite = [h for h in history if _finite(h.get("loss")) and _finite(h.get(METRIC))]
    n_epochs = len(history)
    status = "error" if result.error else ("finished" if n_epochs >= trial.epochs else "stopped")
    checkpoint = None
    if status != "error":
        try:
            checkpoint = ckpt.resolve(run, "best").uri
        except ckpt.CheckpointError:
            pass
    wall = (result.metrics or {}).get("time_total_s")
    return {
        "rank": None,
        "trial": name,
        "freeze_depth": trial.model.freeze_depth,
        "learning_rate": trial.learning_rate,
        "batch_size": trial.batch_size,
        "augment": result.config.get("augment", "base"),
        "best_val_accuracy": max((float(h[METRIC]) for h in finite), default=None),
        "epochs": n_epochs,
        "wall_time_s": round(float(wall), 1) if wall is not None else None,
        "status": status,
        "error": _error_reason(result.error) if result.error else None,
        "checkpoint": checkpoint,
        "run": run,
    }


def _trial_name(result) -> str:
    """The trial's name, from its Tune trial folder (``trial_007_...``)."""
    match = re.match(r"trial_\d+", storage.basename(result.path))
    if not match:
        raise RuntimeError(f"unexpected Tune trial folder {result.path!r}: not created by imgrec.tune")
    return match[0]


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _error_reason(error: BaseException) -> str:
    """``NonFiniteLossError: run ...: loss became non-finite ...``: the original
    exception's type and first line, not Ray's wrapping traceback."""
    cause = getattr(error, "cause", None) or error
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0] if lines else ''}".strip()


def _best(rows: list[dict[str, Any]], cfg: SweepConfig, data) -> dict[str, Any] | None:
    """best.json: the top trial's checkpoint and config, evaluated once."""
    top = next((r for r in rows if r["rank"] == 1 and r["checkpoint"]), None)
    if top is None:
        return None
    ref = ckpt.resolve(top["checkpoint"])
    best = {
        "sweep": sweep_uri(cfg),
        "trial": top["trial"],
        "checkpoint": ref.uri,
        "run": top["run"],
        "val_accuracy": top["best_val_accuracy"],
        "epoch": ref.epoch,
        "params": {k: top[k] for k in ("freeze_depth", "learning_rate", "batch_size", "augment")},
        "config": ref.manifest.get("train_config"),
        "test_metrics": {},
    }
    previous = sweep_layout(cfg).best
    previous = json.loads(storage.read_text(previous)) if storage.exists(previous) else {}
    if previous.get("checkpoint") == ref.uri and previous.get("test_metrics"):
        best["test_metrics"] = previous["test_metrics"]  # a resumed sweep: evaluated already
    elif cfg.evaluate:
        best["test_metrics"] = _evaluate_best(ref.uri, data, cfg.base.tta)
    return best


def _evaluate_best(checkpoint: str, data, tta: str = "none") -> dict[str, Any]:
    split, ds = evaluation_split(data)
    if ds is None:
        return {}
    metrics = evaluate_dataset(ds, checkpoint, data.class_names, tta=tta)
    metrics.update(split=split, checkpoint=checkpoint)
    print(f"[imgrec] best checkpoint: {split} accuracy {metrics['accuracy']:.4f} on {metrics['count']} images",
          flush=True)
    return metrics


def write_results(uri: str, rows: list[dict[str, Any]], best: dict[str, Any] | None) -> dict[str, str]:
    """results.csv, results.parquet, sweep.png and best.json into the sweep folder."""
    files = {
        "table_csv": SweepLayout(uri).results_csv,
        "table_parquet": SweepLayout(uri).results_parquet,
        "plot": SweepLayout(uri).plot,
    }
    storage.atomic_write(files["table_csv"], table_csv(rows))
    storage.atomic_write(files["table_parquet"], table_parquet(rows))
    storage.atomic_write(files["plot"], sweep_png(rows))
    if best:
        files["best"] = SweepLayout(uri).best
        storage.atomic_write(files["best"], json.dumps(best, indent=1, default=str))
        if best.get("test_metrics"):
            storage.atomic_write(SweepLayout(uri).evaluation, json.dumps(best["test_metrics"], indent=1))
    for name, file in files.items():
        print(f"[imgrec] {name}: {file}", flush=True)
    return files


def table_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def table_parquet(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {c: [r[c] for r in rows] for c in TABLE_COLUMNS}
    # Depths are ints unless some trial froze "all": then one string column.
    if any(isinstance(d, str) for d in columns["freeze_depth"]):
        columns["freeze_depth"] = [str(d) for d in columns["freeze_depth"]]
    types = {"rank": pa.int64(), "epochs": pa.int64(), "batch_size": pa.int64(), "learning_rate": pa.float64(),
             "best_val_accuracy": pa.float64(), "wall_time_s": pa.float64()}
    table = pa.table({c: pa.array(v, type=types.get(c)) for c, v in columns.items()})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def sweep_png(rows: list[dict[str, Any]]) -> bytes:
    """Best val accuracy over learning rate (log x) × freeze depth; failed trials as red crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    depths = sorted({r["freeze_depth"] for r in rows}, key=lambda d: (isinstance(d, str), d if isinstance(d, int) else 0))
    numeric = all(isinstance(d, int) for d in depths)
    y_of = (lambda d: d) if numeric else (lambda d: depths.index(d))  # "all" as its own row
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ok = [r for r in rows if r["best_val_accuracy"] is not None and r["status"] != "error"]
    if ok:
        points = ax.scatter([r["learning_rate"] for r in ok], [y_of(r["freeze_depth"]) for r in ok],
                            c=[r["best_val_accuracy"] for r in ok], cmap="viridis", s=90, edgecolors="k")
        fig.colorbar(points, ax=ax, label="best val accuracy")
        for r in ok:
            ax.annotate(f"{r['best_val_accuracy']:.2f}", (r["learning_rate"], y_of(r["freeze_depth"])),
                        textcoords="offset points", xytext=(6, 6), fontsize=8)
    failed = [r for r in rows if r not in ok]
    if failed:
        ax.scatter([r["learning_rate"] for r in failed], [y_of(r["freeze_depth"]) for r in failed],
                   marker="x", c="red", s=70, label="failed / no result")
        ax.legend(loc="best")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("freeze depth (backbone layers frozen)")
    if not numeric:
        ax.set_yticks(range(len(depths)), [str(d) for d in depths])
    ax.set_title("Sweep: best val accuracy per trial")
    ax.grid(alpha=0.3)
    return figure_bytes(fig)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The results as a fixed-width text table, best first."""
    cols = ["rank", "trial", "freeze_depth", "learning_rate", "batch_size", "augment", "best_val_accuracy",
            "epochs", "wall_time_s", "status", "error"]
    heads = ["rank", "trial", "freeze", "lr", "batch", "augment", "best val acc", "epochs", "wall s", "status",
             "error"]

    def cell(col: str, value) -> str:
        if value is None:
            return "-"
        if col == "learning_rate":
            return f"{value:.2e}"
        if col == "best_val_accuracy":
            return f"{value:.4f}"
        if col == "error":
            return str(value)[:80]
        return str(value)

    return text_table(heads, [[cell(c, r[c]) for c in cols] for r in rows])
