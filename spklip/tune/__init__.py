"""Sweeps: Ray Tune (+ Optuna, ASHA) over Ray Train runs, tracked as MLflow parent/child runs.

Three parts: `spklip.tune.space` (define-by-run spaces and what is derived from them), `spklip.tune.sweep`
(`SweepSpec` -> `SweepContext` -> trials -> report, and the sweep scripts' `main`) and `spklip.tune.report`
(tables and plots read back from MLflow); `spklip.tune.cli` declares the flags every sweep script shares.

``from spklip.tune import SweepSpec, main`` works as before; the names load `spklip.tune.sweep` (and so Ray) on
first use, so that importing `spklip.tune.cli` for ``spklip --help`` stays light.
"""

import importlib

__all__ = ["SweepSpec", "SweepContext", "SweepRun", "run_sweep", "sweep_config", "main"]


def __getattr__(name: str):  # PEP 562: the public names above, from spklip.tune.sweep, on first use
    if name in __all__:
        return getattr(importlib.import_module("spklip.tune.sweep"), name)
    raise AttributeError(f"module 'spklip.tune' has no attribute {name!r}")
