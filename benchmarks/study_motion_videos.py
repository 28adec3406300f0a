#!/usr/bin/env python
"""HSFE (spklip-tiny) against the spike average (tfp-resnet-tiny) on real images moving in real videos.

In-process (pure torch, no Ray), one torch thread per run, `--jobs` runs at a time. Each run writes
``OUT/<label>/<preset>-seed<s>.json`` and is skipped when that file exists, so an interrupted study resumes. At the
end it prints the table of docs/training.md ("Other motion data"): per preset val top-1 per seed, mean ± 95 % CI,
zero-shot, few-shot, train top-1, and the val predictions split into object right / motion right / motion axis
right (class names "<object> moves <motion>"), then the Welch difference of the first preset minus the second.

    python tools/make_motion_videos.py --out /tmp/motion-videos --clips-per-class 20 --seed 0
    spklip data build video-folder --root /tmp/motion-videos --out /tmp/motion-shards --model spklip-tiny \
        --planes-per-frame 2 --unseen-classes 10 --seed 0
    python benchmarks/study_motion_videos.py --data /tmp/motion-shards --out /tmp/motion-study --jobs 1
    python benchmarks/study_motion_videos.py --data /tmp/motion-shards --out /tmp/motion-study --jobs 1 \
        --label k3r10 --set model.hsfe.radius=10           # a single-factor variant (docs/training.md)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import torch

from spklip.config import add_set_flag, load_config, parse_overrides
from spklip.data.read import dataset_info, eval_batches
from spklip.eval.evaluate import class_prompt_embeddings, embed_clips
from spklip.eval.stats import difference, summarize
from spklip.runtime.inprocess import train_in_process

AXIS = {"left": "horizontal", "right": "horizontal", "up": "vertical", "down": "vertical", "still": "still"}
METRICS = ("val/top1", "zeroshot/top1", "fewshot/1shot_top1", "fewshot/4shot_top1", "trainset/top1")


def parse_name(name: str) -> tuple[str, str]:
    """``"roof moves left"`` -> ``("roof", "left")``."""
    obj, _, motion = name.rpartition(" moves ")
    return obj, motion


def split_accuracy(pred: list[str], true: list[str]) -> dict[str, float]:
    """Share of predictions with the right object, the right motion, the right motion axis, and all right."""
    pairs = [(parse_name(p), parse_name(t)) for p, t in zip(pred, true)]
    n = max(len(pairs), 1)
    return {"top1": sum(p == t for p, t in pairs) / n,
            "object": sum(p[0] == t[0] for p, t in pairs) / n,
            "motion": sum(p[1] == t[1] for p, t in pairs) / n,
            "axis": sum(AXIS.get(p[1], p[1]) == AXIS.get(t[1], t[1]) for p, t in pairs) / n}


def predictions(model, cfg, names: list[str], class_ids: list[int], split: str) -> dict[str, float]:
    """Prompt classification of `split` over `class_ids`, split into object / motion (as the eval scores it)."""
    emb = embed_clips(model, eval_batches(cfg.data.path, split, cfg.eval.batch_size), torch.device("cpu"))
    logits = emb.features @ class_prompt_embeddings(model, [names[i] for i in class_ids]).T  # [N, C]
    pred = [names[class_ids[j]] for j in logits.argmax(dim=1).tolist()]
    return split_accuracy(pred, [names[i] for i in emb.labels.tolist()])


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(1)
    s = job["seed"]
    overrides = {"model_preset": job["preset"], "data.path": job["data"], "train.epochs": 10000,
                 "train.max_steps": job["steps"], "optim.lr": 1e-3, "optim.warmup_steps": 10,
                 "data.batch_size": 16, "train.seed": s, "data.seed": s, "eval.few_shot_ks": [1, 4],
                 "eval.few_shot_seeds": 1, "eval.energy": False, **job["set"]}
    cfg = load_config(None, overrides)
    t0 = time.perf_counter()
    model, metrics = train_in_process(cfg)
    info = dataset_info(cfg)
    names = info.class_names
    out = {"preset": job["preset"], "seed": s, "overrides": {k: v for k, v in overrides.items() if k != "data.path"},
           "seconds": time.perf_counter() - t0, "metrics": {k: metrics.get(k) for k in METRICS},
           "val_split": predictions(model, cfg, names, info.seen_ids, cfg.data.val_split),
           "unseen_split": predictions(model, cfg, names, info["unseen_ids"], cfg.data.zero_shot_split)}
    Path(job["path"]).write_text(json.dumps(out, indent=1))
    print(f"{job['preset']} seed {s}: val {out['metrics']['val/top1']:.3f} "
          f"({out['seconds']:.0f} s) -> {job['path']}", flush=True)
    return out


def fmt(values: list[float]) -> str:
    return str(summarize(values))


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    head = ("| model | val top-1 per seed | val mean ± 95 % CI | zero-shot (unseen) | 1-shot | 4-shot | train top-1 "
            "| object | motion | motion axis | zero-shot object / motion |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for preset, runs in results.items():
        val = [r["metrics"]["val/top1"] for r in runs]
        col = lambda k: fmt([r["metrics"][k] for r in runs])  # noqa: E731
        part = lambda split, k: fmt([r[split][k] for r in runs])  # noqa: E731
        lines.append(f"| {preset} | {' / '.join(f'{v:.2f}' for v in val)} | {fmt(val)} | {col('zeroshot/top1')} | "
                     f"{col('fewshot/1shot_top1')} | {col('fewshot/4shot_top1')} | {col('trainset/top1')} | "
                     f"{part('val_split', 'object')} | {part('val_split', 'motion')} | {part('val_split', 'axis')} | "
                     f"{part('unseen_split', 'object')} / {part('unseen_split', 'motion')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="shard folder from spklip data build video-folder")
    p.add_argument("--out", required=True, type=Path, help="folder for the per-run JSON files")
    p.add_argument("--presets", default="spklip-tiny,tfp-resnet-tiny", help="first minus second is reported")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    p.add_argument("--label", default="default", help="sub-folder of --out for this variant")
    add_set_flag(p, help="extra config override (repeatable), on top of the study settings")
    args = p.parse_args(argv)
    folder = args.out / args.label
    folder.mkdir(parents=True, exist_ok=True)
    presets, seeds = args.presets.split(","), [int(s) for s in args.seeds.split(",")]
    jobs = [{"preset": pr, "seed": s, "data": str(Path(args.data).resolve()), "steps": args.steps,
             "set": parse_overrides(args.set), "path": str(folder / f"{pr}-seed{s}.json")} for pr in presets for s in seeds]
    todo = [j for j in jobs if not Path(j["path"]).exists()]
    if todo:
        with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
            pool.map(run_one, todo, chunksize=1)
    results = {pr: [json.loads(Path(j["path"]).read_text()) for j in jobs if j["preset"] == pr] for pr in presets}
    print(f"\n{args.label}: {args.steps} steps, overrides {args.set or 'none'}\n")
    print(table(results))
    if len(presets) >= 2:
        a, b = results[presets[0]], results[presets[1]]
        for split, key, label in (("metrics", "val/top1", "val top-1"), ("metrics", "zeroshot/top1", "zero-shot"),
                                  ("metrics", "fewshot/4shot_top1", "4-shot"),
                                  ("val_split", "motion", "val motion right"),
                                  ("val_split", "axis", "val motion axis right")):
            print(f"\n{presets[0]} - {presets[1]}, {label}: "
                  f"{difference([r[split][key] for r in a], [r[split][key] for r in b])}", end="")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
