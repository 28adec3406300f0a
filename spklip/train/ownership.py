"""One driver per run folder, run names that stay inside their folder, and where a run folder was created.

* `check_name` (`spklip.cliargs.check_name`, re-exported here): a run or sweep name (``--name``,
  ``tracking.run_name``) is one plain folder name: no ``/``, no ``..``, no leading ``.`` or ``-``, nothing but
  letters, digits and ``. _ - = + , @``, at most `NAME_MAX` characters. The argparse type of ``--name``
  (`spklip.cliargs.folder_name`) is the same check, so a bad ``--name`` stops at parsing; ``tracking.run_name`` is
  checked before Ray or MLflow start.
* `lock_folder`: an exclusive ``flock`` on ``<folder>/spklip.lock``, held until this process exits (the kernel
  releases it when the process dies, SIGKILL included: no stale lock to clean up). A second driver of the same run
  or sweep gets `RunInUseError` naming the holder's PID. Taking it again in the process that holds it is a no-op
  (a test or a notebook that trains the same run twice).
* `folder_location`: what a run file records as the place its folder was created, so that a copy resumed elsewhere
  is told apart from the original (`spklip.runtime.launcher`).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

from spklip.cliargs import check_name
from spklip.config.train import RUN_NAME_MAX_BYTES
from spklip.data import storage

LOCK_FILE = "spklip.lock"
NAME_MAX = RUN_NAME_MAX_BYTES  # ASCII only: characters are bytes
__all__ = ["LOCK_FILE", "NAME_MAX", "RunInUseError", "check_name", "folder_location", "lock_folder", "release_folder"]
_HELD: dict[str, int] = {}  # realpath of a locked folder -> the open lock file (kept open: the lock lives with it)


class RunInUseError(ValueError):
    """Another process drives this run or sweep (it holds the folder's lock)."""


def lock_folder(folder: str | os.PathLike, what: str) -> None:
    """Hold an exclusive lock on `folder` (created if missing) until this process exits.

    Args:
        folder: a run folder or a sweep folder (local).
        what: how the error names it, e.g. ``run cli`` or ``sweep hsfe-ablation-1``.

    Raises:
        RunInUseError: another process holds it: ``run cli is in use by another driver (pid 1234)``.
    """
    folder = Path(folder)
    key = os.path.realpath(folder)
    if key in _HELD:
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise RunInUseError(f"{what} is in use by another driver (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
    _HELD[key] = fd


def release_folder(folder: str | os.PathLike) -> bool:
    """Give up this process's lock on `folder`; False when it held none."""
    fd = _HELD.pop(os.path.realpath(folder), None)
    if fd is None:
        return False
    os.close(fd)  # closing the only descriptor of the open file releases the flock
    return True


def _holder(fd: int) -> str:
    """The PID the lock file names (the holder writes it right after locking), or ``unknown``."""
    try:
        return str(int(json.loads(os.pread(fd, 4096, 0) or b"{}")["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


def folder_location(folder: str) -> str:
    """Where a run folder is, as its run file records it: the real path of a local folder (links resolved), the
    URI of one in an object store."""
    return folder if storage.is_uri(folder) else os.path.realpath(folder)
