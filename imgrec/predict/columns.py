"""The output columns of batch prediction, declared once: name, Arrow type and
how each is computed. Everything else derives from ``output_columns()``: the
model actors' result rows, the Parquet schema of every part, and the ``columns``
recorded in ``_job.json`` that a resume must match (an output written with other
columns is refused, never mixed).

A column is computed either by the model actor, from the scored batch
(``Scored``), or by the driver when it writes a part (``Written``: the labels
and where the predictions came from, which never travel through the pipeline).
``add_column`` adds one from outside; the actors receive the column list with
their arguments, so a column added in the driver is computed on every node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Scored:
    """What an actor knows about a batch: its rows (``batch``: path, chunk, pos,
    image, error), which decoded (``ok``), the top-k class indices and probabilities
    per row (most likely first) and the full probabilities (rows that failed: zeros)."""

    batch: dict[str, np.ndarray]
    ok: np.ndarray
    order: np.ndarray
    top: np.ndarray
    probs: np.ndarray
    class_names: list[str]
    errors: list[str | None]

    def good(self, values) -> list:
        """``values`` with None where the row did not decode."""
        return [v if keep else None for v, keep in zip(values, self.ok, strict=True)]


@dataclass
class Written:
    """What the driver knows when it writes a part: the labels of its rows in
    order, and the model and checkpoint the rows came from."""

    labels: list[str | None]
    model_uri: str
    checkpoint: str


@dataclass(frozen=True)
class Column:
    name: str
    arrow_type: Callable[[], Any]  # e.g. ``lambda: pa.string()`` (pyarrow imported when used)
    by: str  # "model" (an actor, from ``Scored``) or "driver" (writing the part, from ``Written``)
    compute: Callable[[Any], list]  # Scored or Written -> one value per row
    doc: str = ""

    def __post_init__(self) -> None:
        if self.by not in ("model", "driver"):
            raise ValueError(f"column {self.name!r}: by must be 'model' or 'driver', got {self.by!r}")


def _pa():
    import pyarrow as pa

    return pa


_COLUMNS: list[Column] = [
    Column("path", lambda: _pa().string(), "model", lambda s: [str(p) for p in s.batch["path"]],
           "the file read (as listed, or the manifest's path made absolute)"),
    Column("label", lambda: _pa().string(), "driver", lambda w: list(w.labels),
           "the class folder the file sits in, or the manifest's label; null otherwise"),
    Column("predicted", lambda: _pa().string(), "model",
           lambda s: s.good([s.class_names[i] for i in s.order[:, 0]]), "the most likely class"),
    Column("predicted_index", lambda: _pa().int32(), "model", lambda s: s.good(s.order[:, 0].tolist()),
           "its index in the checkpoint's class names"),
    Column("confidence", lambda: _pa().float32(), "model", lambda s: s.good(s.top[:, 0].tolist()),
           "its probability"),
    Column("topk_classes", lambda: _pa().list_(_pa().string()), "model",
           lambda s: s.good([[s.class_names[i] for i in row] for row in s.order]), "the top-k classes"),
    Column("topk_probs", lambda: _pa().list_(_pa().float32()), "model", lambda s: s.good(s.top.tolist()),
           "their probabilities"),
    Column("error", lambda: _pa().string(), "model", lambda s: s.errors,
           "why the file could not be read or decoded; null for rows that were predicted"),
    Column("model_uri", lambda: _pa().string(), "driver", lambda w: [w.model_uri] * len(w.labels),
           "the model as asked for"),
    Column("checkpoint", lambda: _pa().string(), "driver", lambda w: [w.checkpoint] * len(w.labels),
           "the checkpoint it resolved to"),
]
_BUILTIN = frozenset(c.name for c in _COLUMNS)


def output_columns() -> list[Column]:
    return list(_COLUMNS)


def add_column(column: Column) -> Column:
    """Add an output column (after the built-in ones); a taken name is an error."""
    if any(c.name == column.name for c in _COLUMNS):
        raise ValueError(f"output column {column.name!r} exists already")
    _COLUMNS.append(column)
    return column


def remove_column(name: str) -> None:
    """Undo ``add_column`` (tests); built-in columns cannot be removed."""
    if name in _BUILTIN:
        raise ValueError(f"{name!r} is a built-in output column")
    _COLUMNS[:] = [c for c in _COLUMNS if c.name != name]


def output_schema(columns: list[Column] | None = None):
    """The Parquet schema of every part file."""
    pa = _pa()
    return pa.schema([(c.name, c.arrow_type()) for c in (columns or output_columns())])


def schema_record(schema) -> list[list[str]]:
    """(name, Arrow type) of each field of a Parquet schema, as ``_job.json`` records them."""
    return [[f.name, str(f.type)] for f in schema]


def model_table(scored: Scored, columns: list[Column], extra: dict[str, Any]):
    """An actor's result rows: ``extra`` (bookkeeping, e.g. chunk and position)
    then every model-computed column."""
    pa = _pa()
    arrays = dict(extra)
    for c in columns:
        if c.by == "model":
            arrays[c.name] = pa.array(c.compute(scored), c.arrow_type())
    return pa.table(arrays)


def finish_part(table, written: Written, columns: list[Column]):
    """Add the driver-computed columns to a part's rows and order them as the schema says."""
    pa = _pa()
    for c in columns:
        if c.by == "driver":
            table = table.append_column(c.name, pa.array(c.compute(written), c.arrow_type()))
    schema = output_schema(columns)
    return table.select(schema.names).cast(schema)
