"""The checkpoint contract, in one module.

A checkpoint is a directory any later step can use alone::

    model.keras      the whole Keras model, optimizer state included; compiled with loss and
                     accuracy, built-in layers only: plain Keras 3 loads it without imgrec
    manifest.json    written LAST: the completeness marker, and everything a later
                     step needs (class names, image size, decode settings, model and
                     augmentation config, data URI and split seed, history, version)

A checkpoint whose manifest is missing, or whose ``model.keras`` does not have
the size the manifest records, is incomplete and never chosen (a cheap check
from one listing). The SHA-256 the manifest records is verified wherever the
model's bytes are read: ``load_local`` (the one place that verifies and loads a
local folder), ``local_copy`` (before a download enters the node cache, and on
every cache hit). A run whose chosen checkpoint fails verification falls back
to its next candidate with a warning. The hash stops corruption and torn
uploads; a writer who can also rewrite the manifest is stopped only by write
permissions (docs/architecture.md, "Threat model"). Resume, evaluation,
reports, sweeps and batch prediction read checkpoints only through here.
Wherever a model is asked for, a run URI (resolved to its best checkpoint) or a
checkpoint URI both work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from imgrec import storage
from imgrec.layout import CheckpointLayout, cache_dir
from imgrec.version import __version__

MODEL_FILE = CheckpointLayout.model.name
MANIFEST_FILE = CheckpointLayout.manifest.name
FORMAT = "imgrec-checkpoint/1"

log = logging.getLogger(__name__)


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
    """Cheap completeness from a listing: the model file is there with the recorded
    size. The hash is checked where the bytes are read anyway (``load_local``)."""
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
    latest on ties) or ``latest`` (highest epoch) complete checkpoint.

    Only sizes are checked here (no download); ``load`` verifies the hash and
    falls back to the next candidate."""
    return candidates(uri, which)[0]


def candidates(uri: str, which: str = "best") -> list[CheckpointRef]:
    """The complete checkpoints ``resolve`` chooses from, preferred first: just the
    checkpoint itself for a checkpoint URI."""
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    uri = storage.normalize(uri)
    if storage.exists(storage.join(uri, MANIFEST_FILE)):
        manifest = read_manifest(uri)
        sizes = {o.uri: o.size for o in storage.list_objects(uri)}
        if not _complete(uri, manifest, sizes):
            raise CheckpointError(
                f"{uri}: {MODEL_FILE} is missing or has not the {manifest.get('model_bytes')} bytes its "
                f"{MANIFEST_FILE} records; the checkpoint is incomplete (an upload still running or "
                "interrupted): wait for it, or give the run URI to use its other checkpoints"
            )
        return [CheckpointRef(uri, manifest)]
    if not storage.exists(uri):
        raise CheckpointError(f"{uri}: nothing there; give a run URI (<storage>/<run>) or a checkpoint URI")
    refs = list_checkpoints(uri)
    if not refs:
        raise CheckpointError(
            f"{uri}: no complete checkpoint (a folder with {MODEL_FILE} and {MANIFEST_FILE}) under this run; "
            "was training interrupted before its first epoch ended?"
        )
    if which == "latest":
        return sorted(refs, key=lambda r: r.epoch, reverse=True)  # stable: the newest of a tie first
    return sorted(refs, key=lambda r: (r.score, r.epoch), reverse=True)


def local_copy(ref: CheckpointRef) -> str:
    """A local directory holding the checkpoint, its model file verified against
    the manifest's hash. S3 checkpoints are cached per node, keyed by URI and
    model hash, so every actor on a node downloads once; a cached copy that no
    longer verifies is downloaded again."""
    if not storage.is_s3(ref.uri):
        verify(ref.uri, ref.manifest, ref.uri)
        return ref.uri
    key = hashlib.sha1(f"{ref.uri}:{ref.manifest.get('model_sha256')}".encode()).hexdigest()[:16]
    cache = cache_dir("checkpoints")
    target = os.path.join(cache, key)
    if os.path.exists(os.path.join(target, MANIFEST_FILE)):
        try:
            verify(target, ref.manifest, ref.uri)
            storage.touch(target)
            return target
        except CheckpointError as exc:
            log.warning("%s; downloading it again", exc)
            shutil.rmtree(target, ignore_errors=True)
    _download_verified(ref, target)
    _tidy_cache(keep=target)
    return target


def _download_verified(ref: CheckpointRef, target: str) -> None:
    """Download into a ``.dl-*`` folder, verify, then publish it by an atomic rename."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(target), prefix=storage.TEMP_DIR_PREFIX)
    try:
        storage.download_prefix(ref.uri, tmp, progress=False)
        verify(tmp, ref.manifest, ref.uri)
        os.rename(tmp, target)  # atomic publish; a concurrent winner is fine
    except OSError:
        pass  # a concurrent download won the rename
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tidy_cache(keep: str) -> None:
    """Bound the node's download cache: killed downloads older than a few hours go,
    then the least recently used entries down to ``storage.cache_max_bytes()``."""
    folders = [cache_dir("checkpoints"), cache_dir("weights")]
    for folder in folders:
        if os.path.isdir(folder):
            storage.remove_stale_temps(folder)
    for path in storage.trim_cache(folders, storage.cache_max_bytes(), keep=[keep]):
        log.info("download cache: removed %s (least recently used)", path)


# --------------------------------------------------------------------------- verifying


def verify(directory: str, manifest: dict[str, Any], label: str | None = None) -> str:
    """The model file's path in a local ``directory``; ``CheckpointError`` unless it
    has the size and SHA-256 that ``manifest`` records. ``label`` names the
    checkpoint in the message (its URI, when ``directory`` is a cache copy)."""
    label = label or directory
    name = manifest.get("model_file", MODEL_FILE)
    if not isinstance(name, str) or name in ("", ".", "..") or os.path.basename(name) != name:
        raise CheckpointError(f"{label}: {MANIFEST_FILE} names the model file {name!r}; expected a file "
                              f"name inside the checkpoint folder, such as {MODEL_FILE!r}")
    expected = manifest.get("model_sha256")
    if not expected:
        raise CheckpointError(
            f"{label}: {MANIFEST_FILE} records no model_sha256, so {MODEL_FILE} cannot be verified; "
            "write the checkpoint again with imgrec.checkpoint.write_checkpoint"
        )
    path = os.path.join(directory, name)
    try:
        size, actual = os.path.getsize(path), _sha256(path)
    except OSError as exc:
        raise CheckpointError(f"{label}: cannot read {MODEL_FILE} ({exc.strerror or exc}); "
                              "the checkpoint is incomplete: use another checkpoint of the run") from None
    if size != manifest.get("model_bytes") or actual != expected:
        raise CheckpointError(
            f"{label}: {MODEL_FILE} does not match its {MANIFEST_FILE} (sha256 {actual[:12]}..., "
            f"{size} bytes; recorded {str(expected)[:12]}..., {manifest.get('model_bytes')} bytes): "
            "corrupt or torn upload; do not use it: delete this checkpoint folder or use another one"
        )
    return path


# --------------------------------------------------------------------------- loading


def load_model(uri: str, *, which: str = "best", compile: bool = True):
    """The Keras model of a run or checkpoint URI, loaded with safe mode on."""
    model, _ = load(uri, which=which, compile=compile)
    return model


def load(uri: str, *, which: str = "best", compile: bool = True):
    """(model, manifest) of a run or checkpoint URI, S3 or local, verified.

    For a run URI, a checkpoint that fails verification is skipped with a
    warning naming it, and the next best (or next latest) is used."""
    refs = candidates(uri, which)
    for i, ref in enumerate(refs):
        try:
            model, manifest = load_local(local_copy(ref), compile=compile, label=ref.uri)
        except CheckpointError as exc:
            if i + 1 == len(refs):
                raise
            log.warning("skipping checkpoint %s: %s; trying %s", ref.uri, exc, refs[i + 1].uri)
            continue
        return model, {**manifest, "checkpoint_uri": ref.uri}
    raise AssertionError("candidates() never returns an empty list")


def load_local(directory: str, *, compile: bool = True, label: str | None = None):
    """(model, manifest) of a LOCAL checkpoint folder: read the manifest, verify the
    model file's hash, load with safe mode. The one place that verifies and loads
    (``load`` and the training workers' restore from ``Checkpoint.as_directory()``)."""
    import keras

    import imgrec.models.layers  # noqa: F401  registers the legacy ReverseChannels (older checkpoints)

    label = label or directory
    manifest = _read_local_manifest(directory, label)
    path = verify(directory, manifest, label)
    try:
        model = keras.models.load_model(path, compile=compile, safe_mode=True)
    except Exception as exc:  # zip, OS, HDF5 and deserialisation errors of every type
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        raise CheckpointError(
            f"{label}: {MODEL_FILE} matches its hash but cannot be read as a Keras model "
            f"({type(exc).__name__}: {first_line}); use another checkpoint of the run, "
            "or fix what the error names"
        ) from None
    return model, manifest


def _read_local_manifest(directory: str, label: str) -> dict[str, Any]:
    path = os.path.join(directory, MANIFEST_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except FileNotFoundError:
        raise CheckpointError(f"{label}: no {MANIFEST_FILE}; this is not a complete imgrec checkpoint") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{label}: unreadable {MANIFEST_FILE} ({exc}); use another checkpoint") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise CheckpointError(f"{label}: unknown checkpoint format {found!r}, expected {FORMAT!r}")
    return manifest
