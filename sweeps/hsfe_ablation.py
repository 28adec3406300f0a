"""HSFE ablation: ``python sweeps/hsfe_ablation.py --help``. The sweep (base config, space, metrics) is
spklip/sweeps/hsfe_ablation.py; this script only runs it, on a laptop or as ``ray job submit -- python sweeps/hsfe_ablation.py``."""

from spklip.sweeps.hsfe_ablation import SPEC
from spklip.runtime.tune.sweep import main

if __name__ == "__main__":
    raise SystemExit(main(SPEC))
