"""The input of batch prediction as a lazy stream of entries: a prefix walk
(S3 pages of 1000 keys; a local walk sorted per folder), or the rows of a
``.txt``/``.csv``/``.parquet`` manifest, each with its label when it has one."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from imgrec import storage
from imgrec.config import PredictConfig
from imgrec.decode import IMAGE_SUFFIXES
from imgrec.predict.errors import PredictError

MANIFEST_SUFFIXES = (".txt", ".csv", ".parquet")
EXAMPLES = 10  # skipped files named in the summary


@dataclass(frozen=True)
class Entry:
    uri: str  # what is read, and the output's `path`
    key: str  # what chunk boundaries and digests hash: the path under the input, or the manifest line
    size: int | None
    label: str | None


class Listing:
    """The input as a lazy stream of entries: a prefix walk or a manifest's rows."""

    def __init__(self, cfg: PredictConfig, class_names: list[str], out: str):
        self.cfg = cfg
        self.input = storage.normalize(cfg.input)
        self.classes = set(class_names)
        self.out = out
        self.skipped = 0
        self.skipped_examples: list[str] = []
        self.is_manifest = self.input.lower().endswith(MANIFEST_SUFFIXES)

    def entries(self) -> Iterator[Entry]:
        if self.is_manifest:
            if not storage.exists(self.input):
                raise PredictError(f"{self.input}: manifest not found; check the URI (or give a prefix to walk)")
            yield from self._manifest()
        else:
            yield from self._walk()

    def _walk(self) -> Iterator[Entry]:
        suffixes = None if self.cfg.all_files else IMAGE_SUFFIXES
        inside_output = self.out + "/"
        for obj in storage.list_objects(self.input):
            if obj.uri.startswith(inside_output):
                continue  # output written under the input: never predict our own files
            if suffixes and not obj.path.lower().endswith(suffixes):
                self.skipped += 1
                if len(self.skipped_examples) < EXAMPLES:
                    self.skipped_examples.append(obj.uri)
                continue
            folder, sep, _ = obj.path.partition("/")
            label = folder if sep and folder in self.classes else None
            yield Entry(obj.uri, obj.path, obj.size, label)

    def _manifest(self) -> Iterator[Entry]:
        base = storage.parent(self.input)
        for path, label in manifest_rows(self.input):
            path = path.strip()
            if not path:
                continue
            uri = absolute(path, base)
            if label is not None and label not in self.classes:
                label = None  # not a class of this model: cannot be scored
            yield Entry(uri, path, None, label)


def announce(entries: Iterator[Entry], say: Callable[[str], None], every: int = 100_000) -> Iterator[Entry]:
    """Pass entries through, saying how far the listing got (a big bucket takes minutes)."""
    for i, entry in enumerate(entries, 1):
        if i % every == 0:
            say(f"[predict] listed {i} files...")
        yield entry


def absolute(path: str, base: str) -> str:
    """Manifest paths: URIs and absolute paths as they are, others relative to the manifest's folder."""
    if "://" in path or path.startswith("/"):
        return storage.normalize(path)
    return storage.join(base, path) if storage.is_s3(base) else storage.normalize(os.path.join(base, path))


def manifest_rows(uri: str) -> Iterator[tuple[str, str | None]]:
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

