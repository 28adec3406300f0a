"""Output folders that spklip replaces: only ever what spklip wrote itself, built beside and swapped in whole.

A command that writes a folder (``spklip data build --out``, ``spklip eval --out``) builds it in a hidden sibling
``.NAME.tmp-HOST-PID`` and renames it into place at the end. An existing folder is replaced only when it is empty,
or carries spklip's marker (a dataset's ``manifest.json``, an eval report's ``spklip_eval.json``) and holds nothing
but the files that marker lists; anything else (a plain file, a link, a folder of other files) is refused with one
line and nothing is deleted. Siblings left behind by a process that died (SIGKILL, power loss) are cleared by the
next write to the same folder: temporary folders are removed, a replaced folder whose swap did not finish is put
back. Only a sibling that carries spklip's own marker (`TEMP_MARKER`, naming the folder, host and PID it belongs
to) is ever removed or restored: a user's folder that merely looks like ``.NAME.tmp-PID`` is never touched.

Single files (``spklip data simulate --out FILE``) go the same way: `atomic_file` writes into a marked temporary
folder beside the file and renames the finished file into place; `check_file_out` refuses an existing path unless
``--overwrite`` was given and it is a plain file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"  # no "-": it separates host from PID
TEMP_MARKER = ".spklip-temp.json"  # inside every .NAME.tmp-* / .NAME.old-* folder spklip makes: what it is, whose
_MARKER_MAX_BYTES = 4096


class RefusedError(ValueError):
    """An output path exists and is not something spklip wrote; it is left exactly as it was."""


def read_marker(path: Path, required: tuple[str, ...]) -> dict[str, Any] | None:
    """The JSON object in `path` when it holds every key in `required`, else None (missing, unreadable, foreign)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) and all(k in data for k in required) else None


def check_replaceable(dest: str | os.PathLike, owned: Callable[[Path], set[str] | None], what: str) -> None:
    """Raise `RefusedError` unless `dest` is absent, an empty folder, or a folder spklip wrote.

    Leftovers of dead processes are cleared first (`clear_stale`), so that what is judged is what is really there.

    Args:
        dest: the output folder.
        owned: ``owned(dest)`` -> the relative paths spklip wrote there (from its marker), or None without one.
        what: what spklip writes there, for the message (e.g. "a spklip dataset").
    """
    dest = Path(dest)
    clear_stale(dest)
    if not os.path.lexists(dest):
        return
    if dest.is_symlink() or not dest.is_dir():
        kind = "a symbolic link" if dest.is_symlink() else "a file"
        raise RefusedError(f"{dest} is {kind}, not {what}; spklip will not replace it (choose another path)")
    if not any(dest.iterdir()):
        return
    files = owned(dest)
    if files is None:
        raise RefusedError(f"{dest} is not {what} (no spklip marker in it); spklip will not replace it "
                           "(choose another path or remove it yourself)")
    foreign = sorted(_foreign(dest, files))
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise RefusedError(f"{dest} holds files spklip did not write ({', '.join(foreign[:3])}{more}); spklip will "
                           "not replace it (move them out or choose another path)")


def _foreign(root: Path, owned: set[str]) -> list[str]:
    """Entries below `root` (files, links, folders without owned files) not in `owned`."""
    owned = {Path(p).as_posix() for p in owned}
    parents = {q.as_posix() for p in owned for q in Path(p).parents}  # folders that hold owned files
    out = []
    for dirpath, dirnames, filenames in os.walk(root):  # links to folders are listed, not followed
        rel = Path(dirpath).relative_to(root)
        for name in dirnames + filenames:
            path = (rel / name).as_posix()
            is_dir = name in dirnames and not (Path(dirpath) / name).is_symlink()
            if path not in owned and not (is_dir and path in parents):
                out.append(path + ("/" if is_dir else ""))
        dirnames[:] = [d for d in dirnames if (rel / d).as_posix() in parents]
    return out


def _sibling(dest: Path, kind: str, pid: int | None = None) -> Path:
    return dest.parent / f".{dest.name}.{kind}-{HOST}-{os.getpid() if pid is None else pid}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def clear_stale(dest: str | os.PathLike) -> list[Path]:
    """Remove the ``.NAME.tmp-*`` siblings of `dest` left by dead processes of this host; put back a
    ``.NAME.old-*`` (the previous folder, moved aside) when `dest` itself is missing, else remove it.

    Only folders that carry spklip's marker (`TEMP_MARKER`, whose kind, name, host and PID match the folder's
    name) are touched; anything else named alike (a user's folder or file, a link) is left as it is. Returns what
    was removed or restored.
    """
    dest = Path(dest)
    pattern = re.compile(rf"^\.{re.escape(dest.name)}\.(tmp|old)-(?:(.+)-)?(\d+)$")
    done: list[Path] = []
    if not dest.parent.is_dir():
        return done
    _unmark_stale_dest(dest)
    for p in sorted(dest.parent.iterdir()):
        m = pattern.match(p.name)
        if not m or (m[2] is not None and m[2] != HOST):
            continue
        pid = int(m[3])
        if pid == os.getpid() or _pid_alive(pid) or not is_marked(p, m[1], dest.name, pid):
            continue
        if m[1] == "old" and not os.path.lexists(dest):
            os.replace(p, dest)  # the swap stopped between moving the old folder aside and the new one in
            (dest / TEMP_MARKER).unlink(missing_ok=True)
        else:
            _remove(p)
        done.append(p)
    return done


def _marker_data(kind: str, name: str, pid: int) -> dict[str, Any]:
    return {"written_by": "spklip", "kind": kind, "dest": name, "host": HOST, "pid": pid}


def _mark(folder: Path, kind: str, name: str) -> None:
    """Write spklip's marker into `folder` (a temporary ``tmp`` or a moved-aside ``old`` of the output `name`)."""
    (folder / TEMP_MARKER).write_text(json.dumps(_marker_data(kind, name, os.getpid())))


def is_marked(folder: Path, kind: str, name: str, pid: int) -> bool:
    """True when `folder` is a real folder holding spklip's marker for output `name`, of `kind`, by process `pid`
    of this host (a small regular file; a link, a foreign or malformed marker does not count)."""
    marker = folder / TEMP_MARKER
    try:
        if folder.is_symlink() or not folder.is_dir() or marker.is_symlink() or not marker.is_file():
            return False
        if marker.stat().st_size > _MARKER_MAX_BYTES:
            return False
        data = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return data == _marker_data(kind, name, pid)


def _unmark_stale_dest(dest: Path) -> None:
    """A process killed between marking `dest` and moving it aside left the marker in it: remove it."""
    marker = dest / TEMP_MARKER
    try:
        data = json.loads(marker.read_text()) if marker.is_file() and not marker.is_symlink() else None
    except (OSError, UnicodeDecodeError, ValueError):
        return
    if (isinstance(data, dict) and isinstance(data.get("pid"), int) and data.get("host") == HOST
            and data.get("pid") != os.getpid() and not _pid_alive(data["pid"])
            and data == _marker_data("old", dest.name, data["pid"])):
        marker.unlink(missing_ok=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def make_temp(dest: str | os.PathLike) -> Path:
    """A fresh ``.NAME.tmp-HOST-PID`` folder beside `dest` (after `clear_stale`), holding only spklip's marker.

    Raises:
        RefusedError: that name is taken by something spklip did not make (it is left alone).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(dest)
    tmp = _sibling(dest, "tmp")
    if os.path.lexists(tmp):  # an earlier call of this process that could not clean up, or not spklip's
        if not is_marked(tmp, "tmp", dest.name, os.getpid()):
            raise RefusedError(f"{tmp} exists and was not made by spklip; spklip will not remove it (move it away)")
        _remove(tmp)
    tmp.mkdir()
    _mark(tmp, "tmp", dest.name)
    return tmp


def replace_dir(new: Path, dest: str | os.PathLike) -> None:
    """Move the finished folder `new` to `dest`; an existing `dest` is moved aside first and removed after.

    `new`'s marker is removed before it goes in; an existing folder `dest` is marked before it is moved aside, so
    that `clear_stale` puts it back should the process die between the two renames.
    Call `check_replaceable` just before: this function replaces whatever is at `dest`.
    """
    dest = Path(dest)
    old = _sibling(dest, "old")
    moved = os.path.lexists(dest)
    marked = moved and dest.is_dir() and not dest.is_symlink()
    if marked:
        _mark(dest, "old", dest.name)
    if moved:
        try:
            os.replace(dest, old)
        except BaseException:
            if marked:
                (dest / TEMP_MARKER).unlink(missing_ok=True)
            raise
    (new / TEMP_MARKER).unlink(missing_ok=True)
    try:
        os.replace(new, dest)
    except BaseException:
        if moved:
            os.replace(old, dest)
            (dest / TEMP_MARKER).unlink(missing_ok=True)
        raise
    if moved:
        _remove(old)


def check_file_out(dest: str | os.PathLike, overwrite: bool, flag: str = "--out") -> None:
    """Raise `RefusedError` unless the output file `dest` is absent, or a plain file and `overwrite` is set.

    A folder or a symbolic link is refused even with `overwrite` (spklip replaces only files it could have
    written); nothing is changed either way.
    """
    dest = Path(dest)
    if not os.path.lexists(dest):
        if not dest.parent.is_dir():
            raise RefusedError(f"{flag} {dest}: folder {dest.parent} does not exist")
        return
    if dest.is_symlink():
        raise RefusedError(f"{flag} {dest} is a symbolic link; spklip will not replace it (choose another path)")
    if not dest.is_file():
        raise RefusedError(f"{flag} {dest} exists and is not a file; spklip will not replace it (choose another path)")
    if not overwrite:
        raise RefusedError(f"{flag} {dest} already exists; pass --overwrite to replace it")


@contextmanager
def atomic_file(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a path to write the file `dest` to; on success it is renamed onto `dest`, on any error (Ctrl-C
    included) it is removed and `dest` is left as it was. The path lies in a marked ``.NAME.tmp-HOST-PID`` folder
    beside `dest` (same file system: the rename is atomic), which is always removed."""
    dest = Path(dest)
    tmp = make_temp(dest)
    try:
        path = tmp / dest.name
        yield path
        os.replace(path, dest)
    finally:
        _remove(tmp)


@contextmanager
def private_files() -> Iterator[None]:
    """While inside: files and folders this process creates (and the processes it starts, an in-process Ray's
    included) are its owner's alone, 0600 and 0700 (umask 077); the previous umask is put back after."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def private_dir(path: str | os.PathLike) -> Path:
    """Create the run folder `path` (and missing parents) readable by its owner only (0700): it holds the MLflow
    sqlite store, checkpoints and the tracking spool. A folder that exists already keeps its permissions: spklip
    does not change a folder it did not create (a shared ``train.run_dir`` is the user's choice)."""
    path = Path(path)
    missing = [p for p in [path, *path.parents] if not p.exists()]
    for p in reversed(missing):
        p.mkdir(mode=0o700, exist_ok=True)
        os.chmod(p, 0o700)  # mkdir's mode is masked by the umask
    return path
