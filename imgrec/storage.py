"""One way to address data everywhere: local paths, ``file://`` and ``s3://bucket/prefix``.

``resolve(uri)`` gives a pyarrow filesystem plus a path (what Ray Data and Ray
Train's ``storage_filesystem`` take). The S3 endpoint comes from
``AWS_ENDPOINT_URL`` (or ``endpoint=``), so MinIO, moto or any S3-compatible
store works. Credentials come only from the standard AWS chain: they are never
passed into objects that Ray pickles, logged, or written into any artefact.
"""

from __future__ import annotations

import concurrent.futures as futures
import os
import posixpath
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

DEFAULT_REGION = "us-east-1"


class StorageError(RuntimeError):
    """A storage problem, with the URI and what to set or fix."""


@dataclass(frozen=True)
class ObjectInfo:
    uri: str  # full URI (s3://bucket/key or an absolute local path)
    path: str  # path relative to the listed prefix, with forward slashes
    size: int


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def endpoint_url(endpoint: str | None = None) -> str | None:
    """The S3 endpoint: explicit, else ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, else AWS."""
    return endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"malformed S3 URI {uri!r}: expected s3://bucket/prefix")
    if parsed.query or parsed.fragment:
        raise StorageError(f"malformed S3 URI {uri!r}: '?' and '#' are not allowed in keys here")
    return parsed.netloc, parsed.path.lstrip("/")


def normalize(uri: str | os.PathLike) -> str:
    """Canonical form: ``s3://bucket/key`` (no trailing slash) or an absolute local path."""
    uri = os.fspath(uri)
    if not uri:
        raise StorageError("empty storage URI: give a local path or s3://bucket/prefix")
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        return f"s3://{bucket}/{key}".rstrip("/") if key else f"s3://{bucket}"
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        if scheme != "file":
            raise StorageError(
                f"unsupported URI scheme {scheme!r} in {uri!r}: use a local path, file:// or s3://"
            )
        uri = urlparse(uri).path
    return os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    uri = normalize(uri)
    if is_s3(uri):
        return posixpath.join(uri, *[p.strip("/") for p in parts])
    return os.path.join(uri, *parts)


def parent(uri: str) -> str:
    uri = normalize(uri)
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        return f"s3://{bucket}/{posixpath.dirname(key)}".rstrip("/")
    return os.path.dirname(uri)


def basename(uri: str) -> str:
    return posixpath.basename(normalize(uri).rstrip("/"))


def s3_filesystem(endpoint: str | None = None) -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem on the configured endpoint and the default credential chain.

    No keys are passed in: the filesystem is pickled into Ray's state, and keys
    there would leak into logs and checkpoints."""
    url = endpoint_url(endpoint)
    kwargs = dict(region=region(), allow_bucket_creation=True, allow_bucket_deletion=False)
    if url:
        parsed = urlparse(url)
        kwargs["endpoint_override"] = url  # keep the scheme: http for local endpoints
        if parsed.scheme == "http":
            kwargs["scheme"] = "http"
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str, endpoint: str | None = None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it (``bucket/key`` for S3, no scheme)."""
    uri = normalize(uri)
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        return s3_filesystem(endpoint), f"{bucket}/{key}".rstrip("/")
    return pafs.LocalFileSystem(), uri


def boto3_client(endpoint: str | None = None):
    """A boto3 S3 client on the same endpoint, region and credential chain."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url(endpoint),
        region_name=region(),
        config=Config(retries={"max_attempts": 5, "mode": "adaptive"}, max_pool_connections=32),
    )


def explain(exc: BaseException, uri: str) -> StorageError:
    """Turn a pyarrow/boto3/OS error into one clear message naming the URI and the fix."""
    text = str(exc)
    low = text.lower()
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, FileNotFoundError) and not is_s3(uri):
        return StorageError(f"{uri}: no such file or folder; check the path")
    if "nosuchbucket" in low or "bucket does not exist" in low or "the specified bucket does not exist" in low:
        bucket = _split_s3(normalize(uri))[0] if is_s3(uri) else uri
        return StorageError(
            f"{uri}: bucket {bucket!r} does not exist at {endpoint_url() or 'AWS S3'}; "
            f"create it (infra/ or `aws s3 mb s3://{bucket}`) or fix the URI"
        )
    credential_words = (
        "no credentials",
        "unable to locate credentials",
        "invalidaccesskeyid",
        "signaturedoesnotmatch",
        "access denied",
        "accessdenied",
        "credentials",
        "expiredtoken",
    )
    if any(w in low for w in credential_words):
        return StorageError(
            f"{uri}: S3 refused the credentials ({text.splitlines()[0][:200]}); set AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role with access to this bucket"
        )
    unreachable_words = (
        "could not connect",
        "connection refused",
        "couldn't connect",
        "failed to connect",
        "curl error",
        "endpointconnectionerror",
        "connect timeout",
        "timed out",
        "name or service not known",
        "could not resolve",
    )
    if any(w in low for w in unreachable_words):
        return StorageError(
            f"{uri}: the S3 endpoint {endpoint_url() or 'AWS S3'} is unreachable ({text.splitlines()[0][:200]}); "
            "check AWS_ENDPOINT_URL and that the server is running"
        )
    if isinstance(exc, FileNotFoundError) or "nosuchkey" in low or "not found" in low or "404" in low:
        return StorageError(f"{uri}: no such object or prefix; check the URI")
    return StorageError(f"{uri}: {type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}")


def _s3_call(uri: str, fn, *args, **kwargs):
    """Run a boto3 call, translating botocore's errors."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # botocore raises many types; explain() reads their text
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        raise explain(RuntimeError(f"{code}: {exc}") if code else exc, uri) from None


def check_bucket(uri: str) -> None:
    """Raise a clear StorageError when the bucket of ``uri`` is missing or unreadable."""
    if not is_s3(uri):
        return
    bucket, _ = _split_s3(normalize(uri))
    client = boto3_client()
    _s3_call(uri, client.head_bucket, Bucket=bucket)


def ensure_bucket(uri: str) -> None:
    """Create the bucket of ``uri`` if it does not exist (for local endpoints and demos)."""
    if not is_s3(uri):
        os.makedirs(normalize(uri), exist_ok=True)
        return
    bucket, _ = _split_s3(normalize(uri))
    client = boto3_client()
    try:
        client.head_bucket(Bucket=bucket)
    except Exception:
        kwargs = {}
        if region() != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region()}
        _s3_call(uri, client.create_bucket, Bucket=bucket, **kwargs)


# --------------------------------------------------------------------------- listing


def list_objects(uri: str, suffixes: tuple[str, ...] | None = None) -> Iterator[ObjectInfo]:
    """Every object (file) under a prefix, recursively, streamed page by page.

    ``suffixes`` filters by lower-cased file ending. Order: lexicographic by key
    (S3 order; local listing is sorted to match)."""
    uri = normalize(uri)
    suffixes = tuple(s.lower() for s in suffixes) if suffixes else None

    def wanted(name: str) -> bool:
        return suffixes is None or name.lower().endswith(suffixes)

    if is_s3(uri):
        bucket, key = _split_s3(uri)
        prefix = key + "/" if key else ""
        client = boto3_client()
        paginator = client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000}):
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(prefix) :]
                    if rel and not rel.endswith("/") and wanted(rel):
                        yield ObjectInfo(f"s3://{bucket}/{obj['Key']}", rel, int(obj["Size"]))
        except StorageError:
            raise
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            raise explain(RuntimeError(f"{code}: {exc}"), uri) from None
        return
    if not os.path.exists(uri):
        raise StorageError(f"{uri}: no such file or folder; check the path")
    if os.path.isfile(uri):
        yield ObjectInfo(uri, os.path.basename(uri), os.path.getsize(uri))
        return
    for dirpath, dirnames, filenames in os.walk(uri):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, uri).replace(os.sep, "/")
            if wanted(name):
                yield ObjectInfo(full, rel, os.path.getsize(full))


def exists(uri: str) -> bool:
    uri = normalize(uri)
    if not is_s3(uri):
        return os.path.exists(uri)
    fs, path = resolve(uri)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except Exception as exc:
        raise explain(exc, uri) from None


# --------------------------------------------------------------------------- small objects


def read_bytes(uri: str) -> bytes:
    uri = normalize(uri)
    if not is_s3(uri):
        try:
            return Path(uri).read_bytes()
        except OSError as exc:
            raise explain(exc, uri) from None
    bucket, key = _split_s3(uri)
    client = boto3_client()
    body = _s3_call(uri, client.get_object, Bucket=bucket, Key=key)["Body"]
    return body.read()


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
        bucket, key = _split_s3(uri)
        client = boto3_client()
        _s3_call(uri, client.put_object, Bucket=bucket, Key=key, Body=data)
        return
    folder = os.path.dirname(uri)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(uri)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, uri)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def delete_prefix(uri: str) -> int:
    """Delete every object under a prefix (or a local folder). Returns the count."""
    uri = normalize(uri)
    if not is_s3(uri):
        import shutil

        if os.path.isdir(uri):
            n = sum(len(files) for _, _, files in os.walk(uri))
            shutil.rmtree(uri)
            return n
        if os.path.exists(uri):
            os.unlink(uri)
            return 1
        return 0
    bucket, _ = _split_s3(uri)
    client = boto3_client()
    keys = [o.uri[len(f"s3://{bucket}/") :] for o in list_objects(uri)]
    for i in range(0, len(keys), 1000):
        chunk = keys[i : i + 1000]
        _s3_call(uri, client.delete_objects, Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk]})
    return len(keys)


# --------------------------------------------------------------------------- folders


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="file", disable=not enabled, leave=False)


def upload_dir(local_dir: str, uri: str, *, workers: int = 16, progress: bool = True) -> int:
    """Copy a local folder tree to a URI in parallel. Returns the number of files."""
    local_dir = normalize(local_dir)
    if is_s3(local_dir):
        raise StorageError(f"upload source must be a local folder, got {local_dir!r}")
    if not os.path.isdir(local_dir):
        raise StorageError(f"{local_dir}: not a folder; give the local folder to upload")
    files = list(list_objects(local_dir))
    uri = normalize(uri)
    if not is_s3(uri):
        import shutil

        for obj in files:
            dest = os.path.join(uri, obj.path)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copyfile(obj.uri, dest)
        return len(files)
    check_bucket(uri)
    bucket, key = _split_s3(uri)
    client = boto3_client()

    def put(obj: ObjectInfo) -> None:
        dest_key = posixpath.join(key, obj.path) if key else obj.path
        _s3_call(f"s3://{bucket}/{dest_key}", client.upload_file, obj.uri, bucket, dest_key)

    with _progress(len(files), f"upload {uri}", progress) as bar, futures.ThreadPoolExecutor(workers) as pool:
        for fut in futures.as_completed([pool.submit(put, o) for o in files]):
            fut.result()
            bar.update(1)
    return len(files)


def download_prefix(uri: str, local_dir: str, *, workers: int = 16, progress: bool = True) -> int:
    """Copy every object under a prefix into a local folder. Returns the number of files."""
    uri = normalize(uri)
    local_dir = normalize(local_dir)
    objects = list(list_objects(uri))
    if not objects:
        raise StorageError(f"{uri}: nothing to download (empty or missing prefix)")
    if not is_s3(uri):
        import shutil

        for obj in objects:
            dest = os.path.join(local_dir, obj.path)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copyfile(obj.uri, dest)
        return len(objects)
    bucket, _ = _split_s3(uri)
    client = boto3_client()

    def get(obj: ObjectInfo) -> None:
        dest = os.path.join(local_dir, *obj.path.split("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        tmp = f"{dest}.{uuid.uuid4().hex}.part"
        _s3_call(obj.uri, client.download_file, bucket, obj.uri[len(f"s3://{bucket}/") :], tmp)
        os.replace(tmp, dest)

    with _progress(len(objects), f"download {uri}", progress) as bar, futures.ThreadPoolExecutor(workers) as pool:
        for fut in futures.as_completed([pool.submit(get, o) for o in objects]):
            fut.result()
            bar.update(1)
    return len(objects)


def download_file(uri: str, local_path: str) -> str:
    """Fetch one object to a local file (atomically). Local URIs are returned as they are."""
    uri = normalize(uri)
    if not is_s3(uri):
        if not os.path.exists(uri):
            raise StorageError(f"{uri}: no such file; check the path")
        return uri
    os.makedirs(os.path.dirname(os.path.abspath(local_path)), exist_ok=True)
    tmp = f"{local_path}.{uuid.uuid4().hex}.part"
    bucket, key = _split_s3(uri)
    _s3_call(uri, boto3_client().download_file, bucket, key, tmp)
    os.replace(tmp, local_path)
    return local_path
