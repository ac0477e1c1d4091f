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
