"""``spklip sweep NAME ...`` runs a sweep script from sweeps/; ``spklip report --experiment NAME`` prints a sweep's
comparison table from MLflow (any experiment: without a sweep parent run, every run and the params that vary)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

from spklip.sweeps import NAMES
from spklip.runtime.tune.cli import add_sweep_args


def available_sweeps() -> list[str]:
    return sorted(n.replace("_", "-") for n in NAMES)


def load_sweep(name: str):
    """The `SweepSpec` of spklip's sweep NAME (``spklip.sweeps.NAME``), or of a sweep script at a path."""
    if name.endswith(".py"):
        path = Path(name)
        if not path.exists():
            raise FileNotFoundError(f"no sweep script {path}")
        module_name = f"spklip_user_sweep_{path.stem}"  # the same name on every load: a resume finds its space
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    elif name.replace("-", "_") in NAMES:
        module = importlib.import_module(f"spklip.sweeps.{name.replace('-', '_')}")
    else:
        raise FileNotFoundError(f"no sweep {name!r} (available: {', '.join(available_sweeps())})")
    if not hasattr(module, "SPEC"):
        raise ValueError(f"{name} defines no SPEC = SweepSpec(...)")
    return module.SPEC


def _sweep(args: argparse.Namespace) -> int:
    from spklip.runtime.tune.sweep import run_from_args  # Ray and Optuna: only when a sweep runs (`spklip --help` stays fast)

    return run_from_args(load_sweep(args.sweep), args)


def _parse_metric(text: str) -> tuple[str, str]:
    name, _, mode = text.rpartition(":") if text.endswith((":max", ":min")) else (text, "", "max")
    return name, mode


def _report(args: argparse.Namespace) -> int:
    from spklip.config import load_config
    from spklip.runtime.tracking import resolve_uri
    from spklip.runtime.tracking.existing import require_store
    from spklip.runtime.tune.report import sweep_table, write_report  # pandas and MLflow: only for the report

    cfg = load_config(None, {})
    uri = require_store(resolve_uri(args.uri or "", cfg.train.run_dir))  # read-only: never creates runs/mlflow.db
    metrics = [_parse_metric(m) for m in args.metric] or None
    table = sweep_table(args.experiment, uri=uri, parent_run_id=args.parent, metrics=metrics)
    print(table.to_markdown())
    if args.out:
        files = write_report(table, Path(args.out), uri)
        print(f"\nwrote {', '.join(str(f) for f in files.values())}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("sweep", help=f"run a sweep ({', '.join(available_sweeps())}, or a script path)")
    p.add_argument("sweep", help=f"sweep name ({', '.join(available_sweeps())}) or a sweep script's path")
    add_sweep_args(p)
    p.set_defaults(handler=_sweep)
    r = subparsers.add_parser("report", help="a sweep's comparison table, read back from MLflow")
    r.add_argument("--experiment", required=True, help="MLflow experiment name (a sweep's name, e.g. hsfe-ablation)")
    r.add_argument("--parent", default=None, help="sweep parent run id (default: the newest sweep in the experiment)")
    r.add_argument("--uri", default=None, help="tracking URI (default: MLFLOW_TRACKING_URI, else runs/mlflow.db)")
    r.add_argument("--metric", action="append", default=[], metavar="NAME[:max|min]",
                   help="metric column(s); the first ranks the rows (default: the sweep's own)")
    r.add_argument("--out", default=None, help="also write table.csv/table.md/plots/best_config.yaml here")
    r.set_defaults(handler=_report)
