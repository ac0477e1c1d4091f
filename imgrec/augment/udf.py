"""``Augmenter``: the Ray Data UDF that augments ``batch["image"]``."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from imgrec.augment.mix import Mixing
from imgrec.augment.transforms import augment_batch
from imgrec.config import AugmentConfig, from_dict


class Augmenter:
    """``ds.map_batches(Augmenter(cfg))``: augments ``batch["image"]``; with ``mixing``,
    then mixes the batch's images (``imgrec.augment.mix``) and adds their soft
    targets as ``batch["target"]`` (``batch["label"]`` stays each image's own).

    Without ``cfg.seed`` every call draws fresh OS entropy: use this for training.
    With a seed, the result is reproducible (same config, same call order, same
    paths -> same pixels) yet differs per call: the stream is seeded from (seed,
    ``salt``, this instance's call counter, a stable hash of ``batch["path"]``).

    Caveat: Ray Data pickles a fresh copy of the instance into every task, and
    re-runs the tasks each epoch, so with a seed the same batch gets the same
    augmentation every epoch unless ``salt`` changes (e.g. the epoch number)."""

    def __init__(self, cfg: AugmentConfig | dict[str, Any], salt: int = 0, mixing: Mixing | None = None):
        self.cfg = from_dict(AugmentConfig, cfg) if isinstance(cfg, dict) else cfg
        self.mixing = mixing
        self.salt = int(salt)
        self.calls = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = batch["image"]
        if images.dtype == object:  # Ray may hand over an object array of H×W×3 arrays
            images = np.stack(list(images))
        rng = self._rng(batch)
        self.calls += 1
        out = {**batch, "image": augment_batch(images, self.cfg, rng)}
        if self.mixing is not None:
            out["image"], out["target"] = self.mixing(out["image"], batch["label"], rng)
        return out

    def _rng(self, batch: dict[str, np.ndarray]) -> np.random.Generator:
        if self.cfg.seed is None:
            return np.random.default_rng()
        entropy = [int(self.cfg.seed) & 0xFFFFFFFF, self.salt & 0xFFFFFFFF, self.calls]
        if "path" in batch:
            # zlib.crc32, not hash(): str hashes are salted per process.
            joined = "\0".join(str(p) for p in batch["path"]).encode("utf-8", "surrogatepass")
            entropy.append(zlib.crc32(joined))
        return np.random.default_rng(np.random.SeedSequence(entropy))
