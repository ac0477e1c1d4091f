"""Prediction from checkpoints: one image (``predict_one``, module ``single``), a
decoded Ray dataset (``predict_dataset``, ``actors``), or a whole bucket of image
files (``predict_bucket``: ``bucket`` over ``listing``, ``chunks``, ``columns``,
``output``, ``runner`` and ``summary``).

The engine is Ray Data ``map_batches``: ``DecodeImages`` (threaded reads, decoded
exactly as the checkpoint's manifest says) then a pool of ``Predictor`` actors
that load the model once each and feed it raw uint8 pixels (scaling lives in the
model), so prediction sees exactly what training saw.

Batch prediction over a bucket
==============================

``predict_bucket(PredictConfig(model=..., input=..., output=...))`` writes::

    <output>/predictions/part-<digest>.parquet   one file per chunk of input files
    <output>/summary.json                        counts, errors, throughput, metrics
    <output>/_job.json                           model/checkpoint/top_k of these parts

Read the predictions with ``read_predictions(output)`` or
``pandas.read_parquet("<output>/predictions")`` (the parts live in their own
folder so Parquet readers never trip over ``summary.json``). One row per input
file, with the columns declared in ``imgrec.predict.columns``: ``path, label,
predicted, predicted_index, confidence, topk_classes, topk_probs, error,
model_uri, checkpoint``. A file that cannot be read or
decoded gets a row with ``error`` set and null predictions; it never fails the job.

Labels (the class-folder rule): with a prefix input, a file's ``label`` is the
first folder of its path under ``input`` when that folder name is one of the
model's class names (``<input>/cat/x.jpg`` -> ``cat``), else null. So point
``--input`` at the folder whose sub-folders are the classes (e.g. ``<data>/test``).
A CSV/Parquet manifest may carry a ``label`` column instead. When any row has a
label, ``summary.json`` gets accuracy, per-class precision/recall and the
confusion matrix over the labelled rows that decoded.

Chunks, resume and huge buckets: the input is listed lazily (S3 pages of 1000
keys; a local walk sorted per folder) and cut, in listing order, into chunks of
about ``files_per_output`` files. A chunk starts at a file whose path hashes
below a threshold (content-defined boundaries, bounded to N/2..2N files), and
its part is named by a hash of the chunk's paths and sizes. Hence:

* the same listing always gives the same chunks and part names;
* a rerun into the same output skips every chunk whose part exists. Parts are
  written atomically (one PUT on S3; temp file + rename locally), so a part that
  exists is complete;
* adding, removing or rewriting (with a new size) a few files between runs only
  changes the chunks around them: those are predicted again, and the parts of
  chunks that no longer exist are deleted, so every current input file is in
  the output exactly once. A file rewritten in place with the same size is not
  noticed: use ``resume=False`` to recompute everything.
* a manifest is taken in its line order (paths relative to the manifest's
  folder are allowed); a path listed twice is predicted twice.

Memory stays bounded for hundreds of thousands of files: the listing is spooled
chunk by chunk to a local temp file, and chunks run through Ray Data in waves
of about ``WAVE_ROWS`` files, each streaming decoded pixels through the actors
and writing each part as soon as its last row is back.
"""


from __future__ import annotations

from imgrec.predict.actors import BucketPredictor, Predictor, actor_pool, decode_config, predict_dataset
from imgrec.predict.bucket import predict_bucket
from imgrec.predict.columns import Column, add_column, output_columns, output_schema, remove_column
from imgrec.predict.errors import PredictError
from imgrec.predict.output import FORMAT, JOB_FILE, PREDICTIONS_DIR, SUMMARY_FILE, read_predictions
from imgrec.predict.runner import ChunkDone
from imgrec.predict.single import describe_one, predict_one
from imgrec.predict.summary import PredictSummary

__all__ = [
    "FORMAT", "JOB_FILE", "PREDICTIONS_DIR", "SUMMARY_FILE", "BucketPredictor", "ChunkDone", "Column", "PredictError",
    "PredictSummary", "Predictor", "actor_pool", "add_column", "decode_config", "describe_one", "output_columns",
    "output_schema", "predict_bucket", "predict_dataset", "predict_one", "read_predictions", "remove_column",
]
