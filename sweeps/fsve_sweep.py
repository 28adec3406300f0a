"""FSVE sweep: ``python sweeps/fsve_sweep.py --help``. The sweep (base config, space, metrics) is
spklip/sweeps/fsve_sweep.py; this script only runs it, on a laptop or as ``ray job submit -- python sweeps/fsve_sweep.py``."""

from spklip.sweeps.fsve_sweep import SPEC
from spklip.runtime.tune.sweep import main

if __name__ == "__main__":
    raise SystemExit(main(SPEC))
