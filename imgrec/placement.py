"""How many Ray Train workers a run gets, with what resources and TensorFlow pools.

``--workers auto`` (the default): one worker per GPU where the cluster has GPUs;
else one worker per node, holding that node's physical cores less what Ray Data
needs (imgrec starts a local cluster with 3 logical CPUs per core, so Ray's CPU
count is not the number of cores); under ``tune``, the cores are shared by the
trials running at once. A worker's TensorFlow intra-op pool gets the physical
cores of its share of the node, not TensorFlow's default of every core of the
machine (two workers on one node would otherwise run twice as many threads as
there are cores). ``--workers N`` keeps N workers with the given CPUs each.

Ray Data's own tasks (decode, augmentation) run at most as many at once as the
cluster's machines have CPUs (``data_tasks``) where Ray counts more CPUs than that
(imgrec's local cluster: 3 per core): otherwise Data runs three tasks per core, and
each task's first run on a cold worker process costs 1-3 CPU-s of imports (on 2 cores
the first decode of 2,786 photos took 9.8 s at 6 tasks, 6.2 s at 2; warm, 1.4-2.0).

``plan_workers`` is pure (a list of ``NodeView`` in, a ``WorkerPlan`` out);
``cluster_view`` reads the running cluster.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

# Cores a node keeps for Ray Data's per-epoch work (shuffle, augmentation, the
# split coordinator) when a Train worker sizes itself to the rest.
DATA_CORES = 1


@dataclass(frozen=True)
class NodeView:
    """One alive node as the planner sees it."""

    cpus: float  # logical CPUs Ray schedules on the node
    gpus: float
    physical_cores: int
    os_cpus: int | None = None  # CPUs the node's OS counts (threads included); None: physical_cores


@dataclass(frozen=True)
class WorkerPlan:
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    intra_op_threads: int  # TensorFlow's per-worker pools (on CPU, both the worker's share of the cores,
    inter_op_threads: int  # which is TensorFlow's own default for one process per machine)
    reason: str  # one line for the run's log
    data_tasks: int | None = None  # at most this many Ray Data tasks at once; None: Ray's own count

    def describe(self) -> str:
        gpus = f", {self.gpus_per_worker:g} GPU" if self.gpus_per_worker else ""
        return (f"{self.workers} worker(s) x {self.cpus_per_worker:g} CPU{gpus}, TensorFlow "
                f"{self.intra_op_threads} intra-op / {self.inter_op_threads} inter-op threads ({self.reason})")


def plan_workers(nodes: list[NodeView], workers: int | str = "auto", *, cpus_per_worker: float = 1.0,
                 gpus_per_worker: float = 0.0, concurrent_trials: int = 1) -> WorkerPlan:
    """The plan for ``workers`` ("auto" or a count) on a cluster of ``nodes``."""
    nodes = [n for n in nodes if n.cpus > 0 or n.gpus > 0]
    if not nodes:
        raise ValueError("the Ray cluster has no node with CPUs or GPUs; start one (cluster/) and retry")
    plan = _plan(nodes, workers, cpus_per_worker, gpus_per_worker, concurrent_trials)
    return dataclasses.replace(plan, data_tasks=data_tasks(nodes))


def data_tasks(nodes: list[NodeView]) -> int | None:
    """The CPUs the cluster's machines have, where Ray counts more on some node (the
    cap on Ray Data's concurrent tasks); None where Ray counts them as they are, so
    an autoscaling cluster's new nodes are used too. A cap, not bigger tasks: a task
    asking for 3 CPUs could wait forever beside Train workers holding the rest."""
    nodes = [n for n in nodes if n.cpus > 0]
    if not any(n.cpus > (n.os_cpus or n.physical_cores) for n in nodes):
        return None
    return sum(min(int(n.cpus), n.os_cpus or n.physical_cores) for n in nodes)


def _plan(nodes: list[NodeView], workers: int | str, cpus_per_worker: float, gpus_per_worker: float,
          concurrent_trials: int) -> WorkerPlan:
    trials = max(1, int(concurrent_trials))
    if workers != "auto":
        count = int(workers)
        per_node = max(1, math.ceil(count / len(nodes)))
        threads = _threads(min(n.physical_cores for n in nodes), per_node)
        return WorkerPlan(count, cpus_per_worker, gpus_per_worker, threads, threads, f"--workers {count}")
    gpu_nodes = [n for n in nodes if n.gpus >= 1]
    if gpu_nodes:
        count = max(1, int(sum(math.floor(n.gpus) for n in gpu_nodes)) // trials)
        node = min(gpu_nodes, key=lambda n: n.physical_cores / n.gpus)
        cpus = max(1, (node.physical_cores - DATA_CORES) // math.floor(node.gpus))
        return WorkerPlan(count, float(cpus), 1.0, _threads(node.physical_cores, math.floor(node.gpus)), 2,
                          f"auto: one per GPU, {trials} trial(s) at once")
    node = min(nodes, key=lambda n: n.physical_cores)
    cores = max(1, node.physical_cores - DATA_CORES)
    cpus = max(1.0, math.floor(cores / trials)) if trials > 1 else float(cores)
    threads = _threads(node.physical_cores, trials)
    return WorkerPlan(len(nodes), cpus, 0.0, threads, threads,
                      f"auto: one per node of {node.physical_cores} cores, {DATA_CORES} kept for Ray Data"
                      + (f", shared by {trials} trials" if trials > 1 else ""))


def _threads(physical_cores: int, workers_on_node: int) -> int:
    """A worker's intra-op pool: its share of the node's physical cores."""
    return max(1, physical_cores // max(1, workers_on_node))


def physical_cores() -> int:
    """Physical cores of this machine (psutil ships with Ray; os.cpu_count counts threads)."""
    try:
        import psutil

        return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except ImportError:
        return os.cpu_count() or 1


def _node_cpus() -> tuple[int, int]:
    return physical_cores(), os.cpu_count() or 1


def cluster_view() -> list[NodeView]:
    """The alive nodes of the connected Ray cluster, each with its physical core
    and OS CPU counts read on the node itself (one zero-CPU task per node)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    alive = [n for n in ray.nodes() if n.get("Alive")]
    # A task on every node, this one's too: it warms a worker process the decode then
    # uses (reading this node in the driver instead: placement + decode 7.4 s, not 6.2).
    probe = ray.remote(num_cpus=0)(_node_cpus)
    counts = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                      .remote() for n in alive])
    return [NodeView(cpus=float(n["Resources"].get("CPU", 0)), gpus=float(n["Resources"].get("GPU", 0)),
                     physical_cores=int(cores), os_cpus=int(os_cpus))
            for n, (cores, os_cpus) in zip(alive, counts, strict=True)]
