"""``spklip models`` (the preset registry) and ``spklip energy`` (per-layer MAC/SOP energy, ANN vs FSVE).

torch and the model modules are imported inside the handlers: every ``spklip`` command line imports this module
to build its parser, and torch costs seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spklip.cliargs import fraction, positive_int, seed_int
from spklip.config import add_set_flag, parse_overrides
from spklip.data.npyfile import load_npy


def _models(args: argparse.Namespace) -> int:
    import torch

    from spklip.model import list_models, resolve_cfg
    from spklip.model.spklip import build_visual_tower

    rows = []
    for name in list_models():
        cfg = resolve_cfg(name)
        with torch.device("meta"):  # parameter count without allocating weights
            params = sum(p.numel() for p in build_visual_tower(cfg).parameters())
        layout = cfg.hsfe.layout(cfg.num_planes) if cfg.arch in ("spklip", "tfp-windows") else None
        rows.append({"name": name, "arch": cfg.arch, "fsve": cfg.fsve.variant, "input": f"{cfg.num_planes}x"
                     f"{cfg.height}x{cfg.width}", "subblocks": f"K={layout[0]} r={cfg.hsfe.radius} s={layout[1]}"
                     if layout else "-", "text": cfg.text.kind, "embed_dim": cfg.embed_dim,
                     "visual_params_M": round(params / 1e6, 3)})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    return 0


def _spikes(args: argparse.Namespace, cfg):
    import numpy as np
    import torch

    shape = (args.batch, cfg.num_planes, cfg.height, cfg.width)
    if args.spikes:
        arr = torch.from_numpy(load_npy(args.spikes, (3, 4), "[B, N, H, W] or [N, H, W] spike planes", mmap=False))
        if arr.dim() == 3:
            arr = arr.unsqueeze(0)
        if tuple(arr.shape[1:]) != shape[1:]:
            raise ValueError(f"{args.spikes}: spikes of shape {list(arr.shape)} do not fit this model, which needs "
                             f"[B, {cfg.num_planes}, {cfg.height}, {cfg.width}]")
        return arr
    g = torch.Generator().manual_seed(args.seed)
    return (torch.rand(shape, generator=g) < args.rate).to(torch.uint8)


def _energy(args: argparse.Namespace) -> int:
    import torch

    from spklip.model import resolve_cfg
    from spklip.model.energy import compare_markdown, estimate_energy
    from spklip.model.spklip import build_visual_tower

    overrides = {k.replace(".", "__"): v for k, v in parse_overrides(args.set).items()}
    reports = []
    for name in args.model:
        cfg = resolve_cfg(name, **overrides)
        torch.manual_seed(args.seed)
        tower = build_visual_tower(cfg)
        print(f"counting {name} on {args.batch} clip(s) of {cfg.num_planes}x{cfg.height}x{cfg.width}...",
              file=sys.stderr)
        reports.append(estimate_energy(tower, _spikes(args, cfg), name=name, batch_stats=not args.eval_bn))
    for r in reports:
        print(r.to_markdown(depth=None if args.detail else args.depth) + "\n")
    print(compare_markdown(reports))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "energy.md").write_text("\n\n".join(r.to_markdown() for r in reports) + "\n\n" +
                                       compare_markdown(reports) + "\n")
        for r in reports:
            (out / f"energy-{r.model}.csv").write_text(r.to_csv())
        print(f"wrote {out}/energy.md and one CSV per model", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add ``models`` and ``energy`` to the spklip command line."""
    p = subparsers.add_parser("models", help="list the model presets (spklip/config/presets/*.json)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    p.set_defaults(handler=_models)

    p = subparsers.add_parser("energy", help="per-layer MACs/SOPs and energy per clip (4.6 pJ/MAC, 0.9 pJ/AC)",
                              description="Run the visual tower of each --model on real spikes (random Bernoulli "
                              "planes at --rate, or --spikes FILE.npy) with forward hooks: layers fed by binary "
                              "spikes count synaptic operations (rate x MACs), others count MACs. Weights are "
                              "freshly initialised from the preset (seeded).")
    p.add_argument("--model", action="append", required=True, metavar="NAME",
                   help="preset name, repeatable to compare side by side (e.g. spklip-tiny, spklip-tiny-full-snn)")
    add_set_flag(p, help="model override applied to every --model, e.g. --set fsve.time_steps=4")
    p.add_argument("--batch", type=positive_int, default=2, help="clips per forward (default 2)")
    p.add_argument("--rate", type=fraction, default=0.1, help="firing rate of the random input spikes (default 0.1)")
    p.add_argument("--spikes", help=".npy file of [B,N,H,W] or [N,H,W] spike planes instead of random ones")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--depth", type=positive_int, default=2,
                   help="group layers by this many name components (default 2)")
    p.add_argument("--detail", action="store_true", help="one row per layer")
    p.add_argument("--eval-bn", action="store_true",
                   help="use BatchNorm running statistics (right for trained weights; untrained ones go silent)")
    p.add_argument("--out", help="folder for energy.md and energy-<model>.csv")
    p.set_defaults(handler=_energy)
