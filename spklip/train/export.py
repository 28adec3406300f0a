"""The deployable part of a trained model, as logged to MLflow: a folder of weights and config that loads without
unpickling anything, and its spike encoder.

A logged model folder (`export_checkpoint` writes it, `read_export` reads it) holds:

* ``model.safetensors``: the model's trainable weights (`trainable_state_dict`: frozen pretrained weights are
  rebuilt from their package, as for a checkpoint). safetensors is a header of JSON plus raw tensor bytes: reading
  it runs no code, whatever the file holds.
* ``config.json``: the flat experiment config that rebuilds the model (`ExperimentConfig.from_flat_dict`, typed
  values only).
* ``meta.json``: the format name, the checkpoint's step, epoch and metrics.
* ``SHA256SUMS``: ``sha256sum`` lines for the three files (``sha256sum -c SHA256SUMS`` checks them by hand).
  `read_export` refuses a folder without it, with a file it does not list, or with bytes that do not match.

The checksums catch corruption and mix-ups, not a writer who rewrites them too: who may write to the store is the
tracking server's business (docs/cluster.md, "Authentication and what remains trusted").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from spklip.config import ConfigError, ExperimentConfig
from spklip.train.checkpoint import (CheckpointError, STATE_FILE, load_model_weights, model_from_checkpoint,
                                     read_checkpoint)

EXPORT_FORMAT = "spklip-safetensors-1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
META_FILE = "meta.json"
SUMS_FILE = "SHA256SUMS"
EXPORT_FILES = (WEIGHTS_FILE, CONFIG_FILE, META_FILE)
LEGACY_FOLDER = "extra_files"  # in a model an older spklip logged (pickled MLflow model): the checkpoint's files


@dataclass
class ExportMeta:
    """What a logged model says about the checkpoint it came from."""

    step: int = 0
    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


class SpikeEncoder(nn.Module):
    """``[B, N, H, W]`` spikes (uint8/bool/float) -> ``[B, D]`` L2-normalised embeddings: ``Spklip.encode_spikes``
    without the text tower, so it needs no tokenizer. (`Spklip.spike_encoder()` returns a `SpikeEncoderView` of
    the whole model instead.) `load_spike_encoder` builds one from a logged model folder.

    Args:
        model: a trained `spklip.model.Spklip`.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.visual = model.visual
        self.shape = (model.cfg.num_planes, model.cfg.height, model.cfg.width)

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        if spikes.dim() != 4 or tuple(spikes.shape[1:]) != self.shape:
            raise ValueError(f"spikes must be [B, {', '.join(map(str, self.shape))}], got {list(spikes.shape)}")
        x = spikes.to(next(self.visual.parameters()).dtype)  # [B, N, H, W] float
        return F.normalize(self.visual(x), dim=-1)  # [B, D]


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def export_checkpoint(checkpoint: str | Path, dst: str | Path) -> Path:
    """Write the logged model folder of a checkpoint folder into `dst` (created) and return it. The checkpoint is
    read with ``weights_only=True`` after its own checksum check; optimizer and RNG state stay behind."""
    payload = read_checkpoint(checkpoint)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors that share storage (tied weights) or are views
    save_file({k: v.detach().clone().contiguous() for k, v in payload["model"].items()}, dst / WEIGHTS_FILE)
    (dst / CONFIG_FILE).write_text(json.dumps(payload["config"], indent=1, sort_keys=True))
    meta = {"format": EXPORT_FORMAT, "step": int(payload["step"]), "epoch": int(payload["epoch"]),
            "metrics": {k: float(v) for k, v in payload["metrics"].items()}}
    (dst / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
    (dst / SUMS_FILE).write_text("".join(f"{_sha256(dst / name)}  {name}\n" for name in EXPORT_FILES))
    return dst


def is_export(folder: str | Path) -> bool:
    """Whether `folder` looks like a logged model folder (has ``SHA256SUMS`` or ``model.safetensors``)."""
    return (Path(folder) / SUMS_FILE).exists() or (Path(folder) / WEIGHTS_FILE).exists()


def verify_export(folder: str | Path) -> None:
    """Check every file of a logged model folder against ``SHA256SUMS``.

    Raises:
        CheckpointError: no ``SHA256SUMS``, a file it does not list or that is missing, or bytes that differ.
    """
    folder = Path(folder)
    sums = folder / SUMS_FILE
    if not sums.exists():
        raise CheckpointError(f"{folder}: no {SUMS_FILE}; not a spklip logged model")
    expected = {}
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 64:
            raise CheckpointError(f"{sums}: not a sha256sum file")
        expected[parts[1].lstrip("*")] = parts[0].lower()
    if sorted(expected) != sorted(EXPORT_FILES):
        raise CheckpointError(f"{sums}: lists {sorted(expected)}, expected {sorted(EXPORT_FILES)}")
    for name, digest in expected.items():
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder / name}: missing from the logged model")
        if _sha256(folder / name) != digest:
            raise CheckpointError(f"{folder / name}: does not match its SHA-256 in {SUMS_FILE}")


def read_export(folder: str | Path, device: str = "cpu") -> tuple[dict[str, torch.Tensor], ExperimentConfig,
                                                                  ExportMeta]:
    """The weights, config and meta of a logged model folder, after `verify_export`. Nothing is unpickled:
    weights come from safetensors, config and meta from JSON.

    Raises:
        CheckpointError: a folder that fails `verify_export`, or files that do not parse.
    """
    folder = Path(folder)
    verify_export(folder)
    try:
        meta = json.loads((folder / META_FILE).read_text())
        flat = json.loads((folder / CONFIG_FILE).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{folder}: unreadable {META_FILE} or {CONFIG_FILE} ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{folder / META_FILE}: format {meta.get('format') if isinstance(meta, dict) else meta!r}"
                              f", expected {EXPORT_FORMAT}")
    try:
        weights = load_file(folder / WEIGHTS_FILE, device=device)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{folder / WEIGHTS_FILE}: not a safetensors file ({e})") from e
    if not isinstance(flat, dict):
        raise CheckpointError(f"{folder / CONFIG_FILE}: not a mapping of config keys")
    try:
        cfg = ExperimentConfig.from_flat_dict(flat)
    except ConfigError as e:
        raise CheckpointError(f"{folder / CONFIG_FILE}: not a valid spklip config ({e})") from None
    try:
        return weights, cfg, ExportMeta(step=int(meta.get("step", 0)), epoch=int(meta.get("epoch", 0)),
                                        metrics={k: float(v) for k, v in meta.get("metrics", {}).items()})
    except (TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{folder / META_FILE}: malformed step, epoch or metrics ({e})") from None


def model_from_export(folder: str | Path, device: str = "cpu") -> tuple[nn.Module, ExperimentConfig, ExportMeta]:
    """Rebuild the model of a logged model folder: ``(model in eval mode, its config, its meta)``."""
    from spklip.model import create_model  # deferred: the model package is heavy and only loading needs it

    weights, cfg, meta = read_export(folder, device)
    model = create_model(cfg.model, loss_cfg=cfg.loss)
    load_model_weights(model, weights, source=Path(folder) / WEIGHTS_FILE)
    return model.eval(), cfg, meta


def load_spike_encoder(folder: str | Path, device: str = "cpu") -> SpikeEncoder:
    """The `SpikeEncoder` (spikes -> embeddings) of a logged model folder, in eval mode."""
    model, _, _ = model_from_export(folder, device)
    return SpikeEncoder(model).eval()


def load_model(folder: str | Path) -> tuple[nn.Module, ExperimentConfig, ExportMeta]:
    """A checkpoint folder or a downloaded logged model: ``(model in eval mode, config, meta)``. Reads a logged model
    folder (safetensors), a checkpoint's ``state.pt`` (``weights_only=True``), or the ``extra_files/state.pt`` that
    models logged by an older spklip carry; never the pickle of such a model (``data/model.pth``).

    Raises:
        FileNotFoundError: none of these there.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"no checkpoint or logged model at {folder}")
    if folder.is_dir() and is_export(folder):
        return model_from_export(folder)
    for candidate in (folder, folder / LEGACY_FOLDER):
        if candidate.is_file() or (candidate / STATE_FILE).exists():  # a folder, or its state.pt itself
            model, cfg, payload = model_from_checkpoint(candidate)
            return model, cfg, ExportMeta(step=payload["step"], epoch=payload["epoch"],
                                          metrics=dict(payload["metrics"]))
    raise FileNotFoundError(f"{folder}: neither a checkpoint ({STATE_FILE}) nor a spklip logged model "
                            f"({SUMS_FILE} + {WEIGHTS_FILE}); spklip never unpickles a model")
