"""Energy accounting of the visual tower on a real input: MACs for dense inputs, synaptic operations for spikes.

Forward hooks on every ``nn.Conv2d``, ``nn.Conv3d``, ``nn.Linear`` and `MatMul` of the spike encoder record, per call:

- ``dense_macs``: the layer's multiply-accumulates as an ANN layer (conv: output positions x real kernel taps,
  masked-out MTF taps excluded; linear: rows x in x out; matmul: output elements x inner size). With spikingjelly's
  T time steps folded into the batch, T is already in the count.
- If the layer's input is binary (every value 0 or 1: camera spikes, LIF outputs), it performs accumulates only:
  ``SOPs = firing rate x dense_macs`` (Spikformer / Spike-driven Transformer convention; the first layer on raw
  binary camera planes is counted this way too). Otherwise all ``dense_macs`` are MACs. A matmul counts as
  spike-driven when either operand is binary, at that operand's rate.
- Energy = 4.6 pJ per MAC + 0.9 pJ per AC (FP32, 45 nm, Horowitz 2014). Element-wise ops, normalisation, pooling,
  neuron updates and memory traffic are not counted (as in the papers this reproduces).

The text tower is excluded: class prompts are embedded once, not per clip. Pure torch (no ray/mlflow).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from spklip.model.layers import MatMul
from spklip.torchutil import eval_mode

E_MAC_PJ = 4.6
E_AC_PJ = 0.9


@dataclass
class LayerEnergy:
    name: str
    kind: str  # conv | linear | matmul
    spiking_input: bool
    firing_rate: float  # mean of the binary input (1.0 for dense inputs)
    dense_macs: float
    macs: float
    sops: float
    energy_pj: float


@dataclass
class EnergyReport:
    """Per-layer rows plus totals; ``*_per_clip`` divide by the number of clips in the input batch."""

    model: str
    clips: int
    rows: list[LayerEnergy] = field(default_factory=list)

    @property
    def macs(self) -> float:
        return sum(r.macs for r in self.rows)

    @property
    def sops(self) -> float:
        return sum(r.sops for r in self.rows)

    @property
    def energy_per_clip_mj(self) -> float:
        return sum(r.energy_pj for r in self.rows) / self.clips * 1e-9

    def metrics(self) -> dict[str, float]:
        """Flat metrics for MLflow: energy (mJ), GMAC and GSOP per clip."""
        return {"energy_per_clip_mj": self.energy_per_clip_mj, "gmac_per_clip": self.macs / self.clips / 1e9,
                "gsop_per_clip": self.sops / self.clips / 1e9,
                "dense_gmac_per_clip": sum(r.dense_macs for r in self.rows) / self.clips / 1e9}

    def grouped(self, depth: int | None) -> list[LayerEnergy]:
        """Rows summed over name prefixes of ``depth`` components (None: every layer)."""
        if depth is None:
            return self.rows
        groups: dict[str, LayerEnergy] = {}
        for r in self.rows:
            key = ".".join(r.name.split(".")[:depth])
            g = groups.setdefault(key, LayerEnergy(key, "group", False, 0.0, 0.0, 0.0, 0.0, 0.0))
            g.dense_macs, g.macs, g.sops, g.energy_pj = (g.dense_macs + r.dense_macs, g.macs + r.macs,
                                                          g.sops + r.sops, g.energy_pj + r.energy_pj)
            g.spiking_input |= r.spiking_input
        for g in groups.values():  # firing rate of a group: SOPs per spike-fed dense MAC
            g.firing_rate = g.sops / max(g.dense_macs - g.macs, 1.0) if g.spiking_input else 1.0
        return list(groups.values())

    def to_markdown(self, depth: int | None = None) -> str:
        lines = [f"### {self.model}: {self.energy_per_clip_mj:.4f} mJ per clip", "",
                 "| layer | input | rate | MMAC/clip | MSOP/clip | uJ/clip |", "|---|---|---:|---:|---:|---:|"]
        for r in self.grouped(depth):
            lines.append(f"| {r.name} | {'spikes' if r.spiking_input else 'dense'} | {r.firing_rate:.3f} | "
                         f"{r.macs / self.clips / 1e6:.3f} | {r.sops / self.clips / 1e6:.3f} | "
                         f"{r.energy_pj / self.clips * 1e-6:.3f} |")
        m = self.metrics()
        lines.append(f"| **total** | | | {m['gmac_per_clip'] * 1e3:.3f} | {m['gsop_per_clip'] * 1e3:.3f} | "
                     f"{self.energy_per_clip_mj * 1e3:.3f} |")
        return "\n".join(lines)

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(asdict(self.rows[0]).keys()) if self.rows else ["name"])
        writer.writeheader()
        for r in self.rows:
            writer.writerow(asdict(r))
        return buf.getvalue()


def _binary_rate(x: torch.Tensor) -> float | None:
    """Mean of `x` if every value is 0 or 1 (a spike tensor), else None (also on the meta device: no values)."""
    if x.is_meta:
        return None
    if x.is_floating_point() or x.dtype in (torch.uint8, torch.bool):
        xf = x.detach().float()
        if bool(((xf == 0) | (xf == 1)).all()):
            return float(xf.mean())
    return None


def _dense_macs(module: nn.Module, inputs: tuple, out: torch.Tensor) -> float:
    if isinstance(module, (nn.Conv2d, nn.Conv3d)):
        taps = getattr(module, "num_taps", module.weight.numel())  # masked MTF conv: only the real taps
        return out.numel() / module.out_channels * taps
    if isinstance(module, nn.Linear):
        return out.numel() / module.out_features * module.weight.numel()
    return float(out.numel() * inputs[0].shape[-1])  # MatMul: out elements x inner dimension


def _kind(module: nn.Module) -> str:
    return "conv" if isinstance(module, (nn.Conv2d, nn.Conv3d)) else "linear" if isinstance(module, nn.Linear) else "matmul"


def _rate(module: nn.Module, inputs: tuple) -> float | None:
    rates = [_binary_rate(x) for x in (inputs if isinstance(module, MatMul) else inputs[:1])]
    rates = [r for r in rates if r is not None]
    return min(rates) if rates else None


@torch.no_grad()
def estimate_energy(model: nn.Module, spikes: torch.Tensor, name: str = "", batch_stats: bool = False,
                    e_mac_pj: float = E_MAC_PJ, e_ac_pj: float = E_AC_PJ) -> EnergyReport:
    """Count MACs/SOPs of the spike encoder on `spikes` and convert them to energy per clip.

    Args:
        model: a `Spklip` (its ``visual`` tower is measured) or any module taking ``[B, N, H, W]``.
        spikes: the input batch; firing rates are measured on it.
        name: label for the report (defaults to the class name).
        batch_stats: run BatchNorm on batch statistics (a copy of the model in train mode). Use it for untrained
            models, whose fresh running statistics shrink activations and silence spiking layers.
        e_mac_pj, e_ac_pj: energy per MAC / per accumulate in picojoules.

    Returns:
        EnergyReport with one row per counted layer (calls of the same layer summed).
    """
    tower = getattr(model, "visual", model)
    # batch statistics: a copy in train mode (the caller's model keeps its running statistics); else eval mode for
    # the count, the caller's train flag restored after it
    mode = contextlib.nullcontext(copy.deepcopy(tower).train()) if batch_stats else eval_mode(tower)
    rows: dict[str, LayerEnergy] = {}

    def hook(mod_name):
        def record(module, inputs, out):
            dense, rate = _dense_macs(module, inputs, out), _rate(module, inputs)
            row = rows.setdefault(mod_name, LayerEnergy(mod_name, _kind(module), rate is not None, 1.0, 0, 0, 0, 0))
            row.dense_macs += dense
            if rate is None:
                row.macs += dense
            else:
                row.sops += rate * dense
                row.firing_rate = row.sops / row.dense_macs
            row.energy_pj = e_mac_pj * row.macs + e_ac_pj * row.sops
        return record

    with mode as tower:
        handles = [m.register_forward_hook(hook(n)) for n, m in tower.named_modules()
                   if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear, MatMul))]
        try:
            x = spikes.to(next(tower.parameters()).dtype)
            if hasattr(model, "check_spikes"):
                model.check_spikes(spikes)
            tower(x)
        finally:
            for h in handles:
                h.remove()
    return EnergyReport(name or type(model).__name__, spikes.shape[0], list(rows.values()))


def compare_markdown(reports: list[EnergyReport]) -> str:
    """Side-by-side totals of several reports (e.g. ANN vs FSVE)."""
    lines = ["| model | GMAC/clip | GSOP/clip | dense-equivalent GMAC/clip | energy mJ/clip | vs first |",
             "|---|---:|---:|---:|---:|---:|"]
    base = reports[0].energy_per_clip_mj if reports else 1.0
    for r in reports:
        m = r.metrics()
        lines.append(f"| {r.model} | {m['gmac_per_clip']:.4f} | {m['gsop_per_clip']:.4f} | "
                     f"{m['dense_gmac_per_clip']:.4f} | {r.energy_per_clip_mj:.5f} | "
                     f"{r.energy_per_clip_mj / base:.3f}x |")
    return "\n".join(lines)
