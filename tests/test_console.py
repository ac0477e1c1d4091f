"""The quiet console (``imgrec.console``): TensorFlow's start-up lines, the CUDA
probe on a GPU-less node and Ray's chatter stay off the console, in the driver and
in every Ray worker, while a genuine TensorFlow C++ error still shows; ``-v`` and
``IMGREC_LOG_LEVEL`` bring everything back.

Real parts: the filter process on a real file descriptor 2, TensorFlow's own
logging in a Ray worker of the session cluster (started with imgrec's runtime env,
see conftest), and (slow) a whole ``imgrec train`` in its own process."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import time

import pytest

from imgrec import console, runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lines as they reached `make demo`'s console before (issue 18).
NOISE_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796591030.544633    9125 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders.",
    "\x1b[36m(RayTrainWorker pid=8320)\x1b[0m I0000 00:00:1796591030.546089    9125 cudart_stub.cc:31] Could not "
    "find cuda drivers on your machine, GPU will not be used.",
    "I0000 00:00:1796591030.932052    9125 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations, rebuild "
    "TensorFlow with the appropriate compiler flags.",
    "\x1b[36m(RayTrainWorker pid=8320)\x1b[0m Reporting training result 1: TrainingReport(checkpoint=None, "
    "metrics={'epoch': 1, 'loss': 2.135828067094852})",
    "Failed to query Ray Train Controller actor state. State API may be temporarily unavailable.",
    "[2026-12-06 21:05:30,971 E 5965 5965] core_worker.cc:2465: Actor with class name: 'MapWorker(Predictor)' "
    "and ID: '60c4' has constructor arguments in the object store and max_restarts > 0.",
    "Progress bars disabled. To enable, set `ray.data.DataContext.get_current().enable_progress_bars = True`.",
    "\x1b[36m(DatasetManager pid=8574)\x1b[0m /x/ray/data/_internal/execution/interfaces/execution_options.py:436: "
    "RayDeprecationWarning: `ExecutionOptions.exclude_resources` is deprecated and will be removed after Jan",
    "\x1b[36m(DatasetManager pid=8574)\x1b[0m   self.exclude_resources = exclude_resources",
]
CUINIT = ("E0000 00:00:1796591045.385271    9591 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
          "Failed call to cuInit: UNKNOWN ERROR (303)")
PERSON_LINES = [
    "[imgrec] epoch 3/8 loss 1.3703 acc 0.4375 val_loss 0.9357 val_acc 0.6343 (624 images, 302 img/s)",
    "E0000 00:00:1796591045.385271    9591 logging_ops.cc:173] planted genuine error",
    "F0000 00:00:1796591045.385271    9591 tensor.cc:12] Check failed: dims() == 2",
    "Traceback (most recent call last):",
]
PLANTED = "imgrec-planted-genuine-error"


def test_the_noise_patterns_drop_the_noise_and_nothing_a_person_needs():
    for line in NOISE_LINES:
        assert console.matches_noise(line), line
    for line in PERSON_LINES:
        assert not console.matches_noise(line), line
    # The CUDA probe's ERROR line is noise only where no NVIDIA device exists (this machine).
    assert console.matches_noise(CUINIT) == console.cuda_probe_is_noise()
    assert console.cuda_probe_is_noise() == (not glob.glob("/dev/nvidia[0-9]*"))


_WRITER = f"""
import os, sys
from imgrec import console
console.quiet_process()
lines = {NOISE_LINES + PERSON_LINES!r}
os.write(2, ("\\n".join(lines) + "\\n").encode())  # as TensorFlow's C++ writes: straight to the descriptor
print("python stderr", file=sys.stderr, flush=True)
os.write(2, b"no newline before the crash")
os._exit(3)  # died: the filter process still hands on what was written
"""


@pytest.mark.parametrize("level", [None, "DEBUG"])
def test_the_filter_on_descriptor_2_and_verbose(level):
    env = {k: v for k, v in os.environ.items() if k != console.LOG_LEVEL_ENV}
    env["PYTHONPATH"] = REPO
    if level:
        env[console.LOG_LEVEL_ENV] = level
    done = subprocess.run([sys.executable, "-c", _WRITER], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    err = done.stderr
    for line in PERSON_LINES + ["python stderr", "no newline before the crash"]:
        assert line in err
    shown = [line for line in NOISE_LINES if line in err]
    assert shown == ([] if level is None else NOISE_LINES)


def test_runtime_env_merges_with_a_jobs_own():
    """``ray job submit --runtime-env``: the job's variables win, its setup hook is
    chained behind ours, and nothing is repeated (Ray refuses a repeated field)."""
    env, override = runtime.runtime_env({})
    assert env["worker_process_setup_hook"] == console.SETUP_HOOK and not override
    job = {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "0", "X": "1"}, "worker_process_setup_hook": "mypkg.setup",
           "working_dir": "gcs://x.zip"}
    env, override = runtime.runtime_env(job)
    assert override
    assert "TF_CPP_MIN_LOG_LEVEL" not in env.get("env_vars", {}) and "X" not in env.get("env_vars", {})
    assert env["env_vars"][console.CHAINED_HOOK_ENV] == "mypkg.setup"
    assert "working_dir" not in env


def _worker_log(ray, pid: int) -> str:
    logs = ray._private.worker.global_worker.node.get_logs_dir_path()
    paths = glob.glob(os.path.join(logs, f"worker-*-{pid}.err"))
    assert paths, f"no worker log for pid {pid} in {logs}"
    return "".join(open(p, errors="replace").read() for p in paths)


def test_a_worker_keeps_a_real_tensorflow_error_and_drops_the_noise(ray_cluster):
    """A Ray worker of the session cluster (imgrec's runtime env) loads TensorFlow,
    and a genuine C++ ERROR line is logged through TensorFlow's own logging: the
    worker's console has that line and none of TensorFlow's start-up lines."""
    ray = ray_cluster

    @ray.remote(num_cpus=0)
    def plant():
        import tensorflow as tf

        tf.print(PLANTED, output_stream=tf.compat.v1.logging.error)  # LOG(ERROR) in TensorFlow's C++
        return os.getpid(), os.environ.get("TF_CPP_MIN_LOG_LEVEL")

    pid, level = ray.get(plant.remote(), timeout=120)
    assert level == "2"  # from the runtime env, before TensorFlow loaded
    deadline = time.time() + 15  # the filter process hands lines on as they come
    while PLANTED not in (text := _worker_log(ray, pid)) and time.time() < deadline:
        time.sleep(0.5)
    assert re.search(rf"^E\d{{4}} .*\] {PLANTED}$", text, re.M), text[-2000:]
    assert not [line for line in text.splitlines() if console.matches_noise(line)]
    assert "oneDNN custom operations" not in text


@pytest.mark.slow
def test_a_small_training_run_prints_a_few_lines_for_a_person(tmp_path):
    """``imgrec train`` in its own process and its own local Ray cluster, output to a
    pipe: no noise line, every line one of imgrec's or Ray's start notice, one line
    per epoch; with ``-v`` TensorFlow's start-up lines are back."""
    from imgrec import synth

    data = str(tmp_path / "data")
    synth.make_dataset(data, task="colors", classes=2, per_class=40, test_per_class=8, image_size=(32, 32), seed=3)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", console.LOG_LEVEL_ENV)}
    env["PYTHONPATH"] = REPO
    args = [sys.executable, os.path.join(REPO, "jobs", "train.py"), "--data", data, "--storage",
            str(tmp_path / "runs"), "--model", "small_cnn", "--epochs", "2", "--workers", "1", "--batch-size", "16",
            "--image-size", "32"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    out = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 0, "\n".join(out[-40:])
    assert not [line for line in out if console.matches_noise(line)]
    for gone in ("TrainingReport(", "oneDNN", "cuInit", "Execution plan of Dataset", "Requesting resources",
                 "Collective all_reduce", "PlacementGroupCleaner"):
        assert not [line for line in out if gone in line], gone
    epochs = [line for line in out if re.match(r"\[imgrec\] epoch \d/2 loss ", line)]
    assert len(epochs) == 2
    assert len(out) < 20, "\n".join(out)
