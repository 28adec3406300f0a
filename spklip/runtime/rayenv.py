"""Starting an in-process Ray that listens on loopback only, with token authentication.

Ray 2.60 rewrites a loopback node address to the host's routable one (`ray._private.services.resolve_ip_for_localhost`,
so that other machines could join), and every Ray server then listens on all interfaces or on that address: the GCS,
the raylet's node and object managers, each worker's gRPC server, the dashboard agent (gRPC, HTTP and the
unauthenticated Prometheus metrics export), the runtime-env agent, the dashboard's own metrics server. The one switch
that keeps the node address on 127.0.0.1 is ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray's default on macOS and
Windows); with it each of those servers binds 127.0.0.1 (the C++ ones ``::ffff:127.0.0.1``). Its only other effect is
that ``ray start --address`` refuses to join a node, which a one-process Ray never does. Ray reads it once, at import
(`ray_constants.ENABLE_RAY_CLUSTER`), so `loopback_node` (in spklip.runtime.ray_private, with every private Ray use)
sets both the variable (for the processes ``ray.init`` starts) and the constant (for this one) while Ray starts, and
puts both back afterwards: a later connection to a multi-node cluster from this process, or a ``ray start`` it runs,
behaves as before.

Token authentication: a new local Ray enables it by default (``RAY_AUTH_MODE=token``, token ``~/.ray/auth_token``).
`init_local` writes that token file itself when it is missing, mode 600 in a mode 700 folder (Ray writes it with the
process umask); an explicit ``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH`` is left to Ray.
The local cluster (cluster/local.sh) sets the same variable on ``ray start`` and in the client environment it prints
(a driver given ``RAY_ADDRESS=127.0.0.1:PORT`` would otherwise rewrite it too, to an address where nothing listens),
and has its own private token. `connect` keeps a loopback cluster address for a process without that variable.

A private session folder: Ray's default temp folder (``/tmp/ray``) and every folder Ray makes in it are mode 0777
without the sticky bit (`ray._common.utils.try_to_create_directory`), its logs world-readable. `init_local` gives
Ray a temp folder inside a folder of mode 0700 (`private_temp_dir`): ``<run folder>/ray_tmp/ray``, or a fresh
``/tmp/spklip-ray-XXXXXXXX/ray`` when the run folder's path is too long for Ray's unix sockets.

What the cluster can hold: `cluster_capacity` (the alive nodes' resources, or an autoscaler's maximum) and
`resource_shortfall` (why a worker group can never be placed there), so an impossible request is refused in one
line instead of waiting for ever on a placement group (`spklip.runtime.plan.check_resources`).

A run's Ray: `ensure_ray` (connect to a cluster, or start the in-process one), `ray_logs_dir` (where its workers'
output goes), `ray_storage` and `checkpoint_uri` (a run's storage as Ray Train takes it and gives it back).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from spklip.data import storage
from spklip.runtime.ray_private import LOOPBACK_ENV  # noqa: F401 - part of this module's API (tests, cluster docs)
from spklip.runtime.ray_private import (check_version, cluster_config_max_resources, generate_new_authentication_token,
                                        loopback_node, session_dir)
from spklip.runtime.tracking import credentials_env

TOKEN_ENV = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")  # a token of the user's own
PRIVATE_TEMP = "ray_tmp"  # in a run or sweep folder: the private parent of Ray's temp folder
SOCKET_PATH_MAX = 107  # Linux's AF_UNIX path limit, the terminating NUL excluded (Ray checks the same)
# What Ray appends to its temp folder for its longest socket, the session name at its longest (a 7-digit PID)
_SOCKET_TAIL = "/ray/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store.99"


def ensure_private_token(path: Path | None = None) -> None:
    """Write Ray's default token file (``~/.ray/auth_token``) mode 600 if it is missing and nothing else is set."""
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token" or any(os.environ.get(k) for k in TOKEN_ENV):
        return  # authentication turned off, or a token of the user's own
    path = path or Path.home() / ".ray" / "auth_token"  # Ray's own default (authentication_token_setup.py)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(generate_new_authentication_token())


def connect(address: str, **kwargs: Any) -> Any:
    """``ray.init(address=address, **kwargs)``; a loopback address (such a cluster's GCS listens on 127.0.0.1 only)
    is kept as it is, not rewritten to the host's routable address, where nothing would answer."""
    check_version()
    with loopback_node() if is_loopback_address(address) else contextlib.nullcontext():
        return ray.init(address=address, **kwargs)


def is_loopback_address(address: str) -> bool:
    """``HOST:PORT`` (or ``ray://HOST:PORT``) with a loopback HOST; False for ``auto`` and other hosts."""
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def private_temp_dir(parent: str | os.PathLike | None = None) -> Path:
    """A temp folder for Ray inside a folder only this user can enter (mode 0700): ``<parent>/ray_tmp/ray``.

    Ray makes its temp folder and everything in it mode 0777 and puts its unix sockets there, at
    ``<temp>/session_<date>_<time>_<us>_<pid>/sockets/plasma_store``: a path longer than 107 bytes fails. When
    `parent` is None or too long for that, the private folder is a fresh ``mkdtemp`` under ``/tmp`` instead (mode
    0700 too; Ray's logs for the run are then there: ``spklip train`` prints where).
    """
    if parent is not None:
        private = Path(parent).resolve() / PRIVATE_TEMP
        if len(os.fsencode(private)) + len(_SOCKET_TAIL) <= SOCKET_PATH_MAX:
            private.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(private, 0o700)  # mkdir's mode is masked by the umask; an older one is made private again
            return private / "ray"
    base = tempfile.gettempdir()
    if len(os.fsencode(base)) + len("/spklip-ray-XXXXXXXX") + len(_SOCKET_TAIL) > SOCKET_PATH_MAX:
        base = "/tmp"  # a long TMPDIR
    return Path(tempfile.mkdtemp(prefix="spklip-ray-", dir=base)) / "ray"  # mkdtemp: mode 0700


def init_local(temp_parent: str | os.PathLike | None = None, **kwargs: Any) -> Any:
    """``ray.init(address="local", **kwargs)``: every server of the new Ray on loopback, token authentication on,
    its session folder private (`private_temp_dir` of `temp_parent`, e.g. the run folder)."""
    check_version()
    ensure_private_token()
    kwargs.setdefault("_temp_dir", str(private_temp_dir(temp_parent)))
    with loopback_node():
        return ray.init(address="local", **kwargs)


@dataclass(frozen=True)
class Capacity:
    """What a Ray cluster can give a worker group: each node's total resources, or, for an autoscaling cluster, the
    most its autoscaler may bring up (one entry: the sum over its node types, per-node limits not known)."""

    nodes: tuple[dict[str, float], ...]
    autoscaling: bool = False

    def total(self, resource: str) -> float:
        return sum(node.get(resource, 0.0) for node in self.nodes)


def cluster_capacity() -> Capacity:
    """The connected Ray's `Capacity` (Ray must be running).

    Without an autoscaler (an in-process Ray, ``ray start`` by hand, the local cluster) the alive nodes are all there
    is: exact for an in-process Ray; a node joined later by hand is not waited for. With one (its cluster config
    names node types: KubeRay, ``ray up``) the limit is what it may add, the figure Ray Train itself checks against
    (`get_max_resources_from_cluster_config`, no public API), which a busy or slow autoscaler may still not deliver:
    Ray Train then times out the worker group's start and retries it.
    """
    most = cluster_config_max_resources()
    if most:
        return Capacity(({k: float(v) for k, v in most.items()},), autoscaling=True)
    total = ray.cluster_resources()  # the cluster's total; each node's, to know whether one worker fits a node
    nodes = tuple({k: float(v) for k, v in n.get("Resources", {}).items()} for n in ray.nodes() if n.get("Alive"))
    return Capacity(nodes or (dict(total),))


def _workers_on(node: dict[str, float], per_worker: dict[str, float]) -> int:
    """How many workers of `per_worker` resources one node holds."""
    fits = [math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in per_worker.items() if v > 0]
    return min(fits) if fits else 1 << 30


def resource_shortfall(per_worker: dict[str, float], workers: int, capacity: Capacity) -> str | None:
    """Why `workers` workers needing `per_worker` each (``{"CPU": 2, "GPU": 1}``) can never all be placed on
    `capacity` (Ray Train's placement group: one bundle per worker, each on one node); None when they can."""
    for resource, amount in per_worker.items():
        if amount * workers > capacity.total(resource) + 1e-9:
            return (f"{workers} worker(s) x {amount:g} {resource} = {amount * workers:g} {resource}, but the cluster "
                    f"{'may grow to' if capacity.autoscaling else 'has'} {capacity.total(resource):g} {resource}")
    if capacity.autoscaling:
        return None  # only the total is known
    held = sum(_workers_on(node, per_worker) for node in capacity.nodes)
    if held < workers:
        each = ", ".join(f"{v:g} {k}" for k, v in per_worker.items())
        biggest = max(capacity.nodes, key=lambda n: _workers_on(n, per_worker))
        return (f"{workers} worker(s) of {each} each, but the cluster's {len(capacity.nodes)} node(s) hold {held} "
                f"such worker(s) (a worker runs on one node; the largest has "
                f"{', '.join(f'{biggest.get(k, 0.0):g} {k}' for k in per_worker)})")
    return None


def ensure_ray(address: str = "", verbose: bool = True, temp_parent: str | Path | None = None) -> None:
    """Connect to ``address`` / ``RAY_ADDRESS`` when given, else start an in-process Ray (no-op if running).

    The in-process Ray listens on loopback only, with token authentication, its session folder private: under
    ``<temp_parent>/ray_tmp`` (the run or sweep folder; `spklip.runtime.rayenv.init_local`); its processes inherit this
    one's environment, MLflow credentials included (not passed in a runtime env: Ray's runtime-env agent writes
    those to its log). A cluster's processes get them (`spklip.runtime.tracking.credentials_env`) in the job's runtime env.
    `verbose` False: ``log_to_driver=False``, the workers' output stays in Ray's session logs (`ray_logs_dir`).
    Ray's own processes get the address of this cluster in the job's runtime env, so nothing of Ray's looks for a
    cluster by itself: Ray Train's placement-group cleaner calls the State API without an address, which otherwise
    fails with "Found multiple active Ray instances" whenever another Ray runs on the host.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        env = {"RAY_ADDRESS": address} if "://" not in address and address != "auto" else {}
        connect(address, log_to_driver=verbose, runtime_env=_job_env({**env, **credentials_env()}))
    else:
        port = _free_port()  # the dashboard is the State API's server: its address is known before Ray starts
        init_local(temp_parent, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                   configure_logging=False, log_to_driver=verbose,
                   runtime_env=_job_env({"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job_env(env: dict[str, str]) -> dict | None:
    """``runtime_env`` with `env` minus what a submitted job's own runtime env sets (``ray job submit
    --runtime-env-json``: Ray refuses to merge the same variable twice)."""
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}") or "{}")
    taken = set((job.get("runtime_env") or {}).get("env_vars") or {})
    env = {k: v for k, v in env.items() if k not in taken}
    return {"env_vars": env} if env else None


def ray_logs_dir() -> str | None:
    """Ray's session log folder on this node (worker-*.out/err, logs/train, logs/ray-data), None without Ray."""
    session = session_dir()  # what Ray Train itself reads for its log folder (no public API)
    return os.path.join(session, "logs") if session is not None else None


def ray_storage(storage_path: str) -> dict[str, Any]:
    """``RunConfig`` storage arguments: a local folder as it is; a URI as (path on the filesystem, the filesystem
    of `spklip.data.storage`: the endpoint from the environment, which Ray's own URI parsing ignores)."""
    if not storage.is_uri(storage_path):
        return {"storage_path": storage_path}
    fs, path = storage.resolve(storage_path)
    return {"storage_path": path, "storage_filesystem": fs}


def checkpoint_uri(storage_path: str, checkpoint) -> str | None:
    """A Ray checkpoint's location as spklip names it: its folder, or a URI on an object store (Ray gives the path
    on its filesystem, without the scheme)."""
    if checkpoint is None:
        return None
    if storage.is_uri(storage_path):
        return f"{storage_path.partition('://')[0]}://{checkpoint.path.lstrip('/')}"
    return checkpoint.path
