"""Every storage failure as a ``StorageError`` naming the URI and what to set or fix."""

from __future__ import annotations

import os
from collections.abc import Callable

from imgrec.storage.clients import boto3_client
from imgrec.storage.uris import StorageError, endpoint_url, is_s3, normalize, region, split_s3

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
