"""The one thread that talks to MLflow for a ``train`` or ``sweep`` call.

Every MLflow call runs on it, in order: tasks handed in with ``submit`` and,
every ``POLL_S``, each watched run's ``poll``. The first call that fails prints
one warning line and turns the session off (later tasks are dropped), so an
unreachable or failing tracking server never fails training and never makes it
wait: MLflow's HTTP retries are reduced and its timeout shortened (unless the
environment sets them), and ``close`` waits a bounded time.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from imgrec.tracking.uris import client_uri, is_local_folder

POLL_S = 2.0  # how often a watched run's history.json is read
CLOSE_WAIT_S = 120.0  # the most a finished run waits for its last uploads (artifacts)
EXPERIMENT = "imgrec"  # unless MLFLOW_EXPERIMENT_NAME names one
# MLflow's defaults retry a request 7 times with backoff (minutes) and time out after
# 120 s; a driver's background thread should give up after seconds.
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
_STOP = object()


class Session:
    """A tracking URI's client, experiment and worker thread."""

    def __init__(self, uri: str):
        self.uri = uri
        self.tasks: queue.Queue = queue.Queue()
        self.watched: list[Any] = []  # objects with poll(session), polled every POLL_S
        self.failed = False
        self._client = None
        self._experiment_id: str | None = None
        self._thread = threading.Thread(target=self._loop, name="imgrec-tracking", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ used from the driver's thread

    def submit(self, task: Callable[[Session], None]) -> None:
        if not self.failed:
            self.tasks.put(task)

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Run what is queued, then stop; wait at most ``wait_s``."""
        self.tasks.put(_STOP)
        self._thread.join(wait_s)
        if self._thread.is_alive() and not self.failed:
            self.failed = True
            _warn(f"tracking to {self.uri} still busy after {wait_s:.0f} s; the rest of this run is not logged")

    # ------------------------------------------------------------------ used on the session's thread

    @property
    def client(self):
        if self._client is None:
            for name, value in HTTP_ENV.items():
                os.environ.setdefault(name, value)
            if is_local_folder(self.uri):  # MLflow 3 refuses its folder store unless asked for it
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=client_uri(self.uri))
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
            found = self.client.get_experiment_by_name(name)
            if found is None:
                try:
                    self._experiment_id = self.client.create_experiment(name)
                except Exception:  # another driver created it first
                    self._experiment_id = self.client.get_experiment_by_name(name).experiment_id
            else:
                self._experiment_id = found.experiment_id
        return self._experiment_id

    def find_run(self, tag: str, value: str) -> Any | None:
        """The latest run of the experiment tagged ``tag=value`` (a resumed run continues it)."""
        if "'" in value:
            return None
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{tag}` = '{value}'",
                                       max_results=1, order_by=["attributes.start_time DESC"])
        return runs[0] if runs else None

    def _loop(self) -> None:
        last_poll = time.monotonic()
        while True:
            try:
                task = self.tasks.get(timeout=max(0.05, POLL_S - (time.monotonic() - last_poll)))
            except queue.Empty:
                task = None
            if task is _STOP:  # after the tasks handed in before it (a run's finish polls once more)
                return
            if task is not None:
                self._run(task)
            if time.monotonic() - last_poll >= POLL_S:
                self._poll()
                last_poll = time.monotonic()

    def _poll(self) -> None:
        for run in list(self.watched):
            self._run(run.poll)

    def _run(self, task: Callable[[Session], None]) -> None:
        if self.failed:
            return
        try:
            task(self)
        except Exception as exc:  # never into training: one line, then tracking is off
            self.failed = True
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            _warn(f"tracking to {self.uri} failed ({type(exc).__name__}: {reason}); training goes on untracked")


def _warn(text: str) -> None:
    print(f"[imgrec] warning: {text}", file=sys.stderr, flush=True)
