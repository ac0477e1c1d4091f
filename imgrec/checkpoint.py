"""The checkpoint contract, in one module.

A checkpoint is a directory any later step can use alone::

    model.keras      the whole Keras model, optimizer state included
    manifest.json    written LAST: the completeness marker, and everything a later
                     step needs (class names, image size, decode settings, model and
                     augmentation config, data URI and split seed, history, version)

A checkpoint whose manifest is missing, or whose ``model.keras`` does not have
the size the manifest records, is incomplete and never used. Resume, evaluation,
reports, sweeps and batch prediction read checkpoints only through here.
Wherever a model is asked for, a run URI (resolved to its best checkpoint) or a
checkpoint URI both work.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from imgrec import storage
from imgrec.layout import CheckpointLayout, cache_dir
from imgrec.version import __version__

MODEL_FILE = CheckpointLayout.MODEL
MANIFEST_FILE = CheckpointLayout.MANIFEST
FORMAT = "imgrec-checkpoint/1"


class CheckpointError(RuntimeError):
    """No usable checkpoint at a URI; the message says what was found and what to do."""


@dataclass(frozen=True)
class CheckpointRef:
    uri: str
    manifest: dict[str, Any]

    @property
    def epoch(self) -> int:
        return int(self.manifest.get("epoch", 0))

    @property
    def score(self) -> float:
        value = self.manifest.get("metrics", {}).get("val_accuracy")
        return float(value) if value is not None else float("-inf")

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])


# --------------------------------------------------------------------------- writing


def write_checkpoint(model, directory: str, manifest: dict[str, Any]) -> str:
    """Save ``model`` and then its manifest into a local ``directory``.

    Every MultiWorkerMirroredStrategy rank must call this (BatchNorm statistics
    are sync-on-read: a save on one rank alone can hang); only rank 0's
    directory is reported to Ray Train."""
    os.makedirs(directory, exist_ok=True)
    model_path = os.path.join(directory, MODEL_FILE)
    model.save(model_path)
    full = {
        "format": FORMAT,
        "imgrec_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model_file": MODEL_FILE,
        "model_bytes": os.path.getsize(model_path),
        "model_sha256": _sha256(model_path),
        **manifest,
    }
    storage.atomic_write(os.path.join(directory, MANIFEST_FILE), json.dumps(full, indent=2, default=_jsonable))
    return directory


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- finding


def read_manifest(checkpoint_uri: str) -> dict[str, Any]:
    uri = storage.join(checkpoint_uri, MANIFEST_FILE)
    try:
        manifest = json.loads(storage.read_text(uri))
    except storage.StorageError as exc:
        raise CheckpointError(
            f"{checkpoint_uri}: no {MANIFEST_FILE} ({exc}); this is not a complete imgrec checkpoint"
        ) from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{uri}: unknown checkpoint format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def _complete(ref_uri: str, manifest: dict[str, Any], sizes: dict[str, int]) -> bool:
    model_uri = storage.join(ref_uri, manifest.get("model_file", MODEL_FILE))
    return sizes.get(model_uri) == manifest.get("model_bytes")


def list_checkpoints(run_uri: str) -> list[CheckpointRef]:
    """Complete checkpoints under a run folder, oldest epoch first."""
    run_uri = storage.normalize(run_uri)
    sizes = {o.uri: o.size for o in storage.list_objects(run_uri)}
    refs = []
    for uri in sorted(sizes):
        if storage.basename(uri) != MANIFEST_FILE:
            continue
        ckpt_uri = storage.parent(uri)
        try:
            manifest = json.loads(storage.read_text(uri))
        except (storage.StorageError, json.JSONDecodeError):
            continue  # a torn or foreign manifest: not a usable checkpoint
        if manifest.get("format") == FORMAT and _complete(ckpt_uri, manifest, sizes):
            refs.append(CheckpointRef(ckpt_uri, manifest))
    refs.sort(key=lambda r: (r.epoch, r.manifest.get("created", "")))
    return refs


def resolve(uri: str, which: str = "best") -> CheckpointRef:
    """A checkpoint URI as it is, or a run URI's ``best`` (highest val_accuracy,
    latest on ties) or ``latest`` (highest epoch) complete checkpoint."""
    uri = storage.normalize(uri)
    if storage.exists(storage.join(uri, MANIFEST_FILE)):
        manifest = read_manifest(uri)
        sizes = {o.uri: o.size for o in storage.list_objects(uri)}
        if not _complete(uri, manifest, sizes):
            raise CheckpointError(f"{uri}: {MODEL_FILE} is missing or truncated; this checkpoint is incomplete")
        return CheckpointRef(uri, manifest)
    if not storage.exists(uri):
        raise CheckpointError(f"{uri}: nothing there; give a run URI (<storage>/<run>) or a checkpoint URI")
    refs = list_checkpoints(uri)
    if not refs:
        raise CheckpointError(
            f"{uri}: no complete checkpoint (a folder with {MODEL_FILE} and {MANIFEST_FILE}) under this run; "
            "was training interrupted before its first epoch ended?"
        )
    if which == "latest":
        return refs[-1]
    if which != "best":
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    return max(refs, key=lambda r: (r.score, r.epoch))


def local_copy(ref: CheckpointRef) -> str:
    """A local directory holding the checkpoint (S3 checkpoints are cached per node,
    keyed by URI and model hash, so every actor on a node downloads once)."""
    if not storage.is_s3(ref.uri):
        return ref.uri
    key = hashlib.sha1(f"{ref.uri}:{ref.manifest.get('model_sha256')}".encode()).hexdigest()[:16]
    target = os.path.join(cache_dir("checkpoints"), key)
    if os.path.exists(os.path.join(target, MANIFEST_FILE)):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(target), prefix=".dl-")
    storage.download_prefix(ref.uri, tmp, progress=False)
    try:
        os.rename(tmp, target)  # atomic publish; a concurrent winner is fine
    except OSError:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- loading


def load_model(uri: str, *, which: str = "best", compile: bool = True):
    """The Keras model of a run or checkpoint URI, loaded with safe mode on."""
    model, _ = load(uri, which=which, compile=compile)
    return model


def load(uri: str, *, which: str = "best", compile: bool = True):
    """(model, manifest) of a run or checkpoint URI, S3 or local."""
    import keras

    import imgrec.models  # noqa: F401  registers imgrec's serializable layers for safe mode

    ref = resolve(uri, which)
    local = local_copy(ref)
    model = keras.models.load_model(os.path.join(local, MODEL_FILE), compile=compile, safe_mode=True)
    return model, {**ref.manifest, "checkpoint_uri": ref.uri}
