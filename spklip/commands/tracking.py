"""``spklip tracking sync RUN_DIR``: send what a run kept while its MLflow server was unreachable, and close the run
as KILLED when it is still RUNNING and its driver is gone."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spklip.runtime.tracking import DRIVER_FILE, SPOOL_DIR, adopt_credentials, close_abandoned_run, spool_folder, sync_spool


# What a spklip run folder holds (launcher.RUN_FILE / CONFIG_FILE, tune.sweep.SWEEP_FILE: named here so that this
# command imports neither Ray nor Tune); a folder with none of them is not a run.
RUN_FOLDER_FILES = ("spklip_run.json", "spklip_config.json", "spklip_sweep.json", DRIVER_FILE, SPOOL_DIR)


def _sync(args: argparse.Namespace) -> int:
    folder = spool_folder(args.run_dir)
    if not Path(args.run_dir).is_dir():
        raise FileNotFoundError(f"{args.run_dir}: no such run folder")
    if folder != Path(args.run_dir) and not any((Path(args.run_dir) / name).exists() for name in RUN_FOLDER_FILES):
        raise FileNotFoundError(f"{args.run_dir}: not a spklip run folder (none of {', '.join(RUN_FOLDER_FILES)} in "
                                "it); give <storage>/<run name>, the folder `spklip train` printed")
    uri = adopt_credentials(args.uri) if args.uri else None  # credentials in it go to MLflow's environment
    # the deferred operations a spool may keep are registered by the modules defining them: LogEncoder (torch; only
    # here, so that the other tracking commands stay light)
    import spklip.runtime.model_log  # noqa: F401
    result = sync_spool(args.run_dir, uri=uri)
    if not result.sent:
        print(f"spklip: nothing to send in {folder}", file=sys.stderr)
    closed = close_abandoned_run(args.run_dir, uri=uri)  # after the spool: it may end the run itself
    if closed:
        print(f"spklip: {closed}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add ``tracking sync`` to the spklip command line."""
    p = subparsers.add_parser("tracking", help="MLflow tracking: send what a run kept while the server was away")
    sub = p.add_subparsers(dest="tracking_command", required=True, metavar="COMMAND")
    s = sub.add_parser("sync", help="replay a run folder's tracking spool to its MLflow server",
                       description=f"Send the metrics, params, tags, artifacts, inputs, models and final status "
                       f"that a run kept in RUN_DIR/{SPOOL_DIR}/ while its MLflow server was unreachable, in the "
                       "order they were made (the status last). What was sent is removed from the spool; rerun "
                       "it until nothing is left. Then a run still RUNNING whose driver process is gone (killed, "
                       "its machine lost) is marked KILLED; `spklip train --resume` continues it.")
    s.add_argument("run_dir", metavar="RUN_DIR", help=f"a run folder (<storage>/<run name>) or its {SPOOL_DIR}/")
    s.add_argument("--uri", default="", help="send to this tracking URI instead of the one the run used")
    s.set_defaults(handler=_sync)
