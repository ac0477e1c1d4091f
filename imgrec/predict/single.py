"""One image: ``predict_one`` (class, probability) pairs and ``describe_one``,
the course's printout. One load of the model (hash verified; a run URI falls
back to its next best checkpoint), the image decoded as its manifest says."""

from __future__ import annotations

import numpy as np

from imgrec import checkpoint as ckpt
from imgrec import models, storage
from imgrec.decode import decode_image
from imgrec.models import class_probabilities
from imgrec.predict.actors import decode_config


def predict_one(image_uri: str, model_uri: str, top_k: int = 5) -> list[tuple[str, float]]:
    """(class name, probability) pairs for one image file, most likely first,
    decoded exactly as the checkpoint's manifest says."""
    probs, manifest = _classify_one(image_uri, model_uri)
    return _top(probs, manifest["class_names"], top_k)


def _classify_one(image_uri: str, model_uri: str) -> tuple[np.ndarray, dict]:
    """One load of the model (hash verified; a run URI falls back to its next best
    checkpoint), then the image decoded as that checkpoint's manifest says."""
    model, manifest = ckpt.load(model_uri, compile=False)
    model = models.for_inference(model)
    image = decode_image(storage.read_bytes(image_uri), decode_config(manifest))
    return class_probabilities(np.asarray(model.predict(image[None], verbose=0)))[0], manifest


def _top(probs: np.ndarray, names: list[str], k: int) -> list[tuple[str, float]]:
    return [(names[i], float(probs[i])) for i in np.argsort(-probs)[:k]]


def describe_one(image_uri: str, model_uri: str, top_k: int | None = None) -> str:
    """``predict_one`` as the course prints it: the answer (the image's folder,
    when that is a class name), the prediction, then each class's probability."""
    probs, manifest = _classify_one(image_uri, model_uri)
    names = manifest["class_names"]
    pairs = _top(probs, names, top_k or len(names))
    folder = storage.basename(storage.parent(image_uri))
    answer = f"{folder}  (its folder)" if folder in names else "unknown  (the image's folder is not a class name)"
    best, p_best = pairs[0]
    width = max(len(n) for n, _ in pairs)
    lines = [
        f"image:      {storage.normalize(image_uri)}",
        f"model:      {manifest['checkpoint_uri']}",
        f"answer:     {answer}",
        f"prediction: {best}  ({100 * p_best:.1f} %)" + ("" if folder not in names else
                                                          "  right" if best == folder else "  WRONG"),
    ]
    lines += [f"  {name:<{width}}  {p:.4f}  {'#' * round(30 * p)}" for name, p in pairs]
    return "\n".join(lines)

