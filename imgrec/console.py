"""The quiet console: what every process imgrec starts does before TensorFlow or
Ray's libraries print anything, so that the lines a person reads are imgrec's own.

TensorFlow prints its start-up lines (``oneDNN custom operations are on``, ``Could
not find cuda drivers``, ...) from static initialisers, before its logging reads
``TF_CPP_MIN_LOG_LEVEL``: no environment variable reaches them (measured, TF 2.21).
So file descriptor 2 of each process goes through a small filter process that drops
exactly those lines (``NOISE``) and passes everything else, a genuine TensorFlow
C++ error included. A separate process, not a thread: when the process it filters
dies, the lines written just before (a fatal check, a traceback) still come out.
The CUDA probe's ``failed call to cuInit`` is an ERROR line; it is dropped only on
a node with no NVIDIA device, where it says nothing (``cuda_probe_is_noise``).

``IMGREC_LOG_LEVEL=DEBUG`` or ``INFO`` (``-v/--verbose`` sets it) turns all of this
off. ``worker_setup`` is the Ray ``worker_process_setup_hook`` ``imgrec.runtime``
installs in every worker of a cluster imgrec starts or connects to.

A leaf: imports no other imgrec module, and neither TensorFlow nor Ray at import.
"""

from __future__ import annotations

import atexit
import glob
import importlib
import logging
import os
import re
import subprocess
import sys
import threading
import warnings

LOG_LEVEL_ENV = "IMGREC_LOG_LEVEL"  # DEBUG | INFO: everything; WARNING (the default): the quiet console
VERBOSE_LEVELS = ("DEBUG", "INFO")
# A job's own setup hook, called by ours (a runtime env holds one hook; see imgrec.runtime)
CHAINED_HOOK_ENV = "IMGREC_CHAINED_SETUP_HOOK"
SETUP_HOOK = "imgrec.console.worker_setup"

# Set in every process imgrec starts, unless the user set them: TensorFlow's C++
# INFO and WARNING lines after start-up, and Ray Data's INFO lines ("Starting
# execution of Dataset ...", its execution plan) in every Data actor.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "RAY_DATA_LOG_LEVEL": "WARNING"}

# Lines no person needs, from whichever process (a worker's line reaches the driver
# prefixed with its actor's name, so these are searched anywhere in the line).
NOISE = (
    # TensorFlow's start-up, before its logging is initialised (twice per process: two libraries)
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"\] oneDNN custom operations are on\. ",
    r"\] Could not find cuda drivers on your machine, GPU will not be used",
    r"\] This TensorFlow binary is optimized to use available CPU instructions",
    r"To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags",
    # Ray's internals: a per-epoch dump of every metric, a developer notice at ERROR level
    r"Reporting training result \d+: TrainingReport\(",
    r"Failed to query Ray Train Controller actor state",
    r"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store",
    r"Progress bars disabled\. To enable, set `ray\.data\.DataContext",
    r"RayDeprecationWarning: `ExecutionOptions\.exclude_resources` is deprecated",
    r"\bself\.exclude_resources = exclude_resources\s*$",  # the source line that warning quotes
)
CUDA_PROBE = r"failed call to cuInit: .*"

_filter: subprocess.Popen | None = None

# The filter process's program (run with -S -E: no site, no imgrec, a few MB) and
# the variable that hands it the pattern (a command line would show it in ps).
FILTER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stderr_filter.py")
PATTERN_ENV = "IMGREC_NOISE_PATTERN"


def verbose() -> bool:
    """``IMGREC_LOG_LEVEL`` asks for everything (``-v`` sets it to DEBUG)."""
    return os.environ.get(LOG_LEVEL_ENV, "").upper() in VERBOSE_LEVELS


def set_verbose(on: bool) -> None:
    """``-v/--verbose``: this process and (through the runtime env) every worker."""
    if on:
        os.environ[LOG_LEVEL_ENV] = "DEBUG"


def cuda_probe_is_noise() -> bool:
    """TensorFlow probes CUDA in every process; on a node without an NVIDIA device
    the probe's ERROR line says nothing. Where a GPU exists it stays: there it is
    a real failure."""
    return not glob.glob("/dev/nvidia[0-9]*")


def noise_pattern() -> str:
    return "|".join([*NOISE, *([CUDA_PROBE] if cuda_probe_is_noise() else [])])


def quiet_env() -> dict[str, str]:
    """``QUIET_ENV`` less what the user set (theirs wins); empty when verbose."""
    return {} if verbose() else {k: v for k, v in QUIET_ENV.items() if k not in os.environ}


def filter_stderr(worker: bool = False) -> bool:
    """Route this process's file descriptor 2 through the filter process (once per
    process; not when verbose, nor in a driver whose Python stderr was redirected:
    pytest, Jupyter, an IDE show what they capture). Returns whether it is in place."""
    global _filter
    if _filter is not None:
        return True
    if verbose() or (not worker and sys.stderr is not sys.__stderr__):
        return False
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    try:
        # Its own session: a Ctrl-C to the terminal's process group must not kill
        # it before the traceback it would carry.
        _filter = subprocess.Popen([sys.executable, "-S", "-E", FILTER_SCRIPT], stdin=read_end, stdout=original,
                                   stderr=original, start_new_session=True,
                                   env={**os.environ, PATTERN_ENV: noise_pattern()})
        os.dup2(write_end, 2)
    except OSError:
        _filter = None
        os.close(original)
        return False
    finally:
        os.close(read_end)
        os.close(write_end)
    atexit.register(_drain, original)
    return True


def _drain(original: int) -> None:
    """At exit: descriptor 2 back to the original stream (the filter's input ends)
    and the filter given the time to hand on the last lines, so that an error line
    never comes after the shell's prompt."""
    try:
        sys.stderr.flush()
        os.dup2(original, 2)
        _filter.wait(timeout=5)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        pass


def quiet_process(worker: bool = False) -> None:
    """This process's share of the quiet console: the environment TensorFlow reads
    when it loads, the stderr filter, TensorFlow's Python INFO lines off.
    ``worker``: a Ray worker (Ray replaces its ``sys.stderr``)."""
    if verbose():
        return
    os.environ.update(quiet_env())
    filter_stderr(worker)
    # "Using MirroredStrategy ...", "Collective all_reduce tensors ...": INFO for developers
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"`ExecutionOptions\.exclude_resources` is deprecated")


def _quiet_cleaner_thread() -> None:
    """Ray Train's placement-group cleaner asks the state API (the dashboard, which a
    local imgrec cluster does not start) whether the controller lives; without it the
    cleaner's thread dies with a traceback on every run. The controller's own exit
    still frees the placement group. Only that thread's failure is kept off the console."""
    previous = threading.excepthook

    def hook(args):
        if args.thread is not None and args.thread.name == "PlacementGroupCleanerMonitor":
            logging.getLogger("ray.train").debug("placement group cleaner stopped: %r", args.exc_value)
            return
        previous(args)

    threading.excepthook = hook


def worker_setup() -> None:
    """Ray's ``worker_process_setup_hook``: runs in each worker process before its
    first task, before TensorFlow loads; then a job's own hook, if it had one."""
    if not verbose():
        try:
            quiet_process(worker=True)
            _quiet_cleaner_thread()
        except Exception as exc:  # a noisy worker, never a broken one
            print(f"imgrec: quiet console not set up in this worker: {exc!r}", file=sys.stderr)
    chained = os.environ.get(CHAINED_HOOK_ENV)
    if chained:
        module, _, name = chained.rpartition(".")
        getattr(importlib.import_module(module), name)()


def matches_noise(line: str) -> bool:
    """Would the filter drop this line? (The tests' check, and a user's.)"""
    return re.search(noise_pattern(), line, re.M) is not None
