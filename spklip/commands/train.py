"""``spklip train`` (Ray Train on the in-process Ray or a cluster) and ``spklip eval`` (a checkpoint on a split)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from spklip.cliargs import folder_name
from spklip.config import add_set_flag, apply_overrides, load_config, parse_overrides
from spklip.config.train import RUN_NAME_MAX_BYTES
from spklip.runtime.logs import RunOutput
from spklip.outdir import private_files
from spklip.train.ownership import check_name
from spklip.train.timing import Timeline, read_timing


def _timeline(args: argparse.Namespace) -> Timeline:
    """The run's start-up timeline from the moment the command started (`spklip.cli.main`)."""
    return Timeline(start=getattr(args, "started_at", None) or time.time())


def _train(args: argparse.Namespace) -> int:
    if args.resume:
        return _resume(args)
    if args.name is not None:
        check_name(args.name)  # one folder name: before anything is read, made or started
    timeline = _timeline(args)
    overrides = list(args.set)
    if args.address:
        overrides.append(f"scale.address={args.address}")
    cfg = load_config(args.config, overrides)  # every value checked here: a bad one stops before Ray or MLflow
    timeline.mark("config")
    return _fit(cfg, args, args.name, args.storage, timeline)


def _resume(args: argparse.Namespace) -> int:
    """``--resume NAME|DIR``: the run's own config, continued from its latest checkpoint (same MLflow run)."""
    if args.config or args.set or args.name:
        raise ValueError("--resume continues a run with the config it started with: drop --config, --set and --name")
    timeline = _timeline(args)
    from spklip.runtime.plan import resume_target  # imports Ray and torch (seconds)

    cfg, name, storage = resume_target(args.resume, args.storage, load_config().train.run_dir)
    if args.address:
        cfg = apply_overrides(cfg, {"scale.address": args.address})
    timeline.mark("config")
    return _fit(cfg, args, name, storage, timeline)


def _fit(cfg, args: argparse.Namespace, name: str | None, storage: str | None, timeline: Timeline) -> int:
    output = RunOutput(verbose=args.verbose)  # stdout: only the summary below; Ray's and MLflow's logs: the run log
    from spklip.runtime.launcher import fit  # imports Ray and torch (seconds): only once the config is valid
    from spklip.runtime.plan import RunSpec

    with private_files(), output:  # files of the run 0600/0700; entering the output imports MLflow and Ray
        timeline.mark("import")
        result = fit(RunSpec(cfg, run_name=name, storage_path=storage, output=output, timeline=timeline))
    summary = {"run_name": result.run_name, "storage": result.storage_path, "seconds": round(result.seconds, 1),
               "best_checkpoint": result.best_checkpoint, "latest_checkpoint": result.checkpoint,
               "mlflow_run_id": result.mlflow_run_id, "model_uri": result.model_uri,
               "test_metrics": result.test_metrics, "best_metrics": result.best_metrics,
               "last_metrics": result.metrics, "notes": result.notes,
               "log": str(output.log_path) if output.log_path else None, "ray_logs": output.ray_logs,
               "time": read_timing(Path(result.storage_path) / result.run_name)}  # rank 0's breakdown
    print(json.dumps(summary, indent=1, default=str))
    return 0


def _eval(args: argparse.Namespace) -> int:
    import torch  # torch and the training package take seconds to import: only the commands that need them do

    from spklip.data.read import dataset_info
    from spklip.eval.report import check_report_out, write_report
    from spklip.eval.run import evaluate_model
    from spklip.torchutil import nonfinite_tensors
    from spklip.runtime.tracking import download_model, resolve_uri
    from spklip.runtime.tracking.existing import require_store
    from spklip.train.export import load_model
    from spklip.train.loop import NonFiniteError, resolve_precision

    if bool(args.checkpoint) == bool(args.model):
        raise ValueError("spklip eval: give one of --checkpoint DIR or --model models:/NAME@ALIAS")
    if args.out:
        check_report_out(args.out)  # refuse a folder spklip did not write before spending time on the evaluation
    with tempfile.TemporaryDirectory(prefix="spklip-eval-") as tmp:
        source = args.checkpoint or download_model(args.model, tmp, require_store(resolve_uri(args.tracking_uri,
                                                                                            "runs")))
        model, cfg, meta = load_model(source)  # safetensors or weights_only: nothing from the store is unpickled
    bad = nonfinite_tensors(model.state_dict())
    if bad:  # a diverged run's weights: NaN scores would rank as anything, so there is nothing to measure
        raise NonFiniteError(f"{args.checkpoint or args.model}: {len(bad)} weight tensor(s) hold NaN or inf (first "
                             f"{bad[0]}, step {meta.step}): a diverged model, not evaluated")
    overrides = parse_overrides(args.set)
    if args.data:
        overrides["data.path"] = args.data
    cfg = apply_overrides(cfg, overrides)
    dataset = dataset_info(cfg, eval_only=True, split=args.split)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # the precision the run asked for (train.precision, `--set train.precision=fp32` to change it), resolved as the
    # evaluation inside training resolves it: one checkpoint, one set of numbers (tests/test_precision.py)
    autocast_dtype = resolve_precision(cfg.train.precision, device)
    report = evaluate_model(model.to(device), cfg, dataset, device, split=args.split, prefix=args.split,
                            autocast_dtype=autocast_dtype)
    what = f"checkpoint {args.checkpoint}" if args.checkpoint else f"model {args.model}"
    precision = str(autocast_dtype).removeprefix("torch.") if autocast_dtype is not None else "fp32"
    print(f"{what} (step {meta.step}, epoch {meta.epoch}) on "
          f"{cfg.data.path} split {args.split!r}, {precision} on {device.type}:", file=sys.stderr)
    for note in report.notes:
        print(f"spklip eval: {note}", file=sys.stderr)
    print(json.dumps(report.metrics, indent=1, sort_keys=True))
    if args.out:
        provenance = {"checkpoint": str(args.checkpoint or args.model), "step": meta.step, "data": cfg.data.path,
                      "split": args.split, "precision": precision, "device": device.type}
        print(f"wrote {write_report(report, args.out, provenance)}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add ``train`` and ``eval`` to the spklip command line."""
    p = subparsers.add_parser("train", help="train a model with Ray Train (in-process Ray or --address)",
                              description="Train from an experiment YAML plus dotted overrides. Runs on an "
                              "in-process Ray unless --address (or RAY_ADDRESS) names a cluster. Re-running with "
                              "the same --name resumes that run from its latest checkpoint.")
    p.add_argument("--config", help="experiment YAML (e.g. configs/tiny.yaml)")
    add_set_flag(p)
    p.add_argument("--address", default="", help="Ray cluster address (default: RAY_ADDRESS or in-process Ray)")
    p.add_argument("--name", default=None, type=folder_name(RUN_NAME_MAX_BYTES, "a run name"),
                   help="run name (default <preset>-<timestamp>); an existing one resumes")
    p.add_argument("--storage", default=None, help="Ray storage root (default <train.run_dir>/ray): a folder, or an "
                   "s3:// URI for checkpoints in a bucket (docs/cluster.md, \"Object storage (S3)\")")
    p.add_argument("--resume", default=None, metavar="NAME|DIR",
                   help="continue an interrupted run (a killed driver, a lost machine) from its latest checkpoint, "
                   "with the config it started with: its name under --storage, or its folder")
    p.add_argument("--verbose", action="store_true", help="also print Ray's and MLflow's logs on stderr (always in "
                   "<run folder>/spklip.log; the workers' output in Ray's session logs)")
    p.set_defaults(handler=_train)

    e = subparsers.add_parser("eval", help="evaluate a checkpoint: top-1/5, zero-/few-shot, retrieval, energy",
                              description="Rebuild the model from the config stored in a checkpoint (a folder or "
                              "a registered MLflow model) and run the "
                              "evaluation protocol (docs/training.md) on a split of a shard folder.")
    e.add_argument("--checkpoint", default=None, help="checkpoint folder (holds state.pt)")
    e.add_argument("--model", default=None, help="or a model spklip logged to MLflow, e.g. models:/NAME@best (the "
                   "registry alias of `tracking.register_as` or a sweep); its safetensors weights and config are "
                   "downloaded and loaded")
    e.add_argument("--tracking-uri", default="", help="MLflow tracking URI for --model (default: MLFLOW_TRACKING_URI, "
                   "else runs/mlflow.db, where `spklip train` logs by default)")
    e.add_argument("--data", default=None, help="shard folder (default: the one the model was trained on)")
    e.add_argument("--split", default="test", help="seen-class split for closed-set and retrieval (default test)")
    add_set_flag(e, help="override eval settings, e.g. --set eval.few_shot_seeds=10")
    e.add_argument("--out", default=None, help="folder for metrics.json, tables and the confusion plot (replaces "
                   "only an earlier spklip eval report)")
    e.set_defaults(handler=_eval)
