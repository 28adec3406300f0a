"""Object storage end to end against a real S3-compatible server (moto's, on loopback, started here): shards
built into a bucket read back like a local build; a sweep stored in the bucket trains from it with Ray Data,
checkpoints into it, loses its trial's worker, and resumes from the bucket alone, the trial's run continuing from its
checkpoint there. (One Ray scenario: each Ray start costs tens of seconds on 2 busy cores.)"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch
from moto.server import ThreadedMotoServer

from spklip.cli import main
from spklip.data import storage
from spklip.data.build import build_dataset, has_shards
from spklip.data.read import eval_batches, sample_batches
from spklip.data.shards import PARTIAL, ShardError, dataset_files, read_metadata, validate_shards
from spklip.data.simulate import SimParams
from spklip.data.smoke import SMOKE_SEED, build_smoke_data, smoke_spec
from spklip.outdir import RefusedError
from spklip.train.checkpoint import read_checkpoint
from spklip.runtime.plan import resume_target
from spklip.runtime.tune.sweep import SweepContext

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (a thread of this process, stopped at the end of the module), and the AWS
    environment pointing at it for the module's tests."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        with pytest.MonkeyPatch.context() as env:
            for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
                env.setenv(key, value)
            env.delenv("AWS_ENDPOINT_URL_S3", raising=False)
            yield endpoint
    finally:
        server.stop()


def _new_bucket(endpoint: str) -> str:
    name = f"spklip-{uuid.uuid4().hex[:8]}"
    pafs.S3FileSystem(endpoint_override=endpoint.split("://")[1], scheme="http",
                      allow_bucket_creation=True).create_dir(name)
    return f"s3://{name}"


@pytest.fixture
def bucket(s3_endpoint):
    """A fresh, empty bucket: ``s3://<name>``."""
    return _new_bucket(s3_endpoint)


@pytest.fixture(scope="module")
def local_smoke(tmp_path_factory):
    """The smoke dataset built into a local folder (what a bucket build must match)."""
    return build_smoke_data(tmp_path_factory.mktemp("local") / "smoke")


@pytest.fixture(scope="module")
def s3_smoke(s3_endpoint):
    """A bucket holding the smoke dataset under ``data/smoke``: ``(bucket, dataset URI)``."""
    bucket = _new_bucket(s3_endpoint)
    build_dataset(f"{bucket}/data/smoke", "moving-digits", smoke_spec(), SimParams(seed=SMOKE_SEED))
    return bucket, f"{bucket}/data/smoke"


def test_shards_built_into_a_bucket_read_and_inspect_like_a_local_build(bucket, local_smoke, capsys):
    local = local_smoke
    uri = f"{bucket}/data/smoke"
    build_dataset(uri, "moving-digits", smoke_spec(), SimParams(seed=SMOKE_SEED))
    remote, here = read_metadata(uri), read_metadata(local)
    assert remote["fingerprint"] == here["fingerprint"] and remote["splits"] == here["splits"]
    assert storage.list_files(uri) == sorted(dataset_files(local))  # the manifest and its shards, no marker left
    assert validate_shards(uri, pages=True)["num_clips"] == 54
    a, b = next(eval_batches(uri, "val", 8)), next(eval_batches(str(local), "val", 8))
    assert torch.equal(a["spikes"], b["spikes"]) and a["clip_id"] == b["clip_id"]
    assert [x["clip_id"] for x in sample_batches(uri, "train", 2, 4, seed=3)] == \
        [x["clip_id"] for x in sample_batches(str(local), "train", 2, 4, seed=3)]
    assert has_shards(uri) and not has_shards(f"{bucket}/nothing")

    assert main(["data", "inspect", uri]) == 0
    assert f"fingerprint {here['fingerprint']}" in capsys.readouterr().out

    with pytest.raises(ShardError, match="already exists"):
        build_dataset(uri, "moving-digits", smoke_spec(), SimParams(seed=SMOKE_SEED))
    storage.write_text(f"{bucket}/data/smoke/notes.txt", "mine")
    with pytest.raises(RefusedError, match="notes.txt"):  # an object spklip did not write is never deleted
        build_dataset(uri, "moving-digits", smoke_spec(), SimParams(seed=SMOKE_SEED), overwrite=True)
    storage.remove(uri, ["notes.txt"])


def test_an_interrupted_upload_is_no_dataset_and_the_next_overwrite_replaces_it(bucket, local_smoke):
    local = local_smoke
    uri = f"{bucket}/data/smoke"
    files = sorted(dataset_files(local))
    storage.write_text(storage.join(uri, PARTIAL), json.dumps({"spklip_partial": True, "files": files}))
    fs, root = storage.resolve(uri)
    shard = next(f for f in files if f.endswith(".parquet"))
    pafs.copy_files(str(local / shard), f"{root}/{shard}", destination_filesystem=fs)  # died before the manifest
    with pytest.raises(ShardError, match="not a spike shard folder"):
        read_metadata(uri)
    meta = build_dataset(uri, "moving-digits", smoke_spec(), SimParams(seed=SMOKE_SEED), overwrite=True)
    assert read_metadata(uri)["fingerprint"] == meta["fingerprint"] and PARTIAL not in storage.list_files(uri)


# --- Ray: in a child process started with the AWS environment, so every Ray process it starts (Train workers, Ray
# Data tasks, Tune trial actors) reads the bucket with it, as the pods of a cluster would (the filesystem Ray
# pickles carries the endpoint, never the credentials). The session's shared Ray was started without it.

def _child(code: str, tmp_path, timeout: int) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
               RAY_TMPDIR=tempfile.mkdtemp(prefix="spks", dir="/tmp"))  # short: Ray's socket paths < 108 bytes
    log = tmp_path / "child.log"
    with open(log, "w") as out:
        # -X faulthandler: a crash (the pyarrow S3 exit segfault seen once in CI) leaves its stack in the log
        child = subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", code], cwd=ROOT, env=env, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        try:
            child.wait(timeout=timeout)
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)  # the child and the Ray it started
                child.wait()
            time.sleep(2)
            for pid in _processes_under(env["RAY_TMPDIR"]):  # Ray's processes outliving their driver: a leak
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    text = log.read_text()
    assert child.returncode == 0, text[-4000:]
    return text


def _processes_under(path: str) -> list[int]:
    ps = subprocess.run(["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True).stdout.splitlines()
    return [int(p.split()[0]) for p in ps if path in p and " Z" not in p[:12]]


def _loss_steps(run_dir, run_id: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    return sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))


SWEEP = """
import os, shutil
from spklip.sweeps.hsfe_ablation import SPEC
from spklip.runtime.tune.sweep import main
args = ["--name", "s3sweep", "--storage", {storage!r}, "--set", {run_dir!r}, "--set", {data!r},
        "--set", "scale.num_workers=1",  # Ray Train workers: local-mode trials refuse an object store
        "--set", "data.materialize=false",  # Ray Data's read tasks read the bucket (not one decode on the driver)
        "--set", "train.checkpoint_every=2", "--set", "train.log_every=1",
        "--set", "data.batch_size=6"]  # the smoke set's 24 training clips: 4 steps in its one epoch
os.environ.update(SPKLIP_FAULT_CRASH_AT_STEP="4", SPKLIP_FAULT_MARKER={marker!r})
assert main(SPEC, ["--smoke-test", "--num-samples", "1", "--scheduler", "fifo", *args]) == 1  # its trial dies: exit 1
shutil.rmtree({local!r})  # the local sweep folder is gone: the resume reads the bucket only
assert main(SPEC, ["--resume", *args]) == 0
"""


@pytest.mark.slow
def test_a_sweep_trains_from_the_bucket_checkpoints_into_it_and_resumes_from_it(s3_smoke, tmp_path):
    bucket, data = s3_smoke
    runs, marker = tmp_path / "runs", tmp_path / "crashed"
    out = _child(SWEEP.format(storage=f"{bucket}/sweeps", run_dir=f"train.run_dir={runs}", data=f"data.path={data}",
                              marker=str(marker), local=str(runs / "sweeps" / "s3sweep")), tmp_path, 300)
    assert marker.read_text() == "4"  # the trial's worker really died at step 4

    exp = f"{bucket}/sweeps/s3sweep"
    ctx = SweepContext.load(exp)
    assert ctx.storage == f"{exp}/train"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(ctx.tracking_uri)
    parent = client.get_run(ctx.parent_run_id)
    kids = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(kids) == 1 and kids[0].info.status == "FINISHED" and "val/top1" in kids[0].data.metrics
    # the errored trial continued from its checkpoint in the bucket (step 2): step 3 twice, nothing from scratch
    assert _loss_steps(runs, kids[0].info.run_id) == [1, 2, 3, 3, 4]
    best = kids[0].data.tags["best_checkpoint"]
    assert best.startswith(f"{exp}/train/train-trial_id=") and read_checkpoint(best)["step"] == 4  # from the bucket
    name = kids[0].info.run_name
    cfg, found, where = resume_target(name, ctx.storage, str(runs))  # what `spklip train --resume` reads
    assert (found, where, cfg.data.path) == (name, ctx.storage, data)
    in_bucket = storage.list_files(f"{ctx.storage}/{name}")
    assert {"spklip_config.json", "spklip_run.json"} <= set(in_bucket)
    local = runs / "s3" / exp[len("s3://"):] / "train" / name  # what is appended while training stays local
    assert (local / "progress.log").read_text().count("epoch") == 1
    files = storage.list_files(exp)
    assert "tuner.pkl" in files and any(f.startswith("train/train-trial_id=") and "checkpoint_step=" in f
                                        for f in files)
    assert (runs / "sweeps" / "s3sweep" / "report" / "table.md").exists()
    assert "Best model: models:/hsfe-ablation@best" in out  # from its best checkpoint, downloaded from the bucket
