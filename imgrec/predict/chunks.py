"""Cutting a listing into chunks with content-defined boundaries (see the
package doc), and spooling them to a local file so memory holds one chunk."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

from imgrec.hashing import unit_hash
from imgrec.layout import PredictionLayout
from imgrec.predict.listing import Entry


@dataclass
class Chunk:
    name: str  # part-<digest>.parquet
    paths: list[str]
    labels: list[str | None]


def cut_chunks(entries: Iterator[Entry], files_per_output: int) -> Iterator[Chunk]:
    """Cut the listing into chunks of ~N files whose boundaries depend on the
    paths, not on positions: a file starts a new chunk when the chunk so far has
    N/2 files and the file's path hash is below 2/N (mean N), or at 2N files.
    Inserting or removing a file thus moves at most the boundaries near it."""
    n = int(files_per_output)
    low = max(1, n // 2)
    high = max(low, 2 * n)
    threshold = 1.0 / max(1, n - low)
    current: list[Entry] = []
    for entry in entries:
        if current and (len(current) >= high or (len(current) >= low and unit_hash(entry.key) < threshold)):
            yield make_chunk(current)
            current = []
        current.append(entry)
    if current:
        yield make_chunk(current)


def make_chunk(entries: list[Entry]) -> Chunk:
    digest = hashlib.sha256()
    for e in entries:
        digest.update(f"{e.key}\t{'' if e.size is None else e.size}\n".encode())
    return Chunk(PredictionLayout.part_name(digest.hexdigest()[:20]), [e.uri for e in entries], [e.label for e in entries])


@dataclass
class Plan:
    """The chunks of one listing, spooled to a local JSON-lines file so that
    memory holds one chunk (not the listing) and the total is known up front."""

    spool: str
    names: list[str]
    files: int
    labelled: int

    @classmethod
    def write(cls, spool: str, chunks: Iterator[Chunk]) -> Plan:
        names: list[str] = []
        seen: set[str] = set()
        files = labelled = 0
        with open(spool, "w", encoding="utf-8") as fh:
            for chunk in chunks:
                if chunk.name in seen:  # a manifest repeating a whole chunk: keep both
                    chunk.name = PredictionLayout.numbered(chunk.name, len(names))
                seen.add(chunk.name)
                names.append(chunk.name)
                files += len(chunk.paths)
                labelled += sum(lab is not None for lab in chunk.labels)
                fh.write(json.dumps(dataclasses.asdict(chunk)) + "\n")
        return cls(spool, names, files, labelled)

    def chunks(self) -> Iterator[Chunk]:
        with open(self.spool, encoding="utf-8") as fh:
            for line in fh:
                yield Chunk(**json.loads(line))

