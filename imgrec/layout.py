"""Every artefact name and path imgrec writes or reads, in one place.

* ``RunLayout``: a training run, ``<storage>/<run name>/``;
* ``CheckpointLayout``: one checkpoint folder inside it (Ray names the folder);
* ``SweepLayout``: a sweep, ``<storage>/<sweep name>/``, with a run per trial;
* ``PredictionLayout``: a batch-prediction output prefix;
* ``BaselineLayout``: the hand-made-feature baseline's output folder;
* ``cache_dir``: the one per-node download cache (checkpoints and weights files),
  under ``$IMGREC_CACHE`` (default ``~/.cache/imgrec``).

A new artefact is a property here plus the code that writes it; nothing else
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
    """A file or folder directly under a layout's folder: its URI, read on an instance."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, layout, owner=None):
        return self if layout is None else storage.join(layout.uri, self.name)


@dataclass(frozen=True)
class _Folder:
    uri: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "uri", storage.normalize(self.uri))


@dataclass(frozen=True)
class CheckpointLayout(_Folder):
    """A checkpoint folder: ``model.keras``, then ``manifest.json`` written last."""

    MODEL = "model.keras"
    MANIFEST = "manifest.json"

    model = _child(MODEL)
    manifest = _child(MANIFEST)


@dataclass(frozen=True)
class RunLayout(_Folder):
    """``<storage>/<run name>/``: Ray's ``checkpoint_*/`` folders plus imgrec's own files."""

    HISTORY = "history.json"
    EVALUATION = "evaluation.json"
    REPORT = "report.html"
    HISTORY_PLOT = "history.png"
    CONFUSION_PLOT = "confusion.png"
    TIMING_PLOT = "timing.png"
    TENSORBOARD = "tensorboard"
    REPLICAS = "replicas"
    FAULT_MARKER = ".fault-injected"  # written by the test-only fault hook

    @classmethod
    def of(cls, storage_uri: str, run_name: str) -> RunLayout:
        return cls(storage.join(storage_uri, run_name))

    @property
    def name(self) -> str:
        return storage.basename(self.uri)

    history = _child(HISTORY)
    evaluation = _child(EVALUATION)
    report = _child(REPORT)
    history_plot = _child(HISTORY_PLOT)
    confusion_plot = _child(CONFUSION_PLOT)
    timing_plot = _child(TIMING_PLOT)
    tensorboard = _child(TENSORBOARD)
    fault_marker = _child(FAULT_MARKER)

    def replica(self, rank: int) -> str:
        """Rank ``rank``'s digest of its final weights."""
        return storage.join(self.uri, self.REPLICAS, f"rank-{rank}.json")


@dataclass(frozen=True)
class SweepLayout(_Folder):
    """``<storage>/<sweep name>/``: the sweep's config and results, a run per trial."""

    CONFIG = "sweep.json"
    BEST = "best.json"
    RESULTS_CSV = "results.csv"
    RESULTS_PARQUET = "results.parquet"
    PLOT = "sweep.png"
    EVALUATION = "evaluation.json"
    TRIALS = "trials"

    @classmethod
    def of(cls, storage_uri: str, sweep_name: str) -> SweepLayout:
        return cls(storage.join(storage_uri, sweep_name))

    config = _child(CONFIG)
    best = _child(BEST)
    results_csv = _child(RESULTS_CSV)
    results_parquet = _child(RESULTS_PARQUET)
    plot = _child(PLOT)
    evaluation = _child(EVALUATION)
    trials = _child(TRIALS)  # the storage of the trials' runs (each trial is a run named after it)

    def trial(self, trial_name: str) -> RunLayout:
        return RunLayout.of(self.trials, trial_name)


@dataclass(frozen=True)
class PredictionLayout(_Folder):
    """A batch-prediction output prefix."""

    PREDICTIONS = "predictions"
    SUMMARY = "summary.json"
    JOB = "_job.json"
    PART_PREFIX, PART_SUFFIX = "part-", ".parquet"

    predictions = _child(PREDICTIONS)
    summary = _child(SUMMARY)
    job = _child(JOB)

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


@dataclass(frozen=True)
class BaselineLayout(_Folder):
    """The hand-made-feature baseline's output folder."""

    RESULT = "baseline.json"
    BOUNDARY_PLOT = "decision_boundary.png"
    REPORT = "baseline.html"

    result = _child(RESULT)
    boundary_plot = _child(BOUNDARY_PLOT)
    report = _child(REPORT)
