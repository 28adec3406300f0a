#!/usr/bin/env python
"""Why the spiking encoders train worse than the ANN (issue 9): one setting at a time, in-process, resumable.

Each run trains `--preset` with the issue 9 settings (batch 16, AdamW, 10 warmup steps, cosine over `--steps`)
plus `--set` overrides, one torch thread, and writes ``OUT/<label>/seed<s>.json`` (val/train top-1, mean loss of
the last 50 steps, seconds); an existing file is skipped, so an interrupted study resumes. Then it prints per
label the val top-1 per seed and mean ± 95 % CI (t interval), and with ``--ref`` the Welch difference to another
label's runs.

    python benchmarks/study_fsve.py --out /tmp/fsve-study --label base --seeds 0
    python benchmarks/study_fsve.py --out /tmp/fsve-study --label mem-readout --seeds 0,1,2 \
        --set model.fsve.readout=membrane --ref base
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from spklip.config import load_config, parse_overrides
from spklip.eval.stats import difference, summarize
from spklip.runtime.inprocess import train_in_process
from spklip.train.loop import Loop


def run_one(args: argparse.Namespace, seed: int, path: Path) -> dict:
    torch.set_num_threads(1)
    overrides = {"model_preset": args.preset, "data.path": args.data, "train.epochs": 10000,
                 "train.max_steps": args.steps, "optim.lr": args.lr, "optim.warmup_steps": 10,
                 "data.batch_size": 16, "train.seed": seed, "data.seed": seed, "eval.energy": False,
                 **parse_overrides(args.set)}
    cfg = load_config(None, overrides)
    losses: list[float] = []
    micro_step = Loop.micro_step

    def recording(self, *a, **k):  # keep every step's loss (train_in_process does not return them)
        out = micro_step(self, *a, **k)
        losses.append(out["loss"])
        return out

    Loop.micro_step = recording
    try:
        t0 = time.perf_counter()
        _, metrics = train_in_process(cfg)
    finally:
        Loop.micro_step = micro_step
    out = {"label": args.label, "seed": seed, "overrides": {k: v for k, v in overrides.items() if k != "data.path"},
           "seconds": time.perf_counter() - t0, "val_top1": metrics.get("val/top1"),
           "train_top1": metrics.get("trainset/top1"), "final_loss": sum(losses[-50:]) / max(len(losses[-50:]), 1),
           "loss_curve": losses[::25]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return out


def load(out: Path, label: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / label).glob("seed*.json"))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="runs/data/moving-digits")
    ap.add_argument("--out", default="runs/study-fsve")
    ap.add_argument("--label", required=True)
    ap.add_argument("--preset", default="spklip-tiny-full-snn")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--ref", help="label to compare with (Welch difference of val top-1)")
    args = ap.parse_args()
    out = Path(args.out)
    for s in (int(x) for x in args.seeds.split(",")):
        path = out / args.label / f"seed{s}.json"
        if not path.exists():
            r = run_one(args, s, path)
            print(f"{args.label} seed {s}: val {r['val_top1']:.3f} train {r['train_top1']:.3f} "
                  f"loss {r['final_loss']:.3f} ({r['seconds']:.0f} s)", flush=True)
    runs = load(out, args.label)
    vals = [r["val_top1"] for r in runs]
    print(f"{args.label}: val {' / '.join(f'{v:.2f}' for v in vals)} -> {summarize(vals)}; train "
          f"{sum(r['train_top1'] for r in runs) / len(runs):.2f}; loss {sum(r['final_loss'] for r in runs) / len(runs):.2f}")
    if args.ref:
        print(f"{args.label} - {args.ref}: {difference(vals, [r['val_top1'] for r in load(out, args.ref)])}")


if __name__ == "__main__":
    main()
