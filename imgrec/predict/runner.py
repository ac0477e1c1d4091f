"""Running the pending chunks of a listing through Ray Data in waves (decode,
then the model actors) and writing each part as soon as its last row is back."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from imgrec import checkpoint as ckpt
from imgrec import storage
from imgrec.config import PredictConfig
from imgrec.data import DecodeImages
from imgrec.layout import PredictionLayout
from imgrec.predict.actors import BucketPredictor, actor_pool, decode_config
from imgrec.predict.chunks import Chunk, Plan
from imgrec.predict.columns import Column, Written, finish_part
from imgrec.predict.errors import PredictError
from imgrec.predict.output import FORMAT
from imgrec.progress import FileBar
from imgrec.runtime import ensure_ray

WAVE_ROWS = 50_000  # files per Ray Data execution (x actors): bounds driver memory, amortises model loads


@dataclass(frozen=True)
class ChunkDone:
    """Passed to ``predict_bucket(on_chunk=...)`` after each part is written."""

    index: int  # 1-based position among the chunks of this listing
    total: int
    name: str
    uri: str
    rows: int
    errors: int


class Runner:
    """Runs the pending chunks in waves and writes each part when it is complete."""

    def __init__(self, cfg: PredictConfig, ref: ckpt.CheckpointRef, out: str, plan: Plan, columns: list[Column], *,
                 say: Callable[[str], None], on_chunk: Callable[[ChunkDone], None] | None, bar: bool = True):
        self.cfg, self.ref, self.out, self.plan = cfg, ref, out, plan
        self.say, self.on_chunk, self.show_bar = say, on_chunk, bar
        self.decode = decode_config(ref.manifest)
        self.rows_run = 0
        self.chunks_run = 0
        self.predict_seconds = 0.0
        self.wave_rows = WAVE_ROWS * max(1, cfg.actors)
        self.columns = columns  # what the job record says; the actors get the same list

    def run(self, done: set[str]) -> None:
        """The chunks not in ``done``; a bar over their files on a terminal."""
        index = {name: i + 1 for i, name in enumerate(self.plan.names)}
        pending = sum(len(chunk.paths) for chunk in self.plan.chunks() if chunk.name not in done)
        self.bar = FileBar(pending, live=None if self.show_bar else False)
        wave: list[Chunk] = []
        rows = 0
        try:
            for chunk in self.plan.chunks():
                if chunk.name in done:
                    continue
                wave.append(chunk)
                rows += len(chunk.paths)
                if rows >= self.wave_rows:
                    self._run_wave(wave, index)
                    wave, rows = [], 0
            if wave:
                self._run_wave(wave, index)
        finally:
            self.bar.close()

    def _dataset(self, wave: list[Chunk]):
        """One block per batch, so reading and decoding spread over the actors.
        (``from_items`` builds blocks in this process; ``from_arrow`` would start
        one remote task per block just to read its metadata.)"""
        import ray

        rows = [{"path": path, "chunk": c, "pos": pos}
                for c, chunk in enumerate(wave) for pos, path in enumerate(chunk.paths)]
        return ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // self.cfg.batch_size)))

    def _run_wave(self, wave: list[Chunk], index: dict[str, int]) -> None:
        import pyarrow.compute as pc

        ensure_ray()
        # With equal resources (CPU actors) Ray Data fuses this decode step into the
        # model actors: each reads with 16 threads, decodes (PIL releases the GIL),
        # then predicts, with no pixels through the object store. GPU actors differ
        # in resources, so decoding then runs in separate CPU tasks feeding them.
        ds = self._dataset(wave).map_batches(
            DecodeImages(self.decode), batch_size=self.cfg.batch_size, batch_format="numpy"
        )
        ds = ds.map_batches(
            BucketPredictor,
            fn_constructor_kwargs={"model_uri": self.ref.uri, "batch_size": self.cfg.batch_size,
                                   "top_k": self.cfg.top_k, "columns": self.columns, "tta": self.cfg.tta},
            batch_size=self.cfg.batch_size,
            batch_format="numpy",
            compute=actor_pool(self.cfg.actors),
            num_cpus=self.cfg.num_cpus,
            num_gpus=self.cfg.num_gpus,
        )
        pending: dict[int, list] = {}
        got = [0] * len(wave)
        start = time.time()
        batches = ds.iter_batches(batch_size=None, batch_format="pyarrow")
        try:
            for block in batches:
                for c in pc.unique(block["chunk"]).to_pylist():
                    part = block.filter(pc.equal(block["chunk"], c))
                    pending.setdefault(c, []).append(part)
                    got[c] += part.num_rows
                    self.bar.update(part.num_rows, part.num_rows - part.column("error").null_count)
                    if got[c] == len(wave[c].paths):
                        self._write_part(wave[c], pending.pop(c), index, start)
        finally:
            close = getattr(batches, "close", None)
            if close:
                close()  # stop the streaming execution now, not at garbage collection
            self.predict_seconds += time.time() - start
        missing = [wave[c].name for c in range(len(wave)) if got[c] != len(wave[c].paths)]
        if missing:
            raise PredictError(f"{self.out}: rows missing for chunk(s) {missing[:3]} after the run; rerun to retry")

    def _write_part(self, chunk: Chunk, tables: list, index: dict[str, int], start: float) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.concat_tables(tables).sort_by("pos")
        n = table.num_rows
        # Labels never travel through the pipeline: the driver knows them by position.
        written = Written([chunk.labels[i] for i in table.column("pos").to_pylist()],
                          storage.normalize(self.cfg.model), self.ref.uri)
        table = finish_part(table.drop_columns(["chunk", "pos"]), written, self.columns)
        table = table.replace_schema_metadata({"imgrec": json.dumps(
            {"format": FORMAT, "chunk": chunk.name, "rows": n, "checkpoint": self.ref.uri})})
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        uri = PredictionLayout(self.out).part(chunk.name)
        storage.atomic_write(uri, buf.getvalue())  # one PUT on S3, temp + rename locally
        errors = n - table.column("error").null_count
        self.rows_run += n
        self.chunks_run += 1
        elapsed = self.predict_seconds + time.time() - start
        rate = self.rows_run / elapsed if elapsed > 0 else 0.0
        i, total = index[chunk.name], len(self.plan.names)
        self.bar.line(f"[predict] chunk {i}/{total} {chunk.name}: {n} files, {errors} errors; {rate:.1f} images/s",
                      self.say)
        if self.on_chunk:
            self.on_chunk(ChunkDone(i, total, chunk.name, uri, n, errors))

