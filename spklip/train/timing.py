"""Where a training run's time goes: the start-up timeline (command start -> first optimiser step) and the seconds
of each phase of an epoch (data wait, forward/backward/optimiser step, evaluation, precise BN, checkpoint).

Plain Python (no torch, ray or mlflow): the CLI, the launcher, the Ray worker and the pure-torch loop share it.
Milestones are wall-clock times (``time.time()``), so the driver's and the workers' marks of one run form one
timeline (on one host exactly; across nodes up to their clock offset); phase durations use ``perf_counter``.

Metric names (rank 0 logs them to MLflow, docs/training.md):

* ``time/startup_s`` and ``time/startup/<milestone>_s`` once, at the first optimiser step;
* per epoch (at the epoch's last step): ``time/<phase>_s`` for `PHASES` and ``time/epoch_s``, ``time/other_s``;
* the run so far: ``time/wall_s``, ``time/step_fraction`` (forward/backward/optimiser share of the wall time since
  the command started) and ``time/model_fraction`` (step, evaluation and precise BN: the model's share).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

TIMING_FILE = "timing.json"  # in the run folder: rank 0's `RunTiming`, rewritten at every epoch end
PHASES = ("data", "step", "eval", "bn", "checkpoint")  # per-epoch phases, in the order they are shown
MODEL_PHASES = ("step", "eval", "bn")  # the model's compute: what `model_fraction` counts


@dataclass
class Timeline:
    """Named milestones of a run's start-up, each the wall-clock time it was reached (``time.time()``)."""

    start: float = field(default_factory=time.time)
    marks: list[tuple[str, float]] = field(default_factory=list)

    def mark(self, name: str) -> None:
        """Record that the phase `name` (everything since the previous milestone) has ended now."""
        self.marks.append((name, time.time()))

    def copy(self) -> "Timeline":
        return Timeline(self.start, list(self.marks))

    def phases(self) -> dict[str, float]:
        """Seconds from the previous milestone (or `start`) to each milestone, in order; a repeated name adds up."""
        out: dict[str, float] = {}
        last = self.start
        for name, at in self.marks:
            out[name] = out.get(name, 0.0) + max(at - last, 0.0)
            last = max(at, last)
        return out

    def elapsed(self) -> float:
        """Seconds since `start`."""
        return time.time() - self.start


@dataclass
class Phases:
    """Seconds spent in named phases, accumulated until `take`."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """``with phases.timed("eval"): ...`` adds the block's seconds to ``eval``."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t)

    def take(self) -> dict[str, float]:
        """The seconds accumulated so far, resetting them."""
        out, self.seconds = self.seconds, {}
        return out


@dataclass
class RunTiming:
    """A run's time breakdown so far (what `TIMING_FILE` holds and ``spklip train`` prints under ``time``)."""

    startup_s: float = 0.0  # command start -> end of the first optimiser step (0: no step yet)
    startup: dict[str, float] = field(default_factory=dict)  # `Timeline.phases` up to the first step
    wall_s: float = 0.0  # command start -> end of the last epoch (its evaluation and checkpoint included)
    totals: dict[str, float] = field(default_factory=dict)  # `PHASES` summed over the epochs of this process
    epochs: int = 0  # epochs in `totals`
    evaluations: int = 0  # evaluations in `totals` (``eval.every_steps`` / ``eval.every_epochs`` and the last step)
    threads: int = 0  # torch intra-op threads of this process (``scale.threads_per_worker``)
    first_step: int = 0  # the optimiser step this process made first: 1, or the resume checkpoint's step + 1

    def add_epoch(self, seconds: dict[str, float], wall_s: float) -> None:
        for name, s in seconds.items():
            self.totals[name] = self.totals.get(name, 0.0) + s
        self.epochs += 1
        self.wall_s = wall_s

    @property
    def step_fraction(self) -> float:
        return self.totals.get("step", 0.0) / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def model_fraction(self) -> float:
        return sum(self.totals.get(p, 0.0) for p in MODEL_PHASES) / self.wall_s if self.wall_s > 0 else 0.0

    def run_metrics(self) -> dict[str, float]:
        """``time/wall_s``, ``time/step_fraction``, ``time/model_fraction``."""
        return {"time/wall_s": self.wall_s, "time/step_fraction": self.step_fraction,
                "time/model_fraction": self.model_fraction}

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "step_fraction": self.step_fraction,
                "model_fraction": self.model_fraction}

    def write(self, run_dir: str | os.PathLike) -> None:
        """Write `TIMING_FILE` into `run_dir` (atomically: the driver may read it at any time)."""
        path = Path(run_dir) / TIMING_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)


def process_started_at() -> float | None:
    """When this process started (``time.time()`` scale, 10 ms resolution), from Linux's /proc; None elsewhere."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3, starttime field 22
        with open("/proc/uptime") as f:  # boot time to 10 ms (/proc/stat's btime is whole seconds)
            boot = time.time() - float(f.read().split()[0])
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def startup_metrics(timeline: Timeline) -> tuple[float, dict[str, float]]:
    """``(seconds since the command started, {time/startup_s, time/startup/<milestone>_s})`` at this moment."""
    total = timeline.elapsed()
    metrics = {"time/startup_s": total}
    metrics.update({f"time/startup/{name}_s": s for name, s in timeline.phases().items()})
    return total, metrics


def epoch_metrics(seconds: dict[str, float], epoch_s: float) -> dict[str, float]:
    """One epoch's ``time/<phase>_s`` for `PHASES` (0 when absent), ``time/epoch_s`` and ``time/other_s``."""
    out = {f"time/{p}_s": seconds.get(p, 0.0) for p in PHASES}
    out["time/epoch_s"] = epoch_s
    out["time/other_s"] = max(epoch_s - sum(seconds.get(p, 0.0) for p in PHASES), 0.0)
    return out


def read_timing(run_dir: str | os.PathLike) -> dict | None:
    """The run folder's `TIMING_FILE` as a dict, None when the run wrote none."""
    path = Path(run_dir) / TIMING_FILE
    return json.loads(path.read_text()) if path.is_file() else None
