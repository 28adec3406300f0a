"""Sweeps: Ray Tune (+ Optuna, ASHA) over Ray Train runs, tracked as MLflow parent/child runs.

Public API: `SweepSpec`, `sweep_config` and `run_sweep` (runner), `main` (the shared sweep-script CLI), the report
functions in `spklip.tune.report` (`sweep_table`, plots, `best_config`). Imports of ray/mlflow happen inside functions.
"""

from spklip.tune.cli import main
from spklip.tune.runner import SweepRun, SweepSpec, run_sweep, sweep_config

__all__ = ["SweepSpec", "SweepRun", "run_sweep", "sweep_config", "main"]
