"""The Tune trainable: one trial = one full Ray Train run (Train V2 pattern, a function that builds a TorchTrainer).

Handing a ``TorchTrainer`` to a ``Tuner`` is an error in Ray 2.60; instead each trial calls `spklip.train.launcher.fit`
with ``TuneReportCallback``, which forwards rank 0's reports (one per epoch) to Tune, so ASHA and the searcher see
``val/top1`` after every epoch. The Train run is named after the trial id (no timestamp): when a sweep is restored,
an unfinished trial's Train run finds its own checkpoints and MLflow child run again and continues.
"""

from __future__ import annotations

from typing import Any

from spklip.config import ExperimentConfig

SWEEP_FILE = "spklip_sweep.json"  # in the Tune experiment folder: parent run, base config, metrics (for --resume)


def trial_run_name(trial_id: str) -> str:
    """The Train run (and MLflow child run) name of a trial: stable across a resume, so the run is found again."""
    return f"train-trial_id={trial_id}"


def worst(mode: str) -> float:
    return float("-inf") if mode == "max" else float("inf")


def _log_skipped(sweep: dict[str, Any], run_name: str, params: dict[str, Any], reason: str) -> None:
    """A child run that records the invalid sample and why, so the sweep's table accounts for every trial."""
    from spklip.tracking import start_run
    from spklip.tune.report import SKIPPED_TAG

    base = ExperimentConfig.from_flat_dict(sweep["base"])
    tracker = start_run(sweep["tracking_uri"], base.tracking.experiment, base.train.run_dir, run_name=run_name,
                        params={k: v for k, v in params.items()}, tags={SKIPPED_TAG: reason[:500]},
                        parent_run_id=sweep["parent_run_id"])
    tracker.terminate("KILLED")


def seed_config(cfg: ExperimentConfig, offset: int) -> ExperimentConfig:
    """`cfg` with ``train.seed`` (init, augmentation, dropout) and ``data.seed`` (data order) moved by `offset`."""
    from spklip.config import apply_overrides

    if not offset:
        return cfg
    return apply_overrides(cfg, {"train.seed": cfg.train.seed + offset, "data.seed": cfg.data.seed + offset})


def trial_driver(config: dict[str, Any], sweep: dict[str, Any]) -> None:
    """Run one trial: base config + sampled dotted keys -> `fit` with Tune reporting, once per seed.

    With ``sweep["seeds"] == 1`` rank 0's per-epoch reports go to Tune (ASHA can stop the trial). With N > 1 seeds
    the trial trains N runs one after another (``train.seed``/``data.seed`` + 0..N-1, each its own MLflow child
    run tagged with the trial and the seed) and reports once: the mean over seeds of every metric, plus
    ``<metric>/ci95`` (the 95 % interval's half-width) and ``<metric>/seeds``.

    Args:
        config: the sampled parameters (dotted config keys; ``_``-prefixed ones only steered the sampling).
        sweep: what `spklip.tune.runner` decided once: ``base`` (flat config, absolute paths), ``storage``,
            ``parent_run_id``, ``tracking_uri``, ``metrics`` ([[name, mode], ...]), ``seeds``.
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from spklip.train.launcher import fit
    from spklip.tune.report import LABEL_PREFIX, SEED_TAG, TRIAL_TAG
    from spklip.tune.space import AUX_PREFIX, config_params, invalid_reason, trial_config

    base = ExperimentConfig.from_flat_dict(sweep["base"])
    trial_id = tune.get_context().get_trial_id()
    run_name = trial_run_name(trial_id)
    reason = invalid_reason(base, config)
    if reason is not None:  # a corner the space let through: record it, score it worst, train nothing
        if sweep["parent_run_id"]:
            _log_skipped(sweep, run_name, config_params(config), reason)
        tune.report({**{m: worst(mode) for m, mode in sweep["metrics"]}, "skipped": 1.0})
        return
    seeds = int(sweep.get("seeds", 1))
    cfg = trial_config(base, config)
    labels = {LABEL_PREFIX + k[len(AUX_PREFIX):]: str(v) for k, v in config.items() if k.startswith(AUX_PREFIX)}
    results = []
    for offset in range(seeds):
        tags = {TRIAL_TAG: trial_id, SEED_TAG: str(offset), **labels}
        results.append(fit(seed_config(cfg, offset), run_name=run_name if seeds == 1 else f"{run_name}-seed={offset}",
                           storage_path=sweep["storage"], callbacks=[TuneReportCallback()] if seeds == 1 else [],
                           mlflow_parent_run_id=sweep["parent_run_id"], tags=tags))
    if seeds > 1:
        from spklip.eval.stats import summarize

        names = sorted({k for r in results for k, v in r.metrics.items() if isinstance(v, (int, float))})
        report = {}
        for name in names:
            summary = summarize(r.metrics.get(name, float("nan")) for r in results)
            report.update({name: summary.mean, f"{name}/ci95": summary.ci95, f"{name}/seeds": summary.n})
        tune.report(report)
