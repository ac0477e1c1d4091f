"""The output folder of batch prediction: ``_job.json`` (what makes parts
interchangeable, checked on resume), the parts already there, reading them back."""

from __future__ import annotations

import json
from typing import Any

from imgrec import checkpoint as ckpt
from imgrec import storage
from imgrec.config import PredictConfig, to_dict
from imgrec.layout import PredictionLayout
from imgrec.predict.chunks import Plan
from imgrec.predict.columns import Column, output_schema, schema_record
from imgrec.predict.errors import PredictError

PREDICTIONS_DIR = PredictionLayout.predictions.name
SUMMARY_FILE = PredictionLayout.summary.name
JOB_FILE = PredictionLayout.job.name
FORMAT = "imgrec-predictions/1"


def job_record(cfg: PredictConfig, ref: ckpt.CheckpointRef, columns: list[Column]) -> dict[str, Any]:
    """What makes two runs' parts interchangeable: same checkpoint, input, top-k,
    chunk size and output columns. Recorded as ``_job.json`` and compared on resume."""
    return {
        "format": FORMAT,
        "input": storage.normalize(cfg.input),
        "checkpoint": ref.uri,
        "model_sha256": ref.manifest.get("model_sha256"),
        "top_k": int(cfg.top_k),
        "files_per_output": int(cfg.files_per_output),
        "all_files": bool(cfg.all_files),
        "columns": schema_record(output_schema(columns)),
        "config": to_dict(cfg),
    }


_MUST_MATCH = ("input", "checkpoint", "model_sha256", "top_k", "files_per_output", "all_files")


def check_job(old: dict[str, Any], new: dict[str, Any], out: str, parts: list[str]) -> None:
    """The earlier run's ``_job.json`` against this one: the same setup, and parts
    with this run's output columns (a ``_job.json`` from before columns were
    recorded: the schema of one of its ``parts`` is compared instead)."""
    before = old.get("columns")
    if before is None and parts:
        before = schema_record(part_schema(parts[0]))
    if before is not None and before != new["columns"]:
        raise PredictError(
            f"{out} holds parts with other output columns ({[c[0] for c in before]} then, "
            f"{[c[0] for c in new['columns']]} now) and one output has one schema: write to a new --output, "
            "or pass --no-resume to rewrite it"
        )
    changed = [k for k in _MUST_MATCH if old.get(k) != new.get(k)]
    if changed:
        diffs = "; ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in changed)
        raise PredictError(
            f"{out} holds predictions of a different job ({diffs}). Mixing them would give rows from two "
            "setups: write to a new --output, or pass --no-resume to replace what is there"
        )


def part_uris(out: str) -> list[str]:
    folder = PredictionLayout(out).predictions
    if not storage.exists(folder):
        return []
    return [o.uri for o in storage.list_objects(folder) if PredictionLayout.is_part(o.path)]


def prepare_output(out: str, job: dict[str, Any], plan: Plan, *, resume: bool) -> tuple[set[str], int]:
    """Check an earlier run's output, drop what this listing no longer has, and
    return (names of parts already done, number of stale parts removed)."""
    job_uri = PredictionLayout(out).job
    existing = {storage.basename(u): u for u in part_uris(out)}
    if not resume:
        for uri in existing.values():
            storage.delete_prefix(uri)
        existing = {}
    elif storage.exists(job_uri):
        check_job(json.loads(storage.read_text(job_uri)), job, out, sorted(existing.values()))
    elif existing:
        raise PredictError(
            f"{out} has {len(existing)} part files but no {JOB_FILE}, so they cannot be checked against "
            "this job: write to a new --output, or pass --no-resume to replace them"
        )
    storage.atomic_write(job_uri, json.dumps(job, indent=1))
    wanted = set(plan.names)
    # Parts of chunks this listing does not have (files added or removed since):
    # their files are in other chunks now, so keeping them would duplicate rows.
    stale = [u for name, u in existing.items() if name not in wanted]
    for uri in stale:
        storage.delete_prefix(uri)
    return wanted & set(existing), len(stale)


def part_schema(uri: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_schema(pa.BufferReader(storage.read_bytes(uri)))


def read_part(uri: str, columns: list[str] | None = None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(storage.read_bytes(uri)), columns=columns)


def read_predictions(output: str, columns: list[str] | None = None):
    """The predictions under an output URI as one pandas DataFrame (small outputs;
    for big ones use ``ray.data.read_parquet("<output>/predictions")``)."""
    import pyarrow as pa

    tables = [read_part(uri, columns) for uri in part_uris(storage.normalize(output))]
    if not tables:
        raise PredictError(f"{output}: no {PREDICTIONS_DIR}/part-*.parquet; run `imgrec predict` into it first")
    return pa.concat_tables(tables).to_pandas()
