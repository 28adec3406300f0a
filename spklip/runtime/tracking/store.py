"""Where a run's tracking goes: the tracking URI, the artifact folder of a new experiment, whether a server answers,
and MLflow's fluent API pointed at a URI for a block.

Credentials never leave the process inside a URI: `resolve_uri` moves a user name and password written into an
http(s) tracking URI (``http://alice:PW@host/``) to the environment MLflow reads for basic authentication
(``MLFLOW_TRACKING_USERNAME``, ``MLFLOW_TRACKING_PASSWORD``) and returns the URI without them, which is what spklip
prints, stores (run files, checkpoints, the sweep file) and logs (params, the logged model). `redact_uri` and
`redact_text` strip them from anything else that is shown."""

from __future__ import annotations

import os
import re
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, unquote, urlparse, urlsplit, urlunsplit

USERNAME_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"  # MLflow's basic auth
CREDENTIAL_ENV = (USERNAME_ENV, PASSWORD_ENV, "MLFLOW_TRACKING_TOKEN")  # what a worker needs to log with them
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/@]*)@")


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``(uri without its user info, user name, password)``; names and passwords percent-decoded, None if absent."""
    parts = urlsplit(uri or "")
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return uri, None, None
    user, colon, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), unquote(user) or None, unquote(password) if colon else None


def redact_uri(uri: str) -> str:
    """`uri` as spklip prints, stores and logs it: an http(s) URI without user name and password, any other URI
    (a database) without its password (its user name stays: the database needs it and it is no secret)."""
    clean, user, password = split_credentials(uri)
    if is_remote(clean) or user is None:
        return clean
    parts = urlsplit(clean)
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}@{parts.netloc}"))


def redact_text(text: str) -> str:
    """`text` with the user info of every ``scheme://user:password@`` in it replaced by ``***``."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}***@", text)


def adopt_credentials(uri: str) -> str:
    """Move the credentials inside `uri` to the environment MLflow reads and return the URI without them.

    http(s): the user name and password go to ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (this
    process; Ray workers get them in their runtime env, `spklip.runtime.launcher`). A database URI with a password
    is refused: its driver reads the password only from the URI, which spklip would store with the run."""
    clean, user, password = split_credentials(uri)
    if user is None and password is None:
        return uri
    if not is_remote(clean):
        if password is None:
            return uri
        raise ValueError(f"tracking URI {redact_uri(uri)}: a password inside a {urlsplit(clean).scheme} URI would be "
                         "stored with the run; leave it out (PostgreSQL reads PGPASSWORD or ~/.pgpass)")
    if user is not None:
        os.environ[USERNAME_ENV] = user
    if password is not None:
        os.environ[PASSWORD_ENV] = password
    return clean


def credentials_env() -> dict[str, str]:
    """The MLflow credential variables set in this process (for the Ray workers' runtime env)."""
    return {k: os.environ[k] for k in CREDENTIAL_ENV if os.environ.get(k)}


def resolve_uri(uri: str, run_dir: str | Path) -> str:
    """The tracking URI a run uses: `uri` if set, else ``MLFLOW_TRACKING_URI``, else the local sqlite file
    ``<run_dir>/mlflow.db`` (no server). Credentials inside it are moved to MLflow's environment
    (`adopt_credentials`; ``MLFLOW_TRACKING_URI`` itself is rewritten without them): the URI returned has none.
    ``MLFLOW_TRACKING_URI`` with credentials also lends them to a `uri` naming the same server without any (the
    stored URI of a resumed run)."""
    env_uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if env_uri and (not uri or redact_uri(uri) == redact_uri(env_uri)):  # the server in use: its credentials
        os.environ["MLFLOW_TRACKING_URI"] = adopt_credentials(env_uri)  # MLflow's default (Ray's workers) without
    if uri:
        return adopt_credentials(uri)  # after the variable's: credentials in the URI itself win
    if env_uri:
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
