"""Fault injection for tests and chaos drills, switched on by the environment only (no training function takes a
fault argument): with ``SPKLIP_FAULT_CRASH_AT_STEP=N`` and ``SPKLIP_FAULT_MARKER=PATH`` set on the driver, rank 0
kills its own process once at optimiser step N (the marker file makes it once, so the restarted worker goes on).

The launcher forwards every ``SPKLIP_FAULT_*`` variable into the Train workers' runtime environment, so the switch
reaches them however the Ray cluster was started.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

FAULT_ENV_PREFIX = "SPKLIP_FAULT_"
CRASH_AT_STEP = FAULT_ENV_PREFIX + "CRASH_AT_STEP"
MARKER = FAULT_ENV_PREFIX + "MARKER"


def maybe_crash(step: int, rank: int) -> None:
    """Kill this worker process at the configured step (rank 0, once), after the controller has collected the last
    report: it polls workers every 2 s, and a crash right after a report could lose that report's checkpoint."""
    at, marker = os.environ.get(CRASH_AT_STEP), os.environ.get(MARKER)
    if not at or not marker or rank != 0 or step != int(at) or Path(marker).exists():
        return
    Path(marker).parent.mkdir(parents=True, exist_ok=True)
    Path(marker).write_text(str(step))
    time.sleep(10)
    os._exit(1)
