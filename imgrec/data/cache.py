"""The persistent decoded cache: decoded uint8 pixels as Parquet shards, written by
the run that first decodes them (inside its decode tasks, as they decode) and read,
instead of the image files, by every later run, resume, sweep and evaluation that
asks for the same files at the same decode settings.

Keys, so that a hit is never stale:

* an **entry** (``DecodedCacheLayout``: ``<cache>/decoded-<entry key>/``) is one source
  at one decode setting: the source URI, every ``DecodeConfig`` field that changes the
  pixels or which files fail, and the decoder's version (``DECODER_VERSION``, Pillow's);
* within it a split's records fall into **shards** by a hash of each path, the shard
  count a power of two near ``rows / rows_per_shard(image_size)``: a changed, added or removed file
  changes only the shard it falls in (until the count doubles). A shard's key digests
  its records' path, label and version (size + ETag on S3, size + mtime locally), so
  a changed file is a miss for its shard alone.

A shard is written atomically (one PUT on S3; a temp file and a rename locally): an
interrupted write leaves nothing that looks like a shard. Its bad files (those that
did not decode) go in ``<key>.bad.json``, written before the pixels, so a warm run
reports the same bad files; a shard where a read failed (a network error may pass)
is not written, and the next run decodes it again. ``entry.json`` records what the
entry is and the shards its last run used: ``imgrec cache ls`` lists entries and
shards no run used last, ``imgrec cache rm`` removes them.

A shard's pixels are a fixed-size binary column (one value per image, the shape in the
file's metadata: any Arrow reader can take them); read back, they become Ray Data's tensor
column, the type a decode task gives, so cached and decoded blocks make one dataset."""

from __future__ import annotations

import concurrent.futures as futures
import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgrec import storage
from imgrec.config import CACHE_MODES, DataConfig, DecodeConfig
from imgrec.data.read import DecodeImages
from imgrec.data.tree import class_mixed
from imgrec.hashing import unit_hash
from imgrec.layout import DecodedCacheLayout

log = logging.getLogger(__name__)

DECODER_VERSION = 1  # bump when imgrec.decode gives other pixels for the same file and settings
SHARD_FORMAT = 1  # bump when the shard file's layout changes
ROWS_PER_SHARD = 256  # rows of one shard (about, at least): one decode task, one Ray Data block
# ... and at least this many bytes of pixels. Ray Data costs ~25 ms of CPU per block and map
# (measured, "quality" in benchmarks/README.md); a 256-row block at 32x32 is 786 KB, so small
# images get longer shards (1365 rows at 32x32). From 74x74 up, ROWS_PER_SHARD decides.
SHARD_BYTES = 4 * 2**20
# DecodeConfig fields that change neither the pixels nor which files fail.
_NOT_IN_KEY = ("max_inflight_bytes",)
STALE_AFTER_S = 3600  # `cache rm --stale` keeps unused shards younger than this (a concurrent run's)


def cache_root(data: DataConfig, storage_uri: str | None) -> str | None:
    """Where a run under ``storage_uri`` keeps its decoded cache; None: no persistent cache
    (``cache`` memory/off, or ``auto`` with no storage to put it under)."""
    if data.cache not in CACHE_MODES:
        return storage.normalize(data.cache)
    if data.cache == "auto" and storage_uri:
        return DecodedCacheLayout.default_root(storage_uri)
    return None


def entry_key(source: str, decode: DecodeConfig) -> str:
    import PIL

    settings = {k: v for k, v in dataclasses.asdict(decode).items() if k not in _NOT_IN_KEY}
    text = json.dumps({"source": storage.normalize(source), "decode": settings, "decoder": DECODER_VERSION,
                       "format": SHARD_FORMAT, "pillow": PIL.__version__}, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class Shard:
    key: str
    records: list[dict[str, Any]]


def rows_per_shard(image_size: tuple[int, int]) -> int:
    """Rows of one shard of ``image_size`` pixels: ROWS_PER_SHARD, or SHARD_BYTES' worth."""
    h, w = image_size
    return max(ROWS_PER_SHARD, SHARD_BYTES // (h * w * 3))


def shard_count(rows: int, per_shard: int = ROWS_PER_SHARD) -> int:
    """A power of two near ``rows / per_shard`` (at least 1)."""
    return 1 << max(0, round(math.log2(max(1.0, rows / per_shard))))


def plan_shards(records: list[dict[str, Any]], per_shard: int = ROWS_PER_SHARD) -> list[Shard]:
    """A split's records in hash buckets of their path; within a shard, ``class_mixed`` order."""
    n = shard_count(len(records), per_shard)
    buckets: list[list[dict]] = [[] for _ in range(n)]
    for rec in records:
        buckets[int(unit_hash(f"shard:{rec['path']}") * n)].append(rec)
    shards = []
    for bucket in filter(None, buckets):
        bucket = class_mixed(bucket)
        lines = "\n".join(f"{r['path']}\t{int(r['label'])}\t{r['version']}" for r in bucket)
        shards.append(Shard(hashlib.sha256(lines.encode()).hexdigest()[:32], bucket))
    return shards


def cacheable(records: list[dict[str, Any]]) -> bool:
    """Every record has a version its listing gave (a label manifest's rows have none)."""
    return all(str(r.get("version", "")).partition(":")[2] for r in records)


@dataclass
class CacheUse:
    """What one run's loading found in the cache (logged, and tested)."""

    uri: str
    shards_read: int = 0
    shards_decoded: int = 0
    rows_decoded: int = 0
    shards_unwritten: int = 0  # decoded, not cached: a read error in them, or the cache not writable
    keys: list[str] = field(default_factory=list)

    def brief(self, streamed: bool = False) -> str:
        how = "streamed from it every epoch" if streamed else "kept in memory for the run"
        return (f"decoded cache: {self.shards_read} of {self.shards_read + self.shards_decoded} shards read, "
                f"{self.rows_decoded} images decoded; {how}")

    def summary(self) -> str:
        total = self.shards_read + self.shards_decoded
        unwritten = (f", {self.shards_unwritten} not cached (a read error, or the cache is not writable)"
                     if self.shards_unwritten else "")
        return (f"decoded cache {self.uri}: {self.shards_read} of {total} shards read, {self.shards_decoded} "
                f"decoded and written ({self.rows_decoded} images){unwritten}")


class DecodedCache:
    """One entry of the cache, for loading the splits of one run."""

    def __init__(self, root: str, source: str, decode: DecodeConfig):
        self.layout = DecodedCacheLayout.entry_of(root, entry_key(source, decode))
        self.source, self.decode = source, decode
        self.use = CacheUse(self.layout.uri)
        self._pixels, self._bad = self._scan()

    def _scan(self) -> tuple[set[str], set[str]]:
        """Shard keys with pixels, and with a bad-file list: one listing."""
        pixels, bad = set(), set()
        if not storage.exists(self.layout.shards):
            return pixels, bad
        for obj in storage.list_objects(self.layout.shards):
            parsed = DecodedCacheLayout.shard_key(obj.path)
            if parsed:
                (pixels if parsed[1] == "pixels" else bad).add(parsed[0])
        return pixels, bad

    def load(self, records: list[dict], *, tasks: int | None = None, pool=None, stream: bool = False,
             shuffle_seed: int | None = None):
        """(Ray dataset of the good decoded rows, their count, bad rows), from the shards
        already cached and by decoding (and caching) the rest.

        Materialized in the object store by default. ``stream``: the shards are written
        first (a pass that keeps nothing in memory), then read anew every time the dataset
        is iterated, in a shard order shuffled each time (``shuffle_seed``: reproducibly);
        nothing is materialized, so the decoded set may exceed the object store."""
        import ray
        from ray.data import RandomSeedConfig

        shards = plan_shards(records, rows_per_shard(self.decode.image_size))
        hits = [s for s in shards if s.key in self._pixels]
        misses = [s for s in shards if s.key not in self._pixels]
        self.use.keys += [s.key for s in shards]
        self.use.shards_read += len(hits)
        self.use.shards_decoded += len(misses)
        self.use.rows_decoded += sum(len(s.records) for s in misses)
        compute = pool(tasks, len(shards)) if pool else None

        def source(chosen: list[Shard], write_only: bool = False):
            # One task per shard: each reads its shard, or decodes and writes it.
            items = [{"key": s.key, "cached": s.key in self._pixels, "path": [r["path"] for r in s.records],
                      "label": [int(r["label"]) for r in s.records]} for s in chosen]
            ds = ray.data.from_items(items, override_num_blocks=len(items))
            if stream and not write_only:
                ds = ds.randomize_block_order(seed=None if shuffle_seed is None else RandomSeedConfig(shuffle_seed))
            return ds.map_batches(ShardSource(self.decode, self.layout.uri, write_only=write_only), batch_size=1,
                                  batch_format="pyarrow", compute=compute)

        if stream:
            # The write pass: decode and write, keep only a row count per shard.
            rows = {r["key"]: r["rows"] for r in source(misses, write_only=True).take_all()} if misses else {}
            self._pixels |= {s.key for s in misses}  # read from now on (a shard not written decodes again)
            ds = source(shards)
        else:
            ds = source(shards).materialize()
        bad = self._bad_files([s for s in hits if s.key in self._bad])
        if misses:
            pixels, with_bad = self._scan()
            unwritten = [s for s in misses if s.key not in pixels]
            self.use.shards_unwritten += len(unwritten)
            bad += self._bad_files([s for s in misses if s.key in pixels and s.key in with_bad])
            if stream:
                suspects = [r for s in unwritten if rows.get(s.key, 0) < len(s.records) for r in s.records]
            else:
                kept = {str(r["path"]) for r in ds.select_columns(["path"]).take_all()} if unwritten else set()
                suspects = [r for s in unwritten for r in s.records if r["path"] not in kept]
            bad += self._recheck(suspects)
        # Materialized: the block metadata's count (free); streamed: every record but the bad ones.
        return ds, len(records) - len(bad) if stream else ds.count(), bad

    def _recheck(self, records: list[dict]) -> list[dict[str, str]]:
        """Why files of shards that were not cached (a read error, an unwritable cache) did not
        decode: read them again here (only files missing from the rows, or of a shard that lost
        some)."""
        paths = [r["path"] for r in records]
        return [{"path": p, "reason": err} for p, err in zip(paths, DecodeImages(self.decode).errors(paths),
                                                             strict=True) if err]

    def _bad_files(self, shards: list[Shard]) -> list[dict[str, str]]:
        if not shards:
            return []
        with futures.ThreadPoolExecutor(min(16, len(shards))) as pool:
            lists = pool.map(lambda s: json.loads(storage.read_bytes(self.layout.bad(s.key))), shards)
            return [item for items in lists for item in items]

    def record_use(self) -> None:
        """``entry.json``: what the entry is, and the shards this run used (for ``cache ls``)."""
        entry = {"source": self.source, "image_size": list(self.decode.image_size or ()),
                 "resize": self.decode.resize, "decoder": DECODER_VERSION,
                 "last_used": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                 "shards_in_use": sorted(set(self.use.keys))}
        storage.atomic_write(self.layout.entry, json.dumps(entry, indent=1))


class ShardSource(DecodeImages):
    """Ray Data UDF, one shard per call: a cached shard is read; any other is decoded, its
    Parquet file written (its bad files first), and its good rows returned, the same Arrow
    table either way. A cached shard that cannot be read (removed meanwhile, damaged) is
    decoded and written again."""

    def __init__(self, decode: DecodeConfig, entry_uri: str, io_threads: int | None = None, write_only: bool = False):
        super().__init__(decode, io_threads)
        self.layout = DecodedCacheLayout(entry_uri)
        self.write_only = write_only  # return a row count, not the pixels (streaming's write pass)

    def __call__(self, batch):
        key = batch["key"][0].as_py()
        if batch["cached"][0].as_py():
            try:
                return read_shard(self.layout.shard(key))
            except Exception as exc:  # noqa: BLE001 - decode again, whatever broke the shard
                log.warning("decoded cache: cannot read shard %s (%s: %s); decoding its files again",
                            self.layout.shard(key), type(exc).__name__, str(exc)[:200])
        table = self._decode(key, batch["path"][0].as_py(), batch["label"][0].as_py())
        if self.write_only:
            import pyarrow as pa

            return pa.table({"key": [key], "rows": [table.num_rows]})
        return table

    def _decode(self, key: str, paths: list[str], labels: list[int]):
        h, w = self.decode.image_size
        images = np.zeros((len(paths), h, w, 3), dtype=np.uint8)
        ok = np.zeros(len(paths), dtype=bool)
        bad, retry = [], False
        for i, (img, err, transient) in enumerate(self.results(paths)):
            if img is not None:
                images[i], ok[i] = img, True
            else:
                bad.append({"path": paths[i], "reason": err})
                retry = retry or transient
        paths, labels, images = [p for p, k in zip(paths, ok, strict=True) if k], np.asarray(labels)[ok], images[ok]
        if not retry:
            try:
                if bad:
                    storage.atomic_write(self.layout.bad(key), json.dumps(bad))
                storage.write_bytes(self.layout.shard(key), shard_bytes(paths, labels, images))
            except Exception as exc:  # noqa: BLE001 - an unwritable cache costs the next run a decode, not this run
                log.warning("decoded cache: cannot write shard %s (%s: %s); this run goes on, the next one "
                            "decodes these files again", self.layout.shard(key), type(exc).__name__, str(exc)[:200])
        return ray_table(paths, labels, images)


# Pixels are stored as one fixed-size binary value per image (the shape in the file's metadata):
# measured at 224x224, writing and reading an Arrow tensor column through Parquet cost 2.2 and
# 1.1 ms per image (as much as decoding the JPEG), fixed-size binary 0.11 and 0.09 ms.
_SHAPE_KEY = b"imgrec.image_shape"
# Pixels are written uncompressed, paths and labels with snappy. Decoded pixels hardly compress
# (measured: real photos 0.98x, generated gradients 0.92x) and snappy tripled the read (0.039
# against 0.013 ms per 128x128 image, paid by every warm epoch). Readers need no change: the
# codec is recorded per column chunk, so older all-snappy shards read as before.
_CODECS = {"path": "snappy", "label": "snappy", "pixels": "none"}


def shard_bytes(paths: list[str], labels: np.ndarray, images: np.ndarray) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, shape = len(images), images.shape[1:]
    pixels = pa.FixedSizeBinaryArray.from_buffers(pa.binary(int(np.prod(shape))), n,
                                                  [None, pa.py_buffer(np.ascontiguousarray(images))])
    table = pa.table({"path": pa.array(paths, pa.string()), "label": pa.array(labels, pa.int64()), "pixels": pixels},
                     metadata={_SHAPE_KEY: json.dumps(list(shape)).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=_CODECS)
    return buf.getvalue()


def read_shard(uri: str):
    """A shard file as the rows a decode task gives (``ray_table``). A local shard is
    memory-mapped: its uncompressed pixels are not copied on the way to the object store
    (measured at 128x128 in fresh processes: 0.16-0.21 against 0.23-0.36 CPU ms per image). Shards are written by
    rename, so a mapped file is never rewritten under its reader."""
    import pyarrow.parquet as pq

    uri = storage.normalize(uri)
    table = pq.read_table(io.BytesIO(storage.read_bytes(uri)) if storage.is_s3(uri) else uri, memory_map=True)
    shape = json.loads(table.schema.metadata[_SHAPE_KEY])
    pixels = table.column("pixels").combine_chunks()
    images = np.frombuffer(pixels.buffers()[1], np.uint8, count=len(pixels) * int(np.prod(shape)),
                           offset=pixels.offset * int(np.prod(shape))).reshape(len(pixels), *shape)
    return ray_table(table.column("path"), table.column("label"), images)


def ray_table(paths, labels, images: np.ndarray):
    """Decoded rows as Ray Data's own pixel type (its Arrow tensor column), as decoding gives them."""
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    return pa.table({"path": pa.array(paths, pa.string()) if isinstance(paths, list) else paths,
                     "label": pa.array(labels, pa.int64()) if isinstance(labels, np.ndarray) else labels,
                     "image": ArrowTensorArray.from_numpy(images)})


# --------------------------------------------------------------------------- imgrec cache ls | rm


@dataclass
class EntryInfo:
    layout: DecodedCacheLayout
    meta: dict[str, Any]
    shards: int
    bytes: int
    unused: list[tuple[str, int, float]]  # (uri, bytes, modified) of shard files the last run did not use

    @property
    def unused_shards(self) -> int:
        return sum(1 for uri, _, _ in self.unused if uri.endswith(DecodedCacheLayout.SHARD_SUFFIX))


def list_entries(root: str) -> list[EntryInfo]:
    """Every entry under a cache root, with its shards and those its last run did not use."""
    if not storage.exists(root):
        return []
    files: dict[str, list] = {}
    for obj in storage.list_objects(root):
        entry, _, rest = obj.path.partition("/")
        if DecodedCacheLayout.is_entry(entry):
            files.setdefault(entry, []).append((rest, obj))
    out = []
    for entry, objs in sorted(files.items()):
        layout = DecodedCacheLayout.of(root, entry)
        names = dict(objs)
        meta = (json.loads(storage.read_bytes(layout.entry))
                if DecodedCacheLayout.entry.name in names else {})
        in_use = set(meta.get("shards_in_use", []))
        shards = [(rest.split("/", 1)[1], obj) for rest, obj in objs if rest.startswith(DecodedCacheLayout.shards.name + "/")]
        parsed = [(DecodedCacheLayout.shard_key(name), obj) for name, obj in shards]
        unused = [(obj.uri, obj.size, obj.modified) for p, obj in parsed if p and p[0] not in in_use]
        out.append(EntryInfo(layout, meta, sum(1 for p, _ in parsed if p and p[1] == "pixels"),
                             sum(obj.size for _, obj in objs), unused))
    return out


def remove(root: str, *, entries: list[str] = (), stale: bool = False, older_than_days: float | None = None,
           everything: bool = False) -> tuple[int, int]:
    """Remove whole entries (by key prefix, unused for ``older_than_days``, or all) and,
    with ``stale``, the shards no run used last (older than ``STALE_AFTER_S``) and the temp
    files killed writers left (``storage.remove_stale_temps``: local only, an S3 PUT leaves
    none). Returns (files removed, bytes freed; the temps' bytes are not counted). An entry
    that matches nothing is an error, raised before anything is removed."""
    infos = list_entries(root)
    prefixes = [e.removeprefix(DecodedCacheLayout.PREFIX) for e in entries]
    unknown = [e for e, p in zip(entries, prefixes, strict=True) if not any(i.layout.key.startswith(p) for i in infos)]
    if unknown:  # before anything is removed
        raise ValueError(f"{root}: no entry {unknown[0]!r}; `imgrec cache ls {root}` lists them")
    removed = freed = 0
    now = time.time()
    for info in infos:
        last = info.meta.get("last_used")
        age_days = (now - dt.datetime.fromisoformat(last).timestamp()) / 86400 if last else math.inf
        whole = (everything or any(info.layout.key.startswith(p) for p in prefixes)
                 or (older_than_days is not None and age_days >= older_than_days))
        if whole:
            removed += storage.delete_prefix(info.layout.uri)
            freed += info.bytes
        elif stale:
            for uri, size, modified in info.unused:
                if now - modified >= STALE_AFTER_S:
                    storage.delete_prefix(uri)
                    removed, freed = removed + 1, freed + size
            if not storage.is_s3(info.layout.uri) and storage.exists(info.layout.shards):
                removed += storage.remove_stale_temps(info.layout.shards)
    return removed, freed
