"""``predict_bucket``: every image file under a prefix (or in a manifest) into
Parquet parts under an output prefix, resumable (see the package doc)."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable

from imgrec import preflight, storage
from imgrec.config import PredictConfig
from imgrec.decode import IMAGE_SUFFIXES
from imgrec.predict.chunks import Plan, cut_chunks
from imgrec.predict.columns import output_columns
from imgrec.predict.errors import PredictError
from imgrec.predict.listing import Listing, announce
from imgrec.predict.output import FORMAT, job_record, prepare_output
from imgrec.predict.page import write_prediction_page
from imgrec.predict.runner import ChunkDone, Runner
from imgrec.predict.summary import PredictSummary, summarize
from imgrec.runtime import own_progress


@own_progress
def predict_bucket(
    cfg: PredictConfig,
    *,
    progress: bool = True,
    on_chunk: Callable[[ChunkDone], None] | None = None,
) -> PredictSummary:
    """Predict every image file under ``cfg.input`` into Parquet under ``cfg.output``.

    Resumable: a rerun into the same output skips the chunks already written
    (see the module doc for the chunking rule and layout). ``on_chunk`` is
    called after each part is written (progress hooks, fault injection in tests).
    Connects to Ray (``RAY_ADDRESS``) or starts a local cluster when needed."""
    _require(cfg)
    t0 = time.time()
    ref = preflight.check_predict(cfg)  # model, input and output bucket, before Ray starts
    class_names = ref.class_names
    out = storage.normalize(cfg.output)
    columns = output_columns()  # one list for the job record, the actors and the parts
    job = job_record(cfg, ref, columns)
    say = _printer(progress)

    with tempfile.TemporaryDirectory(prefix="imgrec-predict-") as tmp:
        listing = Listing(cfg, class_names, out)
        chunks = cut_chunks(announce(listing.entries(), say), cfg.files_per_output)
        plan = Plan.write(os.path.join(tmp, "plan.jsonl"), chunks)
        if plan.files == 0:
            raise PredictError(
                f"{listing.input}: no {'files' if cfg.all_files else 'image files'} to predict"
                + ("" if cfg.all_files or not listing.skipped else f" ({listing.skipped} non-image files skipped)")
                + f"; image files end with {IMAGE_SUFFIXES}; check --input"
            )
        done, stale = prepare_output(out, job, plan, resume=cfg.resume)
        say(
            f"[predict] {listing.input}: {plan.files} files in {len(plan.names)} chunks, "
            f"{len(done)} already done{f', {stale} stale parts removed' if stale else ''}; "
            f"checkpoint {ref.uri}"
        )
        runner = Runner(cfg, ref, out, plan, columns, say=say, on_chunk=on_chunk, bar=progress)
        runner.run(done)

    summary = summarize(cfg, ref, out, plan, listing, runner, done, stale, t0)
    summary.report_uri = write_prediction_page(summary, runner.decode)
    storage.atomic_write(summary.summary_uri, json.dumps({"format": FORMAT, **dataclasses.asdict(summary)},
                                                         indent=1))
    say(str(summary))
    return summary


def _require(cfg: PredictConfig) -> None:
    for name, hint in (("model", "a run or checkpoint URI"), ("input", "an image prefix or a manifest file"),
                       ("output", "a prefix to write Parquet under")):
        if not getattr(cfg, name):
            raise PredictError(f"PredictConfig.{name} is empty: give {hint} (--{name})")
    inp, out = storage.normalize(cfg.input), storage.normalize(cfg.output)
    if inp == out:
        raise PredictError(f"--input and --output are the same ({out}); write predictions to another prefix")


def _printer(enabled: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if enabled:
            print(message, flush=True)

    return say

