"""Training at the speed of plain PyTorch (``make bench-train``): the plain loop against ``spklip train``, one run.

Same model preset (configs/tiny.yaml: spklip-tiny, augmentation, multi-positive loss), same demo data (moving digits;
built into a temporary folder when `--data` is missing), same optimiser steps (`--steps`), each as its own process
(its start-up is part of its wall time):

* the plain PyTorch loop (`plain_loop`: spklip's `Loop` on batches cut from the decoded train split, no Ray, no DDP,
  no reporting; one evaluation at the end), 1 thread, batch 8 (the per-core batch of 2 workers x 8) and batch 16,
  and 2 threads, batch 16 (one process on both cores);
* ``spklip train`` through Ray Train (in-process Ray), 1 worker x batch 16 and 2 workers x batch 8 (16 clips a step
  either way), ``scale.cpus_per_worker=0.5`` (1 thread each), the default evaluation cadence; and 1 worker x batch
  16 on 2 threads (``scale.threads_per_worker=2``): which of the two uses a 2-core machine better;
* ``spklip train`` in local mode (``scale.num_workers=0``: Ray Train runs the loop in the driver, no Ray is started,
  the split is read in-process), batch 16 on 2 threads: configs/tiny.yaml's default since 2026-12-06.

`--only KEYS` runs some of them (plain b8, b16, b16t2; spklip 1w, 2w, 1w2t, 0w2t), e.g. ``--only b16t2,1w2t,0w2t``.

Printed: steps/s (steps only, and start-up included), the ratios (a worker's step / the plain step of the same
per-core batch; product wall / plain wall for the same steps and clips; 2 workers vs 1 worker steps/s) and a
worker's time per phase (start-up, data wait, step, evaluation, precise BN, checkpoint; from the run's timing.json).
`--profile FILE` also writes a torch.profiler table of 20 steps of the 2-worker run's rank 0 (FILE) and of the plain
batch-8 loop (FILE.plain). The load average before and after is printed: figures need a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_BUILD = ["--digits", "0,1,2,3", "--motions", "left,right,up,down", "--clips-per-class", "30",  # the demo's (Makefile)
              "--unseen", "0:left,0:right,1:left,1:right", "--seed", "0"]


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def spklip(*args: str, env: dict[str, str] | None = None) -> str:
    """Run ``python -m spklip.cli ARGS`` as a fresh process (its start-up is what is measured); its stdout."""
    done = subprocess.run([sys.executable, "-m", "spklip.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    if done.returncode != 0:
        sys.exit(f"spklip {' '.join(args[:2])} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def plain_loop(data: str, batch: int, steps: int, profile: str = "", threads: int = 1) -> dict:
    """The reference: spklip's `Loop` (forward, STCL loss, backward, AdamW) on `threads` torch threads in this
    process, batches cut from the decoded train split in a seeded order each epoch; one evaluation (val) at the end."""
    started = time.time()
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from spklip.config import load_config
    from spklip.data.read import dataset_info, decoded_split, to_torch
    from spklip.eval.run import evaluate_model
    from spklip.loss import ClipLoss
    from spklip.model import create_model
    from spklip.train.loop import Loop, StepProfiler, seed_everything
    from spklip.train.timing import process_started_at

    started = process_started_at() or started
    cfg = load_config(str(ROOT / "configs" / "tiny.yaml"), [f"data.path={data}", f"data.batch_size={batch}",
                                                            "train.epochs=100000", f"train.max_steps={steps}",
                                                            "eval.few_shot_ks=[1,2,4]"])
    seed_everything(cfg.train.seed)
    device = torch.device("cpu")
    model = create_model(cfg.model, loss_cfg=cfg.loss)
    loop = Loop.create(cfg, model, ClipLoss(cfg.loss), device, steps)
    train = decoded_split(data, cfg.data.train_split)
    n = len(train["label"])
    rng = np.random.default_rng(cfg.data.seed)
    profiler = StepProfiler(profile) if profile else None
    step, epoch, step_s = 0, 0, 0.0
    t_first = time.time()
    while step < steps:
        order = rng.permutation(n)
        for i in range(n // batch):
            b = to_torch({k: v[order[i * batch:(i + 1) * batch]] for k, v in train.items()})
            t = time.perf_counter()
            model.train()
            m = loop.micro_step(b, 1.0, sync=True, epoch=epoch, index=i)
            loop.optimizer_step(m["loss"], step + 1)
            step_s += time.perf_counter() - t
            step += 1
            if step == 1:
                t_first = time.time()
            if profiler is not None:
                profiler.step(step)
            if step >= steps:
                break
        epoch += 1
    t = time.perf_counter()
    metrics = evaluate_model(model, cfg, dataset_info(cfg), device).metrics
    return {"batch": batch, "threads": threads, "steps": steps, "step_s": step_s, "eval_s": time.perf_counter() - t,
            "startup_s": t_first - started, "wall_s": time.time() - started, "val/top1": metrics["val/top1"]}


def run_json(cmd: list[str], env: dict[str, str] | None = None) -> tuple[dict, float]:
    """Run `cmd` (a fresh process) and parse its stdout's JSON; also its wall time measured here."""
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    wall = time.perf_counter() - t
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout), wall


def product(data: str, run_dir: Path, workers: int, batch: int, args: argparse.Namespace,
            profile: str = "", threads: int = 0) -> dict:
    """``spklip train --config configs/tiny.yaml`` with `workers` Ray Train workers of `batch` clips, `args.steps`
    steps: its summary, the wall time measured here, and the worker's phases (timing.json)."""
    name = f"bench-{workers}w{threads}t"
    sets = [f"data.path={data}", f"train.run_dir={run_dir}", f"train.max_steps={args.steps}", "train.epochs=100000",
            f"scale.num_workers={workers}", "scale.cpus_per_worker=0.5", f"data.batch_size={batch}",
            f"scale.threads_per_worker={threads}", "tracking.log_model=false", *args.set]
    env = {"SPKLIP_PROFILE": profile} if profile else None
    summary, wall = run_json([sys.executable, "-m", "spklip.cli", "train", "--config", "configs/tiny.yaml",
                              "--name", name, *[x for kv in sets for x in ("--set", kv)]], env)
    timing = summary.get("time") or {}
    if not timing:
        sys.exit("the run wrote no time breakdown (timing.json)")
    return {"workers": workers, "batch": batch, "threads": threads, "wall_s": wall, "time": timing,
            "val/top1": (summary.get("last_metrics") or {}).get("val/top1")}


def rate(steps: int, seconds: float) -> float:
    return steps / seconds if seconds > 0 else float("nan")


def report(plain: dict[str, dict], runs: dict[str, dict], steps: int) -> None:
    """The table, the ratios against the targets, and each run's phases. `plain` is keyed "b8", "b16", "b16t2"
    (batch, threads); `runs` "1w", "2w", "1w2t", "0w2t" (workers, threads; 0 workers: local mode)."""
    print(f"\n{steps} optimiser steps each (spklip-tiny, configs/tiny.yaml, the demo data)")
    print(f"{'path':<48} {'steps/s (steps)':>15} {'steps/s (wall)':>15} {'wall s':>8} {'val/top1':>9}")
    for r in plain.values():
        print(f"{'plain PyTorch, %d thread(s), batch %d' % (r['threads'], r['batch']):<48} "
              f"{rate(steps, r['step_s']):>15.2f} {rate(steps, r['wall_s']):>15.2f} {r['wall_s']:>8.1f} "
              f"{r['val/top1']:>9.3f}")
    for r in runs.values():
        t, top1 = r["time"], r["val/top1"]
        threads = "%d threads" % r["threads"] if r["threads"] else "auto"
        label = ("spklip train, local mode, batch %d, %s" % (r["batch"], threads) if r["workers"] == 0 else
                 "spklip train, %d worker(s) x batch %d, %s" % (r["workers"], r["batch"], threads))
        print(f"{label:<48} {rate(steps, t['totals'].get('step', 0.0)):>15.2f} {rate(steps, r['wall_s']):>15.2f} "
              f"{r['wall_s']:>8.1f} {top1 if top1 is not None else float('nan'):>9.3f}")

    def step_of(key: str) -> float:
        return runs[key]["time"]["totals"].get("step", 0.0)

    print("\nratios (targets, issue 26)")
    for key, ref in (("1w", "b16"), ("2w", "b8"), ("1w2t", "b16t2"), ("0w2t", "b16t2")):
        if key in runs and ref in plain:
            worker_step, plain_step = step_of(key) / steps, plain[ref]["step_s"] / steps
            print(f"  {key}: worker step / plain step ({ref}): {worker_step / plain_step:.2f} "
                  f"({worker_step:.4f} / {plain_step:.4f} s; target <= 1.15)")
    if "2w" in runs and "b8" in plain:
        print(f"  2 workers x 8: product wall / plain wall (batch 8, 1 thread a core): "
              f"{runs['2w']['wall_s'] / plain['b8']['wall_s']:.2f} (target <= 1.3)")
    if "1w" in runs and "b16" in plain:
        print(f"  1 worker x 16: product wall / plain wall (batch 16): {runs['1w']['wall_s'] / plain['b16']['wall_s']:.2f}")
    for key in ("1w2t", "0w2t"):
        if key in runs and "b16t2" in plain:
            print(f"  {key}: product wall / plain wall (batch 16, 2 threads): "
                  f"{runs[key]['wall_s'] / plain['b16t2']['wall_s']:.2f} (target <= 1.3)")
    if "1w" in runs and "2w" in runs:
        print(f"  2 workers vs 1 worker (1 thread), steps/s of 16 clips: {step_of('1w') / step_of('2w'):.2f} "
              f"(steps only), {runs['1w']['wall_s'] / runs['2w']['wall_s']:.2f} (wall) (target >= 1.6)")
    if "1w2t" in runs and "2w" in runs:
        print(f"  1 worker x 2 threads vs 2 workers x 1 thread (both cores), steps/s: "
              f"{step_of('2w') / step_of('1w2t'):.2f} (steps only), "
              f"{runs['2w']['wall_s'] / runs['1w2t']['wall_s']:.2f} (wall); > 1: one worker wins")
    print("\na worker's time by phase (rank 0, seconds)")
    print(f"{'run':<16} {'start-up':>9} {'data':>7} {'step':>7} {'eval':>7} {'prec. BN':>9} {'ckpt':>7} "
          f"{'evals':>6} {'threads':>8} {'wall':>7}")
    for key, r in runs.items():
        t, tot = r["time"], r["time"]["totals"]
        print(f"{key:<16} {t['startup_s']:>9.1f} {tot.get('data', 0):>7.1f} {tot.get('step', 0):>7.1f} "
              f"{tot.get('eval', 0):>7.1f} {tot.get('bn', 0):>9.1f} {tot.get('checkpoint', 0):>7.1f} "
              f"{t.get('evaluations', 0):>6} {t.get('threads', 0):>8} {t['wall_s']:>7.1f}")
        print("  start-up: " + ", ".join(f"{k} {v:.1f}" for k, v in t["startup"].items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / "runs" / "data" / "moving-digits"),
                   help="the demo's shard folder (built into a temporary folder when it does not exist)")
    p.add_argument("--steps", type=int, default=600, help="optimiser steps of every path (default: the demo's 600)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config overrides for the spklip train runs")
    p.add_argument("--profile", default="", metavar="FILE", help="write a torch.profiler table of 20 steps (after "
                   "10) of the 2-worker run's rank 0 to FILE and of the plain batch-8 loop to FILE.plain")
    p.add_argument("--only", default="", metavar="KEYS", help="comma-separated paths to run (default: all): plain "
                   "b8, b16, b16t2; spklip train 1w, 2w, 1w2t, 0w2t (0w: local mode)")
    p.add_argument("--plain-worker", type=int, default=0, metavar="BATCH", help=argparse.SUPPRESS)
    p.add_argument("--plain-profile", default="", help=argparse.SUPPRESS)
    p.add_argument("--plain-threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain_worker:  # the child process of one plain loop
        print(json.dumps(plain_loop(args.data, args.plain_worker, args.steps, args.plain_profile,
                                    args.plain_threads)))
        return
    keys = ("b8", "b16", "b16t2", "1w", "2w", "1w2t", "0w2t")
    only = [k.strip() for k in args.only.split(",") if k.strip()] or list(keys)
    if set(only) - set(keys):
        sys.exit(f"--only: unknown path(s) {', '.join(sorted(set(only) - set(keys)))}; known: {', '.join(keys)}")
    if args.profile and args.steps < 30:
        sys.exit("--profile needs --steps >= 30 (it profiles steps 11-30)")
    print(f"before: {load()}")
    with tempfile.TemporaryDirectory(prefix="spklip-bench-train-") as tmp:
        data = args.data
        if not Path(data, "manifest.json").exists():
            data = str(Path(tmp) / "moving-digits")
            t = time.perf_counter()
            spklip("data", "build", "moving-digits", "--out", data, *DEMO_BUILD)
            print(f"built the demo data in {time.perf_counter() - t:.0f} s: {data}")
        plain = {}
        for batch, threads in ((8, 1), (16, 1), (16, 2)):
            prof = f"{args.profile}.plain" if args.profile and batch == 8 else ""
            key = f"b{batch}" + (f"t{threads}" if threads > 1 else "")
            if key in only:
                plain[key], _ = run_json([sys.executable, str(Path(__file__).resolve()), "--data", data, "--steps",
                                          str(args.steps), "--plain-worker", str(batch), "--plain-profile", prof,
                                          "--plain-threads", str(threads)])
        profile = os.path.abspath(args.profile) if args.profile else ""
        runs = {key: product(data, Path(tmp) / "runs", workers, batch, args, profile if key == "2w" else "", threads)
                for key, workers, batch, threads in (("1w", 1, 16, 0), ("2w", 2, 8, 0), ("1w2t", 1, 16, 2),
                                                     ("0w2t", 0, 16, 2)) if key in only}
    report(plain, runs, args.steps)
    if args.profile:
        print(f"\nprofiles: {args.profile} (2 workers, rank 0), {args.profile}.plain (plain loop, batch 8)")
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
