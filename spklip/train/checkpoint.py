"""Checkpoint format: one folder holding ``state.pt`` (tensors and plain values only), ``state.pt.sha256`` and
``config.json``.

``state.pt`` stores the model, optimizer and scheduler state, the step counters, every RNG state (python, numpy,
torch CPU and CUDA) and the flat experiment config, so that a checkpoint alone rebuilds its model
(`model_from_checkpoint`) and a resumed run continues exactly where it stopped. Loading always uses
``torch.load(weights_only=True)``: nothing in a checkpoint is unpickled as code. Frozen pretrained weights (for
example the MiniLM text tower with ``model.text.finetune=frozen``) are left out: they are rebuilt from the
pretrained package, which keeps checkpoints small.

``state.pt.sha256`` holds the SHA-256 of ``state.pt``'s bytes in ``sha256sum`` format (``sha256sum -c
state.pt.sha256`` checks it by hand). `read_checkpoint` verifies it before unpickling anything, so flipped bytes
are one `CheckpointError` naming the file rather than silently corrupted weights. A checkpoint without that file
(written before checksums were added) still loads, unverified.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spklip.config import ConfigError, ExperimentConfig
from spklip.data import storage
from spklip.torchutil import unwrap

STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
CHECKSUM_SUFFIX = ".sha256"  # state.pt -> state.pt.sha256, beside it
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (empty, truncated, not a spklip checkpoint, or not matching its
    checksum); names the file."""


@dataclass
class TrainState:
    """Counters of a run; ``step`` counts optimiser steps, ``batch_in_epoch`` batches consumed this epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


def rng_state() -> dict[str, Any]:
    """Every RNG state as tensors and plain values (safe for ``weights_only`` loading)."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _cpu_bytes(t: torch.Tensor) -> torch.Tensor:
    """An RNG state as the CPU ``uint8`` tensor `torch.set_rng_state` / `torch.cuda.set_rng_state` require."""
    return t.detach().to("cpu", torch.uint8)


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured (states found on another device are brought back to the CPU first)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(_cpu_bytes(state["torch"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = [_cpu_bytes(s) for s in state["cuda"]][:torch.cuda.device_count()]  # fewer GPUs now: the first ones
        torch.cuda.set_rng_state_all(cuda)


def place_payload(payload: dict[str, Any], device: str | torch.device) -> dict[str, Any]:
    """A checkpoint loaded on the CPU with its model weights moved to `device`, its RNG states and optimizer state
    left on the CPU.

    `torch.set_rng_state` and `torch.cuda.set_rng_state` take only CPU ``uint8`` tensors, so a checkpoint loaded
    with ``map_location=<a GPU>`` as a whole made every resume on a GPU fail. The optimizer state stays too:
    ``Optimizer.load_state_dict`` puts each state on its parameter's device itself and keeps AdamW's ``step``
    counters where it wants them (on the CPU unless capturable or fused).
    """
    device = torch.device(device)
    if device.type == "cpu":
        return payload

    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(device)
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(move(v) for v in value)
        return value

    return {k: (v if k in ("rng", "optimizer") else move(v)) for k, v in payload.items()}


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` without frozen parameters (buffers are kept)."""
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def save_checkpoint(directory: str | Path, *, model: torch.nn.Module, cfg: ExperimentConfig,
                    state: TrainState, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None) -> Path:
    """Write a checkpoint folder (created if needed) and return its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT_VERSION,
        "model": trainable_state_dict(unwrap(model)),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch,
        "metrics": {k: float(v) for k, v in state.metrics.items()},
        "rng": rng_state(),
        "config": cfg.to_flat_dict(),
    }
    tmp = directory / (STATE_FILE + ".tmp")
    torch.save(payload, tmp)
    digest = _sha256(tmp)
    checksum = checksum_path(directory / STATE_FILE)
    checksum.unlink(missing_ok=True)  # an older state.pt's checksum must never sit beside the new state.pt
    tmp.replace(directory / STATE_FILE)  # never leave a half-written state.pt behind
    tmp_sum = checksum.with_name(checksum.name + ".tmp")
    tmp_sum.write_text(f"{digest}  {STATE_FILE}\n")  # sha256sum's format
    tmp_sum.replace(checksum)  # a crash before this leaves no checksum: the state.pt loads unverified, as old ones
    (directory / CONFIG_FILE).write_text(json.dumps(cfg.to_flat_dict(), indent=1, sort_keys=True))
    return directory


def checksum_path(state_file: str | Path) -> Path:
    """Where the checksum of a ``state.pt`` lives: ``state.pt.sha256`` beside it."""
    state_file = Path(state_file)
    return state_file.with_name(state_file.name + CHECKSUM_SUFFIX)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_checksum(state_file: str | Path) -> bool:
    """Check ``state.pt`` against its ``state.pt.sha256``; False when there is no checksum file (a checkpoint
    written before checksums existed: accepted, unverified), True when it matches.

    Raises:
        CheckpointError: the bytes do not match (naming ``state.pt``), or the checksum file is unreadable.
    """
    state_file = Path(state_file)
    checksum = checksum_path(state_file)
    if not checksum.exists():
        return False
    try:
        expected = checksum.read_text().split()[0].lower()
    except (OSError, UnicodeDecodeError, IndexError) as e:
        raise CheckpointError(f"{checksum}: unreadable checksum file ({type(e).__name__})") from e
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise CheckpointError(f"{checksum}: not a SHA-256 checksum file")
    try:
        actual = _sha256(state_file)
    except OSError as e:
        raise CheckpointError(f"{state_file}: cannot read ({e.strerror or type(e).__name__})") from e
    if actual != expected:
        raise CheckpointError(f"{state_file}: corrupted checkpoint (SHA-256 {actual[:12]}... does not match "
                              f"{checksum.name}, {expected[:12]}...); use an earlier checkpoint")
    return True


def read_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load ``state.pt`` with ``weights_only=True`` after checking it against ``state.pt.sha256``.

    It is loaded on the CPU, then its model weights go to `map_location` and its RNG states stay on the CPU
    (`place_payload`), so that `restore_training` works whatever device the caller names.

    A checkpoint written before checksums existed (no ``state.pt.sha256``) still loads, unverified. `directory` may
    be an ``s3://`` URI (a checkpoint in a Ray storage bucket): it is downloaded first.

    Raises:
        FileNotFoundError: no ``state.pt`` there.
        CheckpointError: bytes that do not match the checksum, or a file torch cannot read; names the file.
        ValueError: a checkpoint of another format version.
    """
    if storage.is_uri(directory):  # a checkpoint in a bucket: downloaded, loaded whole, the copy removed
        with storage.local_copy(directory) as local:
            return read_checkpoint(local, map_location)
    path = Path(directory)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {directory} (expected a folder holding {STATE_FILE})")
    verify_checksum(path)
    try:
        with warnings.catch_warnings():  # a foreign pickle makes torch warn about its protocol before failing
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location="cpu", weights_only=True)  # moved by `place_payload`
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable spklip checkpoint ({_load_problem(e)})") from e
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not a spklip checkpoint (holds a {type(payload).__name__})")
    if payload.get("format") != FORMAT_VERSION:
        raise ValueError(f"checkpoint {path} has format {payload.get('format')!r}, expected {FORMAT_VERSION}")
    check_payload(payload, path)
    return place_payload(payload, map_location)


_PAYLOAD_KEYS: dict[str, tuple[str, Any]] = {  # key: (what it must be, check) of what `save_checkpoint` writes
    "model": ("a mapping of parameter names to tensors",
              lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                                    for k, t in v.items())),
    "config": ("a mapping of config keys", lambda v: isinstance(v, dict)),
    "step": ("an integer >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "epoch": ("an integer >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "batch_in_epoch": ("an integer >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "metrics": ("a mapping of metric names to numbers", lambda v: isinstance(v, dict)),
    "rng": ("a mapping of RNG states", lambda v: isinstance(v, dict)),
    "optimizer": ("an optimizer state or null", lambda v: v is None or isinstance(v, dict)),
    "scheduler": ("a scheduler state or null", lambda v: v is None or isinstance(v, dict)),
}


def check_payload(payload: dict[str, Any], path: str | Path) -> None:
    """Raise CheckpointError naming `path` unless `payload` holds every key `save_checkpoint` writes, each of
    the right kind (a file that loads but misses ``model`` would otherwise end in a bare ``KeyError: 'model'``)."""
    for key, (what, ok) in _PAYLOAD_KEYS.items():
        if key not in payload:
            raise CheckpointError(f"{path}: not a complete spklip checkpoint (no {key!r})")
        if not ok(payload[key]):
            raise CheckpointError(f"{path}: not a spklip checkpoint ({key!r} must be {what})")


def _load_problem(e: Exception) -> str:
    """What `torch.load` found wrong, in a few words (its own messages run to a paragraph of advice)."""
    if isinstance(e, EOFError):
        return "empty or cut short"
    if isinstance(e, pickle.UnpicklingError):  # torch's text suggests weights_only=False: never, for a bad file
        return "not a torch weights file, or one holding code objects"
    return str(e).strip().split(". ")[0].splitlines()[0][:160] if str(e).strip() else type(e).__name__


def load_model_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str | Path | None = None
                       ) -> None:
    """Load a `trainable_state_dict`; only frozen parameters may be absent, nothing may be unexpected, and every
    tensor must have its parameter's shape. Errors are one line naming `source` (the file) when given."""
    where = f"{source}: " if source is not None else ""
    expected = unwrap(model).state_dict()
    wrong = [f"{k} {list(v.shape)} (model: {list(expected[k].shape)})" for k, v in weights.items()
             if k in expected and isinstance(v, torch.Tensor) and v.shape != expected[k].shape]
    if wrong:
        raise CheckpointError(f"{where}checkpoint does not fit the model: {len(wrong)} tensor(s) of the wrong shape, "
                              f"first {wrong[0]}")
    result = unwrap(model).load_state_dict(weights, strict=False)
    frozen = {name for name, p in unwrap(model).named_parameters() if not p.requires_grad}
    missing = sorted(set(result.missing_keys) - frozen)
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{where}checkpoint does not fit the model: missing {missing[:5]}, "
                              f"unexpected {list(result.unexpected_keys)[:5]}")


def restore_training(payload: dict[str, Any], *, model: torch.nn.Module, optimizer=None, scheduler=None,
                     restore_rng: bool = True) -> TrainState:
    """Put model/optimizer/scheduler/RNG back to the checkpointed state and return the counters."""
    load_model_weights(model, payload["model"])
    if optimizer is not None and payload["optimizer"] is not None:
        optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None and payload["scheduler"] is not None:
        scheduler.load_state_dict(payload["scheduler"])
    if restore_rng:
        set_rng_state(payload["rng"])
    return TrainState(step=payload["step"], epoch=payload["epoch"], batch_in_epoch=payload["batch_in_epoch"],
                      metrics=dict(payload["metrics"]))


def model_from_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild the model from the config stored inside the checkpoint and load its weights.

    Returns:
        ``(model, cfg, payload)``: the model in eval mode, its ExperimentConfig and the raw checkpoint dict.
    """
    from spklip.model import create_model  # deferred: keeps `spklip train --help` light

    payload = read_checkpoint(directory, map_location)
    try:
        cfg = ExperimentConfig.from_flat_dict(payload["config"])
    except ConfigError as e:
        raise CheckpointError(f"{directory}: the config stored in this checkpoint is not valid ({e})") from None
    model = create_model(cfg.model, loss_cfg=cfg.loss)
    load_model_weights(model, payload["model"], source=directory)
    return model.eval(), cfg, payload
