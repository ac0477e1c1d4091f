"""The process runtime every entry point shares: Ray start or connect, logging
set-up, and the one way a Ray Train worker prints a line for the driver.

Nothing here imports Keras or TensorFlow; Ray is imported only when a cluster is
asked for. Any module (data, predict, tune, features, the CLI, the jobs) may
import this one; it imports no other imgrec module.
"""

from __future__ import annotations

import logging
import os
import sys

# TensorFlow reads this when it loads: set before any import of it (imgrec.models
# and the predict actors import TensorFlow through Keras).
TF_LOG_LEVEL = "2"
# Test switches that must reach the processes imgrec starts (Train workers, Tune
# trial drivers): a worker of a running cluster does not see the driver's later
# environment, so ``forwarded_env`` hands these on through Ray's runtime env.
FAULT_ENV = "IMGREC_FAULT_INJECTION"
FORWARDED_ENV = (FAULT_ENV,)


def quiet_tensorflow() -> None:
    """TensorFlow's C++ INFO and WARNING lines off, unless the user set a level."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_LOG_LEVEL)


def configure_logging() -> None:
    """Ray Data's per-operator progress logs would drown imgrec's own per-epoch
    lines in a job's output: Ray Data logs warnings and errors only."""
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def ensure_ray(num_cpus: int | None = None) -> None:
    """Connect to the running cluster (``RAY_ADDRESS`` or a job's own), or start a
    local one with more logical CPUs than cores so Ray Data and Train never starve."""
    import ray

    configure_logging()
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    # Workers of a local cluster inherit this process's environment, so the AWS
    # credential chain and AWS_ENDPOINT_URL reach them without being copied into
    # Ray's job config (where keys would be stored and shown).
    ray.init(num_cpus=num_cpus or local_cluster_cpus(), include_dashboard=False)


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
