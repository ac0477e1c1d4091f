"""Mixup and CutMix on uint8 batches: each image mixed with a partner image of the
same augmentation call, its one-hot label mixed with the partner's in the same
proportion into a soft target (``target``, float32 (N, classes)).

* mixup (Zhang et al. 2018): image = λ·a + (1-λ)·b, rounded to uint8; λ ~ Beta(α, α).
* CutMix (Yun et al. 2019): a box of b pasted over a; its side is √(1-λ) of the
  image's, its centre uniform, clipped at the border; λ is then 1 - the box's
  area share (timm's "correct_lam"), so the target matches the pixels.

Partners are a fresh permutation of the call's images (per image, as timm's
"elem" mode), so they come from the same Data batch: blocks hold classes mixed by
a hash order (``imgrec.data.datasets``), so partners are of any class. With both
on, each image takes one of the two at p = 0.5. numpy only: this runs in Ray Data
workers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Mixing:
    """What the augmenter mixes: ``mixup``/``cutmix`` are Beta alphas (0: off)."""

    num_classes: int
    mixup: float = 0.0
    cutmix: float = 0.0

    def __call__(
        self, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """(mixed uint8 images, float32 soft targets) for uint8 (N, H, W, 3) and int labels."""
        labels = np.asarray(labels, dtype=np.int64)
        onehot = np.eye(self.num_classes, dtype=np.float32)[labels]
        n = len(images)
        if n < 2 or not (self.mixup > 0 or self.cutmix > 0):
            return images, onehot
        partner = rng.permutation(n)
        if self.mixup > 0 and self.cutmix > 0:
            boxed = rng.random(n) < 0.5
        else:
            boxed = np.full(n, self.cutmix > 0)
        lam = np.ones(n)
        out = images.copy()
        blend = np.flatnonzero(~boxed)
        if len(blend):
            lam[blend] = rng.beta(self.mixup, self.mixup, len(blend))
            weight = lam[blend, None, None, None]
            mixed = weight * images[blend] + (1.0 - weight) * images[partner[blend]]
            out[blend] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
        for i in np.flatnonzero(boxed):
            top, bottom, left, right = _box(images.shape[1], images.shape[2], rng.beta(self.cutmix, self.cutmix), rng)
            out[i, top:bottom, left:right] = images[partner[i], top:bottom, left:right]
            lam[i] = 1.0 - (bottom - top) * (right - left) / (images.shape[1] * images.shape[2])
        targets = lam[:, None] * onehot + (1.0 - lam[:, None]) * onehot[partner]
        return out, targets.astype(np.float32)


def _box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a box covering about 1 - lam of the image, clipped."""
    side = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * side), int(width * side)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
    left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
    return int(top), int(bottom), int(left), int(right)
