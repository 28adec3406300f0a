"""Sweep reports read back from MLflow: comparison table (CSV, Markdown), metric-vs-parameter plots, Pareto front.

Everything here works from the tracking store alone, so ``spklip report --experiment NAME`` prints the same table
for any experiment, whether the sweep ran in-process, as a Ray job, or on another machine. A sweep's parent run
carries the tags below; its trials are the runs tagged ``mlflow.parentRunId = <parent>``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from spklip.config import ExperimentConfig
from spklip.config.base import parse_value, unflatten
from spklip.eval.stats import difference, summarize, wilson
from spklip.runtime.tracking import PARENT_TAG, fluent_tracking_uri

ROLE_TAG = "spklip.sweep.role"  # "parent" on the sweep's own run
SWEPT_TAG = "spklip.sweep.swept"  # JSON list of the swept config keys
METRICS_TAG = "spklip.sweep.metrics"  # JSON list of [metric, mode] pairs; the first ranks the trials
SKIPPED_TAG = "spklip.sweep.skipped"  # on a trial whose sampled config was invalid: the reason
TRIAL_TAG = "spklip.sweep.trial"  # on each child run: its Tune trial (one configuration; several seeds share it)
SEED_TAG = "spklip.sweep.seed"
LABEL_PREFIX = "spklip.sweep.label."  # a trial's steering parameters, e.g. spklip.sweep.label.variant


@dataclass
class SweepTable:
    """One row per trial: run name, status, swept parameters, metrics; sorted best first by `metrics[0]`."""

    frame: pd.DataFrame
    params: list[str]
    metrics: list[tuple[str, str]]  # (name, "max" | "min")
    parent_run_id: str | None = None
    best_run_id: str | None = None
    notes: list[str] = field(default_factory=list)
    seeds: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # trial -> metric -> per-seed values
    seed_runs: dict[str, list[str]] = field(default_factory=dict)  # trial -> its per-seed MLflow run ids
    chance: dict[str, float] = field(default_factory=dict)  # metric -> a random scorer's value (as the runs logged)

    def to_csv(self, path: str | Path) -> Path:
        path = Path(path)
        self.frame.to_csv(path, index=False)
        return path

    def to_markdown(self, digits: int = 4) -> str:
        """A GitHub-flavoured Markdown table (no extra dependency)."""
        cols = list(self.frame.columns)
        rows = [[_fmt(v, digits) for v in rec] for rec in self.frame.itertuples(index=False)]
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines + [f"\n{n}" for n in self.notes])


def _fmt(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs_frame(uri: str, experiment_id: str, filter_string: str = "") -> pd.DataFrame:
    """All runs of one experiment as rows: ``mlflow.search_runs``' columns (run_id, status, start_time, params.*,
    metrics.*, tags.*, ...) and ``trial``, the run name."""
    import mlflow  # on first use: importing mlflow costs ~1 s

    with fluent_tracking_uri(uri):  # search_runs takes no tracking URI
        frame = mlflow.search_runs([experiment_id], filter_string=filter_string, output_format="pandas")
    return frame.assign(trial=frame.get("tags.mlflow.runName"))


def find_parent(client, experiment_id: str, parent_run_id: str | None = None):
    """The given parent run, else the newest run tagged as a sweep parent in the experiment, else None."""
    if parent_run_id:
        return client.get_run(parent_run_id)
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'parent'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def varying_params(frame: pd.DataFrame) -> list[str]:
    """Config keys (``params.*`` columns) whose value differs between runs: the swept ones for a plain experiment."""
    cols = [c for c in frame.columns if c.startswith("params.")]
    return [c[len("params."):] for c in cols if frame[c].astype(str).nunique(dropna=False) > 1]


def sweep_table(experiment: str, *, uri: str, parent_run_id: str | None = None,
                metrics: list[tuple[str, str]] | None = None) -> SweepTable:
    """Build the comparison table of one sweep (or of every run of an experiment that has no sweep parent).

    Args:
        experiment: MLflow experiment name.
        uri: tracking URI (``sqlite:///...`` or ``http://...``).
        parent_run_id: which sweep; default the newest sweep parent run in the experiment.
        metrics: ``[(name, mode), ...]``; default the list the sweep recorded, else every non-training metric.

    Raises:
        ValueError: the experiment does not exist or holds no trial runs.
    """
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ValueError(f"no MLflow experiment {experiment!r} at {uri} (experiments: {', '.join(names) or 'none'})")
    parent = find_parent(client, exp.experiment_id, parent_run_id)
    filt = f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'" if parent else ""
    frame = _runs_frame(uri, exp.experiment_id, filt)
    if parent is None and not frame.empty and f"tags.{ROLE_TAG}" in frame:
        frame = frame[frame[f"tags.{ROLE_TAG}"] != "parent"]
    if frame.empty:
        raise ValueError(f"experiment {experiment!r} has no trial runs" + (f" under sweep run {parent.info.run_id}"
                                                                           if parent else ""))
    tags = parent.data.tags if parent else {}
    params = json.loads(tags[SWEPT_TAG]) if SWEPT_TAG in tags else varying_params(frame)
    if metrics is None:
        metrics = [tuple(m) for m in json.loads(tags[METRICS_TAG])] if METRICS_TAG in tags else [
            (c[len("metrics."):], "max") for c in sorted(frame.columns)
            if c.startswith("metrics.") and not c.startswith(("metrics.train/", "metrics.system/"))]
    metrics = expand_metrics(metrics, frame)
    labels = sorted(c[len("tags."):] for c in frame.columns if c.startswith(f"tags.{LABEL_PREFIX}"))
    for label in labels:  # steering parameters (e.g. the study's variant) are shown like swept ones
        frame[f"params.{label[len(LABEL_PREFIX):]}"] = frame[f"tags.{label}"]
    params = [label[len(LABEL_PREFIX):] for label in labels] + [p for p in params if p not in labels]
    table = _assemble(frame, params, metrics, parent.info.run_id if parent else None)
    trials = frame.get(f"tags.{TRIAL_TAG}")
    if trials is not None and trials.notna().any() and trials.value_counts().max() > 1:
        table = aggregate_seeds(table, frame)
    note = chance_note(frame, table)
    if note:
        table.notes.append(note)
    for m, _ in table.metrics:
        chance = frame.get(f"metrics.chance/{m}")
        if chance is not None and not chance.dropna().empty:
            table.chance[m] = float(chance.dropna().iloc[0])
    return table


def expand_metrics(metrics: list[tuple[str, str]], frame: pd.DataFrame) -> list[tuple[str, str]]:
    """A metric named ``prefix/*`` (e.g. ``test/zeroshot/factor/*``: which factors depend on the data) stands for
    every metric under that prefix the runs logged, in name order, with its mode; none logged: left out."""
    out = []
    for name, mode in metrics:
        if name.endswith("/*"):
            stem = f"metrics.{name[:-1]}"
            out += [(c[len("metrics."):], mode) for c in sorted(frame.columns) if c.startswith(stem)]
        else:
            out.append((name, mode))
    return out


def clips_key(metric: str) -> str:
    """The ``clips/...`` count behind an accuracy: ``test/top1`` -> ``clips/test``, ``test/zeroshot/top1`` and
    ``test/fewshot/4shot_top1`` -> ``clips/test/zeroshot`` (few-shot queries are those clips less the support)."""
    parts = metric.split("/")
    for i, part in enumerate(parts):
        if part in ("zeroshot", "fewshot"):
            return "clips/" + "/".join(parts[:i] + ["zeroshot"])
    return f"clips/{parts[0]}"


def chance_note(frame: pd.DataFrame, table: SweepTable) -> str:
    """One note line: each table metric's chance level and the clips behind it (as the runs logged them,
    ``chance/<metric>`` and ``clips/<split>``), and for the best row the 95 % Wilson interval over those clips of a
    single run at its mean (the sampling error of one evaluation, beside the interval over seeds)."""
    best = table.frame.iloc[0] if not table.frame.empty else None
    parts = []
    for metric, _ in table.metrics:
        chance = frame.get(f"metrics.chance/{metric}")
        if chance is None or chance.dropna().empty:
            continue
        clips = frame.get(f"metrics.{clips_key(metric)}")
        n = int(clips.dropna().iloc[0]) if clips is not None and not clips.dropna().empty else 0
        text = f"{metric} {float(chance.dropna().iloc[0]):.3g}" + (f" ({n} clips" if n else "")
        value = best[metric] if best is not None and metric in best else float("nan")
        if n and value == value:
            low, high = wilson(float(value), n)
            text += f"; one run at {float(value):.3f}: {low:.2f}-{high:.2f}"
        parts.append(text + (")" if n else ""))
    if not parts:
        return ""
    return ("Chance level (clips per evaluation; for the first row, the 95 % Wilson interval of one run over those "
            "clips): " + ", ".join(parts) + ".")


def aggregate_seeds(table: SweepTable, frame: pd.DataFrame) -> SweepTable:
    """One row per trial (configuration) from its per-seed runs: each metric's mean over seeds, a ``± 95%``
    column (Student-t half-width) and the seed count; a note says whether the best beats the runner-up beyond
    noise (Welch 95 % interval of the difference)."""
    runs = table.frame.assign(_trial=frame.set_index("run_id").loc[table.frame["run_id"], f"tags.{TRIAL_TAG}"].values)
    rows, seeds, seed_runs = [], {}, {}
    for trial, group in runs.groupby("_trial", sort=False):
        row = {"trial": str(trial), "status": "FINISHED" if (group["status"] == "FINISHED").all()
               else ",".join(sorted(set(group["status"]))), "seeds": len(group)}
        row.update({p: group.iloc[0][p] for p in table.params})
        seeds[str(trial)], seed_runs[str(trial)] = {}, list(group["run_id"])
        for m, _ in table.metrics:
            vals = [float(v) for v in group[m]]
            summary = summarize(vals)
            row[m], row[f"{m} ±95%"] = summary.mean, summary.ci95
            seeds[str(trial)][m] = vals
        row["run_id"] = group.iloc[0]["run_id"]
        rows.append(row)
    out = pd.DataFrame(rows)
    labels = [p for p in table.params if f"tags.{LABEL_PREFIX}{p}" in frame.columns]
    params = [p for p in table.params if p in labels or out[p].astype(str).nunique() > 1]  # held-fixed keys: noise
    out = out.drop(columns=[p for p in table.params if p not in params])
    name, mode = table.metrics[0]
    out = best_first(out, table.metrics).reset_index(drop=True)
    notes = [f"{len(runs)} runs: each row is one configuration, mean over its seeds; ± is the 95 % Student-t "
             "interval of the mean."]
    scored = out[rankable(out, name)]

    names = configuration_names(out, params, labels)

    def called(row) -> str:
        return names[row["trial"]]

    best = None
    if not scored.empty:
        best = scored.iloc[0]["run_id"]
        notes.append(f"Best configuration by {name} ({mode}): {called(scored.iloc[0])}.")
    if len(scored) > 1:
        first, second = scored.iloc[0]["trial"], scored.iloc[1]["trial"]
        d = difference(seeds[first][name], seeds[second][name])
        notes.append(f"Best vs runner-up ({called(scored.iloc[1])}) on {name}: {d}.")
    return SweepTable(out, params, table.metrics, table.parent_run_id, best, notes, seeds, seed_runs)


def configuration_names(out: pd.DataFrame, params: list[str], labels: list[str]) -> dict[str, str]:
    """trial -> how the notes call its configuration: a label's value (the study's variant: ``hsfe``) when that
    label tells the rows apart, else every parameter that varies, swept ones as ``key=value`` (``auto
    model.hsfe.num_subblocks=5``: a label that two configurations share does not name either); the trial id when
    nothing varies."""
    varying = [p for p in params if out[p].astype(str).nunique() > 1]
    named = next(([p] for p in varying if p in labels and out[p].astype(str).nunique() == len(out)), varying)
    return {str(row["trial"]): " ".join(str(row[p]) if p in labels else f"{p}={row[p]}" for p in named
                                        if str(row[p]) != "") or str(row["trial"]) for _, row in out.iterrows()}


def _assemble(frame: pd.DataFrame, params: list[str], metrics: list[tuple[str, str]],
              parent_run_id: str | None) -> SweepTable:
    out = pd.DataFrame({"trial": frame["trial"].values, "status": frame["status"].values})
    for p in params:
        col = frame.get(f"params.{p}")
        out[p] = [parse_value(v) if isinstance(v, str) else v for v in col] if col is not None else None
    for m, _ in metrics:
        col = frame.get(f"metrics.{m}")
        out[m] = col.values if col is not None else float("nan")
    skipped = frame.get(f"tags.{SKIPPED_TAG}")
    if skipped is not None:
        out.loc[skipped.notna().values, "status"] = "SKIPPED"
    out["run_id"] = frame["run_id"].values
    notes = []
    best = None
    if metrics:
        name, mode = metrics[0]  # ties on the first metric are broken by the next ones
        out = best_first(out, metrics)
        scored = out[rankable(out, name)]
        if not scored.empty:
            best = scored.iloc[0]["run_id"]
            notes.append(f"Best trial by {name} ({mode}): {scored.iloc[0]['trial']} (run {best}).")
    return SweepTable(out.reset_index(drop=True), params, list(metrics), parent_run_id, best, notes)


def rankable(frame: pd.DataFrame, name: str) -> pd.Series:
    """Rows that may rank (and be the best trial): a finite `name` from runs none of which failed. A diverged trial
    (a NaN or infinite score, or a run ended FAILED, e.g. `spklip.train.loop.NonFiniteError`) never wins."""
    values = pd.to_numeric(frame[name], errors="coerce").astype(float)
    failed = frame["status"].astype(str).str.contains("FAILED")
    return values.map(math.isfinite) & ~failed


def best_first(frame: pd.DataFrame, metrics: list[tuple[str, str]]) -> pd.DataFrame:
    """`frame` sorted best first by `metrics` (ties on the first broken by the next ones); rows that are not
    `rankable` by the first metric (NaN/inf, failed) come last."""
    keyed = frame.assign(_unranked=~rankable(frame, metrics[0][0]))
    return keyed.sort_values(["_unranked", *(m for m, _ in metrics)],
                             ascending=[True, *(mode == "min" for _, mode in metrics)], na_position="last",
                             kind="stable").drop(columns="_unranked")


def pareto_front(values: pd.DataFrame, metrics: list[tuple[str, str]]) -> list[int]:
    """Row positions of the non-dominated rows (NaN rows excluded) for objectives with their modes."""
    signs = [1.0 if mode == "max" else -1.0 for _, mode in metrics]
    pts = [(i, [s * float(values.iloc[i][m]) for (m, _), s in zip(metrics, signs)]) for i in range(len(values))]
    pts = [(i, p) for i, p in pts if not any(math.isnan(v) for v in p)]

    def dominates(a, b):
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    return [i for i, p in pts if not any(dominates(q, p) for j, q in pts if j != i)]


def plotted_params(table: SweepTable) -> list[str]:
    """Swept parameters that take more than one value among the scored trials (all of them if none does)."""
    frame = table.frame[table.frame[table.metrics[0][0]].notna()]
    varying = [p for p in table.params if frame[p].astype(str).nunique() > 1]
    return varying or list(table.params)


PLOTTED_METRICS = 4  # rows of the metric-vs-parameter figure: the ranking metric and the next table metrics


def plotted_metrics(table: SweepTable) -> list[str]:
    """The figure's rows: the ranking metric, then the other table metrics with a value (e.g. ``test/top1``,
    ``test/zeroshot/top1``), per-factor breakdowns left to the table; at most `PLOTTED_METRICS`."""
    names = [m for m, _ in table.metrics if "/factor/" not in m and table.frame[m].notna().any()]
    return names[:PLOTTED_METRICS] or [table.metrics[0][0]]


def plot_metric_vs_params(table: SweepTable, path: str | Path):
    """One panel per (metric, swept parameter that varies): each scored configuration's value against the
    parameter's, as its mean over seeds with the 95 % interval when the trials ran several seeds (a K-curve:
    ``test/top1`` against ``model.hsfe.num_subblocks``), and the metric's chance level dashed. A parameter held
    at one value, as in a ``--first`` comparison, would only draw a column of dots: left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = table.frame[table.frame[table.metrics[0][0]].notna()]
    params, metrics = plotted_params(table), plotted_metrics(table)
    cols = max(1, len(params))
    fig, axes = plt.subplots(len(metrics), cols, figsize=(4.2 * cols, 3.0 * len(metrics)), squeeze=False)
    for row, name in zip(axes, metrics):
        for ax, p in zip(row, params):
            xs = frame[p].tolist()
            numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
            if not numeric:  # categorical axis: numbers in numeric order first (1, 2, 10), then words ("auto")
                uniq = {str(v): v for v in xs}  # by text: a set would merge 1 and True
                labels = sorted(uniq, key=lambda t: (isinstance(uniq[t], str), 0 if isinstance(uniq[t], str)
                                                     else float(uniq[t]), t))
                xs = [labels.index(str(x)) for x in xs]
                ax.set_xticks(range(len(labels)), labels)
            if f"{name} ±95%" in frame:  # one point per configuration: mean over seeds with its 95 % interval
                ax.errorbar(xs, frame[name], yerr=frame[f"{name} ±95%"].fillna(0), fmt="o", capsize=3, alpha=0.8)
            else:
                ax.scatter(xs, frame[name], alpha=0.8)
            if name in table.chance:
                ax.axhline(table.chance[name], color="grey", linestyle="--", linewidth=1, label="chance")
                ax.legend(fontsize=7, loc="best")
            ax.set_xlabel(p, fontsize=8)
            ax.set_ylabel(name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_curves(table: SweepTable, uri: str, path: str | Path) -> Path | None:
    """The ranking metric of every trial against its training step (one evaluation per epoch), read from MLflow,
    each line labelled by the trial's values of the varying parameters. None when no trial logged a history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mlflow.tracking import MlflowClient

    client, name = MlflowClient(tracking_uri=uri), table.metrics[0][0]
    params = plotted_params(table)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    drawn = 0
    for i, row in enumerate(table.frame.to_dict("records")):
        label = ", ".join(f"{p.rsplit('.', 1)[-1]}={row[p]}" for p in params) or row["trial"]
        for j, run_id in enumerate(table.seed_runs.get(row["trial"], [row["run_id"]])):  # every seed, one colour
            history = sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
            if not history:
                continue
            ax.plot([m.step for m in history], [m.value for m in history], marker="o", markersize=3, color=f"C{i % 10}",
                    alpha=0.85, label=label if j == 0 else None)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(name)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_pareto(table: SweepTable, path: str | Path):
    """Scatter of the first two objectives (x: second, y: first) with the Pareto front drawn and marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (acc, _), (cost, _) = table.metrics[:2]
    front = pareto_front(table.frame, table.metrics[:2])
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.scatter(table.frame[cost], table.frame[acc], alpha=0.5, label="trials")
    pts = table.frame.iloc[front].sort_values(cost)
    ax.plot(pts[cost], pts[acc], "r-o", label="Pareto front")
    ax.set_xlabel(cost)
    ax.set_ylabel(acc)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def best_config(uri: str, run_id: str) -> ExperimentConfig:
    """The full config of a trial, rebuilt from its flat params (every trial logs its whole flat config)."""
    params = mlflow_client(uri).get_run(run_id).data.params
    # MLflow stores every param as str(value): None comes back as "None" (YAML reads that as a string)
    flat = {k: None if v == "None" else parse_value(v) if v != "" else "" for k, v in params.items()
            if not k.startswith("_")}
    try:
        return ExperimentConfig.from_flat_dict(flat)
    except ValueError as e:
        raise ValueError(f"run {run_id} does not hold a complete spklip config: {e}") from e


def config_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(unflatten(cfg.to_flat_dict()), sort_keys=False)


STOPPED_TAG = "spklip.sweep.stopped"


def close_stopped_children(uri: str, experiment: str, parent_run_id: str, errored: set[str] = frozenset()) -> int:
    """Mark the child runs of trials the scheduler (ASHA) stopped as KILLED, with a tag saying so.

    A stopped trial never returns from `fit`: its MLflow run stays RUNNING, or, when the stop reaches `fit` as an
    exception, `fit` has already marked it FAILED. Runs named in `errored` (the run names of the trials Tune
    reports as errored) really failed and keep FAILED.
    """
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                              max_results=10000)
    runs = [r for r in runs if r.info.status in ("RUNNING", "FAILED") and r.info.run_name not in errored]
    for r in runs:
        client.set_tag(r.info.run_id, STOPPED_TAG, "stopped by the scheduler (ASHA) before its last epoch")
        client.set_terminated(r.info.run_id, "KILLED")
    return len(runs)


def write_report(table: SweepTable, out_dir: Path, uri: str) -> dict[str, Path]:
    """table.csv, table.md, metric-vs-parameter plot, Pareto plot (two objectives) and best_config.yaml."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"csv": table.to_csv(out_dir / "table.csv")}
    (out_dir / "table.md").write_text(table.to_markdown() + "\n")
    files["md"] = out_dir / "table.md"
    if table.params and table.frame[table.metrics[0][0]].notna().any():
        files["plot"] = plot_metric_vs_params(table, out_dir / "metric_vs_params.png")
        curves = plot_curves(table, uri, out_dir / "curves.png")
        if curves is not None:
            files["curves"] = curves
    if len(table.metrics) >= 2:
        files["pareto"] = plot_pareto(table, out_dir / "pareto_front.png")
    if table.best_run_id:
        files["best"] = out_dir / "best_config.yaml"
        files["best"].write_text(config_yaml(best_config(uri, table.best_run_id)))
    return files


def add_gaps(table: SweepTable, gaps) -> dict[str, float]:
    """For each ``(column, a, b)``: the difference a - b of every table metric over seeds, as a note ("beyond" or
    "within noise") and as ``gap/<a>-<b>/<metric>`` (+ ``.../ci95``) metrics for the parent run."""
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


def tune_table(results, metrics) -> str:
    """Without MLflow (tracking off or unreachable): the Tune result frame, for the console only."""
    frame = results.get_dataframe()
    cols = [c for c in frame.columns if c.startswith("config/") and not c.startswith("config/_")]
    cols += [m for m, _ in metrics if m in frame.columns]
    return frame[cols].to_string(index=False)
