"""The course's ``ImageDataGenerator`` augmentations, vectorised over a batch in numpy.

This runs inside Ray Data CPU workers, so it imports neither TensorFlow nor
scipy (TF alone costs ~0.5 GB per process). One batch is augmented at once:

1. ``random_transforms`` draws per-image parameters (``TransformParams``), op by
   op from the op list (``imgrec.augment.ops``: one class per op, in draw order).
2. ``apply_transforms`` composes each image's affine map (zoom, shear, rotation
   about the centre, shift, then flips) into a 2×3 *inverse* matrix and warps all
   N images in one go (``imgrec.augment.warp``). Out-of-image samples follow
   ``fill_mode``.
3. Brightness (a pixel op's gain) multiplies the result in the warp's blend,
   rounded and clipped to 0..255; without a warp, flips and gains apply alone.
4. Colour ops (``ColourOp``: RandAugment's colour maps) then map the uint8
   result, only for the images whose parameters ask for it (skipped when none do).

Semantics (Keras ``ImageDataGenerator`` unless noted):

* ``rotation_range`` r: angle ~ U(-r, r) degrees; positive turns the content
  counter-clockwise as seen on screen.
* ``width_shift_range`` / ``height_shift_range`` s: shift ~ U(-s, s) × width
  (height) when s < 1, or U(-s, s) pixels when s >= 1 (as Keras). Here a
  positive shift moves content right/down (Keras' sign is the opposite; the
  distribution is symmetric, so training is unaffected).
* ``zoom_range``: z -> [1-z, 1+z] or [lo, hi]; x and y factors are drawn
  independently, as Keras does. Keras semantics: the factor scales the
  *sampling* grid, so a factor > 1 zooms OUT (content shrinks) and < 1 zooms in.
* ``shear_range`` s: shear angle ~ U(-s, s) in **degrees** (as Keras reads it);
  a horizontal shear x' = x + tan(angle)·y about the centre.
* ``brightness_range`` (lo, hi): pixels × U(lo, hi), clipped to 0..255.
* ``horizontal_flip`` / ``vertical_flip``: each image flipped with p = 0.5.
* ``fill_mode``: ``nearest`` (repeat the edge), ``constant`` (``cval``),
  ``reflect`` (mirror including the edge pixel: d c b a | a b c d | d c b a),
  ``wrap`` (periodic tiling: a b c d | a b c d | a b c d).
* ``randaugment_ops`` N (0: off), ``randaugment_magnitude`` M (0..30):
  torchvision's ``RandAugment(num_ops=N, magnitude=M, num_magnitude_bins=31)``
  over its 14 ops (Identity, ShearX/Y, TranslateX/Y, Rotate, Brightness, Color,
  Contrast, Sharpness, Posterize, Solarize, AutoContrast, Equalize), with these
  differences: each image draws its N ops **without** replacement (torchvision
  draws with replacement), so each op's parameter is one value per image; the
  ops compose in a fixed order, not the drawn one (shears, rotation and shifts in
  the one warp, bilinear with ``fill_mode``, where torchvision uses nearest and
  black; brightness in its blend; then colour, contrast, sharpness, posterize,
  solarize, autocontrast, equalize); shears and rotation are about the centre
  (torchvision shears about the top-left corner); blends round where PIL and
  torchvision truncate (so they agree within one grey level). Magnitudes at M:
  shear factor ±0.3·M/30, shift ±int(150/331·size·M/30) pixels, rotation
  ±30·M/30 degrees, brightness/colour/contrast/sharpness factor 1 ± 0.9·M/30
  (a random sign per image), posterize to 8 - round(M/7.5) bits, solarize
  values >= 255·(1 - M/30) (so at M = 0 it still inverts 255s, as torchvision).
* Presets: ``none``; ``light`` (shifts 0.1, horizontal flip); ``course`` (the
  chapter's generator: rotation 40, shifts 0.2, zoom 0.2, shear 0.2, brightness
  0.8-1.2, horizontal flip); ``randaugment`` (horizontal flip + RandAugment(2, 9)).

Mixup and CutMix (``mix``, ``Mixing``) act on the batch after these, pairing images
and mixing their labels into soft targets; ``TrainConfig.mixup``/``cutmix`` turn them on.

Modules: ``ops`` (the op classes and their registry), ``transforms`` (parameters,
composition, applying), ``warp`` (the bilinear warp), ``colour`` (RandAugment's
vectorised colour maps), ``mix`` (mixup, CutMix), ``udf`` (``Augmenter``),
``preview`` (the grid, ``describe``).
"""

from __future__ import annotations

from imgrec.augment.mix import Mixing
from imgrec.augment.ops import (
    FLIP_PROBABILITY,
    CliOption,
    ColourOp,
    FlipOp,
    LinearOp,
    Op,
    PixelOp,
    ShiftOp,
    ops,
    preset_names,
    register_op,
    registered,
    unregister_op,
)
from imgrec.augment.preview import describe, preview_grid, save_preview
from imgrec.augment.transforms import (
    TransformParams,
    apply_transforms,
    augment_batch,
    inverse_matrices,
    random_transforms,
)
from imgrec.augment.transforms import _warp as _warp  # tests resample with exact parameters
from imgrec.augment.udf import Augmenter

__all__ = [
    "FLIP_PROBABILITY", "Augmenter", "CliOption", "ColourOp", "FlipOp", "LinearOp", "Mixing", "Op", "PixelOp",
    "ShiftOp",
    "TransformParams", "apply_transforms", "augment_batch", "describe", "inverse_matrices", "ops",
    "preset_names", "preview_grid", "random_transforms", "register_op", "registered", "save_preview",
    "unregister_op",
]
