"""Object storage end to end against a real S3-compatible server (moto's, on loopback, started here): shards
built into a bucket read back like a local build; training reads them with Ray Data and checkpoints into the
bucket, survives a killed worker and resumes a run from the bucket; a sweep stored in the bucket resumes."""

import json
import uuid

import pyarrow.fs as pafs
import pytest
import torch

from spklip.cli import main
from spklip.data import storage
from spklip.data.build import build_dataset, has_shards
from spklip.data.read import eval_batches, sample_batches
from spklip.data.shards import PARTIAL, ShardError, dataset_files, read_metadata, validate_shards
from spklip.data.simulate import SimParams
from spklip.data.smoke import SMOKE_SEED, build_smoke_data, smoke_spec
from spklip.outdir import RefusedError

moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (a thread of this process, stopped at the end of the module)."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    """A fresh bucket; the AWS environment points at the server. Returns ``s3://<bucket>``."""
    for key, value in {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    name = f"spklip-{uuid.uuid4().hex[:8]}"
    pafs.S3FileSystem(endpoint_override=s3_endpoint.split("://")[1], scheme="http",
                      allow_bucket_creation=True).create_dir(name)
    return f"s3://{name}"


def test_shards_built_into_a_bucket_read_and_inspect_like_a_local_build(bucket, tmp_path, capsys):
    local = build_smoke_data(tmp_path / "local")
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


def test_an_interrupted_upload_is_no_dataset_and_the_next_overwrite_replaces_it(bucket, tmp_path):
    local = build_smoke_data(tmp_path / "local")
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
