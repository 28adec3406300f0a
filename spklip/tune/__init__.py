"""Sweeps: Ray Tune (+ Optuna, ASHA) over Ray Train runs, tracked as MLflow parent/child runs.

Three parts: `spklip.tune.space` (define-by-run spaces and what is derived from them), `spklip.tune.sweep`
(`SweepSpec` -> `SweepContext` -> trials -> report, and the sweep scripts' `main`) and `spklip.tune.report`
(tables and plots read back from MLflow); `spklip.tune.cli` declares the flags every sweep script shares.

Import the names from their modules (``from spklip.tune.sweep import SweepSpec, main``): this package exports
nothing, so that importing `spklip.tune.cli` for ``spklip --help`` stays free of Ray.
"""
