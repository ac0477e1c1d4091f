"""imgrec.storage against a real S3 HTTP endpoint (moto's server) and a local folder.

Every round trip runs on both backends; every failure must surface as a
StorageError that names the URI and says what to fix.
"""

from __future__ import annotations

import concurrent.futures as futures
import os
import pickle
import socket
import threading
import time

import pyarrow.fs as pafs
import pytest

from imgrec import storage
from imgrec.storage import StorageError


@pytest.fixture(params=["s3", "local"])
def root(request, tmp_path):
    """A fresh, empty data root: ``s3://<bucket>/data`` or ``<tmp>/data``."""
    if request.param == "s3":
        return request.getfixturevalue("bucket") + "/data"
    return str(tmp_path / "data")


def _make_tree(folder) -> dict[str, bytes]:
    files = {
        "train/cat/1.jpg": b"cat-1",
        "train/cat/2.JPG": b"cat-2",
        "train/dog/1.png": b"dog-1",
        "train/dog/notes.txt": b"not an image",
        "test/cat/9.jpg": b"cat-9" * 100,
        "zzz-labels.csv": b"path,label",  # after the folders in key order
    }
    for rel, data in files.items():
        path = os.path.join(folder, *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
    return files


# --------------------------------------------------------------------------- URIs


def test_normalize_join_parent_basename(tmp_path, monkeypatch):
    assert storage.normalize("s3://b/a/b/") == "s3://b/a/b"
    assert storage.normalize("s3://b/") == "s3://b"
    assert storage.normalize("file:///tmp/x/") == "/tmp/x"
    assert storage.normalize("file://localhost/tmp/x") == "/tmp/x"
    monkeypatch.chdir(tmp_path)
    assert storage.normalize("rel/dir") == str(tmp_path / "rel" / "dir")
    assert storage.normalize(tmp_path / "p") == str(tmp_path / "p")  # PathLike

    assert storage.join("s3://b/run", "ckpt/", "/model.keras") == "s3://b/run/ckpt/model.keras"
    assert storage.join("s3://b", "x") == "s3://b/x"
    assert storage.join(str(tmp_path), "a", "b.txt") == str(tmp_path / "a" / "b.txt")

    assert storage.parent("s3://b/run/ckpt") == "s3://b/run"
    assert storage.parent("s3://b/run") == "s3://b"
    assert storage.parent(str(tmp_path / "a")) == str(tmp_path)
    assert storage.basename("s3://b/run/ckpt/") == "ckpt"
    assert storage.basename(str(tmp_path / "a.txt")) == "a.txt"
    assert storage.is_s3("s3://b/k") and not storage.is_s3(str(tmp_path))


@pytest.mark.parametrize(
    ("uri", "fix"),
    [
        ("s3://", "expected s3://bucket/prefix"),
        ("s3:///key", "expected s3://bucket/prefix"),
        ("s3://b/k?versionId=1", "not allowed"),
        ("ftp://x", "use a local path, file:// or s3://"),
        ("file://relative/x", "expected file:///absolute/path"),
    ],
)
def test_malformed_uri_is_named_with_the_fix(uri, fix):
    for call in (
        storage.normalize,
        storage.read_bytes,
        storage.exists,
        lambda u: list(storage.list_objects(u)),
    ):
        with pytest.raises(StorageError) as info:
            call(uri)
        assert repr(uri) in str(info.value)
        assert fix in str(info.value)


def test_empty_uri():
    with pytest.raises(StorageError, match="empty storage URI"):
        storage.normalize("")


# --------------------------------------------------------------------------- round trips


def test_write_read_exists_delete(root):
    uri = storage.join(root, "run", "history.json")
    assert not storage.exists(uri)
    storage.atomic_write(uri, '{"epoch": 1}')
    assert storage.read_text(uri) == '{"epoch": 1}'
    storage.atomic_write(uri, b"\x00\xff binary")  # overwrite in place
    assert storage.read_bytes(uri) == b"\x00\xff binary"
    storage.write_bytes(storage.join(root, "run", "other.bin"), b"x")

    assert storage.exists(uri)
    assert storage.exists(storage.join(root, "run"))  # a folder / non-empty prefix
    assert not storage.exists(storage.join(root, "ru"))  # a prefix of a name is not a folder
    assert not storage.exists(storage.join(root, "run", "missing.json"))

    assert storage.delete_prefix(storage.join(root, "run")) == 2
    assert not storage.exists(uri)
    assert storage.delete_prefix(storage.join(root, "run")) == 0


def test_missing_object_names_the_uri(root):
    storage.ensure_bucket(root)
    uri = storage.join(root, "nope.txt")
    with pytest.raises(StorageError) as info:
        storage.read_bytes(uri)
    assert uri in str(info.value) and "check" in str(info.value)


def test_upload_list_download(root, tmp_path):
    src = tmp_path / "src"
    files = _make_tree(src)
    assert storage.upload_dir(str(src), root, workers=4, progress=False) == len(files)

    listed = list(storage.list_objects(root))
    assert [o.path for o in listed] == sorted(files)  # recursive, relative, key order
    assert {o.path: o.size for o in listed} == {k: len(v) for k, v in files.items()}
    assert all(o.uri == storage.join(root, o.path) for o in listed)

    images = [o.path for o in storage.list_objects(root, suffixes=(".jpg", ".png"))]
    assert images == ["test/cat/9.jpg", "train/cat/1.jpg", "train/cat/2.JPG", "train/dog/1.png"]
    # A sub-prefix lists relative to itself, and does not leak into siblings.
    assert [o.path for o in storage.list_objects(storage.join(root, "train/cat"))] == ["1.jpg", "2.JPG"]
    if storage.is_s3(root):
        assert list(storage.list_objects(storage.join(root, "train/ca"))) == []
    # A URI naming one object lists that object, like a local file path does.
    single = list(storage.list_objects(storage.join(root, "test/cat/9.jpg")))
    assert [(o.path, o.size) for o in single] == [("9.jpg", 500)]

    dest = tmp_path / "dest"
    assert storage.download_prefix(storage.join(root, "train"), str(dest), workers=4, progress=False) == 4
    assert (dest / "cat" / "2.JPG").read_bytes() == b"cat-2"
    assert (dest / "dog" / "notes.txt").read_bytes() == b"not an image"
    assert not [p for p in dest.rglob("*") if p.name.endswith((".part", ".tmp"))]

    local = storage.download_file(storage.join(root, "test/cat/9.jpg"), str(tmp_path / "one" / "9.jpg"))
    with open(local, "rb") as fh:
        assert fh.read() == files["test/cat/9.jpg"]

    assert storage.delete_prefix(root) == len(files)
    assert not storage.exists(root)


def test_write_many(root):
    items = ((f"shard/{i:03d}.bin", bytes([i])) for i in range(40))  # a generator: streamed
    assert storage.write_many(root, items, workers=4) == 40
    listed = list(storage.list_objects(root))
    assert len(listed) == 40 and listed[7].path == "shard/007.bin"
    assert storage.read_bytes(listed[7].uri) == bytes([7])
    with pytest.raises(StorageError, match=r"'\.\./evil' must be like"):
        storage.write_many(root, [("../evil", b"x")])


def test_local_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "deep" / "manifest.json"
    for i in range(3):
        storage.atomic_write(str(target), f"v{i}")
    assert target.read_text() == "v2"
    assert sorted(p.name for p in target.parent.iterdir()) == ["manifest.json"]


def test_list_crosses_a_page_and_delete_crosses_a_batch(bucket):
    """>1000 objects: ListObjectsV2 pages and DeleteObjects batches hold 1000 each."""
    root = f"{bucket}/many"
    n = 1003
    items = [(f"{i:04d}.{'jpg' if i % 10 == 0 else 'txt'}", b"x") for i in range(n)]
    assert storage.write_many(root, items, workers=16) == n
    listed = list(storage.list_objects(root))
    assert len(listed) == n
    assert [o.path for o in listed] == sorted(p for p, _ in items)
    assert len(list(storage.list_objects(root, suffixes=(".JPG",)))) == 101
    assert storage.delete_prefix(root) == n
    assert list(storage.list_objects(root)) == []


def test_ensure_and_check_bucket(s3_server):
    uri = f"s3://made-{os.getpid()}-{int(time.time() * 1000) % 10**9}/prefix"
    with pytest.raises(StorageError, match="does not exist"):
        storage.check_bucket(uri)
    storage.ensure_bucket(uri)
    storage.ensure_bucket(uri)  # idempotent
    storage.check_bucket(uri)
    assert storage.exists(storage.parent(uri))  # the bucket itself


# --------------------------------------------------------------------------- failures


def _every_operation(uri: str, tmp_path) -> dict:
    src = tmp_path / "up"
    src.mkdir(exist_ok=True)
    (src / "a.txt").write_bytes(b"a")
    return {
        "read_bytes": lambda: storage.read_bytes(uri),
        "list_objects": lambda: list(storage.list_objects(uri)),
        "exists": lambda: storage.exists(uri),
        "atomic_write": lambda: storage.atomic_write(uri, b"x"),
        "check_bucket": lambda: storage.check_bucket(uri),
        "download_file": lambda: storage.download_file(uri, str(tmp_path / "dl" / "x")),
        "download_prefix": lambda: storage.download_prefix(uri, str(tmp_path / "dl"), progress=False),
        "upload_dir": lambda: storage.upload_dir(str(src), uri, progress=False),
        "delete_prefix": lambda: storage.delete_prefix(uri),
        "write_many": lambda: storage.write_many(uri, [("a.txt", b"a")]),
    }


def test_missing_bucket_is_named_with_the_fix(s3_server, tmp_path):
    uri = "s3://no-such-bucket-xyz/data/file.txt"
    for name, call in _every_operation(uri, tmp_path).items():
        with pytest.raises(StorageError) as info:
            call()
        message = str(info.value)
        assert uri in message, name
        assert "bucket 'no-such-bucket-xyz' does not exist" in message, (name, message)
        assert "aws s3 mb s3://no-such-bucket-xyz" in message, name


def test_ray_storage_filesystem_never_creates_a_bucket(s3_server):
    """Ray Train and Tune create their folders through this filesystem: a mistyped
    bucket in ``--storage`` must fail, not appear on the account."""
    fs, path = storage.resolve("s3://no-such-bucket-xyz/runs")
    with pytest.raises(OSError, match="no-such-bucket-xyz"):
        fs.create_dir(f"{path}/run-1/checkpoint_000000", recursive=True)
    with pytest.raises(StorageError, match="does not exist"):
        storage.check_bucket("s3://no-such-bucket-xyz/runs")


def test_missing_credentials_are_named_with_the_fix(bucket, tmp_path, monkeypatch):
    storage.atomic_write(f"{bucket}/k.txt", b"x")  # with the test credentials
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # moto accepts any signature, so a missing key never reaches the server:
    # botocore stops first with "Unable to locate credentials". That must not leak as is.
    uri = f"{bucket}/k.txt"
    for name, call in _every_operation(uri, tmp_path).items():
        with pytest.raises(StorageError) as info:
            call()
        message = str(info.value)
        assert uri in message, name
        assert "no AWS credentials found" in message, (name, message)
        assert "AWS_ACCESS_KEY_ID" in message and "AWS_PROFILE" in message, name


@pytest.mark.parametrize(
    ("code", "words"),
    [
        ("InvalidAccessKeyId", "refused the credentials"),
        ("SignatureDoesNotMatch", "refused the credentials"),
        ("AccessDenied", "refused the credentials"),
        ("NoSuchBucket", "does not exist"),
        ("InvalidBucketName", "not a valid bucket name"),
    ],
)
def test_refused_credentials_are_explained(code, words):
    """Servers that check signatures (AWS, MinIO) answer with these codes; moto does not."""
    from botocore.exceptions import ClientError

    def refuse():
        raise ClientError({"Error": {"Code": code, "Message": "nope"}}, "GetObject")

    with pytest.raises(StorageError) as info:
        storage._s3_call("s3://bkt/k", refuse)
    assert "s3://bkt/k" in str(info.value) and words in str(info.value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: nothing listens there


def test_unreachable_endpoint_fails_fast(tmp_path, monkeypatch):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    uri = "s3://some-bucket/k.txt"
    for name in ("read_bytes", "list_objects", "exists", "atomic_write", "upload_dir"):
        start = time.monotonic()
        with pytest.raises(StorageError) as info:
            _every_operation(uri, tmp_path)[name]()
        elapsed = time.monotonic() - start
        message = str(info.value)
        assert uri in message and endpoint in message and "unreachable" in message, (name, message)
        assert "AWS_ENDPOINT_URL" in message, name
        assert elapsed < 15, f"{name} took {elapsed:.1f}s to report a dead endpoint"


def test_missing_local_path_is_named(tmp_path):
    missing = str(tmp_path / "nowhere" / "x.jpg")
    calls = {
        "read_bytes": lambda: storage.read_bytes(missing),
        "list_objects": lambda: list(storage.list_objects(missing)),
        "download_file": lambda: storage.download_file(missing, str(tmp_path / "y")),
        "download_prefix": lambda: storage.download_prefix(missing, str(tmp_path / "y"), progress=False),
        "upload_dir": lambda: storage.upload_dir(missing, str(tmp_path / "y"), progress=False),
    }
    for name, call in calls.items():
        with pytest.raises(StorageError) as info:
            call()
        assert missing in str(info.value), name
        assert "check the path" in str(info.value) or "give the local folder" in str(info.value), name
    assert storage.exists(missing) is False
    assert storage.delete_prefix(missing) == 0


def test_reading_a_folder_as_a_file_is_explained(tmp_path):
    with pytest.raises(StorageError, match="is a folder, expected a file"):
        storage.read_bytes(str(tmp_path))


# --------------------------------------------------------------------------- credentials stay out


def test_credentials_never_reach_pickled_filesystems(s3_server, monkeypatch):
    secret, key_id = "imgrec-Distinctive-Secret-7f3a9", "AKIAIMGRECDISTINCT"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "imgrec-Distinctive-Token-19b2")
    fs, path = storage.resolve("s3://b/k")
    assert path == "b/k"
    blob = pickle.dumps(fs)
    for value in (secret, key_id, "imgrec-Distinctive-Token-19b2"):
        assert value.encode() not in blob
    assert b"imgrec-Distinctive" not in pickle.dumps(storage.resolve("s3://b/k"))


def test_unpickled_filesystem_still_reaches_the_endpoint(bucket):
    """Without keys inside, the filesystem finds them again through the default chain."""
    storage.atomic_write(f"{bucket}/p/x.txt", b"hello")
    fs, path = storage.resolve(f"{bucket}/p/x.txt")
    clone = pickle.loads(pickle.dumps(fs))
    with clone.open_input_stream(path) as fh:
        assert fh.read() == b"hello"


# --------------------------------------------------------------------------- clients


def test_boto3_client_is_shared_across_threads_and_renewed_on_env_change(s3_server, monkeypatch):
    monkeypatch.setattr(storage.clients, "_clients", {})
    barrier = threading.Barrier(8)

    def make():
        barrier.wait()  # all at once: boto3's default session is not safe for this
        return storage.boto3_client()

    with futures.ThreadPoolExecutor(8) as pool:
        clients = list(pool.map(lambda _: make(), range(8)))
    assert len({id(c) for c in clients}) == 1
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "other")
    assert storage.boto3_client() is not clients[0]


def test_empty_destination_refuses_files_and_non_empty_folders(tmp_path):
    target = tmp_path / "tree"
    assert storage.empty_destination(str(target), overwrite=False) == str(target)  # absent: fine
    (target / "a").mkdir(parents=True)
    (target / "a" / "x.png").write_bytes(b"x")
    with pytest.raises(StorageError, match="already holds files .*overwrite=True"):
        storage.empty_destination(str(target), overwrite=False)
    storage.empty_destination(str(target), overwrite=True)
    assert not any(target.rglob("*.png"))  # emptied
    plain = tmp_path / "file.txt"
    plain.write_text("x")
    with pytest.raises(ValueError, match="is a file; give a folder or s3:// prefix for the dataset"):
        storage.empty_destination(str(plain), overwrite=True, what="the dataset", error=ValueError)


# --------------------------------------------------------------------------- one retry policy


@pytest.fixture()
def busy_endpoint():
    """A real HTTP endpoint on loopback that answers every request 503 SlowDown
    (retryable) and counts the requests."""
    import http.server

    requests = []

    class Busy(http.server.BaseHTTPRequestHandler):
        def _busy(self):
            requests.append(self.command)
            body = b"<Error><Code>SlowDown</Code><Message>busy</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_HEAD = do_PUT = _busy

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", requests
    server.shutdown()


def test_pyarrow_and_boto3_share_one_retry_policy_also_after_pickling(busy_endpoint, monkeypatch):
    # 4 attempts (pyarrow's own default is 3) keeps the backoff of this test short.
    monkeypatch.setattr(storage.clients, "MAX_ATTEMPTS", 4)
    url, requests = busy_endpoint
    fs = pickle.loads(pickle.dumps(storage.s3_filesystem(url)))  # as Ray's workers get it
    with pytest.raises(OSError):
        fs.get_file_info("b/k")
    assert len(requests) == 4
    requests.clear()
    with pytest.raises(Exception, match="503"):
        storage.boto3_client(url).head_object(Bucket="b", Key="k")
    assert len(requests) == 4
    state = pafs.S3FileSystem.__reduce__(fs)[1][0]
    assert state["request_timeout"] == storage.READ_TIMEOUT_S
    assert state["connect_timeout"] == storage.CONNECT_TIMEOUT_S
    assert state["endpoint_override"] == url and state["region"] and state["access_key"] is None


# --------------------------------------------------------------------------- temp files and the cache


def _aged(path, hours: float) -> None:
    """Set the mtime of a file or folder tree ``hours`` into the past."""
    when = time.time() - hours * 3600
    for folder, _, files in os.walk(path):
        for name in files:
            os.utime(os.path.join(folder, name), (when, when))
        os.utime(folder, (when, when))
    os.utime(path, (when, when))


def test_stale_temp_files_and_download_folders_are_removed_by_age(tmp_path):
    (tmp_path / ".dl-old").mkdir()
    (tmp_path / ".dl-old" / "model.keras.1a.part").write_bytes(b"x")
    (tmp_path / ".dl-live").mkdir()
    (tmp_path / "entry").mkdir()
    (tmp_path / "entry" / "w.h5.2b.part").write_bytes(b"x")
    (tmp_path / ".manifest.json.3c.tmp").write_bytes(b"x")
    (tmp_path / "keep.json").write_bytes(b"x")
    for name in (".dl-old", "entry/w.h5.2b.part", ".manifest.json.3c.tmp", "keep.json"):
        _aged(tmp_path / name, hours=storage.STALE_TEMP_AGE_S / 3600 + 1)
    assert storage.remove_stale_temps(str(tmp_path)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dl-live", "entry", "keep.json"]
    assert list((tmp_path / "entry").iterdir()) == []


def test_atomic_write_removes_a_killed_writers_stale_temp(tmp_path):
    target = tmp_path / "manifest.json"
    stale, fresh = tmp_path / ".manifest.json.dead.tmp", tmp_path / ".manifest.json.live.tmp"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    _aged(stale, hours=storage.STALE_TEMP_AGE_S / 3600 + 1)
    storage.atomic_write(str(target), "v1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [fresh.name, "manifest.json"]


def test_cache_is_trimmed_least_recently_used_first(tmp_path):
    checkpoints, weights = tmp_path / "checkpoints", tmp_path / "weights"
    for folder, name, hours in ((checkpoints, "old", 3), (weights, "middle", 2), (checkpoints, "new", 1)):
        (folder / name).mkdir(parents=True)
        (folder / name / "model.keras").write_bytes(b"x" * 1000)
        _aged(folder / name, hours)
    (checkpoints / ".dl-running").mkdir()  # a download in progress is never an LRU victim
    storage.touch(str(checkpoints / "old"))  # just used: now the most recent
    removed = storage.trim_cache([str(checkpoints), str(weights)], 2000, keep=[str(checkpoints / "new")])
    assert removed == [str(weights / "middle")]
    assert sorted(p.name for p in checkpoints.iterdir()) == [".dl-running", "new", "old"]
    removed = storage.trim_cache([str(checkpoints), str(weights)], 0, keep=[str(checkpoints / "new")])
    assert removed == [str(checkpoints / "old")]


def test_cache_size_setting(monkeypatch):
    monkeypatch.delenv(storage.CACHE_MAX_GB_ENV, raising=False)
    assert storage.cache_max_bytes() == int(storage.CACHE_MAX_GB_DEFAULT * 1e9)
    monkeypatch.setenv(storage.CACHE_MAX_GB_ENV, "0.5")
    assert storage.cache_max_bytes() == 500_000_000
    monkeypatch.setenv(storage.CACHE_MAX_GB_ENV, "lots")
    with pytest.raises(StorageError, match="IMGREC_CACHE_MAX_GB='lots' is not a size in GB"):
        storage.cache_max_bytes()
