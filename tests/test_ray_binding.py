"""Every port of an in-process Ray (`spklip.runtime.rayenv.ensure_ray`) listens on loopback only, token authentication
refuses a request without the token, and nothing answers on the host's external addresses (issue 10). The local
cluster's listeners are checked the same way in test_cluster_local.py (`unauthenticated_exposed`).

Allow-list of non-loopback listeners proven to refuse a request without the token: none (every Ray 2.60 server
binds 127.0.0.1 once the node address stays loopback, `spklip.runtime.rayenv`), so any non-loopback listener fails.
"""

import ipaddress
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from ray._private import ray_constants

from spklip.runtime.rayenv import LOOPBACK_ENV, ensure_private_token, is_loopback_address, loopback_node

ROOT = Path(__file__).resolve().parents[1]
ALLOWED_EXPOSED: set[str] = set()  # process names allowed off loopback: none (see the module docstring)

# The driver runs in a subprocess: this pytest process may already hold an in-process Ray (conftest's ray_session).
DRIVER = r"""
import json, os, sys, threading, time
import grpc, ray, ray.train, torch, torch.distributed as dist
from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
from ray.train.torch import TorchTrainer
from spklip.runtime.rayenv import ensure_ray
from spklip.runtime.torch_store import LoopbackTorchConfig
sys.path.insert(0, sys.argv[1])
from test_ray_binding import answers, external_addresses, foreign_exposed_ports, listeners

ensure_ray(verbose=False)
found, answered, stop = [], [], threading.Event()

def watch():  # every listener of this process tree, and whether it answers on an external address, while it lives
    while not stop.is_set():
        mine = listeners([os.getpid()])
        foreign = foreign_exposed_ports({s["pid"] for s in mine})  # another Ray on the host may share a port
        for s in mine:
            if s not in found:
                found.append(s)
                answered.extend(f"{ip}:{s['port']}" for ip in external_addresses()
                                if s["port"] not in foreign and answers(ip, s["port"]))
        time.sleep(1)

watcher = threading.Thread(target=watch, daemon=True)
watcher.start()

@ray.remote
class Probe:
    def ping(self):
        return os.getpid()

@ray.remote
def task():
    return os.getpid()

ray.get([task.remote() for _ in range(2)])  # workers started: their gRPC servers listen too
probe = Probe.remote()
ray.get(probe.ping.remote())
gcs = ray.get_runtime_context().gcs_address
try:  # no token in the metadata: the GCS must refuse
    gcs_service_pb2_grpc.NodeInfoGcsServiceStub(grpc.insecure_channel(gcs)).GetClusterId(
        gcs_service_pb2.GetClusterIdRequest(), timeout=20)
    refused = None
except grpc.RpcError as e:
    refused = e.code().name

def train_fn():  # 2 gloo workers: the process group's rendezvous store (rank 0) and gloo's connections
    dist.all_reduce(torch.ones(1))
    time.sleep(3)  # the watcher lists them meanwhile

TorchTrainer(train_fn, torch_config=LoopbackTorchConfig(),  # what spklip's build_trainer passes
             scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
             run_config=ray.train.RunConfig(storage_path=sys.argv[2], name="probe")).fit()
time.sleep(1)
stop.set()
watcher.join()
print("RESULT " + json.dumps({"listeners": found, "gcs": gcs, "refused": refused, "answered": answered,
                              "node_ip": ray.nodes()[0]["NodeManagerAddress"]}))
ray.shutdown()
"""


def listeners(root_pids: list[int]) -> list[dict]:
    """Listening TCP sockets of `root_pids` and all their descendants: pid, process name, address, port."""
    procs = {}
    for pid in root_pids:
        try:
            root = psutil.Process(pid)
            procs.update({p.pid: p for p in [root, *root.children(recursive=True)]})
        except psutil.NoSuchProcess:
            continue
    out = []
    for pid, proc in procs.items():
        try:
            conns, name = proc.net_connections(kind="inet"), proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out += [{"pid": pid, "name": name, "ip": c.laddr.ip, "port": c.laddr.port}
                for c in conns if c.status == psutil.CONN_LISTEN]
    return out


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1, how Ray's C++ gRPC servers bind IPv4 loopback
    return (mapped or addr).is_loopback


def unauthenticated_exposed(found: list[dict]) -> list[dict]:
    """The listeners off loopback that are not on the allow-list (the test fails on any)."""
    return [s for s in found if not is_loopback(s["ip"]) and s["name"] not in ALLOWED_EXPOSED]


def foreign_exposed_ports(mine: set[int]) -> set[int]:
    """Ports that processes other than `mine` listen on off loopback (another Ray on the host: its dashboard agent
    has the same fixed default port): an answer there is theirs."""
    return {c.laddr.port for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid not in mine and not is_loopback(c.laddr.ip)}


def external_addresses() -> list[str]:
    """This host's addresses other than loopback (IPv4 and IPv6, no link-local)."""
    out = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                ip = ipaddress.ip_address(a.address.split("%")[0])
                if not ip.is_loopback and not ip.is_link_local:
                    out.append(str(ip))
    return out


def answers(ip: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        return s.connect_ex((ip, port)) == 0


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.0.2.2")


def test_is_loopback_address():
    assert all(map(is_loopback_address, ["127.0.0.1:6479", "localhost:6479", "ray://127.0.0.1:10001", "[::1]:6479"]))
    assert not any(map(is_loopback_address, ["192.0.2.2:6479", "auto", "ray://head.example:10001", "local"]))


def test_loopback_node_puts_everything_back(monkeypatch):
    monkeypatch.delenv(LOOPBACK_ENV, raising=False)
    before = ray_constants.ENABLE_RAY_CLUSTER
    with loopback_node():
        assert os.environ[LOOPBACK_ENV] == "0" and ray_constants.ENABLE_RAY_CLUSTER is False
    assert LOOPBACK_ENV not in os.environ and ray_constants.ENABLE_RAY_CLUSTER == before


def test_private_token_file(tmp_path, monkeypatch):
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    token = tmp_path / "home" / ".ray" / "auth_token"
    ensure_private_token(token)
    assert oct(token.stat().st_mode)[-3:] == "600" and oct(token.parent.stat().st_mode)[-3:] == "700"
    assert len(token.read_text()) == 64
    first = token.read_text()
    ensure_private_token(token)  # an existing token is kept
    assert token.read_text() == first
    other = tmp_path / "other" / "auth_token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "mine"))  # the user's own token: nothing written
    ensure_private_token(other)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # authentication off: nothing written
    ensure_private_token(other)
    assert not other.exists()


@pytest.mark.slow  # an in-process Ray with its dashboard and a 2-worker Ray Train run: 45-70 s on 2 loaded cores
def test_in_process_ray_listens_on_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "300"  # a loaded 2-core box can miss Ray Train's 60 s
    run = subprocess.run([sys.executable, "-c", DRIVER, str(ROOT / "tests"), str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=180)
    lines = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")]
    assert run.returncode == 0 and lines, (run.stdout + run.stderr)[-4000:]
    result = json.loads(lines[-1][len("RESULT "):])
    found = result["listeners"]
    names = {s["name"] for s in found}
    # what an in-process Ray opens: the GCS, the raylet, the dashboard and its agents, the workers, Ray Train's
    # workers (their torch.distributed store and gloo connections)
    assert {"gcs_server", "raylet"} <= names and any("DashboardAgent" in n for n in names), found
    assert any("RayTrainWorker" in n for n in names), found
    assert len(found) >= 10, found
    assert unauthenticated_exposed(found) == [], found
    assert result["node_ip"] == "127.0.0.1"
    assert result["refused"] == "UNAUTHENTICATED", result  # token authentication is on
    assert result["gcs"].startswith("127.0.0.1:")
    assert result["answered"] == [], result["answered"]  # tried on every external address (none: nothing to try)
