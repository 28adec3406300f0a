"""A run's model in MLflow: rebuilt from a checkpoint, logged as safetensors + config, optionally registered.

`LogEncoder` is a typed deferred tracking operation (`spklip.runtime.tracking.deferred`): with the server away the
tracker keeps it in the run's spool, and ``spklip tracking sync`` (which imports this module) runs it later.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

from spklip.data import storage
from spklip.runtime.tracking import Tracker, deferred, register_model, send_model_folder
from spklip.train.checkpoint import model_from_checkpoint
from spklip.train.export import export_checkpoint


@deferred("log_encoder")
@dataclass(frozen=True)
class LogEncoder:
    """Log the model of `checkpoint` (a folder or a URI) to the tracker's run; register it as `register_as` when
    given. Returns the logged model's URI; raises on failure."""

    checkpoint: str
    register_as: str = ""

    def run(self, tracker: Tracker) -> str:
        with storage.local_copy(self.checkpoint) as local:  # a checkpoint in a bucket: downloaded for the upload
            _, cfg, payload = model_from_checkpoint(local)  # the checkpoint must rebuild its model
            with tempfile.TemporaryDirectory(prefix="spklip-model-") as tmp:  # safetensors + config: nothing pickled
                model_uri = send_model_folder(tracker, export_checkpoint(local, tmp))
        if self.register_as:
            version = register_model(tracker, model_uri, self.register_as, metric=cfg.train.metric,
                                     mode=cfg.train.metric_mode,
                                     score=payload.get("metrics", {}).get(cfg.train.metric),
                                     tags={"spklip.checkpoint": str(self.checkpoint),
                                           "spklip.run_id": str(tracker.run_id),
                                           "spklip.step": str(payload.get("step"))})
            tracker.client.set_tag(tracker.run_id, "spklip.registered_as", f"{self.register_as}/{version}")
        return model_uri


def log_encoder(tracker: Tracker, checkpoint_dir: str, register_as: str = "") -> str | None:
    """Rebuild the model from a checkpoint and log its weights and config as an MLflow logged model (safetensors,
    `spklip.train.export`: what ``spklip eval --model`` loads, unpickling nothing); register it as `register_as`
    when given. With the server away, the operation is kept in the run's spool and made by ``spklip tracking sync``
    (returns None then)."""
    return tracker.call_later(LogEncoder(str(checkpoint_dir), register_as))
