"""One way to address data everywhere: local paths, ``file://`` and ``s3://bucket/prefix``.

``resolve(uri)`` gives a pyarrow filesystem plus a path (what Ray Data and Ray
Train's ``storage_filesystem`` take). The S3 endpoint comes from
``AWS_ENDPOINT_URL`` (or ``endpoint=``), so MinIO, moto or any S3-compatible
store works. Credentials come only from the standard AWS chain: they are never
passed into objects that Ray pickles, logged, or written into any artefact.

Every failure surfaces as a ``StorageError`` whose message names the URI and
what to set or fix (missing bucket, missing or refused credentials, an
unreachable endpoint, a malformed URI, a missing local path).
"""

from __future__ import annotations

import concurrent.futures as futures
import hashlib
import os
import posixpath
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

DEFAULT_REGION = "us-east-1"

# The one retry/timeout policy of every S3 client (boto3 and pyarrow, so Ray's
# checkpoint uploads too). A wrong or dead endpoint should fail in seconds, not
# after botocore's 60 s default connect timeout times every retry.
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60  # boto3 read timeout = pyarrow request timeout
MAX_ATTEMPTS = 5  # first try included; "standard" mode: exponential backoff with jitter

# Local temp files and folders (``.*.tmp``, ``*.part``, ``.dl-*``) untouched for
# this long belong to a killed process; a live writer touches them far more often.
STALE_TEMP_AGE_S = 6 * 3600
# The per-node download cache ($IMGREC_CACHE: checkpoints and weights) is trimmed,
# least recently used first, to this size; override with IMGREC_CACHE_MAX_GB.
CACHE_MAX_GB_ENV = "IMGREC_CACHE_MAX_GB"
CACHE_MAX_GB_DEFAULT = 20.0


class StorageError(RuntimeError):
    """A storage problem, with the URI and what to set or fix."""


@dataclass(frozen=True)
class ObjectInfo:
    uri: str  # full URI (s3://bucket/key or an absolute local path)
    path: str  # path relative to the listed prefix, with forward slashes
    size: int


# --------------------------------------------------------------------------- URIs


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def endpoint_url(endpoint: str | None = None) -> str | None:
    """The S3 endpoint: explicit, else ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, else AWS."""
    return endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def split_s3(uri: str) -> tuple[str, str]:
    """(bucket, key) of an s3:// URI; a malformed one is a StorageError."""
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
        bucket, key = split_s3(uri)
        return f"s3://{bucket}/{key}".rstrip("/") if key else f"s3://{bucket}"
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        if scheme != "file":
            raise StorageError(
                f"unsupported URI scheme {scheme!r} in {uri!r}: use a local path, file:// or s3://"
            )
        parsed = urlparse(uri)
        # file://relative/x would silently become the current folder: only the
        # empty host (file:///abs) and localhost are local paths.
        if parsed.netloc not in ("", "localhost") or not parsed.path:
            raise StorageError(f"malformed file URI {uri!r}: expected file:///absolute/path")
        uri = parsed.path
    return os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    uri = normalize(uri)
    if is_s3(uri):
        return posixpath.join(uri, *[p.strip("/") for p in parts if p.strip("/")])
    return os.path.join(uri, *parts)


def parent(uri: str) -> str:
    uri = normalize(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return f"s3://{bucket}/{posixpath.dirname(key)}".rstrip("/")
    return os.path.dirname(uri)


def basename(uri: str) -> str:
    return posixpath.basename(normalize(uri).rstrip("/"))


def _key_of(uri: str) -> str:
    """The object key of a normalised ``s3://bucket/key`` URI."""
    return split_s3(uri)[1]


# --------------------------------------------------------------------------- clients


class _S3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3 filesystem with our retry policy, also after pickling.

    pyarrow does not pickle ``retry_strategy`` (an unpickled plain filesystem is
    back to pyarrow's default retries), so this rebuilds itself from its
    key-free arguments. A ``SubTreeFileSystem`` around it still pickles a plain one."""

    def __init__(self, **kwargs: Any):
        super().__init__(
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=MAX_ATTEMPTS),
            connect_timeout=CONNECT_TIMEOUT_S,
            request_timeout=READ_TIMEOUT_S,
            **kwargs,
        )
        self._kwargs = kwargs

    def __reduce__(self):
        return _S3FileSystem._rebuild, (self._kwargs,)

    @staticmethod
    def _rebuild(kwargs: dict[str, Any]) -> _S3FileSystem:
        return _S3FileSystem(**kwargs)


def s3_filesystem(endpoint: str | None = None) -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem on the configured endpoint and the default credential chain.

    No keys are passed in: the filesystem is pickled into Ray's state, and keys
    there would leak into logs and checkpoints. Bucket creation stays off: Ray
    creates its storage folders through this filesystem, and a mistyped bucket
    must fail (``check_bucket`` explains it up front), not appear on the account."""
    url = endpoint_url(endpoint)
    kwargs: dict[str, Any] = dict(region=region(), allow_bucket_creation=False, allow_bucket_deletion=False)
    if url:
        parsed = urlparse(url)
        kwargs["endpoint_override"] = url  # keep the scheme: http for local endpoints
        if parsed.scheme == "http":
            kwargs["scheme"] = "http"
    return _S3FileSystem(**kwargs)


def boto3_config():
    """botocore's ``Config`` for the same retry/timeout policy as ``s3_filesystem``."""
    from botocore.config import Config

    return Config(
        retries={"total_max_attempts": MAX_ATTEMPTS, "mode": "standard"},  # first try included
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        max_pool_connections=32,
    )


def resolve(uri: str, endpoint: str | None = None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it (``bucket/key`` for S3, no scheme)."""
    uri = normalize(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return s3_filesystem(endpoint), f"{bucket}/{key}".rstrip("/")
    return pafs.LocalFileSystem(), uri


# Variables that change which credentials the default chain finds. Their hash is
# part of the client cache key, so a changed environment gets a fresh client.
_CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)
_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()


def _client_key(endpoint: str | None) -> tuple:
    # A digest, not the values: the cache must not become another place holding keys.
    digest = hashlib.sha256("\0".join(os.environ.get(v, "") for v in _CREDENTIAL_ENV).encode()).hexdigest()
    return (os.getpid(), endpoint_url(endpoint), region(), digest)


def boto3_client(endpoint: str | None = None):
    """A boto3 S3 client on the same endpoint, region and credential chain.

    Clients are cached per process and environment: creating one is slow, and
    creating them from many threads at once races inside boto3's default
    session. A client itself is thread-safe."""
    key = _client_key(endpoint)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import boto3

            if len(_clients) > 32:  # environments changed many times (tests): start over
                _clients.clear()
            client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint_url(endpoint), region_name=region(), config=boto3_config()
            )
            _clients[key] = client
    return client


# --------------------------------------------------------------------------- errors

_MISSING_CREDENTIALS = (
    "unable to locate credentials",
    "no credentials",
    "nocredentialserror",
    "partial credentials",
    "partialcredentialserror",
)
_REFUSED_CREDENTIALS = (
    "invalidaccesskeyid",
    "signaturedoesnotmatch",
    "access denied",
    "accessdenied",
    "access_denied",
    "expiredtoken",
    "invalidtoken",
    "forbidden",
)
_UNREACHABLE = (
    "could not connect",
    "connection refused",
    "couldn't connect",
    "failed to connect",
    "network_connection",
    "curl error",
    "endpointconnectionerror",
    "connect timeout",
    "timed out",
    "name or service not known",
    "could not resolve",
    "connection was closed",
)
_NO_BUCKET = ("nosuchbucket", "no_such_bucket", "bucket does not exist")


def _first_line(text: str, limit: int = 200) -> str:
    return text.strip().splitlines()[0][:limit] if text.strip() else ""


def _bucket_of(uri: str) -> str:
    try:
        return split_s3(normalize(uri))[0]
    except StorageError:
        return uri


def _no_bucket_error(uri: str) -> StorageError:
    bucket = _bucket_of(uri)
    return StorageError(
        f"{uri}: bucket {bucket!r} does not exist at {endpoint_url() or 'AWS S3'}; "
        f"create it (infra/ or `aws s3 mb s3://{bucket}`) or fix the URI"
    )


def explain(exc: BaseException, uri: str) -> StorageError:
    """Turn a pyarrow/boto3/OS error into one clear message naming the URI and the fix."""
    if isinstance(exc, StorageError):
        return exc
    text = str(exc)
    low = f"{type(exc).__name__} {text}".lower()
    if not is_s3(uri):
        if isinstance(exc, FileNotFoundError):
            return StorageError(f"{uri}: no such file or folder; check the path")
        if isinstance(exc, PermissionError):
            return StorageError(f"{uri}: permission denied; check the path's owner and permissions")
        if isinstance(exc, IsADirectoryError):
            return StorageError(f"{uri}: is a folder, expected a file; check the path")
        return StorageError(f"{uri}: {type(exc).__name__}: {_first_line(text, 300)}")
    if any(w in low for w in _NO_BUCKET):
        return _no_bucket_error(uri)
    if "invalidbucketname" in low:
        return StorageError(
            f"{uri}: {_bucket_of(uri)!r} is not a valid bucket name; use 3-63 lowercase letters, "
            "digits, '.' and '-'"
        )
    if any(w in low for w in _MISSING_CREDENTIALS):
        return StorageError(
            f"{uri}: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or AWS_PROFILE, or run where an instance/pod role is attached"
        )
    if any(w in low for w in _UNREACHABLE):
        return StorageError(
            f"{uri}: the S3 endpoint {endpoint_url() or 'AWS S3'} is unreachable ({_first_line(text)}); "
            "check AWS_ENDPOINT_URL and that the server is running"
        )
    if any(w in low for w in _REFUSED_CREDENTIALS):
        return StorageError(
            f"{uri}: S3 refused the credentials ({_first_line(text)}); check AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the instance role, and that it may access this bucket"
        )
    if isinstance(exc, FileNotFoundError) or "nosuchkey" in low or "not found" in low or "404" in low:
        return StorageError(f"{uri}: no such object or prefix; check the URI")
    return StorageError(f"{uri}: {type(exc).__name__}: {_first_line(text, 300)}")


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _bucket_missing(bucket: str) -> bool:
    """True only when the endpoint says the bucket is not there (other errors: False)."""
    try:
        boto3_client().head_bucket(Bucket=bucket)
    except Exception as exc:
        return _error_code(exc) in ("404", "NoSuchBucket", "NotFound")
    return False


def _explain_boto(exc: BaseException, uri: str) -> StorageError:
    """``explain`` for botocore errors, whose code is not always in their text.

    A HEAD on a missing object *or* bucket is a bare 404, so on "not found" we
    ask about the bucket too: "bucket missing" is the message the user needs."""
    code = _error_code(exc)
    if code in ("404", "NoSuchKey", "NotFound") and is_s3(uri) and _bucket_missing(_bucket_of(uri)):
        return _no_bucket_error(uri)
    return explain(RuntimeError(f"{code}: {exc}") if code else exc, uri)


def _s3_call(uri: str, fn: Callable, *args, **kwargs):
    """Run a boto3 call, translating botocore's errors."""
    try:
        return fn(*args, **kwargs)
    except StorageError:
        raise
    except Exception as exc:  # botocore raises many types; explain() reads their text
        raise _explain_boto(exc, uri) from None


def check_bucket(uri: str) -> None:
    """Raise a clear StorageError when the bucket of ``uri`` is missing or unreadable."""
    if not is_s3(uri):
        return
    uri = normalize(uri)
    bucket, _ = split_s3(uri)
    try:
        boto3_client().head_bucket(Bucket=bucket)
    except Exception as exc:
        # HEAD answers carry no body: a 404 here always means "no such bucket".
        if _error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
            raise _no_bucket_error(uri) from None
        raise explain(RuntimeError(f"{_error_code(exc)}: {exc}") if _error_code(exc) else exc, uri) from None


def ensure_bucket(uri: str) -> None:
    """Create the bucket of ``uri`` if it does not exist (for local endpoints and demos)."""
    if not is_s3(uri):
        os.makedirs(normalize(uri), exist_ok=True)
        return
    uri = normalize(uri)
    bucket, _ = split_s3(uri)
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
            yield ObjectInfo(uri, os.path.basename(uri), os.path.getsize(uri))
        return
    for rel, full in _walk_sorted(uri, ""):
        if wanted(posixpath.basename(rel)):
            yield ObjectInfo(full, rel, os.path.getsize(full))


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
                    yield ObjectInfo(f"s3://{bucket}/{obj['Key']}", rel, int(obj["Size"]))
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
            yield ObjectInfo(uri, posixpath.basename(key), int(head["ContentLength"]))


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


# --------------------------------------------------------------------------- folders


def _progress(total: int | None, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="file", disable=not enabled, leave=False)


def _run_parallel(
    fn: Callable[[Any], None],
    items: Iterable[Any],
    *,
    workers: int,
    desc: str,
    progress: bool,
    total: int | None = None,
) -> int:
    """Apply ``fn`` to every item on ``workers`` threads (0: inline), with progress.

    At most ``2 * workers`` items are in flight, so a generator of large
    payloads is never materialised. The first error cancels what has not
    started and is raised once the running calls finish."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    done = 0
    with _progress(total, desc, progress) as bar:
        if workers <= 0:
            for item in items:
                fn(item)
                done += 1
                bar.update(1)
            return done
        pool = futures.ThreadPoolExecutor(workers)
        pending: set[futures.Future] = set()
        try:
            for item in items:
                if len(pending) >= 2 * workers:
                    finished, pending = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
                    for fut in finished:
                        fut.result()
                        done += 1
                        bar.update(1)
                pending.add(pool.submit(fn, item))
            for fut in futures.as_completed(pending):
                fut.result()
                done += 1
                bar.update(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return done


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

        def copy(obj: ObjectInfo) -> None:
            dest = os.path.join(uri, *obj.path.split("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copyfile(obj.uri, dest)

        return _run_parallel(copy, files, workers=0, desc=f"copy to {uri}", progress=progress)
    check_bucket(uri)
    bucket, key = split_s3(uri)
    client = boto3_client()

    def put(obj: ObjectInfo) -> None:
        dest_key = posixpath.join(key, obj.path) if key else obj.path
        _s3_call(f"s3://{bucket}/{dest_key}", client.upload_file, obj.uri, bucket, dest_key)

    return _run_parallel(put, files, workers=workers, desc=f"upload {uri}", progress=progress)


def download_prefix(uri: str, local_dir: str, *, workers: int = 16, progress: bool = True) -> int:
    """Copy every object under a prefix into a local folder. Returns the number of files."""
    uri = normalize(uri)
    local_dir = normalize(local_dir)
    if is_s3(local_dir):
        raise StorageError(f"download destination must be a local folder, got {local_dir!r}")
    objects = list(list_objects(uri))
    if not objects:
        raise StorageError(f"{uri}: nothing to download (empty or missing prefix); check the URI")
    if not is_s3(uri):

        def copy(obj: ObjectInfo) -> None:
            dest = os.path.join(local_dir, *obj.path.split("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copyfile(obj.uri, dest)

        return _run_parallel(copy, objects, workers=0, desc=f"copy {uri}", progress=progress)
    bucket, _ = split_s3(uri)
    client = boto3_client()

    def get(obj: ObjectInfo) -> None:
        dest = os.path.join(local_dir, *obj.path.split("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        _download_atomic(client, obj.uri, bucket, _key_of(obj.uri), dest)

    return _run_parallel(get, objects, workers=workers, desc=f"download {uri}", progress=progress)


def _download_atomic(client, uri: str, bucket: str, key: str, dest: str) -> None:
    """Download to a temp name and rename, so a failure never leaves a partial file."""
    tmp = f"{dest}.{uuid.uuid4().hex}.part"
    try:
        _s3_call(uri, client.download_file, bucket, key, tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def download_file(uri: str, local_path: str) -> str:
    """Fetch one object to a local file (atomically). Local URIs are returned as they are."""
    uri = normalize(uri)
    if not is_s3(uri):
        if not os.path.isfile(uri):
            raise StorageError(f"{uri}: no such file; check the path")
        return uri
    bucket, key = split_s3(uri)
    if not key:
        raise StorageError(f"{uri}: names a bucket, not an object; give s3://bucket/key")
    os.makedirs(os.path.dirname(os.path.abspath(local_path)), exist_ok=True)
    _download_atomic(boto3_client(), uri, bucket, key, local_path)
    return local_path


# --------------------------------------------------------------------------- local temp files and caches

TEMP_SUFFIXES = (".tmp", ".part")  # _write_local, _download_atomic
TEMP_DIR_PREFIX = ".dl-"  # a cache download in progress (checkpoint.local_copy)


def _is_temp(name: str) -> bool:
    return name.startswith(TEMP_DIR_PREFIX) or name.endswith(TEMP_SUFFIXES)


def _last_touched(path: str) -> float:
    """Newest mtime of a file, or of a folder and everything in it."""
    newest = os.path.getmtime(path)
    if os.path.isdir(path):
        for folder, _, files in os.walk(path):
            for name in [*files, "."]:
                try:
                    newest = max(newest, os.path.getmtime(os.path.join(folder, name)))
                except OSError:
                    pass  # removed meanwhile
    return newest


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def remove_stale_temps(folder: str, *, prefix: str = "", recursive: bool = True,
                       max_age_s: float = STALE_TEMP_AGE_S) -> int:
    """Delete temp files and ``.dl-*`` folders under a local ``folder`` (names
    starting with ``prefix``) untouched for ``max_age_s``: leftovers of killed
    processes. Returns how many were removed."""
    cutoff = time.time() - max_age_s
    removed = 0
    for parent_dir, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            path = os.path.join(parent_dir, name)
            if name.startswith(prefix) and _is_temp(name) and _age_cutoff_passed(path, cutoff):
                _remove(path)
                removed += 1
        dirs[:] = [d for d in dirs if recursive and os.path.isdir(os.path.join(parent_dir, d))]
    return removed


def _age_cutoff_passed(path: str, cutoff: float) -> bool:
    try:
        return _last_touched(path) < cutoff
    except OSError:
        return False  # vanished meanwhile


def cache_max_bytes() -> int:
    """The download cache's size limit: ``$IMGREC_CACHE_MAX_GB`` (default 20 GB)."""
    raw = os.environ.get(CACHE_MAX_GB_ENV, "")
    try:
        gb = float(raw) if raw.strip() else CACHE_MAX_GB_DEFAULT
    except ValueError:
        gb = -1.0
    if gb < 0:
        raise StorageError(f"{CACHE_MAX_GB_ENV}={raw!r} is not a size in GB; set a number >= 0, e.g. 20")
    return int(gb * 1e9)


def touch(path: str) -> None:
    """Mark a cache entry as just used (the LRU order is by mtime)."""
    try:
        os.utime(path)
    except OSError:
        pass


def trim_cache(folders: Iterable[str], max_bytes: int, *, keep: Iterable[str] = ()) -> list[str]:
    """Delete the least recently used entries (direct children) of local cache
    ``folders`` until they hold at most ``max_bytes`` together; entries in
    ``keep`` (the one being used) are never deleted. Returns the removed paths."""
    keep = {os.path.abspath(k) for k in keep}
    entries = []
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            if not _is_temp(entry.name):
                entries.append((os.path.getmtime(entry.path), _tree_size(entry.path), entry.path))
    total = sum(size for _, size, _ in entries)
    removed = []
    for _, size, path in sorted(entries):
        if total <= max_bytes:
            break
        if os.path.abspath(path) in keep:
            continue
        _remove(path)
        removed.append(path)
        total -= size
    return removed


def _tree_size(path: str) -> int:
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
