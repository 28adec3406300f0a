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
    parser.add_argument("--first", default=None, metavar="KEY=V1,V2,...",
                        help="first run one trial per value of one swept parameter, every other swept parameter at "
                             "the base config's value (a controlled comparison); with --num-samples above their "
                             "count the searcher goes on after them, without it only they run. "
                             "e.g. --first model.hsfe.num_subblocks=1,3,5")
    parser.add_argument("--seeds", type=int, default=1,
                        help="train every configuration with this many seeds (train.seed and data.seed + 0..N-1); "
                             "the report shows mean ± 95%% interval and says when a difference is within noise")
    parser.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                        help="trials at once (default: as many as the cluster's CPUs fit, see docs/sweeps.md)")
    parser.add_argument("--scheduler", choices=["asha", "fifo"], default=None,
                        help="asha stops weak trials after each epoch (the sweep's default); fifo runs every trial "
                             "to its last epoch")


def parse_first(text: str) -> tuple[str, list]:
    """``KEY=V1,V2,...`` -> (KEY, [V1, V2, ...]) with YAML scalars (``5`` int, ``auto`` str, ``true`` bool)."""
    import yaml

    key, sep, values = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--first wants KEY=V1,V2,..., got {text!r}")
    return key.strip(), [yaml.safe_load(v) for v in values.split(",") if v.strip()]


def run_from_args(spec, args: argparse.Namespace) -> int:
    """Load the config, make sure smoke-test data exists, run the sweep; returns an exit code."""
    import dataclasses

    from spklip.tune.runner import first_points, run_sweep, sweep_config
    from spklip.tune.smoke import ensure_smoke_data

    if args.scheduler:
        spec = dataclasses.replace(spec, scheduler=args.scheduler)
    cfg = sweep_config(spec, args.config, args.overrides, smoke=args.smoke_test)
    if args.smoke_test and not args.resume:
        cfg = ensure_smoke_data(cfg)
    if args.num_samples is not None and args.num_samples < 1:
        raise ConfigError("--num-samples must be >= 1")
    if args.seeds < 1:
        raise ConfigError("--seeds must be >= 1")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ConfigError("--max-concurrent must be >= 1")
    if args.seeds > 1 and args.resume:
        raise ConfigError("--seeds starts a sweep; a resumed sweep keeps the seeds it was started with")
    points = []
    if args.first:
        if args.resume:
            raise ConfigError("--first starts a sweep; a resumed sweep keeps the trials it was started with")
        points = first_points(spec, cfg, *parse_first(args.first))
        if args.num_samples is not None and args.num_samples < len(points):
            raise ConfigError(f"--num-samples {args.num_samples} is fewer than the {len(points)} --first trials")
    run_sweep(spec, cfg, num_samples=args.num_samples or (len(points) or None), smoke=args.smoke_test,
              resume=args.resume, name=args.name, points=points, seeds=args.seeds,
              max_concurrent=args.max_concurrent)
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
