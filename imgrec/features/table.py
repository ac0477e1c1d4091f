"""Every image of a class-per-folder tree measured with Ray Data, as a ``FeatureTable``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from imgrec.config import DecodeConfig
from imgrec.data import DataError, DecodeImages, list_images
from imgrec.features.measure import FEATURE_NAMES, extract_features_batch
from imgrec.runtime import ensure_ray


@dataclass
class FeatureTable:
    """Every image's features, in memory (a few dozen floats per image), with labels
    and where each image came from. Extract once, try many feature sets."""

    source: str
    class_names: list[str]
    features: np.ndarray  # (N, len(FEATURE_NAMES)) float32
    labels: np.ndarray  # (N,) int64
    paths: list[str]
    rels: list[str]  # "cat/001.jpg": what the validation split hashes
    splits: np.ndarray  # (N,) "train" | "test"
    image_size: tuple[int, int]
    bad_files: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}

    def columns(self, names: Sequence[str]) -> np.ndarray:
        return self.features[:, [FEATURE_NAMES.index(n) for n in names]]

    def __len__(self) -> int:
        return len(self.labels)


def _features_udf(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data UDF after ``DecodeImages``: pixels in, a few floats out, so only the
    features (never the pixels) travel back to the driver. Bad rows get NaNs."""
    images, errors = batch["image"], batch["error"]
    ok = np.array([not e for e in errors], dtype=bool)
    feats = np.full((len(images), len(FEATURE_NAMES)), np.nan, dtype=np.float32)
    if ok.any():
        feats[ok] = extract_features_batch(images[ok])
    return {"index": batch["index"], "error": errors, "features": feats}


def extract_tree_features(
    data_uri: str,
    *,
    image_size: tuple[int, int] = (64, 64),
    decode: DecodeConfig | None = None,
    limit_per_class: int | None = None,
    rows_per_block: int = 256,
) -> FeatureTable:
    """Decode every image of a class-per-folder tree (``<root>/train/<class>/*``,
    ``<root>/test/<class>/*``; local or S3), or of a label manifest, and measure
    its features with Ray Data.

    Files that cannot be read or decoded, like those outside class folders, are
    skipped and listed in ``bad_files`` — one bad file never stops the run."""
    import ray


    decode = decode or DecodeConfig(image_size=image_size)
    tree = list_images(data_uri)
    train = _limit(tree.train, limit_per_class)
    records = [
        {"path": r["path"], "label": r["label"], "index": i}
        for i, r in enumerate(train + tree.test)
    ]
    meta = [(r["rel"], "train") for r in train] + [(r["rel"], "test") for r in tree.test]

    ensure_ray()
    n_blocks = max(1, min(200, len(records) // rows_per_block + 1))
    ds = ray.data.from_items(records, override_num_blocks=n_blocks)
    ds = ds.map_batches(DecodeImages(decode), batch_size=64, batch_format="numpy")
    ds = ds.map_batches(_features_udf, batch_size=64, batch_format="numpy")

    n = len(records)
    feats = np.full((n, len(FEATURE_NAMES)), np.nan, dtype=np.float32)
    errors = [""] * n
    for batch in ds.iter_batches(batch_size=1024, batch_format="numpy"):
        idx = batch["index"].astype(np.int64)
        feats[idx] = batch["features"]
        for i, err in zip(idx, batch["error"], strict=True):
            errors[i] = str(err or "")

    bad = list(tree.skipped) + [{"path": records[i]["path"], "reason": errors[i]} for i in range(n) if errors[i]]
    good = np.array([not e for e in errors], dtype=bool)
    if not good[: len(train)].any():
        raise DataError(f"{tree.root}: no training image could be decoded; first problems: {bad[:3]}")
    keep = np.flatnonzero(good)
    return FeatureTable(
        source=tree.root,
        class_names=list(tree.class_names),
        features=feats[keep],
        labels=np.array([records[i]["label"] for i in keep], dtype=np.int64),
        paths=[records[i]["path"] for i in keep],
        rels=[meta[i][0] for i in keep],
        splits=np.array([meta[i][1] for i in keep]),
        image_size=tuple(decode.image_size),
        bad_files=bad,
    )


def _limit(records: list[dict], per_class: int | None) -> list[dict]:
    if not per_class:
        return list(records)
    seen: dict[int, int] = {}
    out = []
    for r in records:
        seen[r["label"]] = seen.get(r["label"], 0) + 1
        if seen[r["label"]] <= per_class:
            out.append(r)
    return out
