"""The flags every sweep script shares: ``python sweeps/NAME.py [--smoke-test] [--num-samples N] [--resume]
[--name FOLDER] [--config FILE] [--set key=value ...] [--verbose]`` (`spklip.runtime.tune.sweep.main` parses them; this module imports
no Ray, so ``spklip --help`` builds the same flags quickly). The Ray address comes from the environment (``RAY_ADDRESS``,
set by ``ray job submit`` or by ``eval "$(cluster/local.sh env)"``) or ``--set scale.address=...``; without one the
sweep starts an in-process Ray, so the same file runs on a laptop, as a job, or on a multi-node cluster.
"""

from __future__ import annotations

import argparse

from spklip.cliargs import folder_name, positive_int
from spklip.config import ConfigError, add_set_flag
from spklip.config.base import parse_value
from spklip.config.train import RUN_NAME_MAX_BYTES


def add_sweep_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke-test", action="store_true",
                        help="tiny data/model/epochs, a few trials: minutes on 2 CPUs")
    parser.add_argument("--num-samples", type=positive_int, default=None, help="trials to run (default: the sweep's own)")
    parser.add_argument("--resume", action="store_true",
                        help="restore an interrupted sweep (the newest one, or --name); finished trials are not rerun")
    parser.add_argument("--name", default=None, type=folder_name(RUN_NAME_MAX_BYTES, "a sweep name"),
                        help="sweep folder under <train.run_dir>/sweeps (default: NAME-time)")
    parser.add_argument("--storage", default=None, metavar="ROOT",
                        help="where the sweep's Tune state and the trials' checkpoints go, ROOT/<name>: a shared "
                             "folder or an s3:// URI (default: the sweep folder; --resume needs the same ROOT; "
                             "docs/cluster.md, \"Object storage (S3)\")")
    parser.add_argument("--config", default=None, help="experiment YAML the sweep's base config starts from")
    add_set_flag(parser, dest="overrides")
    parser.add_argument("--first", default=None, metavar="KEY=V1,V2,...",
                        help="first run one trial per value of one swept parameter, every other swept parameter at "
                             "the base config's value (a controlled comparison); with --num-samples above their "
                             "count the searcher goes on after them, without it only they run. "
                             "e.g. --first model.hsfe.num_subblocks=1,3,5")
    parser.add_argument("--seeds", type=positive_int, default=1,
                        help="train every configuration with this many seeds (train.seed and data.seed + 0..N-1); "
                             "the report shows mean ± 95%% interval and says when a difference is within noise")
    parser.add_argument("--max-concurrent", type=positive_int, default=None, metavar="N",
                        help="trials at once (default: as many as the cluster's CPUs fit, see docs/sweeps.md)")
    parser.add_argument("--verbose", action="store_true",
                        help="also print Ray's, Tune's and MLflow's logs on stderr (always in <sweep folder>/spklip.log; "
                             "the trials' and workers' output in Ray's session logs)")
    parser.add_argument("--scheduler", choices=["asha", "fifo"], default=None,
                        help="asha stops weak trials after each epoch (the sweep's default); fifo runs every trial "
                             "to its last epoch")


def parse_first(text: str) -> tuple[str, list]:
    """``KEY=V1,V2,...`` -> (KEY, [V1, V2, ...]) with YAML scalars (``5`` int, ``auto`` str, ``true`` bool)."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--first wants KEY=V1,V2,..., got {text!r}")
    return key.strip(), [parse_value(v.strip(), f"--first {key.strip()}") for v in values.split(",") if v.strip()]
