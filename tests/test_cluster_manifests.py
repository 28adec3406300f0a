"""Multi-node manifests, checked offline against schemas: the cluster-launcher config (cluster/aws.yaml) against
the schema that ships inside the ray package (ray/autoscaler/ray-schema.json) and Ray's own `ray up` checks; the
KubeRay RayCluster / RayJob against tests/schemas/kuberay-minimal.schema.json, a HAND-KEPT MINIMAL schema (no
package ships the KubeRay CRDs; see the file's $comment and docs/cluster.md). Each schema is shown to reject a
misspelt field. Beyond the schemas: one pinned image everywhere, the shared volume on every pod, and the job's
entrypoint names a real sweep script whose storage lies on the shared volume."""

import copy
import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "cluster" / "kuberay"
AWS = ROOT / "cluster" / "aws.yaml"
RAY_VERSION = re.search(r"ray\[[^\]]*\]==([\d.]+)", (ROOT / "pyproject.toml").read_text()).group(1)
LAUNCHER_SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
KUBERAY_SCHEMA = json.loads((Path(__file__).parent / "schemas" / "kuberay-minimal.schema.json").read_text())


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


def _errors(schema: dict, doc: dict) -> list[str]:
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(schema).iter_errors(doc)]


def _rename(doc: dict, path: str, new: str) -> dict:
    """A copy of ``doc`` with the key at ``path`` (slash-separated, list indices as numbers) renamed to ``new``."""
    doc = copy.deepcopy(doc)
    *parents, key = path.split("/")
    node = doc
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    node[new] = node.pop(key)
    return doc


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifest_matches_the_schema(name):
    assert _errors(KUBERAY_SCHEMA, _load(KUBERAY / name)) == []


@pytest.mark.parametrize("name,path,typo", [
    ("raycluster.yaml", "spec/enableInTreeAutoscaling", "enableInTreeAutoScaling"),
    ("raycluster.yaml", "spec/workerGroupSpecs/0/maxReplicas", "maxReplica"),
    ("raycluster.yaml", "spec/headGroupSpec/template/spec/containers/0/volumeMounts", "volumeMount"),
    ("raycluster.yaml", "spec/workerGroupSpecs/0/template/spec/tolerations", "toleration"),
    ("rayjob.yaml", "spec/shutdownAfterJobFinishes", "shutdownAfterJobFinished"),
    ("rayjob.yaml", "spec/rayClusterSpec/authOptions", "authOption"),
    ("rayjob.yaml", "spec/rayClusterSpec/headGroupSpec/template/spec/volumes/0/persistentVolumeClaim/claimName",
     "claimname"),
])
def test_kuberay_schema_rejects_a_misspelt_field(name, path, typo):
    errors = _errors(KUBERAY_SCHEMA, _rename(_load(KUBERAY / name), path, typo))
    assert errors and any(typo in e for e in errors), errors


@pytest.mark.parametrize("group,field,value", [("head", "rayStartParams", {"num-cpus": 0}),  # KubeRay: strings
                                               ("worker", "replicas", "1"), ("worker", "groupName", "")])
def test_kuberay_schema_rejects_wrong_types(group, field, value):
    doc = _load(KUBERAY / "raycluster.yaml")
    target = doc["spec"]["headGroupSpec"] if group == "head" else doc["spec"]["workerGroupSpecs"][0]
    target[field] = value
    assert _errors(KUBERAY_SCHEMA, doc)


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


def test_aws_launcher_config_matches_rays_schema():
    cfg = _load(AWS)
    assert _errors(LAUNCHER_SCHEMA, cfg) == []
    # the schema requires only cluster_name and provider; a launchable GPU cluster needs these too
    assert {"max_workers", "auth", "available_node_types", "head_node_type", "head_start_ray_commands",
            "worker_start_ray_commands"} <= set(cfg)
    validate_config(prepare_config(copy.deepcopy(cfg)))  # what `ray up` runs: defaults filled in, then the checks


@pytest.mark.parametrize("path,typo", [
    ("head_start_ray_commands", "head_start_ray_comands"),
    ("available_node_types/ray.worker.gpu/min_workers", "min_worker"),
    ("docker/image", "imge"),
    ("auth/ssh_user", "ssh_usr"),
])
def test_launcher_schema_rejects_a_misspelt_field(path, typo):
    errors = _errors(LAUNCHER_SCHEMA, _rename(_load(AWS), path, typo))
    assert errors and any(typo in e for e in errors), errors


def test_aws_launcher_config():
    cfg = _load(AWS)
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
