"""Read-only commands (``spklip report``, ``spklip eval --model``) read a tracking store; they never create one.

MLflow creates a local store the moment a client opens it (an empty ``mlflow.db`` with its tables, or an ``mlruns/``
folder), so a mistyped ``--uri`` or a command run in the wrong folder would leave ``runs/mlflow.db`` behind and then
report "no such experiment". `require_store` checks that a local store exists before MLflow sees the URI.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from spklip.runtime.tracking.store import redact_uri

LOCAL_DB_SCHEMES = ("sqlite",)  # SQLAlchemy URIs of a database file
DB_SERVER_SCHEMES = ("postgresql", "mysql", "mssql")  # databases behind a server: nothing is created locally


def local_store_path(uri: str) -> Path | None:
    """The file or folder a local tracking URI names (``sqlite:///runs/mlflow.db`` -> ``runs/mlflow.db``,
    ``file:///x/mlruns`` or a plain path -> that folder); None for a server (http, https, databricks, a database
    server) or an in-memory sqlite."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+", 1)[0].lower()
    if scheme in LOCAL_DB_SCHEMES:
        rest = uri.split(":///", 1)[1] if ":///" in uri else ""
        rest = rest.split("?", 1)[0]
        return Path(unquote(rest)) if rest and rest != ":memory:" else None
    if scheme == "file":
        return Path(unquote(parsed.path))
    if scheme == "" or (len(scheme) == 1 and uri[1:3] in (":\\", ":/")):  # a plain path (or a Windows drive)
        return Path(uri)
    return None


def require_store(uri: str, what: str = "tracking store") -> str:
    """Return `uri` when it names a server or a local store that exists; raise FileNotFoundError (one line, the
    path and how to point elsewhere) for a local sqlite file or ``mlruns`` folder that does not: a read-only
    command must not create it."""
    path = local_store_path(uri)
    if path is None:
        return uri
    if path.exists():
        if not (path.is_file() if urlparse(uri).scheme.split("+", 1)[0].lower() in LOCAL_DB_SCHEMES
                else path.is_dir()):
            raise FileNotFoundError(f"{path}: not an MLflow {what} ({'a folder' if path.is_dir() else 'a file'})")
        return uri
    raise FileNotFoundError(f"no MLflow {what} at {redact_uri(uri)} ({path} does not exist); run from the folder "
                            "that holds runs/, or pass the tracking URI (--uri / --tracking-uri, MLFLOW_TRACKING_URI)")
