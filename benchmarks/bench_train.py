"""Where a demo trial's time goes (``make bench-train``): start-up to the first optimiser step, and the step fraction.

Runs ``spklip train`` as its own process (in-process Ray, configs/tiny.yaml on the demo's moving-digits data, the
demo's 2 workers) for ``--steps`` optimiser steps and prints the breakdown the run recorded (`spklip.train.timing`,
the summary's ``time``): each start-up milestone from the process start to the first optimiser step, then the
epochs' data wait, step (forward/backward/optimiser), evaluation, precise BN and checkpoint seconds, and the step and
model fractions of the wall time (targets, issue 12: first step <= 20 s, model fraction >= 0.6). With ``--rounds``
above 1, the medians over the rounds. The load average before and after is printed: figures need a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_BUILD = ["--digits", "0,1,2", "--motions", "left,right,up,down", "--clips-per-class", "30", "--seed", "0"]


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def spklip(*args: str, env: dict[str, str] | None = None) -> str:
    """Run ``python -m spklip.cli ARGS`` as a fresh process (its start-up is what is measured); its stdout."""
    done = subprocess.run([sys.executable, "-m", "spklip.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    if done.returncode != 0:
        sys.exit(f"spklip {' '.join(args[:2])} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def trial(data: str, run_dir: Path, name: str, args: argparse.Namespace) -> dict:
    out = spklip("train", "--config", "configs/tiny.yaml", "--name", name, "--set", f"data.path={data}",
                 "--set", f"train.run_dir={run_dir}", "--set", f"train.max_steps={args.steps}",
                 "--set", f"scale.num_workers={args.workers}", *[x for kv in args.set for x in ("--set", kv)])
    return json.loads(out)


def median_of(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:.1f}" + (f" ({' / '.join(f'{v:.1f}' for v in values)})" if len(values) > 1 else "")


def report(times: list[dict], seconds: list[float]) -> None:
    first = times[0]
    print(f"start-up to the first optimiser step: {median_of([t['startup_s'] for t in times])} s "
          f"(target <= 20 s on 2 cores)")
    for phase in first["startup"]:
        print(f"  {phase:<12} {median_of([t['startup'].get(phase, 0.0) for t in times])} s")
    print(f"epochs: {first['epochs']}; wall time from the command's start to the last epoch's end "
          f"{median_of([t['wall_s'] for t in times])} s (`fit` alone {median_of(seconds)} s)")
    for phase in first["totals"]:
        print(f"  {phase:<12} {median_of([t['totals'].get(phase, 0.0) for t in times])} s")
    print(f"step fraction (forward/backward/optimiser): {median_of([t['step_fraction'] for t in times])}; "
          f"model fraction (step + eval + precise BN): {median_of([t['model_fraction'] for t in times])} "
          f"(target >= 0.6)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / "runs" / "data" / "moving-digits"),
                   help="the demo's shard folder (built into a temporary folder when it does not exist)")
    p.add_argument("--steps", type=int, default=72, help="optimiser steps of the trial (train.max_steps)")
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers (scale.num_workers; 0: local mode; "
                   "default 2, with --quick 0)")
    p.add_argument("--rounds", type=int, default=1, help="trials run; medians are printed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    p.add_argument("--quick", action="store_true", help="a short run that proves the benchmark works (6 steps, "
                   "local mode, 1 few-shot seed): not for figures")
    args = p.parse_args()
    if args.quick:
        args.steps = 6
        args.set += ["eval.few_shot_seeds=1", "eval.few_shot_ks=[1]", "train.epochs=1"]
    args.workers = args.workers if args.workers is not None else (0 if args.quick else 2)
    print(f"before: {load()}")
    with tempfile.TemporaryDirectory(prefix="spklip-bench-train-") as tmp:
        data = args.data
        if not Path(data, "manifest.json").exists():
            data = str(Path(tmp) / "moving-digits")
            t = time.perf_counter()
            spklip("data", "build", "moving-digits", "--out", data, *DEMO_BUILD)
            print(f"built the demo data in {time.perf_counter() - t:.0f} s: {data}")
        times, seconds = [], []
        for i in range(args.rounds):
            summary = trial(data, Path(tmp) / "runs", f"bench-{i}", args)
            if not summary.get("time"):
                sys.exit("the run wrote no time breakdown (timing.json)")
            times.append(summary["time"])
            seconds.append(summary["seconds"])
    print(f"spklip train: configs/tiny.yaml, {args.steps} steps, {args.workers} workers, in-process Ray "
          f"({args.rounds} round{'s' if args.rounds > 1 else ''})")
    report(times, seconds)
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
