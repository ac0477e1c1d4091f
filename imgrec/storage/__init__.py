"""One way to address data everywhere: local paths, ``file://`` and ``s3://bucket/prefix``.

``resolve(uri)`` gives a pyarrow filesystem plus a path (what Ray Data and Ray
Train's ``storage_filesystem`` take). The S3 endpoint comes from
``AWS_ENDPOINT_URL`` (or ``endpoint=``), so MinIO, moto or any S3-compatible
store works. Credentials come only from the standard AWS chain: they are never
passed into objects that Ray pickles, logged, or written into any artefact.

Every failure surfaces as a ``StorageError`` whose message names the URI and
what to set or fix (missing bucket, missing or refused credentials, an
unreachable endpoint, a malformed URI, a missing local path).

The modules, leaf first: ``uris`` (addresses, endpoint, region), ``clients``
(pyarrow and boto3, one retry policy), ``errors``, ``parallel``, ``objects``
(list, read, write, delete), ``folders`` (copy trees), ``cache`` (temp files,
the download cache). Everything public is re-exported here: ``storage.join(...)``.
"""

# ruff: noqa: F401
from imgrec.storage.cache import (
    CACHE_MAX_GB_DEFAULT,
    CACHE_MAX_GB_ENV,
    STALE_TEMP_AGE_S,
    TEMP_DIR_PREFIX,
    TEMP_SUFFIXES,
    cache_max_bytes,
    remove_stale_temps,
    touch,
    trim_cache,
)
from imgrec.storage.clients import (
    CONNECT_TIMEOUT_S,
    MAX_ATTEMPTS,
    READ_TIMEOUT_S,
    boto3_client,
    boto3_config,
    resolve,
    s3_filesystem,
)
from imgrec.storage.errors import _s3_call, check_bucket, ensure_bucket, explain
from imgrec.storage.folders import download_file, download_prefix, upload_dir
from imgrec.storage.objects import (
    atomic_write,
    delete_prefix,
    empty_destination,
    exists,
    list_objects,
    read_bytes,
    read_text,
    write_bytes,
    write_many,
)
from imgrec.storage.uris import (
    DEFAULT_REGION,
    ObjectInfo,
    StorageError,
    basename,
    endpoint_url,
    is_s3,
    join,
    normalize,
    parent,
    region,
    split_s3,
)
