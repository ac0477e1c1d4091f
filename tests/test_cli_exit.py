"""Exit codes: 2 for a usage error (a bad option or value, a URI that is not there),
1 for a runtime failure once the work started; each is one line naming what to do,
on stderr, and ``-v`` gives the whole traceback instead."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from imgrec import console
from imgrec.cli import app
from imgrec.cli_common import FAILURE_EXIT, USAGE_EXIT, clear_errors
from imgrec.train import NonFiniteLossError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _job(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", console.LOG_LEVEL_ENV)}
    full["PYTHONPATH"] = REPO
    return subprocess.run([sys.executable, os.path.join(REPO, "jobs", "train.py"), *args], capture_output=True,
                          text=True, timeout=120, env={**full, **(env or {})})


def test_a_jobs_usage_error_exits_2_with_one_line():
    """The process's own exit code, through ``cli.main`` and the quiet console."""
    done = _job("--data", "/nowhere/at/all")
    assert done.returncode == USAGE_EXIT == 2, done.stderr
    assert done.stderr.strip().splitlines() == ["error: --data: /nowhere/at/all: no such file or folder; check "
                                                "the path"]


@pytest.mark.parametrize("args, says", [
    (["train", "--data", "/d", "--lr", "-1"], "--lr must be > 0"),  # a value out of range
    (["train", "--data", "/d", "--no-such-option"], "No such option"),  # click's own usage error
])
def test_usage_errors_exit_2(args, says):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == USAGE_EXIT, result.output
    assert len([line for line in result.output.splitlines() if says in line]) == 1, result.output
    assert "Traceback" not in result.output


def _exit_of(exc: BaseException) -> int:
    with pytest.raises(typer.Exit) as raised, clear_errors():
        raise exc
    return raised.value.exit_code


def test_runtime_failures_exit_1_with_what_to_do(ray_cluster, capsys, monkeypatch):
    monkeypatch.delenv(console.LOG_LEVEL_ENV, raising=False)
    # imgrec's own failure already says what to do: shown as it is.
    assert _exit_of(NonFiniteLossError("run r: loss became non-finite in epoch 2; lower the learning rate")) == 1
    assert capsys.readouterr().err.strip() == "error: run r: loss became non-finite in epoch 2; lower the learning rate"

    # A failure inside Ray (what a crashed worker looks like to the driver): one line
    # with its type and first line, and how to see the rest.
    @ray_cluster.remote(num_cpus=0)
    def fails():
        raise OSError("disk full while writing the checkpoint")

    try:
        ray_cluster.get(fails.remote())
    except Exception as exc:  # RayTaskError(OSError)
        caught = exc
    assert _exit_of(caught) == FAILURE_EXIT == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "disk full while writing the checkpoint" in err[0]
    assert "rerun with -v for the full traceback" in err[0]

    # -v: the exception itself goes on, with its traceback.
    monkeypatch.setenv(console.LOG_LEVEL_ENV, "DEBUG")
    with pytest.raises(OSError), clear_errors():
        raise OSError("disk full")
