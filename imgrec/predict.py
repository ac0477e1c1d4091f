"""Prediction from checkpoints: one image (``predict_one``), a decoded Ray dataset
(``predict_dataset``), or a whole bucket of image files (``predict_bucket``).

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
file: ``path, label, predicted, predicted_index, confidence, topk_classes,
topk_probs, error, model_uri, checkpoint``. A file that cannot be read or
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

import dataclasses
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgrec import checkpoint as ckpt
from imgrec import storage
from imgrec.config import DecodeConfig, PredictConfig, from_dict, to_dict
from imgrec.data import DecodeImages
from imgrec.decode import IMAGE_SUFFIXES, decode_image
from imgrec.layout import PredictionLayout
from imgrec.metrics import classification_metrics
from imgrec.models import class_probabilities
from imgrec.runtime import ensure_ray


def decode_config(manifest: dict[str, Any]) -> DecodeConfig:
    """The checkpoint's decode settings, with the model's image size filled in
    when the manifest left ``decode.image_size`` unset."""
    decode = from_dict(DecodeConfig, manifest["decode"])
    if decode.image_size is None and manifest.get("image_size"):
        decode = dataclasses.replace(decode, image_size=tuple(manifest["image_size"]))
    return decode


class Predictor:
    """Ray Data actor UDF: ``{"image": uint8 NxHxWx3, ...}`` -> adds ``probs`` (N, C).

    Loads the model once per actor (S3 checkpoints are cached per node)."""

    def __init__(self, model_uri: str, *, batch_size: int = 64):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.model, self.manifest = ckpt.load(model_uri, compile=False)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = batch["image"]
        if len(images) == 0:
            probs = np.zeros((0, len(self.manifest["class_names"])), np.float32)
        else:
            probs = class_probabilities(np.asarray(self.model.predict_on_batch(images)))
        out = dict(batch)
        out["probs"] = probs.astype(np.float32)
        return out


def predict_dataset(ds, model_uri: str, *, actors: int = 1, batch_size: int = 64, num_cpus: float = 1,
                    num_gpus: float = 0):
    """Add a ``probs`` column to a decoded dataset, with a pool of model actors."""
    return ds.map_batches(
        Predictor,
        fn_constructor_kwargs={"model_uri": model_uri, "batch_size": batch_size},
        batch_size=batch_size,
        batch_format="numpy",
        compute=_actor_pool(actors),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )


def _actor_pool(actors: int):
    from ray.data import ActorPoolStrategy

    return ActorPoolStrategy(size=actors)


def predict_one(image_uri: str, model_uri: str, top_k: int = 5) -> list[tuple[str, float]]:
    """(class name, probability) pairs for one image file, most likely first,
    decoded exactly as the checkpoint's manifest says."""
    probs, manifest = _classify_one(image_uri, model_uri)
    return _top(probs, manifest["class_names"], top_k)


def _classify_one(image_uri: str, model_uri: str) -> tuple[np.ndarray, dict]:
    """One load of the model (hash verified; a run URI falls back to its next best
    checkpoint), then the image decoded as that checkpoint's manifest says."""
    model, manifest = ckpt.load(model_uri, compile=False)
    image = decode_image(storage.read_bytes(image_uri), decode_config(manifest))
    return class_probabilities(np.asarray(model.predict(image[None], verbose=0)))[0], manifest


def _top(probs: np.ndarray, names: list[str], k: int) -> list[tuple[str, float]]:
    return [(names[i], float(probs[i])) for i in np.argsort(-probs)[:k]]


def describe_one(image_uri: str, model_uri: str, top_k: int | None = None) -> str:
    """``predict_one`` as the course prints it: the answer (the image's folder,
    when that is a class name), the prediction, then each class's probability."""
    probs, manifest = _classify_one(image_uri, model_uri)
    names = manifest["class_names"]
    pairs = _top(probs, names, top_k or len(names))
    folder = storage.basename(storage.parent(image_uri))
    answer = f"{folder}  (its folder)" if folder in names else "unknown  (the image's folder is not a class name)"
    best, p_best = pairs[0]
    width = max(len(n) for n, _ in pairs)
    lines = [
        f"image:      {storage.normalize(image_uri)}",
        f"model:      {manifest['checkpoint_uri']}",
        f"answer:     {answer}",
        f"prediction: {best}  ({100 * p_best:.1f} %)" + ("" if folder not in names else
                                                          "  right" if best == folder else "  WRONG"),
    ]
    lines += [f"  {name:<{width}}  {p:.4f}  {'#' * round(30 * p)}" for name, p in pairs]
    return "\n".join(lines)


# =========================================================================== batch prediction

PREDICTIONS_DIR = PredictionLayout.PREDICTIONS
SUMMARY_FILE = PredictionLayout.SUMMARY
JOB_FILE = PredictionLayout.JOB
FORMAT = "imgrec-predictions/1"
MANIFEST_SUFFIXES = (".txt", ".csv", ".parquet")
WAVE_ROWS = 50_000  # files per Ray Data execution (x actors): bounds driver memory, amortises model loads
ERROR_EXAMPLES = 10


class PredictError(ValueError):
    """Batch prediction cannot run as asked; the message names the URI and the fix."""


def output_schema():
    """The Parquet schema of every part file."""
    import pyarrow as pa

    return pa.schema(
        [
            ("path", pa.string()),
            ("label", pa.string()),  # null unless the file sits in a class folder (see module doc)
            ("predicted", pa.string()),
            ("predicted_index", pa.int32()),
            ("confidence", pa.float32()),
            ("topk_classes", pa.list_(pa.string())),
            ("topk_probs", pa.list_(pa.float32())),
            ("error", pa.string()),  # null for rows that decoded and were predicted
            ("model_uri", pa.string()),
            ("checkpoint", pa.string()),
        ]
    )


@dataclass(frozen=True)
class ChunkDone:
    """Passed to ``predict_bucket(on_chunk=...)`` after each part is written."""

    index: int  # 1-based position among the chunks of this listing
    total: int
    name: str
    uri: str
    rows: int
    errors: int


@dataclass
class PredictSummary:
    """What ``predict_bucket`` did; also written as ``<output>/summary.json``."""

    input: str
    output: str
    predictions_uri: str
    summary_uri: str
    model_uri: str
    checkpoint: str
    class_names: list[str]
    files: int  # rows in the output: one per input file
    errors: int
    chunks: int
    chunks_run: int  # predicted by this call
    chunks_skipped: int  # already there from an earlier run
    stale_parts_removed: int
    skipped_files: int  # not image files by their ending (prefix input only)
    seconds: float
    images_per_second: float  # this call's rows / time spent predicting
    labelled: int
    metrics: dict[str, Any] | None = None  # over labelled rows without error
    error_examples: list[dict[str, str]] = field(default_factory=list)
    skipped_examples: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"predicted {self.files} files from {self.input} -> {self.predictions_uri}",
            f"  checkpoint {self.checkpoint}",
            f"  chunks: {self.chunks} ({self.chunks_run} run now, {self.chunks_skipped} already done"
            + (f", {self.stale_parts_removed} stale parts removed" if self.stale_parts_removed else "")
            + ")",
            f"  {self.images_per_second:.1f} images/s over {self.seconds:.1f} s",
            f"  errors: {self.errors}" + (f" (e.g. {self.error_examples[0]['path']}: "
                                          f"{self.error_examples[0]['error']})" if self.error_examples else ""),
        ]
        if self.skipped_files:
            lines.append(f"  skipped {self.skipped_files} non-image files (e.g. {self.skipped_examples[0]})")
        if self.metrics:
            lines.append(f"  accuracy {self.metrics['accuracy']:.4f} on {self.metrics['count']} labelled images")
        return "\n".join(lines)


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
    ref = ckpt.resolve(cfg.model)
    class_names = ref.class_names
    out = storage.normalize(cfg.output)
    storage.check_bucket(out)
    job = _job_record(cfg, ref)
    say = _printer(progress)

    with tempfile.TemporaryDirectory(prefix="imgrec-predict-") as tmp:
        listing = _Listing(cfg, class_names, out)
        chunks = _cut_chunks(_announce(listing.entries(), say), cfg.files_per_output)
        plan = _Plan.write(os.path.join(tmp, "plan.jsonl"), chunks)
        if plan.files == 0:
            raise PredictError(
                f"{listing.input}: no {'files' if cfg.all_files else 'image files'} to predict"
                + ("" if cfg.all_files or not listing.skipped else f" ({listing.skipped} non-image files skipped)")
                + f"; image files end with {_image_suffixes()}; check --input"
            )
        done, stale = _prepare_output(out, job, plan, resume=cfg.resume)
        say(
            f"[predict] {listing.input}: {plan.files} files in {len(plan.names)} chunks, "
            f"{len(done)} already done{f', {stale} stale parts removed' if stale else ''}; "
            f"checkpoint {ref.uri}"
        )
        runner = _Runner(cfg, ref, out, plan, say=say, on_chunk=on_chunk)
        runner.run(done)

    summary = _summarize(cfg, ref, out, plan, listing, runner, done, stale, t0)
    storage.atomic_write(summary.summary_uri, json.dumps({"format": FORMAT, **dataclasses.asdict(summary)},
                                                         indent=1))
    say(str(summary))
    return summary


def read_predictions(output: str, columns: list[str] | None = None):
    """The predictions under an output URI as one pandas DataFrame (small outputs;
    for big ones use ``ray.data.read_parquet("<output>/predictions")``)."""
    import pyarrow as pa

    tables = [_read_part(uri, columns) for uri in _part_uris(storage.normalize(output))]
    if not tables:
        raise PredictError(f"{output}: no {PREDICTIONS_DIR}/part-*.parquet; run `imgrec predict` into it first")
    return pa.concat_tables(tables).to_pandas()


# --------------------------------------------------------------------------- checks


def _require(cfg: PredictConfig) -> None:
    for name, hint in (("model", "a run or checkpoint URI"), ("input", "an image prefix or a manifest file"),
                       ("output", "a prefix to write Parquet under")):
        if not getattr(cfg, name):
            raise PredictError(f"PredictConfig.{name} is empty: give {hint} (--{name})")
    inp, out = storage.normalize(cfg.input), storage.normalize(cfg.output)
    if inp == out:
        raise PredictError(f"--input and --output are the same ({out}); write predictions to another prefix")


def _image_suffixes() -> tuple[str, ...]:

    return IMAGE_SUFFIXES


def _printer(enabled: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if enabled:
            print(message, flush=True)

    return say


def _job_record(cfg: PredictConfig, ref: ckpt.CheckpointRef) -> dict[str, Any]:
    """What makes two runs' parts interchangeable: same checkpoint, input, top-k
    and chunk size. Recorded as ``_job.json`` and compared on resume."""
    return {
        "format": FORMAT,
        "input": storage.normalize(cfg.input),
        "checkpoint": ref.uri,
        "model_sha256": ref.manifest.get("model_sha256"),
        "top_k": int(cfg.top_k),
        "files_per_output": int(cfg.files_per_output),
        "all_files": bool(cfg.all_files),
        "config": to_dict(cfg),
    }


_MUST_MATCH = ("input", "checkpoint", "model_sha256", "top_k", "files_per_output", "all_files")


def _check_job(old: dict[str, Any], new: dict[str, Any], out: str) -> None:
    changed = [k for k in _MUST_MATCH if old.get(k) != new.get(k)]
    if changed:
        diffs = "; ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in changed)
        raise PredictError(
            f"{out} holds predictions of a different job ({diffs}). Mixing them would give rows from two "
            "setups: write to a new --output, or pass --no-resume to replace what is there"
        )


# --------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class _Entry:
    uri: str  # what is read, and the output's `path`
    key: str  # what chunk boundaries and digests hash: the path under the input, or the manifest line
    size: int | None
    label: str | None


class _Listing:
    """The input as a lazy stream of entries: a prefix walk or a manifest's rows."""

    def __init__(self, cfg: PredictConfig, class_names: list[str], out: str):
        self.cfg = cfg
        self.input = storage.normalize(cfg.input)
        self.classes = set(class_names)
        self.out = out
        self.skipped = 0
        self.skipped_examples: list[str] = []
        self.is_manifest = self.input.lower().endswith(MANIFEST_SUFFIXES)

    def entries(self) -> Iterator[_Entry]:
        if self.is_manifest:
            if not storage.exists(self.input):
                raise PredictError(f"{self.input}: manifest not found; check the URI (or give a prefix to walk)")
            yield from self._manifest()
        else:
            yield from self._walk()

    def _walk(self) -> Iterator[_Entry]:
        suffixes = None if self.cfg.all_files else _image_suffixes()
        inside_output = self.out + "/"
        for obj in storage.list_objects(self.input):
            if obj.uri.startswith(inside_output):
                continue  # output written under the input: never predict our own files
            if suffixes and not obj.path.lower().endswith(suffixes):
                self.skipped += 1
                if len(self.skipped_examples) < ERROR_EXAMPLES:
                    self.skipped_examples.append(obj.uri)
                continue
            folder, sep, _ = obj.path.partition("/")
            label = folder if sep and folder in self.classes else None
            yield _Entry(obj.uri, obj.path, obj.size, label)

    def _manifest(self) -> Iterator[_Entry]:
        base = storage.parent(self.input)
        for path, label in _manifest_rows(self.input):
            path = path.strip()
            if not path:
                continue
            uri = _absolute(path, base)
            if label is not None and label not in self.classes:
                label = None  # not a class of this model: cannot be scored
            yield _Entry(uri, path, None, label)


def _announce(entries: Iterator[_Entry], say: Callable[[str], None], every: int = 100_000) -> Iterator[_Entry]:
    """Pass entries through, saying how far the listing got (a big bucket takes minutes)."""
    for i, entry in enumerate(entries, 1):
        if i % every == 0:
            say(f"[predict] listed {i} files...")
        yield entry


def _absolute(path: str, base: str) -> str:
    """Manifest paths: URIs and absolute paths as they are, others relative to the manifest's folder."""
    if "://" in path or path.startswith("/"):
        return storage.normalize(path)
    return storage.join(base, path) if storage.is_s3(base) else storage.normalize(os.path.join(base, path))


def _manifest_rows(uri: str) -> Iterator[tuple[str, str | None]]:
    """(path, label or None) rows of a .txt/.csv/.parquet manifest, streamed."""
    fs, path = storage.resolve(uri)
    low = uri.lower()
    try:
        if low.endswith(".txt"):
            with fs.open_input_stream(path) as raw:
                for line in io.TextIOWrapper(raw, encoding="utf-8"):
                    if line.strip() and not line.lstrip().startswith("#"):
                        yield line.rstrip("\r\n"), None
            return
        batches = _csv_batches(fs, path) if low.endswith(".csv") else _parquet_batches(fs, path)
        for batch in batches:
            names = batch.schema.names
            if "path" not in names:
                raise PredictError(f"{uri}: no `path` column (found {names}); name the file column `path`")
            paths = batch.column(names.index("path")).to_pylist()
            labels = (batch.column(names.index("label")).cast("string").to_pylist() if "label" in names
                      else [None] * len(paths))
            for p, lab in zip(paths, labels, strict=True):
                if p is not None:
                    yield str(p), lab
    except PredictError:
        raise
    except OSError as exc:
        raise storage.explain(exc, uri) from None


def _csv_batches(fs, path: str):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with fs.open_input_stream(path) as raw:
        # Every column as text: paths like "001.jpg" must not become numbers.
        reader = pacsv.open_csv(raw, convert_options=pacsv.ConvertOptions(column_types={
            "path": pa.string(), "label": pa.string()}))
        yield from reader


def _parquet_batches(fs, path: str):
    import pyarrow.parquet as pq

    with fs.open_input_file(path) as raw:
        yield from pq.ParquetFile(raw).iter_batches(batch_size=8192)


# --------------------------------------------------------------------------- chunks


@dataclass
class _Chunk:
    name: str  # part-<digest>.parquet
    paths: list[str]
    labels: list[str | None]


def _unit_hash(text: str) -> float:
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big") / 2**64


def _cut_chunks(entries: Iterator[_Entry], files_per_output: int) -> Iterator[_Chunk]:
    """Cut the listing into chunks of ~N files whose boundaries depend on the
    paths, not on positions: a file starts a new chunk when the chunk so far has
    N/2 files and the file's path hash is below 2/N (mean N), or at 2N files.
    Inserting or removing a file thus moves at most the boundaries near it."""
    n = int(files_per_output)
    low = max(1, n // 2)
    high = max(low, 2 * n)
    threshold = 1.0 / max(1, n - low)
    current: list[_Entry] = []
    for entry in entries:
        if current and (len(current) >= high or (len(current) >= low and _unit_hash(entry.key) < threshold)):
            yield _make_chunk(current)
            current = []
        current.append(entry)
    if current:
        yield _make_chunk(current)


def _make_chunk(entries: list[_Entry]) -> _Chunk:
    digest = hashlib.sha256()
    for e in entries:
        digest.update(f"{e.key}\t{'' if e.size is None else e.size}\n".encode())
    return _Chunk(PredictionLayout.part_name(digest.hexdigest()[:20]), [e.uri for e in entries], [e.label for e in entries])


@dataclass
class _Plan:
    """The chunks of one listing, spooled to a local JSON-lines file so that
    memory holds one chunk (not the listing) and the total is known up front."""

    spool: str
    names: list[str]
    files: int
    labelled: int

    @classmethod
    def write(cls, spool: str, chunks: Iterator[_Chunk]) -> _Plan:
        names: list[str] = []
        seen: set[str] = set()
        files = labelled = 0
        with open(spool, "w", encoding="utf-8") as fh:
            for chunk in chunks:
                if chunk.name in seen:  # a manifest repeating a whole chunk: keep both
                    chunk.name = PredictionLayout.numbered(chunk.name, len(names))
                seen.add(chunk.name)
                names.append(chunk.name)
                files += len(chunk.paths)
                labelled += sum(lab is not None for lab in chunk.labels)
                fh.write(json.dumps(dataclasses.asdict(chunk)) + "\n")
        return cls(spool, names, files, labelled)

    def chunks(self) -> Iterator[_Chunk]:
        with open(self.spool, encoding="utf-8") as fh:
            for line in fh:
                yield _Chunk(**json.loads(line))


# --------------------------------------------------------------------------- output state


def _part_uris(out: str) -> list[str]:
    folder = PredictionLayout(out).predictions
    if not storage.exists(folder):
        return []
    return [o.uri for o in storage.list_objects(folder) if PredictionLayout.is_part(o.path)]


def _prepare_output(out: str, job: dict[str, Any], plan: _Plan, *, resume: bool) -> tuple[set[str], int]:
    """Check an earlier run's output, drop what this listing no longer has, and
    return (names of parts already done, number of stale parts removed)."""
    job_uri = PredictionLayout(out).job
    existing = {storage.basename(u): u for u in _part_uris(out)}
    if not resume:
        for uri in existing.values():
            storage.delete_prefix(uri)
        existing = {}
    elif storage.exists(job_uri):
        _check_job(json.loads(storage.read_text(job_uri)), job, out)
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


# --------------------------------------------------------------------------- engine


class BucketPredictor(Predictor):
    """Ray Data actor UDF for ``predict_bucket``: decoded rows in, output rows out.

    Only rows that decoded go through the model; pixels are dropped here so only
    small result rows travel back to the driver."""

    def __init__(self, model_uri: str, *, batch_size: int = 64, top_k: int = 5):
        super().__init__(model_uri, batch_size=batch_size)
        self.class_names = list(self.manifest["class_names"])
        self.top_k = min(int(top_k), len(self.class_names))

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa

        errors = [str(e) if e else None for e in batch["error"]]
        ok = np.array([e is None for e in errors], dtype=bool)
        probs = np.zeros((len(errors), len(self.class_names)), np.float32)
        if ok.any():
            outputs = np.asarray(self.model.predict_on_batch(batch["image"][ok]))
            probs[ok] = class_probabilities(outputs)
        # Stable sort: ties resolve to the lower index, as argmax does in the metrics.
        order = np.argsort(-probs, axis=1, kind="stable")[:, : self.top_k]
        top = np.take_along_axis(probs, order, axis=1)

        def good(values):
            return [v if keep else None for v, keep in zip(values, ok, strict=True)]

        columns = {
            "chunk": pa.array(batch["chunk"], pa.int32()),
            "pos": pa.array(batch["pos"], pa.int32()),
            "path": pa.array([str(p) for p in batch["path"]], pa.string()),
            "predicted": pa.array(good([self.class_names[i] for i in order[:, 0]]), pa.string()),
            "predicted_index": pa.array(good(order[:, 0].tolist()), pa.int32()),
            "confidence": pa.array(good(top[:, 0].tolist()), pa.float32()),
            "topk_classes": pa.array(good([[self.class_names[i] for i in row] for row in order]),
                                     pa.list_(pa.string())),
            "topk_probs": pa.array(good(top.tolist()), pa.list_(pa.float32())),
            "error": pa.array(errors, pa.string()),
        }
        return pa.table(columns)


class _Runner:
    """Runs the pending chunks in waves and writes each part when it is complete."""

    def __init__(self, cfg: PredictConfig, ref: ckpt.CheckpointRef, out: str, plan: _Plan, *,
                 say: Callable[[str], None], on_chunk: Callable[[ChunkDone], None] | None):
        self.cfg, self.ref, self.out, self.plan = cfg, ref, out, plan
        self.say, self.on_chunk = say, on_chunk
        self.decode = decode_config(ref.manifest)
        self.rows_run = 0
        self.chunks_run = 0
        self.predict_seconds = 0.0
        self.wave_rows = WAVE_ROWS * max(1, cfg.actors)

    def run(self, done: set[str]) -> None:
        index = {name: i + 1 for i, name in enumerate(self.plan.names)}
        wave: list[_Chunk] = []
        rows = 0
        for chunk in self.plan.chunks():
            if chunk.name in done:
                continue
            wave.append(chunk)
            rows += len(chunk.paths)
            if rows >= self.wave_rows:
                self._run_wave(wave, index)
                wave, rows = [], 0
        if wave:
            self._run_wave(wave, index)

    def _dataset(self, wave: list[_Chunk]):
        """One block per batch, so reading and decoding spread over the actors.
        (``from_items`` builds blocks in this process; ``from_arrow`` would start
        one remote task per block just to read its metadata.)"""
        import ray

        rows = [{"path": path, "chunk": c, "pos": pos}
                for c, chunk in enumerate(wave) for pos, path in enumerate(chunk.paths)]
        return ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // self.cfg.batch_size)))

    def _run_wave(self, wave: list[_Chunk], index: dict[str, int]) -> None:
        import pyarrow.compute as pc


        ensure_ray()
        # With equal resources (CPU actors) Ray Data fuses this decode step into the
        # model actors: each reads with 16 threads, decodes (PIL releases the GIL),
        # then predicts, with no pixels through the object store. GPU actors differ
        # in resources, so decoding then runs in separate CPU tasks feeding them.
        ds = self._dataset(wave).map_batches(
            DecodeImages(self.decode), batch_size=self.cfg.batch_size, batch_format="numpy"
        )
        ds = ds.map_batches(
            BucketPredictor,
            fn_constructor_kwargs={"model_uri": self.ref.uri, "batch_size": self.cfg.batch_size,
                                   "top_k": self.cfg.top_k},
            batch_size=self.cfg.batch_size,
            batch_format="numpy",
            compute=_actor_pool(self.cfg.actors),
            num_cpus=self.cfg.num_cpus,
            num_gpus=self.cfg.num_gpus,
        )
        pending: dict[int, list] = {}
        got = [0] * len(wave)
        start = time.time()
        batches = ds.iter_batches(batch_size=None, batch_format="pyarrow")
        try:
            for block in batches:
                for c in pc.unique(block["chunk"]).to_pylist():
                    part = block.filter(pc.equal(block["chunk"], c))
                    pending.setdefault(c, []).append(part)
                    got[c] += part.num_rows
                    if got[c] == len(wave[c].paths):
                        self._write_part(wave[c], pending.pop(c), index, start)
        finally:
            close = getattr(batches, "close", None)
            if close:
                close()  # stop the streaming execution now, not at garbage collection
            self.predict_seconds += time.time() - start
        missing = [wave[c].name for c in range(len(wave)) if got[c] != len(wave[c].paths)]
        if missing:
            raise PredictError(f"{self.out}: rows missing for chunk(s) {missing[:3]} after the run; rerun to retry")

    def _write_part(self, chunk: _Chunk, tables: list, index: dict[str, int], start: float) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.concat_tables(tables).sort_by("pos")
        n = table.num_rows
        # Labels never travel through the pipeline: the driver knows them by position.
        labels = pa.array([chunk.labels[i] for i in table.column("pos").to_pylist()], pa.string())
        table = table.drop_columns(["chunk", "pos"]).append_column("label", labels)
        table = table.append_column("model_uri", pa.array([storage.normalize(self.cfg.model)] * n, pa.string()))
        table = table.append_column("checkpoint", pa.array([self.ref.uri] * n, pa.string()))
        table = table.select(output_schema().names).cast(output_schema())
        table = table.replace_schema_metadata({"imgrec": json.dumps(
            {"format": FORMAT, "chunk": chunk.name, "rows": n, "checkpoint": self.ref.uri})})
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        uri = PredictionLayout(self.out).part(chunk.name)
        storage.atomic_write(uri, buf.getvalue())  # one PUT on S3, temp + rename locally
        errors = n - table.column("error").null_count
        self.rows_run += n
        self.chunks_run += 1
        elapsed = self.predict_seconds + time.time() - start
        rate = self.rows_run / elapsed if elapsed > 0 else 0.0
        i, total = index[chunk.name], len(self.plan.names)
        self.say(f"[predict] chunk {i}/{total} {chunk.name}: {n} files, {errors} errors; {rate:.1f} images/s")
        if self.on_chunk:
            self.on_chunk(ChunkDone(i, total, chunk.name, uri, n, errors))


# --------------------------------------------------------------------------- summary


def _read_part(uri: str, columns: list[str] | None = None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(storage.read_bytes(uri)), columns=columns)


def _summarize(cfg, ref, out, plan, listing, runner, done, stale, t0) -> PredictSummary:
    """Read back every part of this listing (three small columns) for exact counts
    and the metrics: resumed chunks count as much as the ones run now."""

    class_names = ref.class_names
    index = {name: i for i, name in enumerate(class_names)}
    rows = errors = 0
    examples: list[dict[str, str]] = []
    per_part = []
    for name in plan.names:
        table = _read_part(PredictionLayout(out).part(name), ["path", "label", "predicted_index", "error"])
        rows += table.num_rows
        error = table.column("error").to_pylist()
        errors += sum(e is not None for e in error)
        if len(examples) < ERROR_EXAMPLES:
            paths = table.column("path").to_pylist()
            examples += [{"path": p, "error": e} for p, e in zip(paths, error, strict=True) if e][
                : ERROR_EXAMPLES - len(examples)]
        scored = [(index[lab], pred) for lab, pred, e in zip(table.column("label").to_pylist(),
                                                             table.column("predicted_index").to_pylist(),
                                                             error, strict=True)
                  if lab is not None and e is None]
        if scored:
            labels, preds = np.array(scored, dtype=np.int64).T
            # classification_metrics takes probabilities; a one-hot of the prediction argmaxes back to it.
            per_part.append(classification_metrics(labels, np.eye(len(class_names), dtype=np.float32)[preds],
                                                   class_names))
    if rows != plan.files:
        raise PredictError(f"{out}: the parts hold {rows} rows but the input has {plan.files} files; "
                           "rerun with --no-resume to rebuild the output")
    return PredictSummary(
        input=listing.input,
        output=out,
        predictions_uri=PredictionLayout(out).predictions,
        summary_uri=PredictionLayout(out).summary,
        model_uri=storage.normalize(cfg.model),
        checkpoint=ref.uri,
        class_names=class_names,
        files=rows,
        errors=errors,
        chunks=len(plan.names),
        chunks_run=runner.chunks_run,
        chunks_skipped=len(done),
        stale_parts_removed=stale,
        skipped_files=listing.skipped,
        seconds=round(time.time() - t0, 3),
        images_per_second=round(runner.rows_run / runner.predict_seconds, 2) if runner.predict_seconds else 0.0,
        labelled=plan.labelled,
        metrics=_merge_metrics(per_part, class_names) if per_part else None,
        error_examples=examples,
        skipped_examples=listing.skipped_examples,
    )


def _merge_metrics(parts: list[dict[str, Any]], class_names: list[str]) -> dict[str, Any]:
    """Combine ``classification_metrics`` of disjoint parts by summing their
    confusion matrices (memory stays per part, however big the bucket)."""
    confusion = np.sum([np.asarray(m["confusion"], dtype=np.int64) for m in parts], axis=0)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    per_class = {
        name: {
            "precision": float(confusion[i, i] / predicted[i]) if predicted[i] else 0.0,
            "recall": float(confusion[i, i] / actual[i]) if actual[i] else 0.0,
            "support": int(actual[i]),
        }
        for i, name in enumerate(class_names)
    }
    total = int(confusion.sum())
    return {
        "accuracy": float(np.trace(confusion) / total) if total else float("nan"),
        "count": total,
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "class_names": list(class_names),
    }

