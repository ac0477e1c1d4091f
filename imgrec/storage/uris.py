"""URIs: local paths, ``file://`` and ``s3://bucket/key``; the S3 endpoint and region."""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from urllib.parse import urlparse

DEFAULT_REGION = "us-east-1"


class StorageError(RuntimeError):
    """A storage problem, with the URI and what to set or fix."""


@dataclass(frozen=True)
class ObjectInfo:
    uri: str  # full URI (s3://bucket/key or an absolute local path)
    path: str  # path relative to the listed prefix, with forward slashes
    size: int
    # What changes when the content does: the ETag on S3, "<mtime ns>" locally ('' when unknown).
    version: str = ""
    modified: float = 0.0  # last modified, seconds since the epoch (0: unknown)


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
