"""Every artefact name and path imgrec writes or reads, in one place.

* ``RunLayout``: a training run, ``<storage>/<run name>/``;
* ``CheckpointLayout``: one checkpoint folder inside it (Ray names the folder);
* ``SweepLayout``: a sweep, ``<storage>/<sweep name>/``, with a run per trial;
* ``PredictionLayout``: a batch-prediction output prefix;
* ``BaselineLayout``: the hand-made-feature baseline's output folder;
* ``ExportLayout``: a serving export (``imgrec export``): the model in one format and its sidecar;
* ``DecodedCacheLayout``: one entry of the persistent decoded-pixel cache (``--cache``,
  default ``<storage>/.cache/``): a source at one decode setting, its Parquet shards;
* ``cache_dir``: the one per-node download cache (checkpoints and weights files),
  under ``$IMGREC_CACHE`` (default ``~/.cache/imgrec``).

A new artefact is one entry in a layout's ``files={attr: name}`` here (from outside imgrec:
``RunLayout.add_file(attr, name)``) plus the code that writes it; nothing else
spells a file name. Only ``imgrec.storage`` (no Keras, TensorFlow or Ray) is imported.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

from imgrec import storage

CACHE_ENV = "IMGREC_CACHE"
_LEGACY_CACHE_ENV = "IMGREC_CACHE_DIR"  # read once by the weights cache; still honoured


def cache_dir(kind: str) -> str:
    """The local folder of one kind of download (``checkpoints``, ``weights``)."""
    base = os.environ.get(CACHE_ENV)
    if not base and os.environ.get(_LEGACY_CACHE_ENV):
        warnings.warn(f"{_LEGACY_CACHE_ENV} is deprecated; set {CACHE_ENV} instead", DeprecationWarning, stacklevel=2)
        base = os.environ[_LEGACY_CACHE_ENV]
    return os.path.join(base or os.path.join(os.path.expanduser("~"), ".cache", "imgrec"), kind)


class _child:
    """A file or folder directly under a layout's folder: its URI on an instance,
    itself on the class (``RunLayout.history.name`` is the file name)."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, layout, owner=None):
        return self if layout is None else storage.join(layout.uri, self.name)


@dataclass(frozen=True)
class _Folder:
    uri: str

    def __init_subclass__(cls, files: dict[str, str] | None = None, **kwargs) -> None:
        # class RunLayout(_Folder, files={"history": "history.json"}): RunLayout(uri).history
        super().__init_subclass__(**kwargs)
        for attr, name in (files or {}).items():
            setattr(cls, attr, _child(name))

    def __post_init__(self) -> None:
        object.__setattr__(self, "uri", storage.normalize(self.uri))

    @classmethod
    def of(cls, storage_uri: str, name: str):
        """The folder ``<storage>/<name>/`` (a run, a sweep)."""
        return cls(storage.join(storage_uri, name))

    @classmethod
    def add_file(cls, attr: str, name: str) -> None:
        """A new file (or folder) in every folder of this layout, from anywhere:
        ``RunLayout.add_file("profile", "profile.json")``, then ``RunLayout(uri).profile``.
        Adding the same one again is a no-op, so a hook can add it where it runs
        (a Ray worker imports imgrec afresh)."""
        existing = getattr(cls, attr, None)
        if isinstance(existing, _child) and existing.name == name:
            return
        if existing is not None or name in {c.name for c in cls.files().values()}:
            raise ValueError(f"{cls.__name__} already has {attr!r} or a file named {name!r}; pick other names")
        setattr(cls, attr, _child(name))

    @classmethod
    def remove_file(cls, attr: str) -> None:
        if isinstance(cls.__dict__.get(attr), _child):
            delattr(cls, attr)

    @classmethod
    def files(cls) -> dict[str, _child]:
        """Every file this layout names, by attribute."""
        return {k: v for klass in reversed(cls.__mro__) for k, v in vars(klass).items() if isinstance(v, _child)}


@dataclass(frozen=True)
class CheckpointLayout(_Folder, files={
    "model": "model.keras", "manifest": "manifest.json",
}):
    """A checkpoint folder: ``model.keras``, then ``manifest.json`` written last."""


@dataclass(frozen=True)
class RunLayout(_Folder, files={
    "history": "history.json", "evaluation": "evaluation.json", "report": "report.html",
    "history_plot": "history.png", "confusion_plot": "confusion.png",
    "timing_plot": "timing.png", "tensorboard": "tensorboard", "replicas": "replicas",
    "fault_marker": ".fault-injected", "gallery": "gallery",
}):
    """``<storage>/<run name>/``: Ray's ``checkpoint_*/`` folders plus imgrec's own files.
    ``replicas/`` holds each rank's digest of its final weights; ``.fault-injected`` is
    written by the test-only fault hook; ``gallery/`` the report's thumbnails (``thumbnail``)."""

    @property
    def name(self) -> str:
        return storage.basename(self.uri)

    def replica(self, rank: int) -> str:
        """Rank ``rank``'s digest of its final weights."""
        return storage.join(self.replicas, f"rank-{rank}.json")

    @classmethod
    def thumbnail(cls, key: str, heatmap: bool = False) -> str:
        """A report thumbnail's path relative to the run folder (what ``report.html``
        links): ``gallery/<key>.png``, its Grad-CAM overlay ``gallery/<key>-cam.png``."""
        return f"{cls.gallery.name}/{thumbnail_name(key, heatmap)}"


def thumbnail_name(key: str, heatmap: bool = False) -> str:
    """A thumbnail's file name (run gallery, prediction samples)."""
    return f"{key}{'-cam' if heatmap else ''}.png"


def explain_output(image_uri: str) -> str:
    """Where ``imgrec explain`` writes its overlay unless told: ``<image stem>-gradcam.png``
    in the current folder."""
    stem = os.path.splitext(storage.basename(image_uri))[0] or "image"
    return f"{stem}-gradcam.png"


@dataclass(frozen=True)
class SweepLayout(_Folder, files={
    "config": "sweep.json", "best": "best.json", "results_csv": "results.csv",
    "results_parquet": "results.parquet", "plot": "sweep.png", "evaluation": "evaluation.json",
    "trials": "trials",
}):
    """``<storage>/<sweep name>/``: the sweep's config and results, a run per trial
    (``trials/`` is the storage of the trials' runs, each named after its trial)."""

    def trial(self, trial_name: str) -> RunLayout:
        return RunLayout.of(self.trials, trial_name)


@dataclass(frozen=True)
class PredictionLayout(_Folder, files={
    "predictions": "predictions", "summary": "summary.json", "job": "_job.json",
    "report": "report.html", "class_plot": "classes.png", "confidence_plot": "confidence.png",
    "samples": "samples",
}):
    """A batch-prediction output prefix; ``report.html`` with its plots and ``samples/``
    (thumbnails, ``sample``) is the page a person looks at."""

    PART_PREFIX, PART_SUFFIX = "part-", ".parquet"

    @classmethod
    def part_name(cls, digest: str) -> str:
        return f"{cls.PART_PREFIX}{digest}{cls.PART_SUFFIX}"

    @classmethod
    def numbered(cls, part_name: str, n: int) -> str:
        """Another part of the same name (a manifest repeating a whole chunk)."""
        return part_name.removesuffix(cls.PART_SUFFIX) + f"-{n}{cls.PART_SUFFIX}"

    @classmethod
    def is_part(cls, relative_path: str) -> bool:
        """A part file directly under ``predictions/``."""
        return (relative_path.startswith(cls.PART_PREFIX) and relative_path.endswith(cls.PART_SUFFIX)
                and "/" not in relative_path)

    def part(self, name: str) -> str:
        return storage.join(self.predictions, name)

    @classmethod
    def sample(cls, key: str) -> str:
        """A sample thumbnail's path relative to the output prefix (as ``report.html`` links it)."""
        return f"{cls.samples.name}/{thumbnail_name(key)}"


@dataclass(frozen=True)
class BaselineLayout(_Folder, files={
    "result": "baseline.json", "boundary_plot": "decision_boundary.png",
    "report": "baseline.html",
}):
    """The hand-made-feature baseline's output folder."""



@dataclass(frozen=True)
class ExportLayout(_Folder, files={
    "saved_model": "saved_model", "onnx": "model.onnx", "litert": "model.tflite",
    "sidecar": "serving.json",
}):
    """A serving export's folder: the model in its format (``saved_model/``, ``model.onnx``
    or ``model.tflite``) and ``serving.json``, what a server needs to prepare images."""


@dataclass(frozen=True)
class DecodedCacheLayout(_Folder, files={"entry": "entry.json", "shards": "shards"}):
    """``<cache>/decoded-<entry key>/``: one source's pixels at one decode setting.
    ``shards/<shard key>.parquet`` holds a shard's decoded rows, ``<shard key>.bad.json``
    (written before it, only when some file failed) its bad files; ``entry.json`` says
    what the entry is and which shards the last run that used it read."""

    DEFAULT_FOLDER = ".cache"  # under the storage: <storage>/.cache/
    PREFIX = "decoded-"
    SHARD_SUFFIX, BAD_SUFFIX = ".parquet", ".bad.json"

    @classmethod
    def default_root(cls, storage_uri: str) -> str:
        return storage.join(storage_uri, cls.DEFAULT_FOLDER)

    @classmethod
    def entry_of(cls, cache_uri: str, entry_key: str) -> DecodedCacheLayout:
        return cls.of(cache_uri, cls.PREFIX + entry_key)

    @classmethod
    def is_entry(cls, name: str) -> bool:
        return name.startswith(cls.PREFIX)

    @property
    def key(self) -> str:
        return storage.basename(self.uri).removeprefix(self.PREFIX)

    def shard(self, key: str) -> str:
        return storage.join(self.shards, key + self.SHARD_SUFFIX)

    def bad(self, key: str) -> str:
        return storage.join(self.shards, key + self.BAD_SUFFIX)

    @classmethod
    def shard_key(cls, name: str) -> tuple[str, str] | None:
        """(shard key, "pixels" | "bad") of a file name in ``shards/``; None for anything else
        (a temp file of an interrupted write is never a shard)."""
        for suffix, kind in ((cls.SHARD_SUFFIX, "pixels"), (cls.BAD_SUFFIX, "bad")):
            stem = name.removesuffix(suffix)
            if stem != name and stem and all(c in "0123456789abcdef" for c in stem):
                return stem, kind
        return None
