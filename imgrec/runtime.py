"""The process runtime every entry point shares: Ray start or connect with the
quiet console in every worker (``imgrec.console``), Ray Data's own progress bars
off where imgrec draws its own, and the one way a Ray Train worker prints a line
for the driver.

Nothing here imports Keras or TensorFlow; Ray is imported only when a cluster is
asked for. Any module (data, predict, tune, features, the CLI, the jobs) may
import this one; it imports only ``imgrec.console``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys

from imgrec import console

# Test switches that must reach the processes imgrec starts (Train workers, Tune
# trial drivers): a worker of a running cluster does not see the driver's later
# environment, so ``forwarded_env`` hands these on through Ray's runtime env.
FAULT_ENV = "IMGREC_FAULT_INJECTION"
FORWARDED_ENV = (FAULT_ENV, console.LOG_LEVEL_ENV)
# Where a Ray job's driver finds the runtime env ``ray job submit --runtime-env`` gave the job.
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def ensure_ray(num_cpus: int | None = None) -> None:
    """Connect to the running cluster (``RAY_ADDRESS`` or a job's own), or start a
    local one with more logical CPUs than cores so Ray Data and Train never starve.
    Either way every worker of this job runs ``imgrec.console.worker_setup`` first
    (``runtime_env``); an already connected Ray is left as it is."""
    import ray

    _bars_off_where_imgrec_draws()
    ray_data_sees_its_cpus_sooner()
    if ray.is_initialized():
        return
    console.quiet_process()
    env, override = runtime_env(_job_runtime_env())
    with _override_job_env(override):
        if os.environ.get("RAY_ADDRESS"):
            ray.init(runtime_env=env)
            return
        # Workers of a local cluster inherit this process's environment, so the AWS
        # credential chain and AWS_ENDPOINT_URL reach them without being copied into
        # Ray's job config (where keys would be stored and shown).
        ray.init(num_cpus=num_cpus or local_cluster_cpus(), include_dashboard=False, runtime_env=env)


# Ray Data (2.60) starts every execution (each materialize, each pass over a dataset)
# with no resources: its resource manager learns the execution's share from the
# autoscaling coordinator actor, answers from an empty cache until that reply lands,
# and asks again only GLOBAL_LIMITS_UPDATE_INTERVAL_S (1 s) later. Until then each
# operator runs one task at a time: measured, 4 tasks of 0.3 s ran one after another
# in one worker (1.37 s) instead of together (0.42 s), and a cold 4000-photo decode
# took 1.69 s instead of 1.33. Asking every 0.1 s ends that with the first reply; the
# ask is an async call that returns a dict, one in flight at a time.
RAY_DATA_LIMITS_REFRESH_S = 0.1


def ray_data_sees_its_cpus_sooner() -> None:
    """Shorten Ray Data's resource-limit refresh (above) in this process: the
    executors a driver runs (materialize, iteration, prediction). A Ray without
    that internal is left as it is."""
    try:
        from ray.data._internal.execution.resource_manager import ResourceManager
    except ImportError:
        return
    if getattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", 0) > RAY_DATA_LIMITS_REFRESH_S:
        ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S = RAY_DATA_LIMITS_REFRESH_S


def runtime_env(job_env: dict | None = None) -> tuple[dict, bool]:
    """The runtime env imgrec adds to a job: the quiet console's environment and
    setup hook, and ``FORWARDED_ENV``. Ray refuses a driver env that repeats a
    field or variable of the job's (``ray job submit --runtime-env``), so the job's
    variables win and are left out here; a job's own ``worker_process_setup_hook``
    is called by ours (``console.CHAINED_HOOK_ENV``), which then overrides it
    (the returned flag: merge with ``RAY_OVERRIDE_JOB_RUNTIME_ENV``)."""
    job_env = job_env or {}
    taken = set(job_env.get("env_vars") or {})
    env_vars = {k: v for k, v in {**console.quiet_env(), **forwarded_env()}.items() if k not in taken}
    theirs = job_env.get("worker_process_setup_hook")
    if theirs and theirs != console.SETUP_HOOK:
        env_vars[console.CHAINED_HOOK_ENV] = theirs
    env = {"worker_process_setup_hook": console.SETUP_HOOK, **({"env_vars": env_vars} if env_vars else {})}
    return env, bool(theirs)


def _job_runtime_env() -> dict:
    raw = os.environ.get(JOB_CONFIG_ENV)
    return (json.loads(raw).get("runtime_env") or {}) if raw else {}


@contextlib.contextmanager
def _override_job_env(on: bool):
    previous = os.environ.get("RAY_OVERRIDE_JOB_RUNTIME_ENV")
    if on:
        os.environ["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"
    try:
        yield
    finally:
        if on and previous is None:
            os.environ.pop("RAY_OVERRIDE_JOB_RUNTIME_ENV", None)


# What a Ray Train controller starts with (Ray Train hands these variables from the
# driver's environment to its controller; a user's own value wins). Its health
# check runs every 2 s by default, and a run's end waits on those checks (the train
# function returned, then the worker group shut down): 4.7 s from the last epoch to
# fit() returning, 0.5 s at 0.25 s (seed_cifar on cifar10-dev); each check is one small
# call per worker.
CONTROLLER_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}
# On a cluster that is this machine alone no node is ever preempted: the watcher
# actor (one more process to start on the run's critical path) is left out.
# Measured, 3 runs each: Train start 6.2 s against 7.0, fit() 23.1 s against 24.9.
LOCAL_CONTROLLER_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


@contextlib.contextmanager
def controller_env():
    """``CONTROLLER_ENV`` (and on a one-node cluster of this machine,
    ``LOCAL_CONTROLLER_ENV``) in this process's environment while a trainer starts."""
    wanted = {**CONTROLLER_ENV, **(LOCAL_CONTROLLER_ENV if _only_this_node() else {})}
    added = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _only_this_node() -> bool:
    import ray

    if not ray.is_initialized():
        return False
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return len(alive) == 1 and alive[0]["NodeID"] == ray.get_runtime_context().get_node_id()


def own_progress(fn):
    """Decorate a function that draws imgrec's own progress: Ray Data's progress
    bars are off for the datasets it creates (each copies the context it was made
    in), and back as the caller had them when it returns. Library users' own
    datasets keep theirs. Ray is not imported here: the switch happens when the
    function calls ``ensure_ray``, after its pre-flight (which must run without Ray)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        entry: dict[str, bool] = {}
        _OWN_PROGRESS.append(entry)
        try:
            return fn(*args, **kwargs)
        finally:
            _OWN_PROGRESS.remove(entry)
            if "previous" in entry:
                import ray.data

                ray.data.DataContext.get_current().enable_progress_bars = entry["previous"]

    return wrapper


_OWN_PROGRESS: list[dict[str, bool]] = []  # the own_progress calls in flight, innermost last


def _bars_off_where_imgrec_draws() -> None:
    if not _OWN_PROGRESS or "previous" in _OWN_PROGRESS[-1]:
        return
    import ray.data

    ctx = ray.data.DataContext.get_current()
    _OWN_PROGRESS[-1]["previous"], ctx.enable_progress_bars = ctx.enable_progress_bars, False


def local_cluster_cpus() -> int:
    """Logical CPUs of a local cluster: three per core (at least 6), so Data,
    Train and a Tune driver are never all waiting on one another's CPU slots."""
    return max(6, (os.cpu_count() or 2) * 3)


def forwarded_env() -> dict[str, str]:
    """The ``FORWARDED_ENV`` variables set in this process."""
    return {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}


def worker_echo(message: str) -> None:
    """One line from a Train worker to the driver, once. Train V2 patches ``print`` to
    log through Train's logger and also tee to the stdout wrapper Ray gives workers,
    so printed lines reached the driver twice; writing to the stream skips the patch."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()
