"""`make cluster-up`, a smoke sweep submitted with `ray job submit`, its trials read back through the MLflow server's
REST API (basic auth: refused without the credentials `cluster/local.sh env` prints), `make cluster-down`, and
nothing of the cluster left running."""

import base64
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from spklip.data.smoke import build_smoke_data
from test_ray_binding import listeners, unauthenticated_exposed

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
PORTS = {"SPKLIP_RAY_PORT": "6579", "SPKLIP_DASHBOARD_PORT": "8465", "SPKLIP_MLFLOW_PORT": "5155"}


def rest(url: str, body: dict | None = None, auth: tuple[str, str] | None = None) -> dict:
    """GET `url`, or POST `body` as JSON; with HTTP basic auth when `auth` is given."""
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    req = urllib.request.Request(url, json.dumps(body).encode() if body is not None else None, headers)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def watch(pid: int, seen: list[dict], stop: threading.Event) -> None:
    """Collect the listeners of `pid`'s process tree into `seen` every second until `stop`."""
    while not stop.is_set():
        seen.extend(s for s in listeners([pid]) if s not in seen)
        stop.wait(1)


def leftovers(*needles: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True).stdout.splitlines()
    return [p for p in ps if p.split()[1][0] != "Z" and any(n in p for n in needles)]


def test_cluster_job_sweep_and_clean_shutdown(tmp_path):
    run_dir = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAY_AUTH_MODE",
                                                             "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    env.update(PORTS)
    make = ["make", "--no-print-directory", f"RUN_DIR={run_dir}"]
    data = build_smoke_data(tmp_path / "data")
    up = subprocess.run([*make, "cluster-up"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    cluster = run_dir / "cluster"
    needles = []
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "http://127.0.0.1:8465" in up.stdout and "http://127.0.0.1:5155" in up.stdout
        needles = [(cluster / "ray_temp_dir").read_text().strip(), str(cluster / "mlflow.db"), ":6579"]
        assert (cluster / "ray.pid").exists() and (cluster / "mlflow.pid").exists()
        assert oct((cluster / "auth_token").stat().st_mode)[-3:] == "600"
        # MLflow basic auth: credentials private, printed by `env` only, required by the server
        for private in ("mlflow_credentials", "env", "mlflow.db", "mlflow_auth.db"):
            assert oct((cluster / private).stat().st_mode)[-3:] == "600", private
        assert oct(cluster.stat().st_mode)[-3:] == "700" and oct((cluster / "mlartifacts").stat().st_mode)[-3:] == "700"
        exports = subprocess.run(["bash", "cluster/local.sh", "env"], cwd=ROOT, env={**env, "RUN_DIR": str(run_dir)},
                                 capture_output=True, text=True, timeout=60).stdout
        auth = tuple(re.search(rf"^export {k}=(\S+)$", exports, re.M).group(1)
                     for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"))
        assert len(auth[1]) >= 32 and auth[1] not in up.stdout + up.stderr
        api = "http://127.0.0.1:5155/api/2.0/mlflow"
        with pytest.raises(urllib.error.HTTPError) as refused_mlflow:
            rest(f"{api}/experiments/search", {"max_results": 1})
        assert refused_mlflow.value.code == 401
        assert rest(f"{api}/experiments/search", {"max_results": 1}, auth)["experiments"]  # Default, at least
        # every port of the head (GCS, raylet, agents, client server, dashboard, metrics) and MLflow: loopback only
        expected = {*range(6579, 6589), 8465, 5155}
        pids = [int((cluster / f"{n}.pid").read_text()) for n in ("ray", "mlflow")]
        for _ in range(60):  # the agents may bind a moment after the dashboard answers
            found = listeners(pids)
            if {s["port"] for s in found} >= expected:
                break
            time.sleep(0.5)
        assert {s["port"] for s in found} >= expected, found
        assert unauthenticated_exposed(found) == [], found
        # a driver in a shell after `eval "$(cluster/local.sh env)"` reaches that loopback-only GCS (Ray would rewrite
        # 127.0.0.1 to the host's address), and so does spklip's ensure_ray given only the address; both listen on
        # loopback themselves
        client = dict(x.removeprefix("export ").split("=", 1) for x in (cluster / "env").read_text().splitlines())
        bare = {k: v for k, v in client.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
        for extra, start in ((client, "import ray; ray.init()"),
                             (bare, "from spklip.runtime.rayenv import ensure_ray; ensure_ray()")):
            code = (f"{start}; import json, os, sys; sys.path.insert(0, 'tests'); from test_ray_binding import "
                    "listeners; print('LISTENERS ' + json.dumps(listeners([os.getpid()])))")
            driver = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, **extra},
                                    capture_output=True, text=True, timeout=120)
            out = [x for x in driver.stdout.splitlines() if x.startswith("LISTENERS ")]
            assert driver.returncode == 0 and out, (driver.stdout + driver.stderr)[-3000:]
            mine = json.loads(out[0].removeprefix("LISTENERS "))
            assert mine and unauthenticated_exposed(mine) == [], mine
        # without the token the job server refuses the client: token authentication is on
        refused = subprocess.run([str(ROOT / ".venv/bin/ray"), "job", "list", "--address", "http://127.0.0.1:8465"],
                                 env={**env, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0
        # while the job runs, the listeners of the head's processes (the job's driver, Tune, Ray Train's workers)
        seen, stop = [], threading.Event()
        watcher = threading.Thread(target=watch, args=(pids[0], seen, stop), daemon=True)
        watcher.start()
        job = subprocess.run(["bash", "cluster/local.sh", "submit", "--", "python", "sweeps/hsfe_ablation.py",
                              "--smoke-test", "--num-samples", "1", "--name", "job", "--set",
                              f"train.run_dir={run_dir}", "--set", f"data.path={data}",
                              "--set", "scale.num_workers=1"],  # a Ray Train worker (its torch store) on the cluster
                             cwd=ROOT, env={**env, "RUN_DIR": str(run_dir)}, capture_output=True, text=True,
                             timeout=600)
        stop.set()
        watcher.join()
        assert "succeeded" in job.stdout + job.stderr, (job.stdout + job.stderr)[-4000:]
        assert any("RayTrainWorker" in s["name"] for s in seen), seen  # the trial's workers were watched
        assert unauthenticated_exposed(seen) == [], seen

        exp_id = rest(f"{api}/experiments/get-by-name?experiment_name=hsfe-ablation", auth=auth)["experiment"][
            "experiment_id"]
        parents = rest(f"{api}/runs/search", {"experiment_ids": [exp_id],
                                               "filter": "tags.`spklip.sweep.role` = 'parent'"}, auth)["runs"]
        assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
        pid = parents[0]["info"]["run_id"]
        trials = rest(f"{api}/runs/search", {"experiment_ids": [exp_id],
                                              "filter": f"tags.`mlflow.parentRunId` = '{pid}'"}, auth)["runs"]
        assert len(trials) == 1
        metrics = {m["key"]: m["value"] for m in trials[0]["data"]["metrics"]}
        assert 0.0 <= metrics["val/top1"] <= 1.0 and 0.0 <= metrics["val/top5"] <= 1.0
        params = {p["key"]: p["value"] for p in trials[0]["data"]["params"]}
        assert params["model.hsfe.num_subblocks"] and params["data.path"] == str(data)
        # the sweep's registration went through the authenticated server: the alias names the trial's model
        tags = {t["key"]: t["value"] for t in parents[0]["data"]["tags"]}
        name = tags["spklip.sweep.registered_model"].removeprefix("models:/").split("@")[0]
        best = rest(f"{api}/registered-models/alias?name={name}&alias=best", auth=auth)["model_version"]
        assert best["run_id"] == trials[0]["info"]["run_id"]
        report = subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "spklip.cli", "report", "--experiment",
                                 "hsfe-ablation", "--uri", "http://127.0.0.1:5155"], cwd=ROOT, capture_output=True,
                                text=True, timeout=120, env={**env, "MLFLOW_TRACKING_USERNAME": auth[0],
                                                             "MLFLOW_TRACKING_PASSWORD": auth[1]})
        assert report.returncode == 0 and trials[0]["info"]["run_id"][:8] in report.stdout, report.stderr[-2000:]
    finally:
        down = subprocess.run([*make, "cluster-down"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not (cluster / "ray.pid").exists() and not (cluster / "mlflow.pid").exists()
    assert leftovers(*needles) == []
