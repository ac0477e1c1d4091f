"""Copying whole folders to and from a URI, in parallel, with progress."""

from __future__ import annotations

import os
import posixpath
import shutil
import uuid

from imgrec.storage.clients import boto3_client
from imgrec.storage.errors import _s3_call, check_bucket
from imgrec.storage.objects import list_objects
from imgrec.storage.parallel import _run_parallel
from imgrec.storage.uris import ObjectInfo, StorageError, _key_of, is_s3, normalize, split_s3


def _local_dest(folder: str, obj: ObjectInfo) -> str:
    """Where a listed object goes under a local folder (its parent folders made)."""
    dest = os.path.join(folder, *obj.path.split("/"))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    return dest


def _copy_local(objects: list[ObjectInfo], folder: str, *, desc: str, progress: bool) -> int:
    return _run_parallel(lambda obj: shutil.copyfile(obj.uri, _local_dest(folder, obj)), objects,
                         workers=0, desc=desc, progress=progress)


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
        return _copy_local(files, uri, desc=f"copy to {uri}", progress=progress)
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
        return _copy_local(objects, local_dir, desc=f"copy {uri}", progress=progress)
    bucket, _ = split_s3(uri)
    client = boto3_client()

    def get(obj: ObjectInfo) -> None:
        _download_atomic(client, obj.uri, bucket, _key_of(obj.uri), _local_dest(local_dir, obj))

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
