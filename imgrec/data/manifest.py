"""Label manifests: a CSV or Parquet file of ``uri,label[,split]`` rows, listed
into the same ``ImageTree`` a class-per-folder tree gives, and the one reader of
manifest rows (batch prediction reads its ``.txt``/``.csv``/``.parquet`` input
through it too).

A row's ``uri`` (or ``path``, as prediction manifests name it) is a URI, an
absolute path, or a path relative to the manifest's folder. Labels are text;
the class names are the sorted distinct labels of the train and val rows, as a
tree's are its sorted folders. ``split`` (optional) puts a row in train, val or
test; a row without one is split by the hash of its key: its path under the
manifest's folder (its full URI when outside it), less a leading ``train/``
(``test/`` for a test row), so the manifest of a tree written at the tree's
root lists the same records and splits exactly as the tree.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass

from imgrec import storage
from imgrec.data.tree import DataError, ImageTree, list_image_tree
from imgrec.decode import IMAGE_SUFFIXES

MANIFEST_SUFFIXES = (".txt", ".csv", ".parquet")  # what batch prediction reads
LABEL_MANIFEST_SUFFIXES = (".csv", ".parquet")  # what training reads: a .txt has no labels
FILE_COLUMNS = ("uri", "path")  # the image column, by either name
SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = "uri,label[,split]"


def is_manifest(uri: str) -> bool:
    return uri.lower().endswith(MANIFEST_SUFFIXES)


def list_images(uri: str) -> ImageTree:
    """What a data URI holds, before any pixel is read: a label manifest's rows
    (``.csv``/``.parquet``) or a class-per-folder tree's files."""
    return list_manifest(uri) if is_manifest(uri) else list_image_tree(uri)


# --------------------------------------------------------------------------- reading rows


def absolute(path: str, base: str) -> str:
    """Manifest paths: URIs and absolute paths as they are, others relative to the manifest's folder."""
    if "://" in path or path.startswith("/"):
        return storage.normalize(path)
    return storage.join(base, path) if storage.is_s3(base) else storage.normalize(os.path.join(base, path))


def file_column(uri: str, names: list[str]) -> str:
    for name in FILE_COLUMNS:
        if name in names:
            return name
    raise DataError(f"{uri}: no `uri` column (found {names}); name the image column `uri` (or `path`)")


def manifest_rows(uri: str) -> Iterator[tuple[str, str | None]]:
    """(path, label or None) rows of a .txt/.csv/.parquet manifest, streamed (an
    input of millions of rows never sits in memory whole)."""
    fs, path = storage.resolve(uri)
    try:
        if uri.lower().endswith(".txt"):
            with fs.open_input_stream(path) as raw:
                for line in io.TextIOWrapper(raw, encoding="utf-8"):
                    if line.strip() and not line.lstrip().startswith("#"):
                        yield line.rstrip("\r\n"), None
            return
        opener = fs.open_input_stream if uri.lower().endswith(".csv") else fs.open_input_file
        with opener(path) as raw:
            for batch in record_batches(uri, raw):
                names = batch.schema.names
                paths = batch.column(names.index(file_column(uri, names))).to_pylist()
                labels = (batch.column(names.index("label")).cast("string").to_pylist() if "label" in names
                          else [None] * len(paths))
                for p, lab in zip(paths, labels, strict=True):
                    if p is not None:
                        yield str(p), lab
    except OSError as exc:
        raise storage.explain(exc, uri) from None


def record_batches(uri: str, raw) -> Iterator:
    """Arrow record batches of a ``.csv`` or ``.parquet`` manifest from an open file."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if uri.lower().endswith(".csv"):
            # Every column we read as text: paths like "001.jpg" and labels like "7" must not become numbers.
            text = pacsv.ConvertOptions(column_types={c: pa.string() for c in (*FILE_COLUMNS, "label", "split")})
            yield from pacsv.open_csv(raw, convert_options=text)
        else:
            yield from pq.ParquetFile(raw).iter_batches(batch_size=8192)
    except pa.ArrowException as exc:
        kind = "CSV" if uri.lower().endswith(".csv") else "Parquet"
        raise DataError(f"{uri}: cannot be read as {kind} ({str(exc).strip()[:200]}); write it with a header "
                        f"row of {MANIFEST_COLUMNS}") from None


# --------------------------------------------------------------------------- a label manifest as an ImageTree


@dataclass(frozen=True)
class _Row:
    where: str  # "line 7" (CSV, the header being line 1) or "row 6" (Parquet)
    path: str  # as written
    label: str | None
    split: str | None


def list_manifest(uri: str) -> ImageTree:
    """A label manifest's rows as an ``ImageTree``: records keyed for the hash
    split, explicit splits in ``splits``, non-image rows in ``skipped``. Every
    fault of the manifest itself is one ``DataError`` naming the row and the fix."""
    uri = storage.normalize(uri)
    if uri.lower().endswith(".txt"):
        raise DataError(f"{uri}: a .txt manifest lists files without labels; training needs a .csv or .parquet "
                        f"with columns {MANIFEST_COLUMNS}")
    if not uri.lower().endswith(LABEL_MANIFEST_SUFFIXES):
        raise DataError(f"{uri}: not a label manifest; give a .csv or .parquet file of {MANIFEST_COLUMNS}")
    if not storage.exists(uri):
        raise DataError(f"{uri}: manifest not found; check the URI")
    body = storage.read_bytes(uri)
    base = storage.parent(uri)
    rows = list(_rows(uri, body))
    if not rows:
        raise DataError(f"{uri}: no rows; a label manifest has a header row ({MANIFEST_COLUMNS}) and one row per "
                        "image")

    seen: dict[str, str] = {}
    kept: list[tuple[_Row, str]] = []
    skipped: list[dict[str, str]] = []
    for row in rows:
        target = _target(uri, base, row)
        if target in seen:
            raise DataError(f"{uri}: {row.where}: listed already at {seen[target]} ({row.path}); list each image "
                            "once")
        seen[target] = row.where
        if not target.lower().endswith(IMAGE_SUFFIXES):
            skipped.append({"path": target, "reason": f"not an image file ending {IMAGE_SUFFIXES}"})
            continue
        kept.append((row, target))

    class_names = _class_names(uri, kept)
    index = {name: i for i, name in enumerate(class_names)}
    train, test, splits = [], [], {}
    for row, target in kept:
        record = {"path": target, "label": index[row.label], "rel": _key(target, base, row.split)}
        if row.split == "test":
            test.append(record)
            continue
        train.append(record)
        if row.split:
            splits[target] = row.split
    return ImageTree(uri, class_names, train, test, skipped, splits=splits,
                     manifest_sha256=hashlib.sha256(body).hexdigest())


def _rows(uri: str, body: bytes) -> Iterator[_Row]:
    import pyarrow as pa

    csv = uri.lower().endswith(".csv")
    n = 0
    for batch in record_batches(uri, pa.BufferReader(body)):
        names = batch.schema.names
        if "label" not in names:
            raise DataError(f"{uri}: no `label` column (found {names}); training needs each image's class: "
                            f"columns {MANIFEST_COLUMNS}")
        column = {name: batch.column(names.index(name)).cast("string").to_pylist()
                  for name in (file_column(uri, names), "label", "split") if name in names}
        paths, labels = column[file_column(uri, names)], column["label"]
        for i, path in enumerate(paths):
            split = column["split"][i] if "split" in column else None
            yield _Row(f"line {n + i + 2}" if csv else f"row {n + i + 1}", (path or "").strip(),
                       (labels[i] or "").strip() or None, (split or "").strip().lower() or None)
        n += len(paths)


def _target(uri: str, base: str, row: _Row) -> str:
    """The row's file as a full URI, after the row's own checks."""
    if not row.path:
        raise DataError(f"{uri}: {row.where}: empty uri; every row names its image")
    if ".." in row.path.replace("\\", "/").split("/"):
        raise DataError(f"{uri}: {row.where}: {row.path!r} has a `..` segment; relative URIs must stay inside "
                        f"the manifest's folder {base} (and S3 reads `..` literally): give a path without `..`, "
                        "or a full URI")
    if not row.label:
        raise DataError(f"{uri}: {row.where}: empty label for {row.path}; every row needs its class")
    if row.split and row.split not in SPLITS:
        raise DataError(f"{uri}: {row.where}: split {row.split!r} is not one of {', '.join(SPLITS)} (or empty: "
                        "split by hash)")
    return absolute(row.path, base)


def _class_names(uri: str, kept: list[tuple[_Row, str]]) -> list[str]:
    """Sorted labels of the rows a model learns from; a label it could never learn is an error."""
    by_split = {split: {row.label for row, _ in kept if (row.split or "train") == split} for split in SPLITS}
    names = sorted(by_split["train"] | by_split["val"])
    for split, unseen, why in (
        ("test", by_split["test"] - set(names), "a model cannot predict a class it never saw"),
        ("val", by_split["val"] - by_split["train"], "a model would never be trained on it"),
    ):
        if unseen:
            raise DataError(f"{uri}: label(s) {sorted(unseen)} appear only in {split} rows; {why}: add training "
                            "rows of them or drop those rows")
    if len(names) < 2:
        raise DataError(f"{uri}: found rows for only {len(names)} label {names}; classification needs at least 2 "
                        f"labels ({MANIFEST_COLUMNS})")
    return names


def _key(target: str, base: str, split: str | None) -> str:
    """The hash-split key: the path under the manifest's folder (the full URI when
    outside it), less a leading ``train/`` (``test/`` for a test row): a tree's
    keys are the paths under its train/ and test/ folders."""
    prefix = base.rstrip("/") + "/"
    key = target[len(prefix):] if target.startswith(prefix) else target
    folder = "test/" if split == "test" else "train/"
    return key[len(folder):] if key.startswith(folder) else key
