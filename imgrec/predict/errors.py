"""The one error of batch prediction."""

from __future__ import annotations


class PredictError(ValueError):
    """Batch prediction cannot run as asked; the message names the URI and the fix."""
