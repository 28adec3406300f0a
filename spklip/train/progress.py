"""One progress line per epoch, written by rank 0 into the run folder (``{storage_path}/{run_name}/progress.log``).

Rank 0 is where an epoch ends (its evaluation), and the run folder is the one place every node and the driver see
(multi-node runs need shared storage anyway), so the line is appended there; ``spklip train`` follows the file on
stderr (`spklip.runtime.logs.RunOutput`) and the file stays with the run. Plain text, no Ray: also used in local mode, where
the loop runs in the driver process and Ray Train calls no controller callbacks.
"""

from __future__ import annotations

import math
from pathlib import Path

PROGRESS_FILE = "progress.log"  # in the run folder: rank 0's epoch lines, followed by `spklip.runtime.logs.RunOutput`
SHOWN = ("zeroshot/top1",)  # shown beside train.metric when the evaluation has it


def _value(v: float) -> str:
    return f"{v:.3f}" if isinstance(v, float) and math.isfinite(v) and abs(v) < 1e4 else str(v)


def epoch_line(epoch: int, epochs: int, step: int, steps: int, metric: str, metrics: dict[str, float],
               loss: float | None, seconds: float, phases: dict[str, float] | None = None) -> str:
    """``epoch 2/50  step 24/600  loss 2.031  val/top1 0.375  zeroshot/top1 0.500  (12.3 s)``; with `phases`
    (seconds by phase, `spklip.train.timing`) the non-zero ones follow: ``(12.3 s: step 8.1, data 0.4, eval 3.2)``."""
    parts = [f"epoch {epoch}/{epochs}", f"step {step}/{steps}"]
    if loss is not None:
        parts.append(f"loss {_value(float(loss))}")
    parts += [f"{k} {_value(metrics[k])}" for k in (metric, *SHOWN) if k in metrics and k != "step"]
    shown = ", ".join(f"{k} {v:.1f}" for k, v in (phases or {}).items() if v >= 0.05)
    return "  ".join(parts) + f"  ({seconds:.1f} s{': ' + shown if shown else ''})"


def append_line(run_dir: str | Path, line: str) -> None:
    """Append `line` to the run folder's progress file (created with the folder if needed)."""
    path = Path(run_dir) / PROGRESS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(line.rstrip("\n") + "\n")
