"""The model actors: ``Predictor`` adds class probabilities to decoded rows
(evaluation, ``predict_dataset``); ``BucketPredictor`` turns decoded rows into
output rows for ``predict_bucket``. Each loads its model once, in ``__init__``
(hash verified; S3 checkpoints cached per node), and feeds it raw uint8 pixels."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from imgrec import checkpoint as ckpt
from imgrec import console, models
from imgrec.config import DecodeConfig, check_tta, from_dict
from imgrec.models import class_probabilities
from imgrec.predict.columns import Column, Scored, model_table


def decode_config(manifest: dict[str, Any]) -> DecodeConfig:
    """The checkpoint's decode settings, with the model's image size filled in
    when the manifest left ``decode.image_size`` unset."""
    decode = from_dict(DecodeConfig, manifest["decode"])
    if decode.image_size is None and manifest.get("image_size"):
        decode = dataclasses.replace(decode, image_size=tuple(manifest["image_size"]))
    return decode


class Predictor:
    """Ray Data actor UDF: ``{"image": uint8 NxHxWx3, ...}`` -> adds ``probs`` (N, C).

    Loads the model once per actor (S3 checkpoints are cached per node). ``tta``:
    ``"flip"`` scores each image as the mean of its own and its mirror image's
    class probabilities (``config.TTA_MODES``), at twice the model calls."""

    def __init__(self, model_uri: str, *, batch_size: int = 64, tta: str = "none"):
        os.environ.update(console.quiet_env())
        model, self.manifest = ckpt.load(model_uri, compile=False)
        self.model = models.for_inference(model)  # float32 where bfloat16 would be emulated
        self.batch_size, self.tta = batch_size, check_tta(tta)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C) of uint8 images (N, H, W, 3)."""
        probs = class_probabilities(np.asarray(self.model.predict_on_batch(images)))
        if self.tta == "flip":
            mirrored = class_probabilities(np.asarray(self.model.predict_on_batch(images[:, :, ::-1])))
            probs = (probs + mirrored) / 2
        return probs

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = batch["image"]
        if len(images) == 0:
            probs = np.zeros((0, len(self.manifest["class_names"])), np.float32)
        else:
            probs = self.probabilities(images)
        out = dict(batch)
        out["probs"] = probs.astype(np.float32)
        return out


def predict_dataset(ds, model_uri: str, *, actors: int = 1, batch_size: int = 64, num_cpus: float = 1,
                    num_gpus: float = 0, tta: str = "none"):
    """Add a ``probs`` column to a decoded dataset, with a pool of model actors."""
    return ds.map_batches(
        Predictor,
        fn_constructor_kwargs={"model_uri": model_uri, "batch_size": batch_size, "tta": tta},
        batch_size=batch_size,
        batch_format="numpy",
        compute=actor_pool(actors),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )


def actor_pool(actors: int):
    from ray.data import ActorPoolStrategy

    return ActorPoolStrategy(size=actors)


class BucketPredictor(Predictor):
    """Ray Data actor UDF for ``predict_bucket``: decoded rows in, output rows out
    (the model-computed ``columns`` of ``imgrec.predict.columns``).

    Only rows that decoded go through the model; pixels are dropped here so only
    small result rows travel back to the driver."""

    def __init__(self, model_uri: str, *, columns: list[Column], batch_size: int = 64, top_k: int = 5,
                 tta: str = "none"):
        super().__init__(model_uri, batch_size=batch_size, tta=tta)
        self.class_names = list(self.manifest["class_names"])
        self.top_k = min(int(top_k), len(self.class_names))
        self.columns = columns

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa

        errors = [str(e) if e else None for e in batch["error"]]
        ok = np.array([e is None for e in errors], dtype=bool)
        probs = np.zeros((len(errors), len(self.class_names)), np.float32)
        if ok.any():
            probs[ok] = self.probabilities(batch["image"][ok])
        # Stable sort: ties resolve to the lower index, as argmax does in the metrics.
        order = np.argsort(-probs, axis=1, kind="stable")[:, : self.top_k]
        top = np.take_along_axis(probs, order, axis=1)
        scored = Scored(batch, ok, order, top, probs, self.class_names, errors)
        return model_table(scored, self.columns, {"chunk": pa.array(batch["chunk"], pa.int32()),
                                                   "pos": pa.array(batch["pos"], pa.int32())})
