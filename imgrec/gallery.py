"""The mistakes gallery: which images of an evaluated split the report shows, kept
while the scored rows stream past (``Gallery.add``), so no split is ever held whole.

Per true class: the ``per_class`` most confident wrong predictions and the
``per_class`` least confident right ones (their decoded pixels are kept, for
Grad-CAM); per confusion-matrix cell (true, predicted): at most ``per_cell``
images (thumbnails only), the most confident of an off-diagonal cell, the least
confident of a diagonal one. ``write`` puts the thumbnails (and heatmaps) into
the run's ``gallery/`` and returns the record ``evaluation.json`` keeps.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgrec import storage
from imgrec.layout import RunLayout

PER_CLASS = 6  # wrong (and unsure right) images per class in the gallery
PER_CELL = 6  # images per confusion-matrix cell
THUMB_SIDE = 96  # longest side of a thumbnail; smaller images stay as they are


@dataclass
class Shown:
    """One image the report shows: where it came from and what the model said."""

    path: str
    true: int
    predicted: int
    confidence: float  # probability of the predicted class
    key: str = ""
    pixels: np.ndarray | None = field(default=None, repr=False)  # model input (gallery rows), for Grad-CAM
    thumb: np.ndarray | None = field(default=None, repr=False)
    heatmap: np.ndarray | None = field(default=None, repr=False)  # Grad-CAM overlay, uint8 RGB

    def record(self, class_names: list[str], has_heatmap: bool) -> dict[str, Any]:
        return {"path": self.path, "true": class_names[self.true], "predicted": class_names[self.predicted],
                "confidence": round(self.confidence, 6), "thumbnail": RunLayout.thumbnail(self.key),
                "heatmap": RunLayout.thumbnail(self.key, heatmap=True) if has_heatmap else None}


def thumbnail(pixels: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """uint8 HxWx3 shrunk so its longest side is at most ``side`` (aspect kept)."""
    from PIL import Image

    h, w = pixels.shape[:2]
    if max(h, w) <= side:
        return np.asarray(pixels, np.uint8)
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(np.asarray(pixels, np.uint8)).resize(size, Image.BILINEAR))


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


class _Bounded:
    """The ``n`` items with the largest key seen so far (a min-heap)."""

    def __init__(self, n: int):
        self.n, self.heap = n, []

    def would_keep(self, key: float) -> bool:
        return self.n > 0 and (len(self.heap) < self.n or key > self.heap[0][0])

    def push(self, key: float, seq: int, item: Shown) -> Shown | None:
        """Keep ``item``; returns the one it pushed out, if any."""
        entry = (key, -seq, item)  # earlier rows win ties: the same files every run
        if len(self.heap) < self.n:
            heapq.heappush(self.heap, entry)
            return None
        return heapq.heapreplace(self.heap, entry)[2]

    def items(self) -> list[Shown]:
        return [e[2] for e in sorted(self.heap, key=lambda e: (-e[0], e[1]))]


class Gallery:
    """Collects what the report shows from scored batches (``add``), in bounded memory:
    at most 2 x ``per_class`` decoded images per class plus ``per_cell`` thumbnails per cell."""

    def __init__(self, class_names: list[str], *, per_class: int = PER_CLASS, per_cell: int = PER_CELL):
        c = len(class_names)
        self.class_names = list(class_names)
        self.per_class, self.per_cell = per_class, per_cell
        self.wrong = [_Bounded(per_class) for _ in range(c)]  # key: confidence
        self.unsure = [_Bounded(per_class) for _ in range(c)]  # key: -confidence
        self.cells = [[_Bounded(per_cell) for _ in range(c)] for _ in range(c)]
        self.seq = itertools.count()

    def add(self, paths, labels: np.ndarray, probs: np.ndarray, images: np.ndarray) -> None:
        """One scored batch: file paths, true labels, (N, C) probabilities, the decoded pixels."""
        if len(labels) == 0:
            return
        predicted = np.argmax(probs, axis=1)
        confidence = probs[np.arange(len(predicted)), predicted]
        for path, t, p, conf, image in zip(paths, labels, predicted, confidence, images, strict=True):
            t, p, conf, seq = int(t), int(p), float(conf), next(self.seq)
            row = self.wrong[t] if t != p else self.unsure[t]
            row_key = conf if t != p else -conf
            cell = self.cells[t][p]
            keep_row, keep_cell = row.would_keep(row_key), cell.would_keep(row_key)
            if not (keep_row or keep_cell):
                continue
            item = Shown(str(path), t, p, conf, key=_key(str(path), seq))
            if keep_row:  # the row and the cell hold the same item: one thumbnail, one heatmap
                item.pixels = np.array(image, np.uint8)
                out = row.push(row_key, seq, item)
                if out is not None:
                    out.pixels = None  # it may stay in its cell, as a thumbnail only
            item.thumb = thumbnail(image)
            if keep_cell:
                cell.push(row_key, seq, item)

    def rows(self) -> list[Shown]:
        """The gallery's images (wrong and unsure right, every class): Grad-CAM's input."""
        return [s for b in (*self.wrong, *self.unsure) for s in b.items()]

    def write(self, run_uri: str) -> dict[str, Any]:
        """Write every thumbnail (and heatmap) under the run's ``gallery/``; the record for
        ``evaluation.json``: per class its wrong (most confident first) and unsure right
        (least confident first) images, per non-empty cell its images."""
        shown: dict[str, Shown] = {}
        for s in self.rows() + [s for row in self.cells for b in row for s in b.items()]:
            shown[s.key] = s
        has_heatmaps = any(s.heatmap is not None for s in shown.values())

        def files():
            for s in shown.values():
                yield RunLayout.thumbnail(s.key), png_bytes(s.thumb)
                if s.heatmap is not None:
                    yield RunLayout.thumbnail(s.key, heatmap=True), png_bytes(thumbnail(s.heatmap))

        storage.write_many(run_uri, files())
        names = self.class_names

        def records(items: list[Shown]) -> list[dict[str, Any]]:
            return [s.record(names, s.heatmap is not None) for s in items]

        return {
            "per_class": self.per_class, "per_cell": self.per_cell, "heatmaps": has_heatmaps,
            "classes": {names[i]: {"wrong": records(self.wrong[i].items()), "unsure_right": records(
                self.unsure[i].items())} for i in range(len(names))},
            "cells": [{"true": names[i], "predicted": names[j], "images": records(b.items())}
                      for i, row in enumerate(self.cells) for j, b in enumerate(row) if b.heap],
        }


def _key(path: str, seq: int) -> str:
    """A thumbnail's name: the path's hash (the row number too: a manifest may list a file twice)."""
    return hashlib.sha1(f"{path}\0{seq}".encode()).hexdigest()[:16]
