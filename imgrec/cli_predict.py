"""``imgrec predict`` (and ``jobs/predict.py``): batch prediction over a bucket,
options parsed into a ``PredictConfig``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from imgrec.cli_common import clear_errors
from imgrec.cli_options import Option, build, command, values_from_args
from imgrec.config import PredictConfig
from imgrec.predict import predict_bucket

PREDICT_OPTIONS: tuple[Option, ...] = (
    Option("model", ("model",), "Run URI (its best checkpoint) or checkpoint URI.", required=True),
    Option("input_uri", ("input",), "Image prefix, walked recursively (class folders give labels), or a "
           ".txt/.csv/.parquet manifest with a `path` column.", flags=("--input",), required=True),
    Option("output", ("output",), "Prefix for predictions/part-*.parquet and summary.json.", required=True),
    Option("batch_size", ("batch_size",), "Images per model call."),
    Option("actors", ("actors",), "Model actors; each loads the model once."),
    Option("cpus", ("num_cpus",), "CPUs per model actor."),
    Option("gpus", ("num_gpus",), "GPUs per model actor (0.5 shares a GPU between two)."),
    Option("top_k", ("top_k",), "Classes kept per image in topk_classes/topk_probs."),
    Option("tta", ("tta",), "Test-time augmentation: none, or flip (each image scored as the mean of its own "
           "and its mirror image's probabilities; for photos, not text)."),
    Option("files_per_output", ("files_per_output",), "About this many rows per part file (the resume unit)."),
    Option("resume", ("resume",), "Skip parts an earlier run already wrote (--no-resume deletes them and "
           "starts over).", flags=("--resume/--no-resume",)),
    Option("all_files", ("all_files",), "Predict every file, not only image endings.", flags=("--all-files",)),
)


def _run(values: dict[str, Any]) -> None:
    with clear_errors(PREDICT_OPTIONS):
        cfg = build(PredictConfig, PREDICT_OPTIONS, values)
        predict_bucket(cfg)  # checks first; then the job's cluster (RAY_ADDRESS) or a local one; prints the summary


predict_command = command(PredictConfig, PREDICT_OPTIONS, _run,
                          "Batch prediction over a bucket into Parquet; resumable, bad files become error rows.")


def predict_config(args: Sequence[str]) -> PredictConfig:
    """The ``PredictConfig`` that ``imgrec predict ARGS`` would run."""
    return build(PredictConfig, PREDICT_OPTIONS, values_from_args(predict_command, args))
