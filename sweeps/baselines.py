"""Baselines study: ``python sweeps/baselines.py --help``. The sweep (base config, space, metrics) is
spklip/sweeps/baselines.py; this script only runs it, on a laptop or as ``ray job submit -- python sweeps/baselines.py``."""

from spklip.sweeps.baselines import SPEC
from spklip.runtime.tune.sweep import main

if __name__ == "__main__":
    raise SystemExit(main(SPEC))
