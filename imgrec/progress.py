"""Live progress, drawn by the driver: a bar (tqdm) when stdout is a terminal, one
plain line per epoch (or per prediction part) when it is not (a Ray job's log, CI).

Training: rank 0's ``ProgressHook`` (``imgrec.hooks``) sends its events to a small
Ray actor, the ``Board``; the driver polls it and draws. A bar drawn inside a
worker would reach the driver as a line per refresh, through Ray's log monitor.
Events are plain dicts: ``{"kind": "step", "epoch", "epochs", "step", "steps",
"loss", "accuracy", "images_per_s"}``, ``{"kind": "epoch", "epoch", "epochs",
"metrics"}``, ``{"kind": "say", "text"}`` (any other line of the run's) and
``{"kind": "end"}``, which rank 0 waits for, so the driver's last poll has them all.

Batch prediction: ``FileBar`` counts files done out of the total, with errors and
the rate, in the driver that collects the rows.
"""

from __future__ import annotations

import shutil
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

POLL_S = 0.5  # the driver asks the board this often
STEP_EVERY_S = 0.5  # rank 0 sends a step event at most this often (each one is a host sync)
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "images", "images_per_s")


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def _size() -> dict[str, int]:
    """The terminal's size for tqdm (``COLUMNS``/``LINES``, else the terminal's, else
    100x24): on a terminal that reports 0x0, tqdm would hide its bar below row 0."""
    size = shutil.get_terminal_size((100, 24))
    return {"ncols": size.columns, "nrows": size.lines}


def epoch_line(event: dict[str, Any]) -> str:
    """The one line per epoch, terminal or not."""
    m = event["metrics"]
    return (f"[imgrec] epoch {event['epoch']}/{event['epochs']} loss {m['loss']:.4f} acc {m['accuracy']:.4f} "
            f"val_loss {m['val_loss']:.4f} val_acc {m['val_accuracy']:.4f} "
            f"({m['images']:.0f} images, {m['images_per_s']:.0f} img/s)")


class TrainingView:
    """Draws a run's events: per epoch a bar over its steps (loss, accuracy, img/s)
    on a terminal, then the epoch's line; on anything else only the lines."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None):
        self.stream = stream or sys.stdout
        self.live = is_terminal(self.stream) if live is None else live
        self.bar = None
        self.bar_epoch = None

    def show(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == "step" and self.live:
            self._step(event)
        elif kind == "epoch":
            self._line(epoch_line(event))
            self._close_bar()
        elif kind == "say":
            self._line(f"[imgrec] {event['text']}")

    def _step(self, event: dict[str, Any]) -> None:
        from tqdm import tqdm

        if self.bar is None or self.bar_epoch != event["epoch"]:
            self._close_bar()
            self.bar = tqdm(total=event["steps"], desc=f"epoch {event['epoch']}/{event['epochs']}", unit="step",
                            file=self.stream, leave=False, **_size())
            self.bar_epoch = event["epoch"]
        self.bar.n = event["step"]
        self.bar.set_postfix_str(f"loss {event['loss']:.4f} acc {event['accuracy']:.4f} "
                                 f"{event['images_per_s']:.0f} img/s", refresh=False)
        self.bar.refresh()

    def _line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar, self.bar_epoch = None, None

    def close(self) -> None:
        self._close_bar()


class _Board:
    """The actor between rank 0 and the driver: events in, drained by the driver."""

    def __init__(self):
        self.events: list[dict[str, Any]] = []

    def put(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def take(self) -> list[dict[str, Any]]:
        events, self.events = self.events, []
        return events


class TrainingProgress:
    """``with TrainingProgress() as progress:`` around ``trainer.fit()``: the board
    (``progress.board``, handed to the workers in the loop config) and a thread
    that polls it and draws through a ``TrainingView``."""

    def __init__(self, view: TrainingView | None = None):
        import ray

        self.view = view or TrainingView()
        self.board = ray.remote(num_cpus=0)(_Board).remote()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> TrainingProgress:
        self._thread = threading.Thread(target=self._poll, name="imgrec-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import ray

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._drain()  # what rank 0 sent last
        self.view.close()
        try:
            ray.kill(self.board)
        except Exception:  # Ray already gone: the actor with it
            pass
        return None

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            self._drain()

    def _drain(self) -> None:
        import ray

        try:
            events = ray.get(self.board.take.remote(), timeout=10)
        except Exception:  # a slow or restarting cluster: the next poll gets them
            return
        for event in events:
            self.view.show(event)


class FileBar:
    """Batch prediction's progress: files done of ``total``, errors and the rate,
    as a bar on a terminal; elsewhere nothing (the caller prints a line per part)."""

    def __init__(self, total: int, desc: str = "[predict]", stream: TextIO | None = None,
                 live: bool | None = None):
        self.stream = stream or sys.stdout
        self.live = is_terminal(self.stream) if live is None else live
        self.errors = 0
        self.bar = None
        if self.live:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="file", file=self.stream, **_size())
            self.bar.set_postfix_str("0 errors", refresh=False)

    def update(self, files: int, errors: int = 0) -> None:
        self.errors += errors
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.errors} errors", refresh=False)
            self.bar.update(files)

    def line(self, text: str, say: Callable[[str], None]) -> None:
        """A part's line: printed when there is no bar (which already shows it)."""
        if self.bar is None:
            say(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
