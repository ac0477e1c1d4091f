"""imgrec: distributed image recognition on Ray and Keras 3, images and checkpoints in S3."""

import imgrec.augment.ops  # noqa: F401  (installs the op list AugmentConfig.enabled/preset derive from)
from imgrec.checkpoint import load_model
from imgrec.version import __version__

__all__ = ["__version__", "load_model"]
