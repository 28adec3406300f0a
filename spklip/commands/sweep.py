"""``spklip sweep NAME ...`` runs a sweep script from sweeps/; ``spklip report --experiment NAME`` prints a sweep's
comparison table from MLflow (any experiment: without a sweep parent run, every run and the params that vary)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

SWEEP_DIR = Path(__file__).resolve().parents[2] / "sweeps"


def available_sweeps() -> list[str]:
    return sorted(p.stem for p in SWEEP_DIR.glob("*.py") if not p.stem.startswith("_"))


def load_sweep(name: str):
    """The `SweepSpec` of ``sweeps/NAME.py`` (or of a path to a sweep script)."""
    path = Path(name) if name.endswith(".py") else SWEEP_DIR / f"{name.replace('-', '_')}.py"
    if not path.exists():
        raise FileNotFoundError(f"no sweep {name!r} (available: {', '.join(available_sweeps()) or 'none'})")
    spec = importlib.util.spec_from_file_location(f"spklip_sweep_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "SPEC"):
        raise ValueError(f"{path} defines no SPEC = SweepSpec(...)")
    return module.SPEC


def _sweep(args: argparse.Namespace) -> int:
    from spklip.tune.cli import run_from_args

    return run_from_args(load_sweep(args.sweep), args)


def _parse_metric(text: str) -> tuple[str, str]:
    name, _, mode = text.rpartition(":") if text.endswith((":max", ":min")) else (text, "", "max")
    return name, mode


def _report(args: argparse.Namespace) -> int:
    from spklip.config import load_config
    from spklip.tracking import resolve_uri
    from spklip.tune.finish import write_report
    from spklip.tune.report import sweep_table

    cfg = load_config(None, {})
    uri = args.uri or resolve_uri("", cfg.train.run_dir)
    metrics = [_parse_metric(m) for m in args.metric] or None
    table = sweep_table(args.experiment, uri=uri, parent_run_id=args.parent, metrics=metrics)
    print(table.to_markdown())
    if args.out:
        files = write_report(table, Path(args.out), uri)
        print(f"\nwrote {', '.join(str(f) for f in files.values())}")
    return 0


def register(subparsers) -> None:
    from spklip.tune.cli import add_sweep_args

    p = subparsers.add_parser("sweep", help="run a named sweep from sweeps/ (hsfe-ablation, fsve-sweep)")
    p.add_argument("sweep", help=f"sweep name or script path (in {SWEEP_DIR})")
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
