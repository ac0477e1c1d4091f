"""The S3 clients (pyarrow and boto3), one retry/timeout policy, no keys inside."""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from imgrec.storage.uris import endpoint_url, is_s3, normalize, region, split_s3

# The one retry/timeout policy of every S3 client (boto3 and pyarrow, so Ray's
# checkpoint uploads too). A wrong or dead endpoint should fail in seconds, not
# after botocore's 60 s default connect timeout times every retry.
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60  # boto3 read timeout = pyarrow request timeout
MAX_ATTEMPTS = 5  # first try included; "standard" mode: exponential backoff with jitter



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
