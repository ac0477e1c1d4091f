"""Listing, reading and writing objects (atomic writes, many small ones at once, deleting)."""

from __future__ import annotations

import os
import posixpath
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from imgrec.storage.cache import remove_stale_temps
from imgrec.storage.clients import boto3_client
from imgrec.storage.errors import _error_code, _explain_boto, _s3_call, check_bucket, explain
from imgrec.storage.parallel import _run_parallel
from imgrec.storage.uris import ObjectInfo, StorageError, _key_of, is_s3, normalize, split_s3


def list_objects(uri: str, suffixes: tuple[str, ...] | None = None) -> Iterator[ObjectInfo]:
    """Every object (file) under a prefix, recursively, streamed page by page.

    ``suffixes`` filters by lower-cased file ending. Order: lexicographic by key
    (S3 order; local listing is sorted to match). A URI naming one object (or
    one file) lists just that object. A missing local path is an error; an S3
    prefix with nothing under it simply lists nothing (S3 has no folders)."""
    uri = normalize(uri)
    suffixes = tuple(s.lower() for s in suffixes) if suffixes else None

    def wanted(name: str) -> bool:
        return suffixes is None or name.lower().endswith(suffixes)

    if is_s3(uri):
        yield from _list_s3(uri, wanted)
        return
    if not os.path.exists(uri):
        raise StorageError(f"{uri}: no such file or folder; check the path")
    if os.path.isfile(uri):
        if wanted(uri):
            yield _local_info(uri, os.path.basename(uri))
        return
    for rel, full in _walk_sorted(uri, ""):
        if wanted(posixpath.basename(rel)):
            yield _local_info(full, rel)


def _local_info(path: str, rel: str) -> ObjectInfo:
    st = os.stat(path)
    return ObjectInfo(path, rel, st.st_size, str(st.st_mtime_ns), st.st_mtime)


def _walk_sorted(folder: str, rel_prefix: str) -> Iterator[tuple[str, str]]:
    """Files under ``folder`` in the order S3 lists their keys.

    S3 sorts whole keys, so a folder "b" sorts as "b/" among its siblings: that
    puts "b/x" before "c.txt", where ``os.walk`` would give the files first."""
    with os.scandir(folder) as it:
        entries = sorted((e.name + "/" if e.is_dir() else e.name, e.path) for e in it)
    for name, path in entries:
        if name.endswith("/"):
            yield from _walk_sorted(path, rel_prefix + name)
        else:
            yield rel_prefix + name, path


def _list_s3(uri: str, wanted: Callable[[str], bool]) -> Iterator[ObjectInfo]:
    bucket, key = split_s3(uri)
    prefix = key + "/" if key else ""
    client = boto3_client()
    paginator = client.get_paginator("list_objects_v2")
    found = False
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000}):
            for obj in page.get("Contents", []):
                found = True
                rel = obj["Key"][len(prefix) :]
                if rel and not rel.endswith("/") and wanted(rel):
                    yield ObjectInfo(f"s3://{bucket}/{obj['Key']}", rel, int(obj["Size"]), _etag(obj),
                                     _timestamp(obj.get("LastModified")))
    except StorageError:
        raise
    except Exception as exc:
        raise _explain_boto(exc, uri) from None
    if not found and key:
        # The URI may name a single object, like a local file path does.
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return
            raise _explain_boto(exc, uri) from None
        if wanted(key):
            yield ObjectInfo(uri, posixpath.basename(key), int(head["ContentLength"]), _etag(head),
                             _timestamp(head.get("LastModified")))


def _etag(obj: dict) -> str:
    return str(obj.get("ETag", "")).strip('"')


def _timestamp(when) -> float:
    return when.timestamp() if when is not None else 0.0


def exists(uri: str) -> bool:
    """Whether a file/folder (local) or an object/non-empty prefix/bucket (S3) exists.

    For S3, a missing *bucket* under a key is an error, not ``False``: a typo in
    the bucket name should not look like "nothing saved yet"."""
    uri = normalize(uri)
    if not is_s3(uri):
        return os.path.exists(uri)
    bucket, key = split_s3(uri)
    client = boto3_client()
    if not key:
        try:
            client.head_bucket(Bucket=bucket)
            return True
        except Exception as exc:
            if _error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
                return False
            raise _explain_boto(exc, uri) from None
    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except Exception as exc:
        if _error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
            raise _explain_boto(exc, uri) from None
    # Not an object: a "folder" exists when any key starts with it.
    page = _s3_call(uri, client.list_objects_v2, Bucket=bucket, Prefix=key + "/", MaxKeys=1)
    return int(page.get("KeyCount", 0)) > 0


# --------------------------------------------------------------------------- small objects


def read_bytes(uri: str) -> bytes:
    uri = normalize(uri)
    if not is_s3(uri):
        try:
            return Path(uri).read_bytes()
        except OSError as exc:
            raise explain(exc, uri) from None
    bucket, key = split_s3(uri)
    if not key:
        raise StorageError(f"{uri}: names a bucket, not an object; give s3://bucket/key")
    client = boto3_client()
    return _s3_call(uri, lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read())


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Write an object. On S3 a PUT is already atomic; locally this is ``atomic_write``."""
    atomic_write(uri, data)


def atomic_write(uri: str, data: bytes | str) -> None:
    """Readers see the old content or the new, never a half-written object.

    Locally: write a temp file in the same folder, fsync, rename. On S3 a single
    PUT is atomic by the service's contract."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    uri = normalize(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        if not key:
            raise StorageError(f"{uri}: names a bucket, not an object; give s3://bucket/key")
        _s3_call(uri, boto3_client().put_object, Bucket=bucket, Key=key, Body=data)
        return
    try:
        _write_local(uri, data, fsync=True)
        # Temps of this same file left by a killed writer (cheap: one folder listing;
        # bulk writes through write_many skip it).
        remove_stale_temps(os.path.dirname(uri), prefix=f".{os.path.basename(uri)}.", recursive=False)
    except OSError as exc:
        raise explain(exc, uri) from None


def _write_local(path: str, data: bytes, *, fsync: bool) -> None:
    """Temp file in the same folder, then rename: never a half-written file."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_many(
    root: str,
    items: Iterable[tuple[str, bytes]],
    *,
    workers: int = 16,
    progress: bool = False,
    total: int | None = None,
) -> int:
    """Write many objects under ``root`` from ``(relative/path, bytes)`` pairs.

    ``items`` may be a generator: it is consumed as the writes complete, with a
    bounded number in flight, so producing (e.g. encoding images) overlaps
    uploading and memory stays flat. S3 PUTs run on a thread pool; local files
    are written in place (each one atomically, without fsync: bulk data, not
    manifests). Returns the number written."""
    root = normalize(root)
    if is_s3(root):
        check_bucket(root)
        bucket, key = split_s3(root)
        client = boto3_client()

        def put(item: tuple[str, bytes]) -> None:
            dest_key = posixpath.join(key, _safe_relpath(item[0])) if key else _safe_relpath(item[0])
            _s3_call(
                f"s3://{bucket}/{dest_key}", client.put_object, Bucket=bucket, Key=dest_key, Body=item[1]
            )

        return _run_parallel(
            put, items, workers=workers, desc=f"write {root}", progress=progress, total=total
        )

    def write(item: tuple[str, bytes]) -> None:
        dest = os.path.join(root, *_safe_relpath(item[0]).split("/"))
        try:
            _write_local(dest, item[1], fsync=False)
        except OSError as exc:
            raise explain(exc, dest) from None

    # Local writes are cheap system calls: threads would only add overhead.
    return _run_parallel(write, items, workers=0, desc=f"write {root}", progress=progress, total=total)


def _safe_relpath(rel: str) -> str:
    parts = rel.replace("\\", "/").split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"relative path {rel!r} must be like 'a/b.jpg' (no '..', no leading '/')")
    return "/".join(parts)


def empty_destination(uri: str, *, overwrite: bool, what: str = "the output",
                      error: type[Exception] = StorageError) -> str:
    """The normalised destination for a tree of new files, checked empty (or emptied,
    with ``overwrite``). A missing bucket fails here, before any work; ``error`` lets
    callers raise their own error type."""
    out = normalize(uri)
    check_bucket(out)
    if is_s3(out) or os.path.isdir(out):
        first = next(iter(list_objects(out)), None)
        if first is not None:
            if not overwrite:
                raise error(
                    f"{out}: already holds files (e.g. {first.path}); choose an empty destination "
                    "or pass overwrite=True (--overwrite) to replace them"
                )
            delete_prefix(out)
    elif os.path.exists(out):
        raise error(f"{out}: is a file; give a folder or s3:// prefix for {what}")
    return out


def delete_prefix(uri: str) -> int:
    """Delete every object under a prefix (or a local folder). Returns the count."""
    uri = normalize(uri)
    if not is_s3(uri):
        if os.path.isdir(uri):
            n = sum(len(files) for _, _, files in os.walk(uri))
            shutil.rmtree(uri)
            return n
        if os.path.exists(uri):
            os.unlink(uri)
            return 1
        return 0
    bucket, _ = split_s3(uri)
    client = boto3_client()
    keys = [_key_of(o.uri) for o in list_objects(uri)]
    for i in range(0, len(keys), 1000):
        chunk = keys[i : i + 1000]
        response = _s3_call(
            uri, client.delete_objects, Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk]}
        )
        # DeleteObjects answers 200 even when single keys fail: check each.
        errors = response.get("Errors") or []
        if errors:
            first = errors[0]
            raise explain(
                RuntimeError(f"{first.get('Code', '')}: {first.get('Message', '')}"),
                f"s3://{bucket}/{first.get('Key', '')}",
            )
    return len(keys)
