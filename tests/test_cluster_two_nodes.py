"""Two Ray nodes on this machine, the rehearsal for many machines (docs/cluster.md, "Two nodes"): a head
(`ray start --head`) and a second node (`ray start --address`, its own CPUs, a custom resource and a node label), with
private temp dirs and free ports, started and stopped by PID (never `ray stop`).

spklip's own `fit` trains 2 gloo workers placed SPREAD (one per node), Ray Data feeding both and the STCL loss
gathered across them. When the run's first checkpoint is registered, the second node is killed (SIGKILL to every
process of that node): Ray Train V2 tears the worker group down and, the run's `num_workers` being fixed, starts it
again on what is left (SPREAD is best effort: both workers on the head), resuming from the last checkpoint.

The driver runs in a subprocess: a pytest process may already hold an in-process Ray (conftest's ``ray_session``),
and a process can be connected to one Ray cluster only.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest

from spklip.data.shards import read_metadata
from test_train_fixtures import write_digit_shards

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
LABEL = "spklip-node=second"
# GCS health checks every 0.5 s, dead after 2 misses: the killed node is declared dead in ~1-2 s, not ~30 s
FAST_DEATH = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500",
              "RAY_health_check_failure_threshold": "2", "RAY_health_check_initial_delay_ms": "0"}

DRIVER = r"""
import json, os, sys
import ray
from spklip.config import load_config
from spklip.runtime.launcher import fit
from spklip.runtime.plan import RunSpec
from ray.train.v2._internal.state.state_actor import get_state_actor

out, data, run_dir = sys.argv[1:4]
cfg = load_config("configs/tiny.yaml", [f"data.path={data}", f"train.run_dir={run_dir}", *sys.argv[4:]])
ray.init(address=os.environ["RAY_ADDRESS"])  # the head; fit's ensure_ray keeps this connection
nodes = {n["NodeID"]: {"labels": n.get("Labels", {}), "ip": n["NodeManagerAddress"]} for n in ray.nodes()}
driver_node = ray.get_runtime_context().get_node_id()
result = fit(RunSpec(cfg, run_name="two-nodes"))
attempts = []  # the Train state actor (on the head) keeps every attempt of the run with its workers' nodes
for run_attempts in ray.get(get_state_actor().get_train_run_attempts.remote()).values():
    for a in sorted(run_attempts.values(), key=lambda a: a.start_time_ns):
        workers = sorted(a.workers, key=lambda w: w.world_rank)
        attempts.append({"status": str(a.status.value), "nodes": [w.node_id for w in workers],
                         "start_time_ns": a.start_time_ns})
json.dump({"metrics": result.metrics, "checkpoint": result.checkpoint, "mlflow_run_id": result.mlflow_run_id,
           "nodes": nodes, "driver_node": driver_node, "attempts": attempts}, open(out, "w"))
"""


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _node_ports(ports: list[int]) -> list[str]:
    nm, om, agent_http, agent_grpc, runtime_env, metrics = ports
    return [f"--node-manager-port={nm}", f"--object-manager-port={om}", f"--dashboard-agent-listen-port={agent_http}",
            f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
            f"--metrics-export-port={metrics}"]


def _node_pids(pgid: int, temp_dir: str, gcs_port: int | None = None) -> list[int]:
    """Live processes of one node: its `ray start` process group, plus anything naming its private temp dir (or
    the head's GCS port) on its command line (Ray workers leave the group with setsid)."""
    out = subprocess.run(["ps", "-eo", "pid=,pgid=,stat=,args="], capture_output=True, text=True).stdout
    pids = []
    for line in out.splitlines():
        pid, group, stat, args = (line.split(None, 3) + [""])[:4]
        if int(pid) == os.getpid() or stat.startswith("Z"):
            continue
        if int(group) == pgid or temp_dir in args or (gcs_port and re.search(rf":{gcs_port}(\D|$)", args)):
            pids.append(int(pid))
    return pids


def _kill(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class Node:
    """One `ray start --block` under setsid: its PID is the process group of the node's daemons."""

    def __init__(self, args: list[str], temp_dir: str, env: dict[str, str], log: Path, gcs_port: int | None = None):
        self.temp_dir, self.gcs_port, self.log = temp_dir, gcs_port, log
        self.proc = subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}",
                                      "--disable-usage-stats", *args], env=env, stdout=log.open("w"),
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def pids(self) -> list[int]:
        return _node_pids(self.proc.pid, self.temp_dir, self.gcs_port)

    def kill(self) -> None:
        """SIGKILL every process of the node at once: a machine lost, not a drained node."""
        _kill(self.pids(), signal.SIGKILL)

    def stop(self, grace_s: float = 4.0) -> list[int]:
        """SIGTERM the group, then SIGKILL whatever is left of the node; returns what survived both."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace_s
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.5)
        _kill(self.pids(), signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(1)
        return self.pids()


def _wait_nodes(address: str, env: dict[str, str], count: int, nodes: list[Node], timeout_s: float = 90) -> None:
    probe = (f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
             "print(sum(n['Alive'] for n in ray.nodes()))")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for node in nodes:
            assert node.proc.poll() is None, node.log.read_text()[-3000:]
        got = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
        if got.returncode == 0 and got.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    raise AssertionError(f"{count} Ray nodes did not come up: {nodes[-1].log.read_text()[-3000:]}")


@pytest.fixture
def two_nodes(tmp_path):
    """A head (2 CPUs) and a second node (1 CPU, resource ``second_node``, label ``spklip-node=second``); every
    process of both is gone afterwards (checked).

    Both are started with --node-ip-address=127.0.0.1 and the dashboard listens on 127.0.0.1 only, but Ray 2.60
    rewrites a loopback node address to the host's routable one (services.resolve_ip_for_localhost, so that other
    machines could join): the nodes' GCS, raylets and object managers use that address. Holding a multi-node
    cluster to loopback is not possible without patching Ray; the test only checks both nodes share one address."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", **FAST_DEATH,
                "RAY_TRAIN_ENABLE_STATE_TRACKING": "1",  # the Train state actor records each attempt's workers
                "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"})
    gcs, dash, client, *ports = _free_ports(15)
    temp = [tempfile.mkdtemp(prefix=f"spk2n{i}-", dir="/tmp") for i in range(2)]  # short: Unix socket paths
    address = f"127.0.0.1:{gcs}"
    nodes: list[Node] = []
    try:
        nodes.append(Node(["--head", f"--port={gcs}", f"--ray-client-server-port={client}", "--include-dashboard=true",
                           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
                           "--object-store-memory=200000000", *_node_ports(ports[:6])],
                          temp[0], env, tmp_path / "head.log", gcs_port=gcs))
        _wait_nodes(address, env, 1, nodes)
        nodes.append(Node([f"--address={address}", "--num-cpus=1", '--resources={"second_node": 1}',
                           f"--labels={LABEL}", "--object-store-memory=100000000", *_node_ports(ports[6:12])],
                          temp[1], env, tmp_path / "second.log"))
        _wait_nodes(address, env, 2, nodes)
        yield {"address": address, "env": {**env, "RAY_ADDRESS": address}, "head": nodes[0], "second": nodes[1]}
    finally:
        survivors = [pid for node in reversed(nodes) for pid in node.stop()]
        for t in temp:
            subprocess.run(["rm", "-rf", t])
        assert survivors == [], f"Ray processes left running: {survivors}"


def _registered_checkpoints(run_folder: Path) -> list[str]:
    """Checkpoints Ray Train's controller has registered (its snapshot), not folders still being written."""
    snap = run_folder / "checkpoint_manager_snapshot.json"
    try:
        state = json.loads(snap.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    return sorted(r["checkpoint_dir_name"] for r in state["checkpoint_results"])


def test_spread_run_survives_losing_a_node_and_resumes_from_its_checkpoint(two_nodes, tmp_path):
    data = write_digit_shards(tmp_path / "digits", clips_per_class=16)
    spe = read_metadata(data)["splits"]["train"] // 2 // 4  # 2 workers x batch 4
    run_dir = tmp_path / "runs"
    overrides = ["model.num_planes=16", "model.height=32", "model.width=32", "model.hsfe.stride=1",
                 "data.batch_size=4", "scale.num_workers=2", "scale.cpus_per_worker=0.5", "scale.threads_per_worker=0",
                 "scale.placement=SPREAD",
                 "scale.max_failures=1", "train.epochs=2", "train.checkpoint_every=3", "train.log_every=1",
                 "eval.energy=false", "eval.few_shot_ks=[1]", "eval.few_shot_seeds=1", "eval.few_shot_steps=5",
                 "eval.bn_recal_batches=1", "eval.train_clips=0", "tracking.log_model=false"]
    out = tmp_path / "result.json"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen([sys.executable, str(script), str(out), str(data), str(run_dir), *overrides], cwd=ROOT,
                              env={**two_nodes["env"], "PYTHONPATH": str(ROOT)}, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        run_folder = run_dir / "ray" / "two-nodes"
        deadline = time.monotonic() + 180
        while not (registered := _registered_checkpoints(run_folder)):
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint registered in 180 s"
            time.sleep(0.2)
        two_nodes["second"].kill()
        assert driver.wait(timeout=150) == 0, (tmp_path / "driver.log").read_text()[-4000:]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        log.close()
    result = json.loads(out.read_text())

    # the run finished, all its steps, on what was left
    assert result["metrics"]["step"] == 2 * spe and result["metrics"]["epoch"] == 2
    assert Path(result["checkpoint"]).name == f"checkpoint_step={2 * spe:07d}"

    # two nodes of one machine (one address); the driver (and with it Train's controller) on the head
    second_id = next(n for n, node in result["nodes"].items() if node["labels"].get("spklip-node") == "second")
    head_id = next(n for n in result["nodes"] if n != second_id)
    assert len({node["ip"] for node in result["nodes"].values()}) == 1 and result["driver_node"] == head_id

    # first attempt: one worker on each node (SPREAD); it failed with the node; the second ran on the head alone
    assert len(result["attempts"]) == 2, result["attempts"]
    first, second = result["attempts"]
    assert sorted(first["nodes"]) == sorted([head_id, second_id]) and first["status"] == "ERRORED", first
    assert second["status"] == "FINISHED" and second["nodes"] == [head_id, head_id], second

    # The second attempt resumed from a checkpoint: the one registered when the node died or a later one the
    # controller took in before it saw the failure (never from scratch, never past what the first attempt reached).
    # Steps up to it ran once; the first attempt's steps after it ran again.
    client = mlflow.tracking.MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    history = client.get_metric_history(result["mlflow_run_id"], "train/loss")
    restart_ms = second["start_time_ns"] / 1e6
    before = sorted(m.step for m in history if m.timestamp < restart_ms)
    after = sorted(m.step for m in history if m.timestamp >= restart_ms)
    resumed = after[0] - 1
    at_kill = int(registered[-1].split("=")[1])
    assert before == list(range(1, before[-1] + 1)) and after == list(range(resumed + 1, 2 * spe + 1)), history
    assert at_kill <= resumed <= before[-1] and (resumed % 3 == 0 or resumed == spe), (registered, before, after)
