"""``spklip tracking sync``: a run folder's spool sent to its tracking server, with trackers of its runs for the
calls kept as ``call`` records."""

from __future__ import annotations

from pathlib import Path

from spklip.runtime.tracking.replay import SyncResult, replay_folder
from spklip.runtime.tracking.spool import spool_folder
from spklip.runtime.tracking.tracker import Tracker


def sync_spool(run_dir: str | Path, uri: str | None = None, client=None, quiet: bool = False) -> SyncResult:
    """Send every kept call under ``<run_dir>/tracking_spool`` (all trackers of the run, the worker's too) to its
    run: metrics, params, tags, artifacts and inputs first, in the order they were made, then the final status.

    Args:
        run_dir: a run folder (``<storage>/<run name>``, holding ``spklip_run.json``) or its spool folder.
        uri: send to this tracking URI instead of the one each file was kept for (the server moved).
        client: an ``MlflowClient`` to use (default: one per URI).

    Raises:
        ConnectionError: the server cannot be reached (nothing was sent); a failing call propagates after the
            calls before it were sent and removed from the spool.
    """
    return replay_folder(spool_folder(run_dir), Tracker.sharing, uri=uri, client=client, quiet=quiet)
