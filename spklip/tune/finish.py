"""End of a sweep: close early-stopped trial runs, write the comparison table, plots and best config to the parent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spklip.config import ExperimentConfig
from spklip.tune import report as rep
from spklip.tune.driver import trial_run_name

STOPPED_TAG = "spklip.sweep.stopped"


def close_stopped_children(uri: str, experiment: str, parent_run_id: str, errored: set[str] = frozenset()) -> int:
    """Mark the child runs of trials the scheduler (ASHA) stopped as KILLED, with a tag saying so.

    A stopped trial never returns from `fit`: its MLflow run stays RUNNING, or, when the stop reaches `fit` as an
    exception, `fit` has already marked it FAILED. Runs named in `errored` (`trial_run_name` of the trials Tune
    reports as errored) really failed and keep FAILED.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{rep.PARENT_TAG}` = '{parent_run_id}'",
                              max_results=10000)
    runs = [r for r in runs if r.info.status in ("RUNNING", "FAILED") and r.info.run_name not in errored]
    for r in runs:
        client.set_tag(r.info.run_id, STOPPED_TAG, "stopped by the scheduler (ASHA) before its last epoch")
        client.set_terminated(r.info.run_id, "KILLED")
    return len(runs)


def write_report(table: rep.SweepTable, out_dir: Path, uri: str) -> dict[str, Path]:
    """table.csv, table.md, metric-vs-parameter plot, Pareto plot (two objectives) and best_config.yaml."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"csv": table.to_csv(out_dir / "table.csv")}
    (out_dir / "table.md").write_text(table.to_markdown() + "\n")
    files["md"] = out_dir / "table.md"
    if table.params and table.frame[table.metrics[0][0]].notna().any():
        files["plot"] = rep.plot_metric_vs_params(table, out_dir / "metric_vs_params.png")
        curves = rep.plot_curves(table, uri, out_dir / "curves.png")
        if curves is not None:
            files["curves"] = curves
    if len(table.metrics) >= 2:
        files["pareto"] = rep.plot_pareto(table, out_dir / "pareto_front.png")
    if table.best_run_id:
        files["best"] = out_dir / "best_config.yaml"
        files["best"].write_text(rep.config_yaml(rep.best_config(uri, table.best_run_id)))
    return files


def add_gaps(table: rep.SweepTable, gaps) -> dict[str, float]:
    """For each ``(column, a, b)``: the difference a - b of every table metric over seeds, as a note ("beyond" or
    "within noise") and as ``gap/<a>-<b>/<metric>`` (+ ``.../ci95``) metrics for the parent run."""
    from spklip.eval.stats import difference

    out = {}
    for column, a, b in gaps:
        if column not in table.frame:
            continue
        rows = {v: table.frame[table.frame[column].astype(str) == v] for v in (a, b)}
        if any(r.empty for r in rows.values()):
            continue
        for metric, _ in table.metrics:
            per_seed = [table.seeds.get(r.iloc[0]["trial"], {}).get(metric, [float(r.iloc[0][metric])])
                        for r in (rows[a], rows[b])]
            d = difference(*per_seed)
            if d.diff != d.diff or (d.diff == 0 and d.ci95 == 0):  # missing on one side, or the same constant
                continue
            table.notes.append(f"Gap {a} - {b} on {metric}: {d}.")
            out[f"gap/{a}-{b}/{metric}"] = d.diff
            if d.ci95 == d.ci95:
                out[f"gap/{a}-{b}/{metric}/ci95"] = d.ci95
    return out


def _fallback_table(results, metrics: list[list[str]]) -> str:
    """Without MLflow (tracking off or unreachable): the Tune result frame, for the console only."""
    frame = results.get_dataframe()
    cols = [c for c in frame.columns if c.startswith("config/") and not c.startswith("config/_")]
    cols += [m for m, _ in metrics if m in frame.columns]
    return frame[cols].to_string(index=False)


def finish_sweep(spec, cfg: ExperimentConfig, sweep: dict[str, Any], path: Path, results):
    """Report a fitted sweep on its MLflow parent run and return the `SweepRun`."""
    from spklip.tracking import Tracker
    from spklip.tune.runner import SweepRun

    run = SweepRun(path.name, path, sweep["parent_run_id"], sweep["tracking_uri"])
    errors = [r.error for r in results if r.error is not None]
    if not sweep["parent_run_id"]:
        run.table_markdown = _fallback_table(results, sweep["metrics"])
        print(run.table_markdown)
        return run
    uri, experiment = sweep["tracking_uri"], cfg.tracking.experiment
    errored = {trial_run_name(r.metrics.get("trial_id")) for r in results if r.error is not None}
    close_stopped_children(uri, experiment, sweep["parent_run_id"], errored)
    table = rep.sweep_table(experiment, uri=uri, parent_run_id=sweep["parent_run_id"],
                            metrics=[tuple(m) for m in sweep.get("table_metrics", sweep["metrics"])])
    gap_metrics = add_gaps(table, getattr(spec, "gaps", ()))
    if errors:
        table.notes.append(f"{len(errors)} trial(s) failed; first error: {str(errors[0]).splitlines()[0][:300]}")
    files = write_report(table, path / "report", uri)
    parent = Tracker(uri, sweep["parent_run_id"])
    for f in files.values():
        parent.log_artifact(f, "sweep_report")
    best = table.frame.iloc[0] if table.best_run_id else None
    if best is not None:
        parent.log_metrics({f"best/{m}": float(best[m]) for m, _ in table.metrics}, 0)
    if gap_metrics:
        parent.log_metrics(gap_metrics, 0)
        parent.set_tags({"spklip.sweep.best_run": table.best_run_id})
    parent.terminate("FAILED" if errors and best is None else "FINISHED")
    run.table_markdown, run.report_dir, run.best_run_id = table.to_markdown(), path / "report", table.best_run_id
    print(run.table_markdown)
    print(f"\nReport: {path / 'report'} (also on MLflow run {sweep['parent_run_id']} in experiment {experiment!r})")
    return run
