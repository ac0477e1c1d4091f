"""Reading and decoding: ``fetch_bytes`` (a file or S3 object, size-capped),
the shared memory gate, and ``DecodeImages``, the Ray Data decode UDF."""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from imgrec import storage
from imgrec.config import DecodeConfig
from imgrec.decode import BadImage, check_file_size, plan_decode

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- reading and decoding


_local = threading.local()


def _s3_client():
    # One boto3 client per thread of each Ray worker process: clients are thread-safe
    # for calls, but creating them is slow, and they must never be pickled.
    client = getattr(_local, "client", None)
    if client is None:
        client = _local.client = storage.boto3_client()
    return client


class ReadError(OSError):
    """A file or object could not be read (vanished, network, permissions)."""


def _open_object(uri: str) -> tuple[int, Any]:
    """(size, open binary stream) of a file or S3 object; its body is not read yet."""
    try:
        if storage.is_s3(uri):
            bucket, key = storage.split_s3(uri)
            response = _s3_client().get_object(Bucket=bucket, Key=key)
            return int(response["ContentLength"]), response["Body"]
        fh = open(uri, "rb")
        return os.fstat(fh.fileno()).st_size, fh
    except Exception as exc:  # botocore raises many types
        raise ReadError(_cannot_read(exc)) from None


def _read_body(stream, max_bytes: int | None, size: int) -> bytes:
    """The whole body, but never more than ``max_bytes`` + 1 (a size that lied).
    Asks for the listed ``size`` + 1 first: a read of ``max_bytes`` + 1 allocates that
    much for every file (64 MB: +0.07 ms per 32x32 photo, half its decode); only a body
    that grew since it was listed is read on."""
    try:
        if max_bytes is None:
            data = stream.read()
        else:
            data = stream.read(min(size, max_bytes) + 1)
            if len(data) > size:
                data += stream.read(max_bytes + 1 - len(data))
    except Exception as exc:
        raise ReadError(_cannot_read(exc)) from None
    if max_bytes is not None:
        check_file_size(len(data), max_bytes)
    return data


def _cannot_read(exc: BaseException) -> str:
    return f"cannot read: {type(exc).__name__}: {str(exc)[:200]}"


def fetch_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """A file's bytes. Over ``max_bytes`` it raises ``BadImage`` before reading the
    body; an unreadable file raises ``ReadError``."""
    size, stream = _open_object(uri)
    with contextlib.closing(stream):
        if max_bytes is not None:
            check_file_size(size, max_bytes)
        return _read_body(stream, max_bytes, size)


class MemoryGate:
    """Bytes held at once by a process's read threads: a thread holds a file's
    size while the file is in memory, then adds its decode budget while it
    decodes. A request waits while it would pass ``limit``, except that one
    decode (or, with nothing held, one read) always proceeds, so no set of
    waiting threads can block one another: the peak is at most ``limit`` plus
    one image."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0
        self.decoding = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, nbytes: int, *, decoding: bool = False):
        with self._changed:
            self._changed.wait_for(lambda: self._admits(nbytes, decoding))
            self.held += nbytes
            self.decoding += decoding
        try:
            yield
        finally:
            with self._changed:
                self.held -= nbytes
                self.decoding -= decoding
                self._changed.notify_all()

    def _admits(self, nbytes: int, decoding: bool) -> bool:
        if self.held + nbytes <= self.limit:
            return True
        return self.decoding == 0 if decoding else self.held == 0


_gates: dict[int, MemoryGate] = {}
_gates_lock = threading.Lock()


def memory_gate(limit: int) -> MemoryGate:
    """The process's gate for ``limit`` (gates hold locks: never pickled with a UDF)."""
    with _gates_lock:
        return _gates.setdefault(int(limit), MemoryGate(int(limit)))


# Listing columns a decoded dataset does not carry: the split's hash key, the cache's file version.
BOOKKEEPING_COLUMNS = ("rel", "version")


# Read threads of one decode call. S3 GETs are latency bound, so many are kept in flight.
# A local file is read in ~0.01 ms (page cache) and decoded on the task's own thread: Ray
# Data's tasks already use every core, and threads sharing the GIL only add CPU. Measured per
# image in one process, cifar10-dev 32x32: 0.27 ms on 1 thread, 0.50 on 16; generated 128x128:
# 1.2 and 1.6; a cold load's decode tasks, 31-40 % less CPU. A network filesystem mounted as a
# local path has latency like S3: pass io_threads.
S3_READ_THREADS = 16
LOCAL_READ_THREADS = 1


class DecodeImages:
    """Ray Data UDF: read each file's bytes (on threads for S3, whose GETs are latency
    bound) and decode to uint8 pixels. A file that cannot be read or decoded gives
    a row with ``error`` set and a black image, so one bad file never fails a run.
    The bytes in flight (files being held, decode memory) are bounded by
    ``DecodeConfig.max_inflight_bytes`` through the process's ``MemoryGate``."""

    def __init__(self, decode: DecodeConfig, io_threads: int | None = None):
        self.decode = decode
        self.io_threads = io_threads  # None: S3_READ_THREADS for S3, LOCAL_READ_THREADS otherwise

    def one(self, uri: str) -> tuple[np.ndarray | None, str, bool]:
        """(pixels or None, error or '', whether the error may pass on a retry: a read
        error, not the file's content; the decoded cache never stores those)."""
        gate = memory_gate(self.decode.max_inflight_bytes)
        try:
            size, stream = _open_object(uri)
            with contextlib.closing(stream):
                check_file_size(size, self.decode.max_file_bytes)
                with gate.hold(size):
                    plan = plan_decode(_read_body(stream, self.decode.max_file_bytes, size), self.decode)
                    with gate.hold(plan.memory_bytes, decoding=True):
                        return plan.run(), "", False
        except ReadError as exc:  # a vanished object or a network error: report, go on
            return None, str(exc), True
        except BadImage as exc:
            return None, exc.reason, False

    def results(self, paths: list[str]) -> Iterator[tuple[np.ndarray | None, str, bool]]:
        """``one`` for every path, in order, read on ``io_threads`` threads."""
        threads = self.io_threads or (S3_READ_THREADS if any(map(storage.is_s3, paths)) else LOCAL_READ_THREADS)
        if len(paths) > 1 and threads > 1:
            with futures.ThreadPoolExecutor(min(threads, len(paths))) as pool:
                yield from pool.map(self.one, paths)
        else:
            yield from map(self.one, paths)

    def errors(self, paths: list[str]) -> list[str]:
        """Each file's read or decode error ('' when it decodes); pixels are not kept."""
        return [err for _, err, _ in self.results(paths)]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        h, w = self.decode.image_size
        images = np.zeros((len(paths), h, w, 3), dtype=np.uint8)
        errors = []
        for i, (img, err, _) in enumerate(self.results(paths)):
            if img is not None:
                images[i] = img
            errors.append(err)
        out = {k: v for k, v in batch.items() if k not in BOOKKEEPING_COLUMNS}
        out["image"] = images
        out["error"] = np.array(errors, dtype=object)
        return out


def read_head(uri: str, n: int) -> bytes:
    """The first ``n`` bytes of a file (a ranged GET on S3)."""
    if storage.is_s3(uri):
        bucket, key = storage.split_s3(uri)
        try:
            return _s3_client().get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{n - 1}")["Body"].read()
        except Exception:  # e.g. a zero-byte object refuses any range: a plain GET says why
            return fetch_bytes(uri, DecodeConfig.max_file_bytes)[:n]
    with open(uri, "rb") as fh:
        return fh.read(n)
