"""Where a run's tracking goes: the tracking URI, the artifact folder of a new experiment, whether a server answers,
and MLflow's fluent API pointed at a URI for a block."""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse


def resolve_uri(uri: str, run_dir: str | Path) -> str:
    """The tracking URI a run uses: `uri` if set, else ``MLFLOW_TRACKING_URI``, else the local sqlite file
    ``<run_dir>/mlflow.db`` (no server)."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(run_dir).resolve() / 'mlflow.db')}"


def artifact_location(run_dir: str | Path, experiment: str) -> str:
    """Absolute ``file://`` artifact folder for a new experiment."""
    return (Path(run_dir).resolve() / "mlartifacts" / experiment).as_uri()


def is_remote(uri: str) -> bool:
    return urlparse(uri or "").scheme in ("http", "https")


def server_reachable(uri: str, timeout: float = 3.0) -> bool:
    """True for local stores; for http(s) URIs, whether a TCP connection to the server opens within `timeout`."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return True
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def fluent_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (``mlflow.start_run``, ``mlflow.search_runs``: no ``tracking_uri`` argument) at `uri`
    for the block. set_tracking_uri also exports ``MLFLOW_TRACKING_URI``; the previous value is put back after
    (None unsets it, so later runs resolve their own URI again)."""
    import mlflow  # on first use: importing mlflow costs ~1 s

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
