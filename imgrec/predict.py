"""Prediction from checkpoints: one image, a decoded dataset, or (see
``predict_bucket``) whole image buckets.

The engine is Ray Data ``map_batches`` with an actor class that loads the model
once per actor from a run or checkpoint URI and feeds it raw uint8 pixels: the
scaling lives in the model, and decoding follows the checkpoint's manifest, so
prediction sees exactly what training saw.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from imgrec import checkpoint as ckpt
from imgrec import storage
from imgrec.config import DecodeConfig, from_dict


def decode_config(manifest: dict[str, Any]) -> DecodeConfig:
    return from_dict(DecodeConfig, manifest["decode"])


class Predictor:
    """Ray Data actor UDF: ``{"image": uint8 NxHxWx3, ...}`` -> adds ``probs`` (N, C).

    Loads the model once per actor (S3 checkpoints are cached per node)."""

    def __init__(self, model_uri: str, *, batch_size: int = 64):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.model, self.manifest = ckpt.load(model_uri, compile=False)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from imgrec.models import class_probabilities

        images = batch["image"]
        if len(images) == 0:
            probs = np.zeros((0, len(self.manifest["class_names"])), np.float32)
        else:
            probs = class_probabilities(np.asarray(self.model.predict_on_batch(images)))
        out = dict(batch)
        out["probs"] = probs.astype(np.float32)
        return out


def predict_dataset(ds, model_uri: str, *, actors: int = 1, batch_size: int = 64, num_cpus: float = 1,
                    num_gpus: float = 0):
    """Add a ``probs`` column to a decoded dataset, with a pool of model actors."""
    return ds.map_batches(
        Predictor,
        fn_constructor_kwargs={"model_uri": model_uri, "batch_size": batch_size},
        batch_size=batch_size,
        batch_format="numpy",
        compute=_actor_pool(actors),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )


def _actor_pool(actors: int):
    from ray.data import ActorPoolStrategy

    return ActorPoolStrategy(size=actors)


def predict_arrays(images: np.ndarray, model_uri: str) -> tuple[np.ndarray, list[str]]:
    """Class probabilities for uint8 images in this process (no Ray)."""
    from imgrec.models import class_probabilities

    model, manifest = ckpt.load(model_uri, compile=False)
    return class_probabilities(np.asarray(model.predict(images, verbose=0))), manifest["class_names"]


def predict_one(image_uri: str, model_uri: str, top_k: int = 5) -> list[tuple[str, float]]:
    """(class name, probability) pairs for one image file, most likely first,
    decoded exactly as the checkpoint's manifest says."""
    from imgrec.decode import decode_image

    ref = ckpt.resolve(model_uri)
    image = decode_image(storage.read_bytes(image_uri), decode_config(ref.manifest))
    probs, names = predict_arrays(image[None], ref.uri)
    order = np.argsort(-probs[0])[:top_k]
    return [(names[i], float(probs[0][i])) for i in order]
