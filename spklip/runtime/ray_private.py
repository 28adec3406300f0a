"""Every use of Ray's private API in spklip, in one file, each checked against the Ray release it was written for.

Ray is pinned to ``TESTED_RAY`` (pyproject.toml). Each name below is either a private symbol spklip reads or a
behaviour it relies on, with why no public route does the job; `problems()` checks every one of them on the
installed Ray (tests/test_ray_private.py runs it, so a Ray upgrade that moves one fails there, by name, not
somewhere inside a training run), and `check_version()` warns once when the installed Ray is not the tested one.

| use | private API | why |
|---|---|---|
| a loopback-only local node | ``ray._private.ray_constants.ENABLE_RAY_CLUSTER`` (+ its env variable) | Ray reads the switch once, at import; no ``ray.init`` argument keeps the node address on 127.0.0.1 (spklip.runtime.rayenv) |
| a private token file | ``ray._private.authentication...generate_new_authentication_token`` | Ray's own token format, written mode 600 before Ray writes it with the umask |
| what an autoscaler may add | ``ray._private.state.state.get_max_resources_from_cluster_config`` | the figure Ray Train checks worker groups against; no public API |
| Ray's session log folder | ``ray._private.worker._global_node`` | where Ray Train itself finds it; no public API |
| the rendezvous store on loopback | ``ray.train._internal.utils.get_address_and_port``, ``ray.train.torch.config._TorchBackend`` (its ``on_start`` looks the function up by module name) | torch's TCPStore listens on every interface; Ray Train has no bind-address option (spklip.runtime.torch_store) |
| continue a run's checkpoints | ``ray.train.v2._internal.constants.CHECKPOINT_MANAGER_SNAPSHOT_FILENAME`` | the latest checkpoint of a run folder before ``fit``; no public reader |
| fail fast on a deterministic error | ``ray.train.v2._internal.execution.callback.{ControllerCallback, WorkerGroupCallback}`` | the public ``UserCallback`` sees a worker's error but cannot stop the retry |
| the device of a Train worker | ``ray.train.utils._in_ray_train_worker`` | whether ``ray.train.torch.get_device`` may be called here (spklip.data.loader) |
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings
from typing import Any, Callable, Iterator

import ray
import ray.train.torch.config as _ray_torch_config
from ray._private import ray_constants as _ray_constants
from ray._private import worker as _ray_worker
from ray._private.authentication.authentication_token_generator import generate_new_authentication_token
from ray._private.state import state as _ray_state
from ray.train._internal.utils import get_address_and_port
from ray.train.torch.config import _TorchBackend
from ray.train.utils import _in_ray_train_worker
from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME
from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

TESTED_RAY = "2.60.0"  # the release every use below was read in and tested on (pyproject.toml pins it)
LOOPBACK_ENV = _ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR  # "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# the hooks of the internal callbacks spklip overrides (spklip.runtime.worker.FailFastOnDataError)
CALLBACK_HOOKS = {WorkerGroupCallback: "after_worker_group_poll_status",
                  ControllerCallback: "before_controller_execute_failure_decision"}

__all__ = ["CHECKPOINT_MANAGER_SNAPSHOT_FILENAME", "ControllerCallback", "LOOPBACK_ENV", "TESTED_RAY",
           "WorkerGroupCallback", "check_version", "cluster_config_max_resources", "generate_new_authentication_token",
           "get_address_and_port", "in_ray_train_worker", "loopback_node", "problems", "session_dir",
           "torch_backend_with_store_address"]


def check_version() -> None:
    """Warn once when the installed Ray is not `TESTED_RAY`: the private uses above may have moved (`problems()`
    says which)."""
    if ray.__version__ != TESTED_RAY:
        warnings.warn(f"spklip was tested with Ray {TESTED_RAY}, this is Ray {ray.__version__}: its private API uses "
                      f"(spklip/runtime/ray_private.py) may not hold; python -c 'from spklip.runtime.ray_private "
                      f"import problems; print(problems())' lists those that do not", RuntimeWarning, stacklevel=2)


@contextlib.contextmanager
def loopback_node() -> Iterator[None]:
    """While inside: a Ray started here keeps 127.0.0.1 as its node address (spklip.runtime.rayenv's docstring): both the
    variable (for the processes ``ray.init`` starts) and the constant Ray read at import (for this one), put back
    afterwards."""
    old_env, old_const = os.environ.get(LOOPBACK_ENV), _ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_ENV] = "0"
    _ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        _ray_constants.ENABLE_RAY_CLUSTER = old_const
        if old_env is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = old_env


def cluster_config_max_resources() -> dict[str, float]:
    """The most an autoscaler may bring up (the sum over its node types), empty without an autoscaler."""
    return dict(_ray_state.get_max_resources_from_cluster_config() or {})


def session_dir() -> str | None:
    """The connected Ray's session folder on this node; None when Ray is not initialised here."""
    node = _ray_worker._global_node
    return node.get_session_dir_path() if node is not None else None


def in_ray_train_worker() -> bool:
    return bool(_in_ray_train_worker())


def torch_backend_with_store_address(address_fn: Callable[[], tuple[str, int]]) -> type:
    """A Ray Train torch backend class whose rank 0 takes the process group's ``(address, port)`` from
    `address_fn` instead of Ray's `get_address_and_port` (swapped in Ray's module for its ``on_start`` only)."""

    class Backend(_TorchBackend):
        def on_start(self, worker_group, backend_config):
            original = _ray_torch_config.get_address_and_port
            _ray_torch_config.get_address_and_port = address_fn
            try:
                super().on_start(worker_group, backend_config)
            finally:
                _ray_torch_config.get_address_and_port = original

    return Backend


def problems() -> list[str]:
    """Each private use above that does not hold on the installed Ray, one line each (empty: all hold)."""
    out: list[str] = []

    def need(ok: Any, what: str) -> None:
        if not ok:
            out.append(what)

    need(isinstance(_ray_constants.ENABLE_RAY_CLUSTER, bool), "ray._private.ray_constants.ENABLE_RAY_CLUSTER is "
         "not a bool")
    need(LOOPBACK_ENV == "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", f"the loopback switch is now {LOOPBACK_ENV!r}")
    # the GCS, raylet and agents are started by ray._private.services, which reads the constant at call time
    need("ENABLE_RAY_CLUSTER" in inspect.getsource(_ray_constants), "ray_constants no longer defines "
         "ENABLE_RAY_CLUSTER")
    token = generate_new_authentication_token()
    need(isinstance(token, str) and len(token) >= 32, "generate_new_authentication_token no longer returns a token")
    need(callable(getattr(_ray_state, "get_max_resources_from_cluster_config", None)),
         "ray._private.state.state.get_max_resources_from_cluster_config is gone")
    need(hasattr(_ray_worker, "_global_node"), "ray._private.worker._global_node is gone")
    need(tuple(inspect.signature(get_address_and_port).parameters) == (), "get_address_and_port takes arguments")
    need(getattr(_ray_torch_config, "get_address_and_port", None) is get_address_and_port,
         "ray.train.torch.config no longer imports get_address_and_port by name (the swap would not take)")
    need("get_address_and_port" in inspect.getsource(_TorchBackend.on_start),
         "_TorchBackend.on_start no longer calls get_address_and_port")
    need(isinstance(CHECKPOINT_MANAGER_SNAPSHOT_FILENAME, str) and CHECKPOINT_MANAGER_SNAPSHOT_FILENAME.endswith(
        ".json"), "CHECKPOINT_MANAGER_SNAPSHOT_FILENAME is no longer a .json file name")
    from ray.train.v2._internal.execution.checkpoint import checkpoint_manager  # only for the check

    snapshot = inspect.getsource(checkpoint_manager)
    need("latest_checkpoint_result" in snapshot and "checkpoint_dir_name" in snapshot,
         "the checkpoint-manager snapshot no longer has latest_checkpoint_result.checkpoint_dir_name")
    for base, hook in CALLBACK_HOOKS.items():
        need(callable(getattr(base, hook, None)), f"{base.__name__}.{hook} is gone")
    # (its value is no check: a local-mode run, num_workers=0, leaves this process's Train context set)
    need(not inspect.signature(_in_ray_train_worker).parameters and isinstance(in_ray_train_worker(), bool),
         "ray.train.utils._in_ray_train_worker no longer answers True/False with no arguments")
    return out
