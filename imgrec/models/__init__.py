"""Every network imgrec can build, by name: ``imgrec.models``.

* ``registry``: the entries (``ModelSpec``), ``register``, ``get_spec``,
  ``list_models("mobilenet*")``; imports neither Keras nor TensorFlow;
* ``course``, ``applications``: the families, each registering its own entries;
* ``layers``: the in-model preprocessing; ``outputs``: the output contract;
* ``build``: ``build_model``; ``freeze``: freeze depths and block boundaries;
* ``weights``: backbone weights files; ``table``: ``imgrec models list``;
* ``kernels``: faster kernels swapped in at run time (``fuse_batch_norm``); ``all_layers``.

Importing this package registers every entry without loading Keras; the names
below that need Keras load their module on first use (``models.build_model``).
"""

from __future__ import annotations

import importlib

from imgrec.models import applications, course  # noqa: F401  (each registers its entries)
from imgrec.models.outputs import class_probabilities, loss_name
from imgrec.models.registry import (
    BACKBONE_NAME,
    DEFAULT_MODEL,
    HEADS,
    KINDS,
    PREPROCESSING,
    ModelSpec,
    get_spec,
    is_pretrained,
    list_models,
    model_identity,
    model_name,
    register,
)

# name -> the submodule defining it, imported when the name is first used (Keras loads then).
_LAZY = {
    **dict.fromkeys(("ReverseChannels", "caffe_layer", "preprocessing_layers", "IMAGENET_MEAN_RGB", "IMAGENET_STD_RGB",
                     "CAFFE_MEAN_BGR"), "layers"),
    **dict.fromkeys(("build_model", "build_backbone", "compile_model", "WeightsDownloadError", "as_float32",
                     "resolve_precision", "for_inference"), "build"),
    **dict.fromkeys(("get_backbone", "backbone_layers", "backbone_layer_count", "set_freeze_depth", "frozen_depth",
                     "block_boundaries"), "freeze"),
    **dict.fromkeys(("WeightsMismatchError", "fetch_weights", "load_backbone_weights", "save_backbone_weights",
                     "weights_cache_dir"), "weights"),
    **dict.fromkeys(("models_table", "format_models_table"), "table"),
    **dict.fromkeys(("fuse_batch_norm", "all_layers"), "kernels"),
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "BACKBONE_NAME", "DEFAULT_MODEL", "HEADS", "KINDS", "PREPROCESSING", "ModelSpec", "class_probabilities", "is_pretrained",
    "get_spec", "list_models", "loss_name", "model_identity", "model_name", "register", *_LAZY,
]
