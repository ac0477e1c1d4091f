"""``imgrec export``: a checkpoint as a serving model (SavedModel, ONNX or LiteRT) that
takes uint8 H x W x 3 RGB pixels and returns class probabilities, with a sidecar
(``serving.json``) carrying what a server needs to prepare images as imgrec does.

The export is verified before it is written out: its own runtime runs it on real
images decoded by ``imgrec.decode`` with the checkpoint's decode settings, against
the ``.keras`` model; a float export whose probabilities differ by more than the
tolerance fails. Written locally first (TensorFlow cannot write ``s3://`` here),
then uploaded through ``imgrec.storage``."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgrec import checkpoint as ckpt
from imgrec import models, storage
from imgrec.config import ConfigError, DecodeConfig, ExportConfig, to_dict
from imgrec.decode import IMAGE_SUFFIXES, BadImage, decode_image, describe
from imgrec.hashing import unit_hash
from imgrec.layout import ExportLayout
from imgrec.models import class_probabilities
from imgrec.predict import decode_config
from imgrec.preflight import blame
from imgrec.serving.runtimes import (
    FORMATS,
    INSTALL_HINT,
    litert_select_ops,
    missing_packages,
    run,
    serving_model,
    write,
)
from imgrec.version import __version__

SIDECAR_FORMAT = "imgrec-export/1"
_LISTED = 2000  # images listed to draw the sample from (spread by hash, not the first folder)

log = logging.getLogger(__name__)


class ExportMismatch(RuntimeError):
    """The export runs but does not give the ``.keras`` model's probabilities."""


@dataclass(frozen=True)
class ExportResult:
    out: str  # the export folder (local or s3://)
    model_uri: str  # the model file in it
    sidecar: dict[str, Any]

    @property
    def verification(self) -> dict[str, Any]:
        return self.sidecar["verification"]

    def summary(self) -> str:
        v = self.verification
        line = (f"{self.sidecar['export_format']}: {v['images']} images, max |prob diff| {v['max_abs_prob_diff']:.3g} "
                f"(tolerance {v['tolerance']:g}), top-1 agreement {v['top1_agreement']:.4f}, runtime {v['runtime']}")
        notes = [f"LiteRT ops beyond the built-in ones (SELECT_TF_OPS): {', '.join(v['select_tf_ops'])}"
                 ] if v.get("select_tf_ops") else []
        return "\n".join([line, *notes, f"wrote {self.model_uri} and {storage.join(self.out, ExportLayout.sidecar.name)}"])


# --------------------------------------------------------------------------- preflight


def check_export(cfg: ExportConfig) -> tuple[ckpt.CheckpointRef, str]:
    """Everything checkable before TensorFlow loads: the runtimes are installed, the
    model resolves to a checkpoint, the output is free (or ``overwrite``), the images
    to verify on are there. Returns the checkpoint and the images URI."""
    fmt = FORMATS[cfg.format]
    missing = missing_packages(fmt)
    if missing:
        raise ConfigError(f"format {cfg.format} needs {', '.join(missing)}, not installed: {INSTALL_HINT}", "format")
    with blame("model"):
        ref = ckpt.resolve(cfg.model)
    if not cfg.out:
        raise ConfigError("out: give the folder or s3:// prefix to export to", "out")
    with blame("out"):
        out = storage.normalize(cfg.out)
        storage.check_bucket(out)
        taken = storage.exists(out)
    if taken and not cfg.overwrite:
        raise ConfigError(f"out: {out} already exists; choose another destination or pass --overwrite "
                          "to replace it", "out")
    images = cfg.images or ref.manifest.get("train_config", {}).get("data", {}).get("uri")
    if not images or not (storage.is_s3(images) or os.path.exists(storage.normalize(images))):
        raise ConfigError(f"images: the checkpoint's data ({images!r}) is no image folder here; give --images "
                          "(a folder or s3:// prefix of images) to verify the export on", "images")
    return ref, images


def sample_uris(images: str, n: int = _LISTED) -> list[str]:
    """Up to ``n`` image URIs under ``images``, spread over its folders by a hash of the path."""
    listed = []
    with blame("images"):
        for obj in storage.list_objects(images, suffixes=IMAGE_SUFFIXES):
            listed.append(obj.uri)
            if len(listed) >= _LISTED:
                break
    if not listed:
        raise ConfigError(f"images: no image files ({', '.join(IMAGE_SUFFIXES)}) under {images}", "images")
    return sorted(listed, key=unit_hash)[:n]


# --------------------------------------------------------------------------- the export


def export_model(cfg: ExportConfig) -> ExportResult:
    """Export ``cfg.model`` as ``cfg.format`` into ``cfg.out``, verified (see the module)."""
    ref, images = check_export(cfg)
    candidates = sample_uris(images)  # in sample order: a file that does not decode gives way to the next
    model, manifest = ckpt.load(ref.uri, compile=False)
    model = models.as_float32(model)  # a mixed-precision checkpoint is served in float32 (its weights are)
    decode = decode_config(manifest)
    pixels, used = _decode(candidates, decode, cfg.sample)
    fmt = FORMATS[cfg.format]
    out = storage.normalize(cfg.out)
    with tempfile.TemporaryDirectory(prefix="imgrec-export-") as tmp:
        local = os.path.join(tmp, fmt.file_name)
        write(fmt, serving_model(model), local)
        expected = class_probabilities(np.asarray(model.predict(pixels, verbose=0)))
        got = np.asarray(run(fmt, local, pixels))
        verification = _compare(expected, got, used, cfg.tolerance, fmt.runtime)
        if fmt.name == "litert":
            verification["select_tf_ops"] = litert_select_ops(local)
        if verification["max_abs_prob_diff"] > cfg.tolerance:
            raise ExportMismatch(
                f"{cfg.format} export of {ref.uri} differs from the .keras model by {verification['max_abs_prob_diff']:.3g} "
                f"(> {cfg.tolerance:g}) on {len(used)} images (top-1 agreement {verification['top1_agreement']:.4f}); "
                "nothing was written")
        sidecar = _sidecar(fmt.name, fmt.file_name, manifest, decode, model, verification)
        with open(os.path.join(tmp, ExportLayout.sidecar.name), "w", encoding="utf-8") as fh:
            json.dump(sidecar, fh, indent=2)
        storage.empty_destination(out, overwrite=True, what="the export")
        if storage.is_s3(out):
            storage.upload_dir(tmp, out, progress=False)
        else:
            shutil.copytree(tmp, out, dirs_exist_ok=True)
    return ExportResult(out, storage.join(out, fmt.file_name), sidecar)


def _decode(uris: list[str], decode: DecodeConfig, n: int) -> tuple[np.ndarray, list[str]]:
    """The first ``n`` of ``uris`` that decode, skipping (and logging) the ones that do not."""
    arrays, used = [], []
    for uri in uris:
        if len(used) >= n:
            break
        try:
            arrays.append(decode_image(storage.read_bytes(uri), decode))
            used.append(uri)
        except BadImage as exc:
            log.warning("skipping %s: %s", uri, exc)
    if not arrays:
        raise ConfigError(f"images: none of the {len(uris)} listed files decodes; give --images a folder "
                          "of readable images", "images")
    return np.stack(arrays), used


def _compare(expected: np.ndarray, got: np.ndarray, uris: list[str], tolerance: float, runtime: str) -> dict:
    if got.shape != expected.shape:
        raise ExportMismatch(f"the export returns shape {got.shape}, the .keras model {expected.shape}")
    return {
        "runtime": runtime,
        "images": len(uris),
        "max_abs_prob_diff": float(np.abs(got.astype("float64") - expected).max()),
        "top1_agreement": float(np.mean(got.argmax(1) == expected.argmax(1))),
        "tolerance": tolerance,
    }


def _sidecar(fmt: str, file_name: str, manifest: dict, decode: DecodeConfig, model, verification: dict) -> dict:
    """What a server needs beside the model file: the input, the classes and how
    imgrec turns a file into the input's pixels."""
    height, width = decode.image_size
    return {
        "format": SIDECAR_FORMAT,
        "export_format": fmt,
        "model_file": file_name,
        "input": {"dtype": "uint8", "shape": [None, height, width, 3], "channels": "RGB",
                  "scaling": "none: pass raw 0..255 pixels, the model scales them"},
        "output": {"probabilities": len(manifest["class_names"]), "order": "class_names"},
        "class_names": list(manifest["class_names"]),
        "image_size": [height, width],
        "decode": {
            "resize": decode.resize,
            "pad_value": decode.pad_value,
            "interpolation": "bilinear, antialiased (PIL); JPEG draft decoding when at least 2x larger",
            "exif": "orientation applied before the resize",
            "alpha": "composited on white (255, 255, 255)",
            "color": "every mode to RGB; 16-bit scaled by 1/257",
            "animated": "first frame",
            "describe": describe(decode),
            "config": to_dict(decode),
        },
        "source": {"checkpoint_uri": manifest["checkpoint_uri"], "model_sha256": manifest.get("model_sha256"),
                   "model": manifest.get("model"), "epoch": manifest.get("epoch")},
        "model_name": model.name,
        "imgrec_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "verification": verification,
    }
