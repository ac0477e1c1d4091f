"""The output contract every built model keeps: probabilities, one sigmoid unit
for exactly 2 classes (the course's cats vs dogs), softmax over N units
otherwise; ``loss_name`` and ``class_probabilities`` hide that difference from
callers. NumPy only."""

from __future__ import annotations

import numpy as np

from imgrec.models.registry import check_num_classes


def loss_name(num_classes: int) -> str:
    """The Keras loss for our output layer: one sigmoid unit for 2 classes,
    softmax with integer labels otherwise."""
    check_num_classes(num_classes)
    return "binary_crossentropy" if num_classes == 2 else "sparse_categorical_crossentropy"


def class_probabilities(outputs: np.ndarray) -> np.ndarray:
    """Model outputs as an (N, C) array of class probabilities: a single sigmoid
    column p becomes [1 - p, p]; softmax outputs pass through."""
    out = np.asarray(outputs)
    if out.ndim == 1:
        out = out[:, None]
    if out.ndim != 2:
        raise ValueError(f"expected model outputs of shape (N, C) or (N,), got {out.shape}")
    if out.shape[1] == 1:
        return np.concatenate([1.0 - out, out], axis=1)
    return out
