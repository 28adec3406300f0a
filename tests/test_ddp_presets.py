"""Every preset x every option the sweeps vary trains 2 steps under 2-process gloo DDP (no Ray), as a worker does.

Training wraps the model in DDP without ``find_unused_parameters`` (`spklip.runtime.worker._setup_model`): a trainable
parameter the loss never reaches makes the *second* step fail ("Expected to have finished reduction in the prior
iteration"). tests/test_model_presets.py checks gradients for the presets one process at a time, but not the options
crossed with every preset, so it missed the spiking HSFE with ``model.hsfe.norm=bn`` (the ANN HSFE's BatchNorms it
inherited and never called). Here the options the sweeps vary (spklip/sweeps/hsfe_ablation.py, fsve_sweep.py,
baselines.py) are applied one at a time to every preset they apply to, plus the pairs that change which modules exist
together (residual form x readout), at tiny clip sizes; one spawn of 2 processes runs every case and the
parametrised tests read its results.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spklip.model import list_models

# paper-size presets shrunk to a tiny clip; the structure (branches, blocks, stages, text tower) is the preset's
SHRINK = {"model.num_planes": 16, "model.height": 32, "model.width": 32, "model.hsfe.radius": 3,
          "model.hsfe.num_subblocks": 3, "model.hsfe.step": "auto", "model.hsfe.features": 8,
          "model.hsfe.branch_hidden": 4, "model.backbone.width": 8, "model.embed_dim": 32, "model.text.width": 32,
          "model.text.context_length": 16}
# every value of each option; a value equal to the preset's own is no extra case (`_changes`)
HSFE_OPTIONS = ([{"model.hsfe.norm": n} for n in ("none", "bn")] + [{"model.hsfe.num_subblocks": 1},
                {"model.hsfe.num_branches": 1}]
                + [{"model.hsfe.spatial_attention": b} for b in (True, False)]
                + [{"model.hsfe.photon_conservation": b} for b in (False, True)]
                + [{"model.temporal.pos_embed": b} for b in (True, False)]
                + [{"model.temporal.pool": p} for p in ("mean", "cls", "concat")])
FSVE_OPTIONS = ([{"model.fsve.variant": v} for v in ("snn-backbone", "full-snn")]
                + [{"model.fsve.time_steps": t} for t in (1, 3)]
                + [{"model.fsve.neuron": n} for n in ("lif", "plif")]
                + [{"model.fsve.loss_per_step": b} for b in (False, True)]
                + [{"model.fsve.attn_norm": b} for b in (True, False)]
                + [{"model.fsve.norm": n} for n in ("tdbn", "bn", "none")]
                + [{"model.fsve.residual": r, "model.fsve.readout": o} for r in ("current", "sew", "membrane")
                   for o in ("spikes", "current")]
                # what changes no module, in one case: dynamics and surrogate gradients
                + [{"model.fsve.surrogate": "sigmoid", "model.fsve.reset": "soft", "model.fsve.tau": 3.0,
                    "model.fsve.v_threshold": 1.0}, {"model.fsve.surrogate": "rect"}])


def _baseline_variants() -> list[dict]:
    """The model overrides of each variant of spklip/sweeps/baselines.py (applied there to spklip-tiny)."""
    from spklip.sweeps.baselines import VARIANTS

    return [{k: v for k, v in o.items() if k.startswith("model.")} for o in VARIANTS.values()]


def _changes(name: str, overrides: dict) -> bool:
    """Whether `overrides` change `name`'s preset (an option equal to the preset's value is no new case)."""
    from spklip.config.registry import get_model_config

    preset = get_model_config(name)
    for key, value in overrides.items():
        node = preset
        for part in key.split(".")[1:]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if node != value:
            return True
    return False


def _cases() -> list[tuple[str, dict]]:
    from spklip.config.registry import get_model_config

    cases = []
    for name in list_models():
        preset = get_model_config(name)
        cases.append((name, {}))
        if preset.get("arch", "spklip") != "spklip":
            cases.append((name, {"model.hsfe.norm": "bn"}))  # baselines.py applies model overrides to every variant
            continue
        options = HSFE_OPTIONS + (FSVE_OPTIONS if preset.get("fsve", {}).get("variant", "none") != "none" else [])
        cases += [(name, o) for o in options if _changes(name, o)]
    cases += [("spklip-tiny", o) for o in _baseline_variants() if o and _changes("spklip-tiny", o)]
    return cases


CASES = _cases()
IDS = [name + "".join(f"-{k.split('.')[-1]}={v}" for k, v in o.items())[:120] for name, o in CASES]


def _config(name: str, overrides: dict):
    from spklip.config import load_config

    shrink = SHRINK if "paper" in name else {}
    return load_config(None, {"model_preset": name, **shrink, **overrides, "data.batch_size": 2,
                              "loss.positives": "pair"})


def _run_case(name: str, overrides: dict, rank: int, world: int) -> dict:
    """Two optimiser steps of one case under DDP with the kwargs the Ray Train workers give
    ``ray.train.torch.prepare_model`` (`spklip.runtime.worker.DDP_KWARGS`)."""
    from torch.nn.parallel import DistributedDataParallel

    from spklip.loss import ClipLoss
    from spklip.model import create_model
    from spklip.train.loop import Loop, seed_everything
    from spklip.runtime.worker import DDP_KWARGS

    cfg = _config(name, overrides)
    seed_everything(0)
    model = DistributedDataParallel(create_model(cfg.model, loss_cfg=cfg.loss), **DDP_KWARGS)
    loop = Loop.create(cfg, model, ClipLoss(cfg.loss, rank=rank, world_size=world), torch.device("cpu"), 4, rank)
    m = cfg.model
    gen = torch.Generator().manual_seed(rank)
    unused: list[str] = []
    for step in range(2):
        batch = {"spikes": (torch.rand(2, m.num_planes, m.height, m.width, generator=gen) < 0.2).to(torch.uint8),
                 "caption": [f"a spike video of a {rank} moving left.", f"a spike video of a {step} moving up."],
                 "class_name": [f"{rank} moving left", f"{step} moving up"], "label": torch.tensor([0, 1])}
        loop.model.train()
        loop.micro_step(batch, 1.0, sync=True)
        if step == 0:
            unused = [n for n, p in loop.model.module.named_parameters() if p.requires_grad and p.grad is None]
        loop.optimizer_step()
    return {"unused": unused}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # 2 processes on 2 cores
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    results = {}
    try:
        for case_id, (name, overrides) in zip(IDS, CASES):
            try:
                results[case_id] = _run_case(name, overrides, rank, world)
            except Exception as e:  # noqa: BLE001 - recorded per case, the other cases still run
                results[case_id] = {"error": f"{type(e).__name__}: {str(e)[:400]}",
                                    "trace": traceback.format_exc()[-1500:]}
                dist.barrier()  # both ranks fail the same way (same model): resynchronise before the next case
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ddp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(out)), nprocs=2, join=True)
    return {rank: json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)}


@pytest.mark.slow
@pytest.mark.parametrize("case_id", IDS)
def test_two_ddp_steps_for_every_preset_and_swept_option(ddp_results, case_id):
    """No trainable parameter without a gradient, and DDP's second step (where an unused one fails) passes."""
    for rank in range(2):
        result = ddp_results[rank][case_id]
        assert "error" not in result, f"rank {rank}: {result.get('error')}\n{result.get('trace')}"
        assert not result["unused"], f"rank {rank}: parameters without a gradient: {result['unused']}"


class _RecordingTrial:
    """A stand-in for an Optuna trial: records each categorical parameter a sweep space suggests (first choice)."""

    def __init__(self):
        self.categorical: dict[str, list] = {}

    def suggest_categorical(self, name: str, choices: list):
        self.categorical[name] = list(choices)
        return choices[0]

    def suggest_int(self, name: str, low: int, high: int, **_) -> int:
        return low

    def suggest_float(self, name: str, low: float, high: float, **_) -> float:
        return low


# categorical options that change no module (only dynamics), or change sizes only: covered by the cases above
NO_MODULE_CHANGE = {"model.fsve.surrogate", "model.fsve.reset", "model.hsfe.num_subblocks", "_step_mode"}


@pytest.mark.parametrize("sweep", ["hsfe_ablation", "fsve_sweep"])
def test_the_cases_cover_every_categorical_option_of_the_sweeps(sweep):
    """A categorical the sweeps add later must get its cases here (or be listed as changing no module)."""
    import importlib

    from spklip.config import load_config

    spec = importlib.import_module(f"spklip.sweeps.{sweep}").SPEC
    trial = _RecordingTrial()
    spec.space(trial, load_config(None, {k: v for k, v in spec.base.items() if k.startswith("model")}))
    covered = {k for o in HSFE_OPTIONS + FSVE_OPTIONS for k in o} | NO_MODULE_CHANGE
    for key, choices in trial.categorical.items():
        assert key in covered, f"{sweep} sweeps {key} {choices}: add its values to HSFE_OPTIONS or FSVE_OPTIONS"
        if key not in NO_MODULE_CHANGE:
            tried = {json.dumps(o[key]) for o in HSFE_OPTIONS + FSVE_OPTIONS if key in o}
            assert all(json.dumps(c) in tried for c in choices), (key, choices)
