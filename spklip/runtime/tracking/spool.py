"""The offline spool on disk: what a tracker could not send while its server was gone, as JSON-lines files (first
line: the URI and run id they belong to) under ``<run folder>/tracking_spool/``, one file per tracker, with the
artifact files they refer to copied beside them. Files only: sending them is `spklip.runtime.tracking.replay`'s job."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any

SPOOL_DIR = "tracking_spool"  # inside a run folder: what could not be sent to the tracking server
SPOOL_ENV = "SPKLIP_TRACKING_SPOOL"  # root of the spools of trackers that were given no folder
Record = dict[str, Any]  # one spooled call: {"op": ..., "t": unix seconds, ...op's fields}


def default_spool_dir(run_id: str) -> Path:
    """Spool folder of a tracker that was given none: ``$SPKLIP_TRACKING_SPOOL/<run id>``, else
    ``~/.cache/spklip/tracking_spool/<run id>``. The launcher moves such files into the run folder at the end."""
    root = os.environ.get(SPOOL_ENV) or Path.home() / ".cache" / "spklip" / SPOOL_DIR
    return Path(root) / run_id


def spool_folder(run_dir: str | Path) -> Path:
    """The spool of a run folder (or the spool folder itself when given one)."""
    run_dir = Path(run_dir)
    return run_dir if run_dir.name == SPOOL_DIR else run_dir / SPOOL_DIR


class Spool:
    """One tracker's unsent calls: an append-only JSON-lines file (first line: the URI and run id it belongs to)
    and the artifact files it refers to, copied into ``<folder>/files/``."""

    def __init__(self, folder: str | Path, uri: str, run_id: str):
        self.folder = Path(folder)
        self.path = self.folder / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self.uri, self.run_id = uri, run_id

    def append(self, record: Record) -> None:
        if not self.path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            _append_line(self.path, {"uri": self.uri, "run_id": self.run_id})
        _append_line(self.path, {"t": time.time(), **record})

    def keep_file(self, src: str | Path, name: str | None = None) -> str:
        """Copy `src` into the spool (the original may be a temporary file) and return the copy's path."""
        dst = self.folder / "files" / uuid.uuid4().hex[:12] / (name or Path(src).name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if Path(src).is_dir() else shutil.copy2)(src, dst)
        return str(dst)

    def __len__(self) -> int:
        return len(read_spool_file(self.path)[1]) if self.path.exists() else 0


def _append_line(path: Path, obj: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:  # one write per line: trackers of other processes never interleave
        f.write(json.dumps(obj, default=str) + "\n")


def read_spool_file(path: str | Path) -> tuple[dict[str, str], list[Record]]:
    """The header (``uri``, ``run_id``) and the records of one spool file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a spklip tracking spool (not UTF-8 text at byte {e.start})") from None
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}: not a spklip tracking spool (line {number} is not JSON: {e.msg}); move the "
                             "file away to sync the rest") from None
        if not isinstance(record, dict) or (lines and not isinstance(record.get("op"), str)):
            raise ValueError(f"{path}: not a spklip tracking spool (line {number} is not a spklip record)")
        lines.append(record)
    if not lines or not isinstance(lines[0].get("run_id"), str):
        raise ValueError(f"{path}: not a spklip tracking spool (no header line)")
    return lines[0], lines[1:]


def rewrite_spool_file(path: Path, header: dict, records: list[Record]) -> None:
    """Keep only `records` (the unsent ones); remove the file once all are sent."""
    if not records:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in [header, *records]), encoding="utf-8")
    tmp.replace(path)


def remove_kept_files(records: list[Record]) -> None:
    """Delete the artifact copies that sent `records` pointed to."""
    for r in records:
        if r["op"] == "log_artifact" and "/files/" in r["path"]:
            shutil.rmtree(Path(r["path"]).parent, ignore_errors=True)


def move_run_files(src: str | Path, dst: Path, run_id: str | None) -> int:
    """Move the spool files of `run_id` found in `src` into `dst` (the files they name keep their absolute paths);
    returns how many."""
    src, moved = Path(src), 0
    if not src.is_dir() or src.resolve() == dst.resolve():
        return 0
    for f in sorted(src.glob("*.jsonl")):
        if read_spool_file(f)[0].get("run_id") == run_id:
            dst.mkdir(parents=True, exist_ok=True)
            shutil.move(str(f), dst / f.name)
            moved += 1
    return moved
