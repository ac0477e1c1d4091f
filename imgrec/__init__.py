"""imgrec: distributed image recognition on Ray and Keras 3, images and checkpoints in S3."""

from imgrec.version import __version__


def load_model(uri: str, **kwargs):
    """Load a Keras model from a run URI (its best checkpoint) or a checkpoint URI, S3 or local,
    with Keras' safe mode on. See ``imgrec.checkpoint.load_model``."""
    from imgrec.checkpoint import load_model as _load

    return _load(uri, **kwargs)


__all__ = ["__version__", "load_model"]
