"""Paths or object-store URIs -> ``(pyarrow filesystem, path)``: the one place spklip decides where bytes live.

A path is either local (``runs/data/digits``, ``/abs/path``) or an ``s3://bucket/prefix`` URI. Everything that
reads or writes shards, Ray storage (checkpoints, Tune state) or the small JSON files spklip keeps beside them goes
through `resolve`, so an S3-compatible server (AWS, MinIO, Ceph, moto) is configured in one way, by the usual AWS
environment:

* ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (e.g. ``http://minio:9000``): the endpoint (none: AWS itself);
* ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``), ``~/.aws`` or an instance role:
  the credentials, read by the AWS SDK's default chain in every process that opens the filesystem;
* ``AWS_DEFAULT_REGION`` or ``AWS_REGION``: the region (default ``us-east-1``).

The filesystem object carries the endpoint and region but never the credentials: Ray pickles it into what it
stores (Tune's ``tuner.pkl`` in the bucket), and a secret must not end up there. Every Ray process (a cluster's
pods) therefore needs the credentials in its own environment (docs/cluster.md, "Object storage (S3)").

Other URI schemes (``gs://``, ``hdfs://``) go to ``pyarrow.fs.FileSystem.from_uri`` unchanged.

One S3 filesystem per endpoint, region and credentials in the environment is made and kept (`s3_filesystem`). At
interpreter exit (`release_s3`, registered when the first one is made, so it runs before the exit hooks of what
was imported earlier) spklip drops those, collects garbage and finalises pyarrow's S3 subsystem itself: an S3 client
destroyed during the interpreter's own teardown, after the AWS SDK was shut down, crashed an exiting process (exit
code 139) now and then.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import posixpath
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import pyarrow.fs as pafs

PathLike = str | os.PathLike
_CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
_S3: dict[tuple, pafs.S3FileSystem] = {}  # the S3 filesystems made (`s3_filesystem`), released at exit (`release_s3`)
_S3_LOCK = threading.Lock()
_S3_AT_EXIT: list[bool] = []  # whether `release_s3` is registered


def is_uri(path: PathLike) -> bool:
    """Whether `path` names an object store (``scheme://...``) rather than a local file."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def s3_filesystem() -> pafs.S3FileSystem:
    """The S3 filesystem for the endpoint and region in the environment (see the module docstring); one per
    endpoint, region and credentials, kept until exit (`release_s3`)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    options: dict = {"region": region}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=parsed.netloc + parsed.path.rstrip("/"), scheme=parsed.scheme)
    # the filesystem reads the credentials once, when made: other credentials in the environment, another one
    key = (tuple(sorted(options.items())), tuple(os.environ.get(k) for k in _CREDENTIAL_ENV))
    with _S3_LOCK:
        if not _S3_AT_EXIT:
            atexit.register(release_s3)  # registered after pyarrow's own finaliser (at import): runs before it
            _S3_AT_EXIT.append(True)
        if key not in _S3:
            _S3[key] = pafs.S3FileSystem(**options)
        return _S3[key]


def release_s3() -> None:
    """Drop the S3 filesystems spklip made, collect what referenced them and finalise pyarrow's S3 subsystem
    (at exit; any S3 filesystem still alive is unusable afterwards)."""
    with _S3_LOCK:
        _S3.clear()
    gc.collect()
    pafs.finalize_s3()


def resolve(uri: PathLike) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path on it)`` for a local path (made absolute) or an object-store URI."""
    text = str(uri)
    if text.startswith("s3://"):
        return s3_filesystem(), text[len("s3://"):].rstrip("/")
    if is_uri(text):
        return pafs.FileSystem.from_uri(text)
    if text.startswith("file://"):
        text = text[len("file://"):]
    return pafs.LocalFileSystem(), str(Path(text).absolute())


def absolute(path: PathLike) -> str:
    """A URI as it is; a local path made absolute (resolved), so other processes mean the same place."""
    return str(path) if is_uri(path) else str(Path(path).resolve())


def join(root: PathLike, *parts: str) -> str | Path:
    """`root` / parts: a ``Path`` for a local root, a URI string for a URI root (``Path`` would eat ``//``)."""
    if is_uri(root):
        return posixpath.join(str(root).rstrip("/"), *parts)
    return Path(root).joinpath(*parts)


def exists(path: PathLike) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def is_file(path: PathLike) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type == pafs.FileType.File


def size(path: PathLike) -> int:
    fs, p = resolve(path)
    return int(fs.get_file_info(p).size)


def read_text(path: PathLike) -> str:
    """The text of a file. Raises FileNotFoundError when it is missing."""
    if not is_uri(path):
        return Path(path).read_text()
    fs, p = resolve(path)
    if fs.get_file_info(p).type != pafs.FileType.File:
        raise FileNotFoundError(f"{path} does not exist")
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def write_text(path: PathLike, text: str) -> None:
    """Write a small file whole (an object store's PUT is atomic: readers see the old object or the new one)."""
    if not is_uri(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
        return
    fs, p = resolve(path)
    with fs.open_output_stream(p) as f:
        f.write(text.encode())


def list_files(root: PathLike) -> list[str]:
    """Every file below `root`, as paths relative to it (sorted); empty when `root` does not exist."""
    fs, p = resolve(root)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=True, allow_not_found=True))
    return sorted(posixpath.relpath(i.path, p) for i in infos if i.type == pafs.FileType.File)


def remove(root: PathLike, files: list[str]) -> None:
    """Delete `files` (relative to `root`)."""
    fs, p = resolve(root)
    for rel in files:
        fs.delete_file(posixpath.join(p, rel))


@contextlib.contextmanager
def local_copy(path: PathLike) -> Iterator[Path]:
    """``with local_copy(folder) as d:`` a local folder holding `path`'s files: `path` itself when local, else a
    temporary download (removed afterwards). For what only reads local files (``torch.load``, MLflow uploads)."""
    if not is_uri(path):
        yield Path(path)
        return
    fs, p = resolve(path)
    tmp = tempfile.mkdtemp(prefix="spklip-copy-")
    try:
        dest = Path(tmp) / posixpath.basename(p.rstrip("/"))
        dest.mkdir()
        pafs.copy_files(p, str(dest), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
