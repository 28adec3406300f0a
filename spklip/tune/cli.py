"""The command line every sweep script shares: ``python sweeps/NAME.py [--smoke-test] [--num-samples N] [--resume]
[--name FOLDER] [--config FILE] [--set key=value ...]``. The Ray address comes from the environment (``RAY_ADDRESS``,
set by ``ray job submit`` or by ``eval "$(cluster/local.sh env)"``) or ``--set scale.address=...``; without one the
sweep starts an in-process Ray, so the same file runs on a laptop, as a job, or on a multi-node cluster.
"""

from __future__ import annotations

import argparse
import sys

from spklip.config import ConfigError


def add_sweep_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke-test", action="store_true",
                        help="tiny data/model/epochs, a few trials: minutes on 2 CPUs")
    parser.add_argument("--num-samples", type=int, default=None, help="trials to run (default: the sweep's own)")
    parser.add_argument("--resume", action="store_true",
                        help="restore an interrupted sweep (the newest one, or --name); finished trials are not rerun")
    parser.add_argument("--name", default=None, help="sweep folder under <train.run_dir>/sweeps (default: NAME-time)")
    parser.add_argument("--config", default=None, help="experiment YAML the sweep's base config starts from")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted config override, repeatable (e.g. --set train.epochs=3)")


def run_from_args(spec, args: argparse.Namespace) -> int:
    """Load the config, make sure smoke-test data exists, run the sweep; returns an exit code."""
    from spklip.tune.runner import run_sweep, sweep_config
    from spklip.tune.smoke import ensure_smoke_data

    cfg = sweep_config(spec, args.config, args.overrides, smoke=args.smoke_test)
    if args.smoke_test and not args.resume:
        cfg = ensure_smoke_data(cfg)
    if args.num_samples is not None and args.num_samples < 1:
        raise ConfigError("--num-samples must be >= 1")
    run_sweep(spec, cfg, num_samples=args.num_samples, smoke=args.smoke_test, resume=args.resume, name=args.name)
    return 0


def main(spec, argv: list[str] | None = None) -> int:
    """Entry point of a sweep script: ``raise SystemExit(main(SPEC))``."""
    parser = argparse.ArgumentParser(prog=f"sweeps/{spec.name}", description=spec.description or spec.name)
    add_sweep_args(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(spec, args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
