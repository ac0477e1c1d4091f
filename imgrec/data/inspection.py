"""``imgrec inspect``: counts per class and split, image sizes from headers,
bad files, without a full decode of every image."""

from __future__ import annotations

import concurrent.futures as futures
import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np

from imgrec.config import DataConfig, DecodeConfig
from imgrec.data.datasets import DECODE_BATCH, ROWS_PER_BLOCK, num_blocks
from imgrec.data.manifest import list_images
from imgrec.data.read import DecodeImages, fetch_bytes, read_head
from imgrec.data.tree import split_hash, split_records
from imgrec.decode import BadImage, image_info
from imgrec.runtime import ensure_ray
from imgrec.text_table import text_table

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- inspecting a tree

# Image headers sit in the first few KB; a header beyond this (a big EXIF or ICC
# block) falls back to reading the whole file.
HEADER_BYTES = 64 * 1024
INSPECT_SIZE = (64, 64)  # decode size for the bad-file check: small, so JPEG draft decoding makes it cheap


@dataclass
class SizeSummary:
    """Image sizes as displayed (after EXIF orientation), from file headers only."""

    sampled: int  # headers read
    total: int  # files in the tree
    width: tuple[float, float, float]  # min, median, max
    height: tuple[float, float, float]
    modes: dict[str, int]
    formats: dict[str, int]
    unreadable: int  # sampled files whose header could not be parsed (the decode check says why)


@dataclass
class InspectReport:
    """What ``imgrec data inspect`` prints: ``str(report)`` is a readable table."""

    uri: str
    class_names: list[str]
    counts: dict[str, dict[str, int]]  # split (train/val/test) -> class -> images
    sizes: SizeSummary | None
    bad_files: list[dict[str, str]]  # {"path", "reason"}: files that fail to read or decode
    skipped: list[dict[str, str]]  # {"path", "reason"}: files the listing left out
    checked: str  # which files the bad-file check decoded, and how
    validation_split: float

    def __str__(self) -> str:
        parts = [self._counts_table(), self._sizes_table(), self._bad_list()]
        if self.skipped:
            parts.append(_file_list(f"skipped by the listing: {len(self.skipped)}", self.skipped))
        return "\n\n".join(parts)

    def _counts_table(self) -> str:
        splits = ["train", "val", "test"]
        totals = {s: sum(self.counts[s].values()) for s in splits}
        head = (
            f"{self.uri}: {len(self.class_names)} classes, {sum(totals.values())} images "
            f"(train {totals['train']}, val {totals['val']} = {self.validation_split:.0%} of train/, "
            f"test {totals['test']})"
        )
        rows = [[name, *(self.counts[s].get(name, 0) for s in splits)] for name in self.class_names]
        rows.append(["total", *(totals[s] for s in splits)])
        rows = [[*r, sum(r[1:])] for r in rows]
        return head + "\n\n" + _table(["class", *splits, "total"], rows)

    def _sizes_table(self) -> str:
        s = self.sizes
        if s is None or s.sampled == s.unreadable:
            return "image sizes: no readable image headers"
        head = f"image sizes (headers of {s.sampled - s.unreadable} of {s.total} files"
        head += ", a stable sample" if s.sampled < s.total else ""
        head += f"; {s.unreadable} unreadable, see bad files)" if s.unreadable else ")"
        rows = [["width", *s.width], ["height", *s.height]]
        lines = [head, _table(["", "min", "median", "max"], rows)]
        lines.append("modes: " + _most_common(s.modes))
        lines.append("formats: " + _most_common(s.formats))
        return "\n".join(lines)

    def _bad_list(self) -> str:
        if not self.bad_files:
            return f"bad files: none ({self.checked})"
        return _file_list(f"bad files: {len(self.bad_files)} ({self.checked})", self.bad_files)


def _file_list(title: str, items: list[dict[str, str]], limit: int = 20) -> str:
    lines = [title] + [f"  {i['path']}: {i['reason']}" for i in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more")
    return "\n".join(lines)


def _most_common(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def _table(header: list[str], rows: list[list]) -> str:
    """Left-aligned first column, right-aligned numbers."""
    cells = [[f"{v:g}" if isinstance(v, float) else v for v in row] for row in rows]
    return text_table(header, cells, right=range(1, len(header)))


def inspect(
    uri: str,
    decode: DecodeConfig | None = None,
    *,
    validation_split: float = 0.3,
    split_seed: int = 0,
    sample: int = 2000,
    decode_all: bool = True,
    io_threads: int = 16,
) -> InspectReport:
    """Look at an image tree (or a label manifest) before training on it.

    * image counts per class for train / val (``validation_split`` of train/,
      the same split ``load_dataset`` makes) / test;
    * image sizes, modes and formats from the headers of at most ``sample``
      files (a stable pseudo-random sample; headers only, read on threads);
    * the bad-file report: with ``decode_all`` every file is fully decoded
      with Ray Data (at ``decode.image_size``, default 64x64), as training
      would; otherwise only the sample is decoded, in this process."""
    DataConfig(uri=uri, validation_split=validation_split)  # refuses a split outside [0, 1) before any listing
    decode = decode or DecodeConfig(image_size=INSPECT_SIZE)
    if decode.image_size is None:
        decode = dataclasses.replace(decode, image_size=INSPECT_SIZE)
    tree = list_images(uri)
    train, val = split_records(tree.train, validation_split, split_seed, tree.splits)
    counts = {
        split: dict(sorted(Counter(tree.class_names[r["label"]] for r in recs).items()))
        for split, recs in (("train", train), ("val", val), ("test", tree.test))
    }
    records = tree.train + tree.test
    sampled = sorted(records, key=lambda r: split_hash(r["path"], 0))[:sample] if sample else []
    sizes = _size_summary([r["path"] for r in sampled], len(records), io_threads)
    h, w = decode.image_size
    if decode_all:
        bad = _decode_errors_ray([r["path"] for r in records], decode)
        checked = f"decoded all {len(records)} files with Ray Data at {h}x{w}"
    else:
        bad = _decode_errors_local([r["path"] for r in sampled], decode, io_threads)
        which = f"all {len(records)} files" if len(sampled) == len(records) else (
            f"only the {len(sampled)}-file sample of {len(records)}")
        checked = f"decoded {which}, in this process, at {h}x{w}"
    return InspectReport(
        uri=tree.root,
        class_names=tree.class_names,
        counts=counts,
        sizes=sizes,
        bad_files=bad,
        skipped=tree.skipped,
        checked=checked,
        validation_split=validation_split,
    )


SIZE_SAMPLE = 64  # headers read to find a tree's typical image size for training


def typical_image_size(uri: str, sample: int = SIZE_SAMPLE) -> tuple[int, int] | None:
    """The median (height, width) of a stable sample of the training images' headers
    (as displayed, after EXIF orientation), or None when no header reads. Headers
    only: a few KB per file, on threads."""
    records = list_images(uri).train
    paths = [r["path"] for r in sorted(records, key=lambda r: split_hash(r["path"], 0))[:sample]]
    summary = _size_summary(paths, len(records), io_threads=16)
    if summary is None or summary.sampled == summary.unreadable:
        return None
    return int(summary.height[1]), int(summary.width[1])


def _header(uri: str) -> tuple[int, int, str, str] | None:
    """``decode.image_info`` from the first bytes of the file; None if unreadable."""

    try:
        data = read_head(uri, HEADER_BYTES)
        try:
            return image_info(data)
        except BadImage:
            if len(data) < HEADER_BYTES:
                raise
            return image_info(fetch_bytes(uri, DecodeConfig.max_file_bytes))  # a header longer than HEADER_BYTES
    except Exception:  # the decode check reports the reason
        return None


def _size_summary(paths: list[str], total: int, io_threads: int) -> SizeSummary | None:
    if not paths:
        return None
    with futures.ThreadPoolExecutor(max(1, min(io_threads, len(paths)))) as pool:
        infos = list(pool.map(_header, paths))
    good = [i for i in infos if i is not None]

    def stats(values: list[int]) -> tuple[float, float, float]:
        if not values:
            return (0.0, 0.0, 0.0)
        return (float(min(values)), float(np.median(values)), float(max(values)))

    return SizeSummary(
        sampled=len(paths),
        total=total,
        width=stats([i[0] for i in good]),
        height=stats([i[1] for i in good]),
        modes=dict(Counter(i[2] for i in good)),
        formats=dict(Counter(i[3] for i in good)),
        unreadable=len(infos) - len(good),
    )


class _DecodeErrors:
    """Ray Data UDF: decode, keep only the failures (path, error). The pixels
    never leave the worker, so checking a big tree moves almost no data."""

    def __init__(self, decode: DecodeConfig):
        self.decode_images = DecodeImages(decode)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.decode_images(batch)
        failed = out["error"] != ""
        return {"path": np.asarray(out["path"], dtype=object)[failed], "error": out["error"][failed]}


def _decode_errors_ray(paths: list[str], decode: DecodeConfig) -> list[dict[str, str]]:
    import ray


    if not paths:
        return []
    ensure_ray()
    blocks = num_blocks(len(paths), ROWS_PER_BLOCK)
    ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
    ds = ds.map_batches(_DecodeErrors(decode), batch_size=DECODE_BATCH, batch_format="numpy")
    rows = ds.take_all()
    bad = [{"path": str(r["path"]), "reason": str(r["error"])} for r in rows]
    return sorted(bad, key=lambda r: r["path"])


def _decode_errors_local(paths: list[str], decode: DecodeConfig, io_threads: int) -> list[dict[str, str]]:
    errors = DecodeImages(decode, io_threads=io_threads).errors(paths)
    return [{"path": p, "reason": e} for p, e in zip(paths, errors, strict=True) if e]
