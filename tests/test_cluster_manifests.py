"""Multi-node manifests: they parse, carry the fields KubeRay / the Ray launcher need, pin one image, and the job's
entrypoint names a real sweep script whose storage lies on the shared volume."""

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "cluster" / "kuberay"
RAY_VERSION = re.search(r"ray\[[^\]]*\]==([\d.]+)", (ROOT / "pyproject.toml").read_text()).group(1)


def _load(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 1 and isinstance(docs[0], dict), path
    return docs[0]


def _cluster_spec(doc):
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def _pods(spec):
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]


@pytest.mark.parametrize("name,kind", [("raycluster.yaml", "RayCluster"), ("rayjob.yaml", "RayJob")])
def test_kuberay_manifest_fields(name, kind):
    doc = _load(KUBERAY / name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind and doc["metadata"]["name"]
    spec = _cluster_spec(doc)
    assert spec["rayVersion"] == RAY_VERSION
    assert spec["authOptions"]["mode"] == "token"
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if all(c["resources"]["limits"].get("nvidia.com/gpu") for c in g["template"]["spec"]["containers"])]
    assert gpu_groups and all(g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] for g in gpu_groups)
    for _, pod in _pods(spec):
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
        for c in pod["containers"]:
            assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+", c["image"]), c["image"]  # pinned, never :latest
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert claims[mounts["/mnt/shared"]] == "spklip-shared"  # every pod sees the same shared storage


def test_rayjob_entrypoint_runs_a_real_sweep_on_shared_storage():
    from spklip.commands.sweep import load_sweep

    doc = _load(KUBERAY / "rayjob.yaml")
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "python"
    script = ROOT / Path(argv[1]).relative_to("/app")  # the Dockerfile copies the repository to /app
    assert script.exists() and load_sweep(str(script)).name == "hsfe-ablation"
    sets = dict(a.split("=", 1) for a in argv[argv.index("--set") :] if "=" in a)
    assert sets["train.run_dir"].startswith("/mnt/shared/") and sets["data.path"].startswith("/mnt/shared/")
    env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env["MLFLOW_TRACKING_URI"].startswith("http://") and env["HF_HUB_OFFLINE"] == "1"
    assert doc["spec"]["shutdownAfterJobFinishes"] is True


def test_aws_launcher_config():
    cfg = _load(ROOT / "cluster" / "aws.yaml")
    for key in ["cluster_name", "max_workers", "provider", "auth", "available_node_types", "head_node_type",
                "head_start_ray_commands", "worker_start_ray_commands"]:
        assert key in cfg, key
    assert cfg["provider"]["type"] == "aws" and cfg["head_node_type"] in cfg["available_node_types"]
    assert any("g5" in t["node_config"]["InstanceType"] for t in cfg["available_node_types"].values())
    head = " ".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in head and "RAY_AUTH_MODE=token" in head
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    assert not any(re.search(r"\bray stop\b", c) for c in starts)
    assert "~/.ray/auth_token" in cfg["file_mounts"]
    pods = _pods(_cluster_spec(_load(KUBERAY / "raycluster.yaml")))
    images = {c["image"] for _, pod in pods for c in pod["containers"]}
    assert images == {cfg["docker"]["image"]}  # one image everywhere


def test_dockerfile_matches_the_pinned_ray_and_copies_the_sweeps():
    text = (ROOT / "cluster" / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(RAY_VERSION)}-py311-gpu$", text, re.M)
    for path in re.findall(r"^COPY \S+ (\w+) ", text, re.M):
        assert (ROOT / path).exists(), path
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"] == "spklip"
