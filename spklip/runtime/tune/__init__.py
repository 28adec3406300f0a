"""Sweeps: Ray Tune (+ Optuna, ASHA) over Ray Train runs, tracked as MLflow parent/child runs.

Three parts: `spklip.runtime.tune.space` (define-by-run spaces and what is derived from them), `spklip.runtime.tune.sweep`
(`SweepSpec` -> `SweepContext` -> trials -> report, and the sweep scripts' `main`) and `spklip.runtime.tune.report`
(tables and plots read back from MLflow); `spklip.runtime.tune.cli` declares the flags every sweep script shares.

Import the names from their modules (``from spklip.runtime.tune.sweep import SweepSpec, main``): this package exports
nothing, so that importing `spklip.runtime.tune.cli` for ``spklip --help`` stays free of Ray.
"""
