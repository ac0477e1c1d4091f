"""Ray Train's TensorFlow set-up (``TF_CONFIG`` in every worker, for
MultiWorkerMirroredStrategy) from a module that does not import TensorFlow.

``ray.train.tensorflow`` imports TensorFlow as the package loads, so handing Ray
a ``TensorflowTrainer`` made the driver and the Train controller import
TensorFlow (3-8 s each on a 2-core node, on the critical path of every run),
though neither runs a model. Ray's backend also sets ``TF_USE_LEGACY_KERAS=1``,
which has no place in a Keras 3 worker."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass

import ray
from ray._common.network_utils import build_address
from ray.train._internal.utils import get_address_and_port
from ray.train.backend import Backend, BackendConfig


def _set_tf_config(addresses: list[str], index: int) -> None:
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})
    threading.Thread(target=_import_tensorflow, name="imgrec-tf-import", daemon=True).start()


def _import_tensorflow() -> None:
    """Import TensorFlow and Keras while Ray Train finishes setting the worker up
    (datasets, the train function's hand-over): the worker's 5-9 s import then
    overlaps that wait instead of following it. Only imports: the thread pools and
    the strategy are configured by the loop, before any op runs. A failure here is
    left for the loop's own import to raise."""
    try:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    except Exception:  # noqa: BLE001 - the loop imports again and reports it
        pass


def _address() -> str:
    return build_address(*get_address_and_port())


class _TFConfigBackend(Backend):
    def on_start(self, worker_group, backend_config) -> None:
        addresses = worker_group.execute(_address)
        ray.get([worker_group.execute_single_async(i, _set_tf_config, addresses=addresses, index=i)
                 for i in range(len(worker_group))])


@dataclass
class TFConfigBackend(BackendConfig):
    """``backend_config`` for Ray Train's ``DataParallelTrainer``: a worker
    group that MultiWorkerMirroredStrategy can form a cluster from."""

    @property
    def backend_cls(self):
        return _TFConfigBackend
