"""spklip's own sweeps, one module each (``SPEC``: base config, search space, metrics): `hsfe_ablation`,
`fsve_sweep`, `baselines`. Run them with ``python sweeps/NAME.py``, ``spklip sweep NAME`` or
``python -m spklip.sweeps.NAME``; they live in the package so that a restored sweep (and a Ray job on any node)
imports the same space function by name. A sweep of your own can be any script that calls
``spklip.runtime.tune.sweep.main(SPEC)`` (see docs/sweeps.md).
"""

NAMES = ("hsfe_ablation", "fsve_sweep", "baselines")
