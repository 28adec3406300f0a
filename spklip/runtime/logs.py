"""What a run prints on the driver: stdout keeps only the command's result, Ray's and MLflow's logs go to a log file
in the run folder (and, with ``--verbose``, to stderr too), stderr gets one progress line per epoch or trial.

Where each kind of output goes while a `RunOutput` is active:

* ``sys.stdout``: Ray's driver threads print there: the raylet's messages (e.g. ``WARNING: 8 PYTHON worker
  processes have been started``, pushed to every driver; no Ray setting turns it off) and, with
  ``ray.init(log_to_driver=True)``, every worker's stdout. They go to the log file (verbose: also stderr).
* Python logging on the driver (Ray, Ray Data/Train/Tune, MLflow, Optuna, any other): to the log file; on stderr
  only ERROR and above unless verbose. ``warnings`` are logged the same way (``logging.captureWarnings``).
* Ray's worker processes: ``ray.init(log_to_driver=False)`` unless verbose (`spklip.runtime.launcher.ensure_ray`);
  their output stays in Ray's session logs, whose folder the closing line names.
* spklip's own messages (``print(..., file=sys.stderr)``, e.g. a tracking failure) are untouched.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
from pathlib import Path
from typing import TextIO

from spklip.train.progress import PROGRESS_FILE  # rank 0's epoch lines in the run folder, followed here

LOG_FILE = "spklip.log"  # in the run folder (``spklip train``) or the sweep folder
QUIET_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "mlflow", "optuna", "alembic", "py.warnings")
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bar when a checkpoint is loaded
             "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}  # MLflow's "Downloading artifacts" bars (model logging)
_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


class RunOutput:
    """The driver's output during one run, as a context manager (see the module docstring).

    Records are buffered until `attach` names the folder (the run folder is decided only once the run is planned),
    then written to ``<folder>/spklip.log``. `attach` with ``follow=True`` also copies the progress lines rank 0
    appends to ``<folder>/progress.log`` onto stderr. On exit the closing line says where the logs are.
    Create it before importing torch or transformers (quiet: environment switches read at import, `QUIET_ENV`);
    entering it imports MLflow and Ray first (they set their loggers' handlers when imported), then routes them.
    """

    def __init__(self, verbose: bool = False, stream: TextIO | None = None):
        self.verbose = verbose
        self.stream = stream if stream is not None else sys.stderr  # progress and the closing line
        self.log_path: Path | None = None
        self.ray_logs: str | None = None  # Ray's session log folder, set by the launcher once Ray runs
        self._pending: list[str] = []
        self._file: TextIO | None = None
        self._lock = threading.Lock()
        self._follower: _Follower | None = None
        if not verbose:
            for key, value in QUIET_ENV.items():
                os.environ.setdefault(key, value)

    def write(self, text: str) -> int:
        """What is printed on stdout during the run: to the log (verbose: also stderr)."""
        if self.verbose:
            self.stream.write(text)
        self._to_log(text)
        return len(text)

    def _to_log(self, text: str) -> None:
        with self._lock:
            if self._file is not None:
                self._file.write(text)
                self._file.flush()
            else:
                self._pending.append(text)

    def __enter__(self) -> "RunOutput":
        # both set up their loggers' handlers when first imported: import them before those loggers are routed here
        import mlflow  # noqa: F401
        import ray  # noqa: F401

        self._stdout, sys.stdout = sys.stdout, _Stdout(self)
        # One handler on the root logger; the packages' loggers propagate to it for the run. (A handler on the "ray"
        # logger itself would not survive: ray.init(configure_logging=False) clears that logger's handlers.)
        self._handler = _Handler(self)
        logging.getLogger().addHandler(self._handler)
        self._loggers = []
        for name in QUIET_LOGGERS:
            logger = logging.getLogger(name)
            consoles = [(h, h.level) for h in logger.handlers
                        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
            for h, _ in consoles:  # the root handler prints their records (errors only, unless verbose)
                h.setLevel(logging.CRITICAL + 1)
            self._loggers.append((logger, logger.propagate, consoles))
            logger.propagate = True
        logging.captureWarnings(True)
        return self

    def attach(self, folder: str | Path, follow: bool = False) -> None:
        """Write the log to ``<folder>/spklip.log`` from now on (with what was buffered); `follow` the progress file."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self.log_path = folder / LOG_FILE
            self._file = self.log_path.open("a")
            self._file.write("".join(self._pending))
            self._file.flush()
            self._pending = []
        if follow:
            self._follower = _Follower(folder / PROGRESS_FILE, self.progress)
            self._follower.start()

    def progress(self, line: str) -> None:
        """A progress line: on stderr and in the log."""
        line = line.rstrip("\n") + "\n"
        self.stream.write(line)
        self.stream.flush()
        self._to_log(line)

    def closing_line(self) -> str:
        where = [f"this run's log: {self.log_path}"] if self.log_path else []
        if self.ray_logs:
            where.append(f"Ray's logs (every worker, Ray Train, Ray Data): {self.ray_logs}")
        return "; ".join(where)

    def __exit__(self, *exc) -> None:
        if self._follower is not None:
            self._follower.stop()
        logging.captureWarnings(False)
        for logger, propagate, consoles in self._loggers:
            logger.propagate = propagate
            for h, level in consoles:
                h.setLevel(level)
        logging.getLogger().removeHandler(self._handler)
        sys.stdout = self._stdout
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
        line = self.closing_line()
        if line:
            print(line, file=self.stream, flush=True)


class _Stdout(io.TextIOBase):
    """``sys.stdout`` during a run: a write-only text stream into `RunOutput.write`."""

    def __init__(self, output: RunOutput):
        super().__init__()
        self.output = output

    @property
    def encoding(self) -> str:
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return self.output.write(text)

    def flush(self) -> None:
        if self.output.verbose:
            self.output.stream.flush()


class _Handler(logging.Handler):
    """Every record to the run log; on stderr, errors (all records when verbose)."""

    def __init__(self, output: RunOutput):
        super().__init__()
        self.output = output
        self.setFormatter(_FORMAT)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + "\n"
            self.output._to_log(text)
            if self.output.verbose or record.levelno >= logging.ERROR:
                self.output.stream.write(text)
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


class _Follower:
    """Calls `emit` with each line appended to `path` after `start` (polls; the file may not exist yet)."""

    def __init__(self, path: Path, emit, interval: float = 0.5):
        self.path, self.emit, self.interval = path, emit, interval
        self.offset = path.stat().st_size if path.exists() else 0  # a resumed run: only its new lines
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spklip-progress", daemon=True)
        self._partial = ""

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._read()  # what was written after the last poll

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._read()

    def _read(self) -> None:
        if not self.path.exists():
            return
        with self.path.open() as f:
            f.seek(self.offset)
            text = f.read()
            self.offset = f.tell()
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()  # an unfinished last line waits for its newline
        for line in lines:
            if line.strip():
                self.emit(line)
