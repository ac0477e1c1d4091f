"""The input of batch prediction as a lazy stream of entries: a prefix walk
(S3 pages of 1000 keys; a local walk sorted per folder), or the rows of a
``.txt``/``.csv``/``.parquet`` manifest (read by ``imgrec.data.manifest``, as
training reads its label manifests), each with its label when it has one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from imgrec import storage
from imgrec.config import PredictConfig
from imgrec.data.manifest import absolute, is_manifest, manifest_rows
from imgrec.data.tree import DataError
from imgrec.decode import IMAGE_SUFFIXES
from imgrec.predict.errors import PredictError

EXAMPLES = 10  # skipped files named in the summary


@dataclass(frozen=True)
class Entry:
    uri: str  # what is read, and the output's `path`
    key: str  # what chunk boundaries and digests hash: the path under the input, or the manifest line
    size: int | None
    label: str | None


class Listing:
    """The input as a lazy stream of entries: a prefix walk or a manifest's rows."""

    def __init__(self, cfg: PredictConfig, class_names: list[str], out: str):
        self.cfg = cfg
        self.input = storage.normalize(cfg.input)
        self.classes = set(class_names)
        self.out = out
        self.skipped = 0
        self.skipped_examples: list[str] = []
        self.is_manifest = is_manifest(self.input)

    def entries(self) -> Iterator[Entry]:
        if self.is_manifest:
            if not storage.exists(self.input):
                raise PredictError(f"{self.input}: manifest not found; check the URI (or give a prefix to walk)")
            try:
                yield from self._manifest()
            except DataError as exc:  # the manifest itself: no `path` column, not CSV
                raise PredictError(str(exc)) from None
        else:
            yield from self._walk()

    def _walk(self) -> Iterator[Entry]:
        suffixes = None if self.cfg.all_files else IMAGE_SUFFIXES
        inside_output = self.out + "/"
        for obj in storage.list_objects(self.input):
            if obj.uri.startswith(inside_output):
                continue  # output written under the input: never predict our own files
            if suffixes and not obj.path.lower().endswith(suffixes):
                self.skipped += 1
                if len(self.skipped_examples) < EXAMPLES:
                    self.skipped_examples.append(obj.uri)
                continue
            folder, sep, _ = obj.path.partition("/")
            label = folder if sep and folder in self.classes else None
            yield Entry(obj.uri, obj.path, obj.size, label)

    def _manifest(self) -> Iterator[Entry]:
        base = storage.parent(self.input)
        for path, label in manifest_rows(self.input):
            path = path.strip()
            if not path:
                continue
            uri = absolute(path, base)
            if label is not None and label not in self.classes:
                label = None  # not a class of this model: cannot be scored
            yield Entry(uri, path, None, label)


def announce(entries: Iterator[Entry], say: Callable[[str], None], every: int = 100_000) -> Iterator[Entry]:
    """Pass entries through, saying how far the listing got (a big bucket takes minutes)."""
    for i, entry in enumerate(entries, 1):
        if i % every == 0:
            say(f"[predict] listed {i} files...")
        yield entry
