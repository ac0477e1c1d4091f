"""``--workers auto``: the worker plan from a given view of the cluster (pure), and
the view of the real local cluster."""

from __future__ import annotations

import os

import pytest

from imgrec.placement import DATA_CORES, NodeView, plan_workers

# imgrec's local cluster on this kind of machine: 6 logical CPUs on 2 cores.
LAPTOP = NodeView(cpus=6, gpus=0, physical_cores=2)


def test_auto_on_one_cpu_node_is_one_worker_sized_to_its_cores():
    plan = plan_workers([LAPTOP])
    assert (plan.workers, plan.cpus_per_worker, plan.gpus_per_worker) == (1, 2 - DATA_CORES, 0.0)
    assert plan.intra_op_threads == 2  # the worker's share of the physical cores, not Ray's 6 CPUs
    big = plan_workers([NodeView(cpus=64, gpus=0, physical_cores=32)])
    assert (big.workers, big.cpus_per_worker, big.intra_op_threads) == (1, 31, 32)


def test_auto_on_cpu_nodes_is_one_worker_per_node():
    nodes = [NodeView(16, 0, 8), NodeView(16, 0, 8), NodeView(0, 0, 8)]  # a CPU-less head does not count
    plan = plan_workers(nodes)
    assert (plan.workers, plan.cpus_per_worker, plan.intra_op_threads) == (2, 7, 8)


def test_auto_uses_one_worker_per_gpu():
    nodes = [NodeView(8, 0, 4), NodeView(32, 4, 16), NodeView(16, 2, 8)]
    plan = plan_workers(nodes)
    assert (plan.workers, plan.gpus_per_worker) == (6, 1.0)
    # The tightest GPU node sizes the CPUs: (8 cores - Ray Data's) // 2 GPUs.
    assert plan.cpus_per_worker == (8 - DATA_CORES) // 2 and plan.intra_op_threads == 4


def test_auto_under_tune_divides_by_the_trials_at_once():
    plan = plan_workers([NodeView(24, 0, 12)], concurrent_trials=3)
    assert (plan.workers, plan.cpus_per_worker, plan.intra_op_threads) == (1, 3, 4)
    gpus = plan_workers([NodeView(32, 4, 16)], concurrent_trials=2)
    assert gpus.workers == 2


def test_explicit_worker_count_is_kept_and_pools_share_the_cores():
    plan = plan_workers([LAPTOP], 2, cpus_per_worker=1.0)
    assert (plan.workers, plan.cpus_per_worker, plan.intra_op_threads) == (2, 1.0, 1)
    assert "--workers 2" in plan.describe()


def test_workers_option_is_auto_or_a_count():
    from imgrec.config import ConfigError, TrainConfig

    assert TrainConfig().workers == "auto"
    assert TrainConfig(workers="3").workers == 3 and TrainConfig(workers=2).workers == 2
    for bad in ("0", "two", "1.5", -1):
        with pytest.raises(ConfigError, match="workers must be 'auto' or a count"):
            TrainConfig(workers=bad)
    with pytest.raises(ConfigError, match="global batch"):
        TrainConfig(workers=4, batch_size=2)
    with pytest.raises(ConfigError, match="checkpoint_every must be >= 1"):
        TrainConfig(checkpoint_every=0)


def test_cli_rejects_a_bad_worker_count_in_one_line():
    from typer.testing import CliRunner

    from imgrec.cli import app

    out = CliRunner().invoke(app, ["train", "--data", "./nowhere", "--workers", "two"])
    assert out.exit_code == 2 and "workers must be 'auto' or a count >= 1, got 'two'" in out.output


def test_loop_feed_is_a_known_choice():
    from imgrec.loop_state import LoopOptions

    assert LoopOptions().feed == "direct"
    with pytest.raises(ValueError, match="feed must be 'direct' or 'tf.data'"):
        LoopOptions(feed="tfdata")


def test_data_tasks_are_capped_at_the_machines_cpus_where_ray_counts_more():
    """imgrec's local cluster counts 3 logical CPUs per CPU: Data runs at most 2 tasks
    at once on 2 CPUs; a cluster counting its CPUs as they are (hyperthreads included)
    is not capped; in a mixed cluster each node counts its real CPUs."""
    assert plan_workers([NodeView(cpus=6, gpus=0, physical_cores=2, os_cpus=2)]).data_tasks == 2
    assert plan_workers([NodeView(cpus=16, gpus=0, physical_cores=8, os_cpus=16)]).data_tasks is None
    assert plan_workers([NodeView(6, 0, 2, 2), NodeView(16, 0, 8, 16)], workers=2).data_tasks == 18
    assert plan_workers([NodeView(cpus=4, gpus=0, physical_cores=4)]).data_tasks is None  # no OS count: the cores


def test_an_empty_cluster_is_a_clear_error():
    with pytest.raises(ValueError, match="no node with CPUs or GPUs"):
        plan_workers([NodeView(0, 0, 4)])


def test_view_of_the_local_cluster(ray_cluster):
    from imgrec.placement import cluster_view, physical_cores

    view = cluster_view()
    assert len(view) == 1 and view[0].cpus == 6 and view[0].physical_cores == physical_cores() >= 1
    assert view[0].os_cpus == os.cpu_count()
