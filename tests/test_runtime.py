"""``imgrec.runtime``: the environment a trainer starts with."""

from __future__ import annotations

import os

from imgrec.runtime import CONTROLLER_ENV, LOCAL_CONTROLLER_ENV, controller_env

NAME = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def test_controller_env_is_set_while_a_trainer_starts_and_removed_after(monkeypatch):
    monkeypatch.delenv(NAME, raising=False)
    with controller_env():
        assert os.environ[NAME] == CONTROLLER_ENV[NAME] == "0.25"
        # Ray Train hands exactly the variables a user set on to its controller
        from ray.train.v2._internal.constants import get_env_vars_to_propagate

        assert get_env_vars_to_propagate()[NAME] == "0.25"
    assert NAME not in os.environ


def test_no_preemption_watcher_on_a_cluster_of_this_machine_alone(ray_cluster, monkeypatch):
    monkeypatch.delenv(WATCHER, raising=False)
    with controller_env():
        assert os.environ[WATCHER] == LOCAL_CONTROLLER_ENV[WATCHER] == "0"
    assert WATCHER not in os.environ


def test_a_users_own_interval_wins(monkeypatch):
    monkeypatch.setenv(NAME, "5")
    with controller_env():
        assert os.environ[NAME] == "5"
    assert os.environ[NAME] == "5"


def test_a_fresh_ray_data_execution_runs_its_tasks_together_from_the_start(ray_cluster):
    """Ray Data 2.60 ran each new execution's tasks one at a time for its first second
    (its CPU limit read as 0 until a 1 s refresh); ``ensure_ray`` shortens the refresh.
    Two of four 0.6 s tasks must overlap: unpatched, the first three ran one after another.
    The execution measured is the second: the first also waits for new worker processes
    and Ray Data's coordinator actor to start."""
    from ray.data import TaskPoolStrategy
    from ray.data._internal.execution.resource_manager import ResourceManager

    from imgrec.runtime import RAY_DATA_LIMITS_REFRESH_S, ensure_ray

    def spans(batch):  # nested: pickled by value (workers cannot import test modules)
        import time

        import numpy as np

        start = time.time()
        time.sleep(0.6)
        return {"start": np.array([start]), "end": np.array([time.time()])}

    ensure_ray()
    assert ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S == RAY_DATA_LIMITS_REFRESH_S

    def run():
        ds = ray_cluster.data.from_items([{"i": i} for i in range(4)], override_num_blocks=4)
        out = ds.map_batches(spans, batch_size=1, batch_format="numpy", compute=TaskPoolStrategy(size=None))
        return sorted(out.take_all(), key=lambda r: r["start"])

    run()  # starts the workers and Ray Data's coordinator actor
    rows = run()
    first, second = rows[0], rows[1]
    assert second["start"] < first["end"], [(r["start"] - first["start"], r["end"] - first["start"]) for r in rows]
