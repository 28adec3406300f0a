"""spklip's runtime: what talks to Ray (and, as the redesign of issue 27 goes on, MLflow and storage).

Today it holds `ray_private`, the one module that touches Ray's private API; the rest of the orchestration
(spklip.rayenv, spklip.train's launcher/worker/data, spklip.tune, spklip.tracking) moves here in later steps.
The package exports nothing at its top: import its modules.
"""
