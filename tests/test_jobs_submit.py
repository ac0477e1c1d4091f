"""The jobs/ entry points submitted with `ray job submit` to a local head started by
cluster/local.sh, as a user would: working dir uploaded, S3 endpoint and credentials
passed through the runtime environment, results checked in the bucket.

A failed job's logs (`ray job logs <id>`) are printed so they show up in the report.

Timings on the shared 2-core machine (load ~11): head start ~25 s, transfer job
~140 s, predict ~35 s, sweep ~200 s, head stop ~40 s. The default suite keeps only
the failing-job case (~2 min with the head); the real runs are marked slow:
    pytest tests/test_jobs_submit.py -m ''
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

# Not imported from conftest: importing it again (as tests.conftest) would pick a new S3 port.
REPO = Path(__file__).resolve().parents[1]
RAY = str(REPO / ".venv" / "bin" / "ray")
LOCAL_SH = str(REPO / "cluster" / "local.sh")
SUBMIT_TIMEOUT = 420  # s; the machine is small and shared
EXCLUDES = [".venv", ".git", "runs", "demo-output", ".pytest_cache", ".ruff_cache", "*.egg-info", "__pycache__"]
S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION",
          "AWS_EC2_METADATA_DISABLED")

pytestmark = pytest.mark.skipif(not os.access(RAY, os.X_OK), reason="no .venv/bin/ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Head:
    def __init__(self, env: dict[str, str]):
        self.env = env  # RAY_ADDRESS / RAY_AUTH_MODE of the local head, plus the test env

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, *args], env=self.env, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)

    def logs(self, job_id: str) -> str:
        try:
            r = self.ray("job", "logs", job_id)
            return r.stdout + r.stderr
        except subprocess.TimeoutExpired:
            return "(ray job logs timed out)"

    def status(self, job_id: str) -> str:
        """The job's state, upper case (SUCCEEDED, FAILED, ...), as `ray job status` reports it."""
        r = self.ray("job", "status", job_id)
        out = r.stdout + r.stderr
        for state in ("SUCCEEDED", "FAILED", "STOPPED", "RUNNING", "PENDING"):
            if f"Job '{job_id}' {state.lower()}" in out or f"{job_id}': {state}" in out:
                return state
        return out.strip()[-500:]

    def submit(self, *entrypoint: str, timeout: float = SUBMIT_TIMEOUT) -> tuple[str, subprocess.CompletedProcess]:
        """`ray job submit` (blocking: it tails the logs and exits 1 when the job FAILED)."""
        job_id = f"test-{uuid.uuid4().hex[:10]}"
        runtime_env = {"excludes": EXCLUDES, "env_vars": {k: os.environ[k] for k in S3_ENV if k in os.environ}}
        cmd = ["job", "submit", "--submission-id", job_id, "--working-dir", str(REPO),
               "--runtime-env-json", json.dumps(runtime_env), "--", "python", *entrypoint]
        t0 = time.time()
        try:
            r = self.ray(*cmd, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.ray("job", "stop", "--no-wait", job_id)
            print(f"--- ray job logs {job_id} (timed out after {timeout} s) ---\n{self.logs(job_id)}")
            pytest.fail(f"job {job_id} did not finish within {timeout} s")
        print(f"job {job_id}: exit {r.returncode} after {time.time() - t0:.0f} s")
        return job_id, r

    def submit_ok(self, *entrypoint: str) -> str:
        job_id, r = self.submit(*entrypoint)
        status = self.status(job_id)
        if r.returncode != 0 or status != "SUCCEEDED":
            print(f"--- ray job submit output ---\n{r.stdout[-5000:]}\n{r.stderr[-3000:]}")
            print(f"--- ray job logs {job_id} ---\n{self.logs(job_id)}")
            pytest.fail(f"job {job_id} did not succeed (exit {r.returncode}): {status}")
        return job_id


@pytest.fixture(scope="module")
def head(s3_server):
    """A local Ray head with the job server (cluster/local.sh) on free ports, stopped afterwards."""
    # Short path: Ray's temp dir holds Unix sockets (108-byte path limit).
    state = tempfile.mkdtemp(prefix="imgrec-ray-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(RAY_DASHBOARD_PORT=str(_free_port()), RAY_GCS_PORT=str(_free_port()), IMGREC_RAY_STATE=state)
    try:
        r = subprocess.run([LOCAL_SH, "start", "--num-cpus", "6"], env=env, cwd=REPO, capture_output=True,
                           text=True, timeout=240)
        assert r.returncode == 0, f"cluster/local.sh start failed:\n{r.stdout}\n{r.stderr}"
        for line in r.stdout.splitlines():
            if line.startswith("export ") and "=" in line:
                key, _, value = line[len("export "):].partition("=")
                env[key.strip()] = value.strip()
        assert env.get("RAY_ADDRESS", "").startswith("http://127.0.0.1:"), r.stdout
        yield Head(env)
    finally:
        subprocess.run([LOCAL_SH, "stop"], env=env, cwd=REPO, capture_output=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_data(session_bucket):
    from imgrec import synth

    uri = f"{session_bucket}/data/submit-colors"
    synth.make_dataset(uri, task="colors", classes=3, per_class=20, test_per_class=4, image_size=(32, 32), seed=3)
    return uri


def _transfer_args(data: str, storage: str, run_name: str) -> list[str]:
    return ["jobs/transfer.py", "--data", data, "--storage", storage, "--run-name", run_name,
            "--weights", "none", "--model", "mobilenet", "--alpha", "0.25", "--image-size", "32",
            "--workers", "1", "--epochs", "1", "--batch-size", "16", "--freeze-depth", "0", "--augment", "none"]


@pytest.fixture(scope="module")
def submitted_run(head, tiny_data, session_bucket):
    head.submit_ok(*_transfer_args(tiny_data, f"{session_bucket}/submit-runs", "sub-transfer"))
    return f"{session_bucket}/submit-runs/sub-transfer"


@pytest.mark.slow
def test_transfer_job_writes_checkpoint_and_report(submitted_run):
    from imgrec import checkpoint, storage

    ref = checkpoint.resolve(submitted_run)
    assert ref.uri.startswith(submitted_run + "/")
    assert storage.exists(f"{submitted_run}/report.html")


@pytest.mark.slow
def test_predict_job_writes_parquet(head, submitted_run, tiny_data, session_bucket):
    from imgrec.predict import read_predictions

    out = f"{session_bucket}/predictions/sub"
    head.submit_ok("jobs/predict.py", "--model", submitted_run, "--input", f"{tiny_data}/test", "--output", out,
                   "--actors", "1", "--batch-size", "16")
    df = read_predictions(out)
    assert len(df) == 3 * 4


def test_failing_job_ends_failed_with_clear_logs(head, session_bucket):
    from imgrec import storage

    empty = f"{session_bucket}/data/nothing-here"
    assert not storage.exists(empty)
    job_id, r = head.submit(*_transfer_args(empty, f"{session_bucket}/submit-runs", "sub-fail"), timeout=240)
    logs = head.logs(job_id)
    print(f"--- ray job logs {job_id} (expected to fail) ---\n{logs[-3000:]}")
    assert r.returncode != 0
    assert head.status(job_id) == "FAILED"
    # The CLI reports library errors as one line naming the URI, not a traceback.
    assert f"{empty}: no files found" in logs
    assert "Traceback" not in logs


@pytest.mark.slow
def test_sweep_job_writes_best_json(head, tiny_data, session_bucket):
    from imgrec import storage

    sweep = f"{session_bucket}/submit-sweeps/sub-sweep"
    head.submit_ok("jobs/sweep.py", "--data", tiny_data, "--storage", f"{session_bucket}/submit-sweeps",
                   "--name", "sub-sweep", "--weights", "none", "--model", "mobilenet", "--alpha", "0.25",
                   "--image-size", "32", "--samples", "2", "--epochs", "1", "--workers", "1",
                   "--batch-size", "16", "--freeze-depths", "0", "--augment", "none", "--no-evaluate")
    best = json.loads(storage.read_text(f"{sweep}/best.json"))
    assert best
