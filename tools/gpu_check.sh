#!/usr/bin/env bash
# The GPU check of issue 14, prepared to run once on a lent GPU machine in well under 5 minutes (`make bench-gpu`):
#   1. bf16 autocast training steps (spklip's own Loop: model, STCL loss, AdamW) of spklip-small and spklip-paper,
#      without and with activation checkpointing (model.hsfe/backbone.checkpointing), each at the largest batch that
#      fits (doubling from the start batch until out of memory, GPU_CHECK_MAX_BATCH): clips/s, peak GPU memory, model
#      FLOP utilisation (MFU: fwd+bwd FLOPs per clip = 3 x 2 x the visual tower's forward MACs counted by the energy
#      hooks, times clips/s, over the dense bf16 peak: GPU_CHECK_PEAK_TFLOPS / GPU_PEAK_TFLOPS, else H100/H200 989;
#      the recomputation of checkpointing is not counted as model FLOPs), every loss finite;
#   2. HSFE batched vs the authors' per-sample/per-sub-block loop (spklip.model.reference) on the GPU: both outputs
#      agree (fp32, TF32 off) and the speed-up;
#   3. one Ray Train run with a GPU worker (`spklip train`, scale.use_gpu=true, so Ray Train's TorchConfig picks the
#      nccl backend) on tiny moving digits built by `spklip data build moving-digits`;
#   4. the same run with rank 0 killed at step 5: Ray Train restarts the worker group on the GPU and it resumes
#      from the step-3 checkpoint (the path issue 25 found crashing: RNG states must stay on the CPU);
#   5. a smoke sweep of four spklip-tiny trials at scale.gpus_per_worker=0.25: how many ran on the GPU at once;
#   6. the spike simulator on the GPU if it has a torch path (skipped with a line when it is numpy only).
# Figures go to $OUT/gpu_check.json when OUT is set, else to stdout, as one JSON object; a section that fails records
# its error there and the script exits 1 after finishing the others.
#
# Without a GPU it refuses, unless GPU_CHECK_ALLOW_CPU=1: then the same steps run tiny on the CPU (shrunken clips,
# batch 2, one timed step, a gloo Ray worker) so that the script itself is testable where no GPU is lent.
# Environment: VENV (default .venv; built with `make install` when it cannot import spklip, ray and torch; on a
# machine without a package index point pip at carried wheels: PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels),
# GPU_CHECK_STEPS (timed training steps, default 5 on GPU), GPU_CHECK_SMALL_BATCH (64), GPU_CHECK_PAPER_BATCH (8): the
# start batches, GPU_CHECK_MAX_BATCH (512: no batch above it is tried), GPU_PEAK_TFLOPS (the device's dense bf16
# peak in TFLOPS; default by device name: H100 989, H200 989; unknown: MFU left out with a note).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=${VENV:-.venv}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1

gpu_present() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
if ! gpu_present && [ "${GPU_CHECK_ALLOW_CPU:-0}" != 1 ]; then
    echo "gpu_check: no GPU (nvidia-smi -L fails); set GPU_CHECK_ALLOW_CPU=1 to run the same steps tiny on the CPU" >&2
    exit 2
fi
if ! "$VENV/bin/python" -c 'import spklip, ray, torch' 2>/dev/null; then
    echo "gpu_check: building $VENV (make install)" >&2
    make --no-print-directory install VENV="$VENV" >&2
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/spklip-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$VENV/bin/python" - "$WORK" <<'PY'
import gc
import inspect
import json
import math
import os
import re
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, "benchmarks")
from bench_model import bench_loop_vs_batched, gmac_per_clip  # noqa: E402  (benchmarks/ is no package)

from spklip.config import load_config  # noqa: E402
from spklip.data import simulate  # noqa: E402
from spklip.loss import ClipLoss  # noqa: E402
from spklip.model import create_model  # noqa: E402
from spklip.train.loop import Loop, prepare_for_device, seed_everything  # noqa: E402

work = Path(sys.argv[1])
gpu = torch.cuda.is_available()
device = torch.device("cuda" if gpu else "cpu")
steps = int(os.environ.get("GPU_CHECK_STEPS", 5 if gpu else 1))
batches = {"spklip-small": int(os.environ.get("GPU_CHECK_SMALL_BATCH", 64 if gpu else 2)),
           "spklip-paper": int(os.environ.get("GPU_CHECK_PAPER_BATCH", 8 if gpu else 2))}
max_batch = int(os.environ.get("GPU_CHECK_MAX_BATCH", 512 if gpu else 2))  # CPU mode: the start batch only
CHECKPOINTING = ["model.hsfe.checkpointing=true", "model.backbone.checkpointing=true"]
PEAKS = {"H100": 989.0, "H200": 989.0}  # dense bf16 TFLOPS (SXM; sparsity not counted)


def peak_tflops():
    """The device's dense bf16 peak: GPU_PEAK_TFLOPS, else by device name; (None, why) when unknown."""
    if os.environ.get("GPU_PEAK_TFLOPS"):
        return float(os.environ["GPU_PEAK_TFLOPS"]), "GPU_PEAK_TFLOPS"
    name = torch.cuda.get_device_name() if gpu else "cpu"
    for key, value in PEAKS.items():
        if key in name:
            return value, f"default for {key}"
    return None, f"no dense bf16 peak known for {name!r}: set GPU_PEAK_TFLOPS to get MFU"


PEAK, PEAK_SOURCE = peak_tflops()
# CPU mode: the same presets on 16 planes of 32x32 (sub-blocks re-laid out for 16 planes)
TINY = ["model.num_planes=16", "model.height=32", "model.width=32", "model.hsfe.stride=1", "model.hsfe.radius=3",
        "model.hsfe.step=4", "model.hsfe.num_subblocks=auto"]
report = {"device": torch.cuda.get_device_name() if gpu else "cpu (GPU_CHECK_ALLOW_CPU=1: tiny sizes)",
          "torch": torch.__version__, "cuda": torch.version.cuda, "mode": "gpu" if gpu else "cpu-tiny"}
failed = []


def section(name):
    def wrap(fn):
        t0 = time.perf_counter()
        try:
            report[name] = fn()
        except Exception as e:  # record it and go on with the other sections
            failed.append(name)
            report[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        report[name]["section_seconds"] = round(time.perf_counter() - t0, 1)
        print(f"gpu_check: {name}: {report[name]}"[:2000], file=sys.stderr)
    return wrap


def sync():
    if gpu:
        torch.cuda.synchronize()


def train_steps(preset: str, batch: int, checkpointing: bool = False) -> dict:
    cfg = load_config(None, [f"model_preset={preset}", "train.precision=bf16", *([] if gpu else TINY),
                             *(CHECKPOINTING if checkpointing else [])])
    seed_everything(0)
    model = create_model(cfg.model, loss_cfg=cfg.loss).to(device).train()
    loop = Loop.create(cfg, model, ClipLoss(cfg.loss), device, total_steps=steps + 2)
    n, h, w = cfg.model.num_planes, cfg.model.height, cfg.model.width
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(batch) % 4
    data = {"spikes": (torch.rand(batch, n, h, w, generator=g) < 0.1).to(torch.uint8),  # [B, N, H, W]
            "caption": [f"a spike video of digit {int(c)} moving." for c in labels], "label": labels}
    losses = []

    def step():
        losses.append(loop.micro_step(data, scale=1.0, sync=True)["loss"])
        loop.optimizer_step()

    if gpu:
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up: cuDNN algorithm search, allocator
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    sec = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    gmac = gmac_per_clip(cfg.model)  # the visual tower's forward, dense-equivalent (energy hooks, meta device)
    model_tflops = 3 * 2 * gmac * 1e9 * batch / sec / 1e12  # fwd + bwd (2x fwd) FLOPs of the clips per second
    out = {"batch": batch, "clip": [n, h, w], "checkpointing": checkpointing, "timed_steps": steps,
           "sec_per_step": round(sec, 4), "clips_per_s": round(batch / sec, 2),
           ("peak_gpu_mem_gib" if gpu else "peak_host_rss_gib"): round(peak, 2),
           "options": prepare_for_device(model, cfg.train, device),  # what Loop.create set: cudnn, layout, compile
           "fwd_gmac_per_clip": round(gmac, 4), "model_tflops_per_s": round(model_tflops, 4),
           "mfu": round(model_tflops / PEAK, 4) if PEAK else None, "peak_tflops": PEAK, "peak_source": PEAK_SOURCE,
           "losses": [round(x, 4) for x in losses], "loss_finite": all(math.isfinite(x) for x in losses)}
    return out


def attempt(preset: str, batch: int, checkpointing: bool):
    """One measurement at `batch`, or None when it does not fit."""
    try:
        out = train_steps(preset, batch, checkpointing)
    except torch.cuda.OutOfMemoryError:
        out = None
    gc.collect()  # the attempt's model and activations
    if gpu:
        torch.cuda.empty_cache()
    if out is not None and not out["loss_finite"]:
        raise FloatingPointError(f"non-finite loss at batch {batch}: {out['losses']}")
    return out


def largest_batch(preset: str, checkpointing: bool) -> dict:
    """Halve the start batch until it fits, then double it while the double fits (up to GPU_CHECK_MAX_BATCH);
    the figures of the largest batch that fitted, with every batch tried."""
    batch, tried = batches[preset], {}
    best = attempt(preset, batch, checkpointing)
    tried[batch] = best is not None
    while best is None:
        if batch == 1:
            raise torch.cuda.OutOfMemoryError(f"{preset}: batch 1 does not fit")
        batch //= 2
        best = attempt(preset, batch, checkpointing)
        tried[batch] = best is not None
    while batch * 2 <= max_batch and not any(b > batch for b in tried):
        bigger = attempt(preset, batch * 2, checkpointing)
        tried[batch * 2] = bigger is not None
        if bigger is None:
            break
        best, batch = bigger, batch * 2
    best["batches_tried"] = {str(b): ("fits" if ok else "out of memory") for b, ok in sorted(tried.items())}
    return best


for preset in ("spklip-small", "spklip-paper"):
    for ckpt in (False, True):
        name = f"train_bf16/{preset}" + ("/checkpointing" if ckpt else "")
        section(name)(lambda preset=preset, ckpt=ckpt: largest_batch(preset, ckpt))


@section("hsfe_batched_vs_loop")
def _():
    torch.backends.cudnn.allow_tf32 = False  # fp32 convs both ways, so the two outputs agree to 1e-5
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = [bench_loop_vs_batched("spklip-small" if gpu else "spklip-tiny", device, 8 if gpu else 2, 3 if gpu else 1)]
    if gpu:
        rows.append(bench_loop_vs_batched("spklip-paper", device, 2, 2))
    return {"rows": rows}


def spklip_train(name: str, extra: list[str], env: dict | None = None) -> tuple[dict, str, float]:
    """`spklip train` of configs/tiny.yaml on tiny moving digits (built once) with one Ray Train worker, on the GPU
    when there is one (scale.use_gpu=true: Ray Train's TorchConfig then picks nccl): (summary, log, wall seconds)."""
    data, runs = work / "digits", work / "runs"
    py = [sys.executable, "-m", "spklip.cli"]
    if not data.exists():
        subprocess.run([*py, "data", "build", "moving-digits", "--out", str(data), "--digits", "0,1",
                        "--motions", "left,right", "--clips-per-class", "12", "--seed", "0", "--no-progress"],
                       check=True, capture_output=True, text=True, timeout=300)
    sets = [f"data.path={data}", f"train.run_dir={runs}", "scale.num_workers=1",
            f"scale.use_gpu={'true' if gpu else 'false'}", f"scale.cpus_per_worker={2 if gpu else 0.5}",
            "train.epochs=1", "train.max_steps=4", "train.log_every=1", "eval.few_shot_ks=[1]",
            "eval.few_shot_seeds=1", "eval.few_shot_steps=5", "eval.bn_recal_batches=1", "tracking.log_model=false",
            *extra]
    t0 = time.perf_counter()
    run = subprocess.run([*py, "train", "--config", "configs/tiny.yaml", "--name", name,
                          *[a for s in sets for a in ("--set", s)]], capture_output=True, text=True, timeout=400,
                         env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        raise RuntimeError(f"spklip train exited {run.returncode}: {(run.stdout + run.stderr)[-3000:]}")
    summary = json.loads(run.stdout[run.stdout.rindex("\n{") + 1:] if "\n{" in run.stdout else run.stdout)
    return summary, run.stdout + run.stderr, wall


@section("ray_train_gpu_worker")
def _():
    summary, log, wall = spklip_train("gpu-check", [])
    last = summary.get("last_metrics") or {}  # `spklip train`'s summary: the last report's metrics
    return {"wall_s": round(wall, 1), "fit_seconds": summary["seconds"], "step": last.get("step"),
            "val_top1": last.get("val/top1"), "test_top1": (summary.get("test_metrics") or {}).get("test/top1"),
            "use_gpu": gpu,
            "backend": "nccl (Ray Train TorchConfig: backend None + GPU workers)" if gpu else "gloo",
            "nccl_in_log": bool(re.search(r"nccl", log, re.I))}


@section("ray_train_gpu_worker_crash_resume")
def _():
    """The GPU resume path: rank 0 kills its own process at step 5 (spklip.train.faults), Ray Train restarts the
    worker group, and the new GPU worker resumes from the step-3 checkpoint (its RNG states must stay on the CPU)."""
    marker = work / "crashed"
    summary, _, wall = spklip_train("gpu-check-crash", ["train.epochs=100", "train.max_steps=8",  # 8 steps: 2 epochs
                                                        "train.checkpoint_every=3", "scale.max_failures=1"],
                                    env={"SPKLIP_FAULT_CRASH_AT_STEP": "5", "SPKLIP_FAULT_MARKER": str(marker)})
    step = (summary.get("last_metrics") or {}).get("step")
    restarted_at = (summary.get("time") or {}).get("first_step")  # the restarted worker's first step
    if not marker.exists() or step != 8 or restarted_at != 4:
        raise RuntimeError(f"expected a crash at step 5, a worker restarted at step 4 (from the step-3 checkpoint) "
                           f"and a run ending at step 8: crashed {marker.exists()}, restarted at {restarted_at}, "
                           f"last step {step}")
    return {"wall_s": round(wall, 1), "crashed_at_step": int(marker.read_text()), "restarted_at_step": restarted_at,
            "last_step": step}


@section("sweep_fractional_gpu")
def _():
    """A smoke sweep of one-worker spklip-tiny trials at scale.gpus_per_worker=0.25 (four trials on one GPU at once;
    on the CPU: two trials at 0.5 CPU, the same code without GPUs); the most trials that ran at once, from their
    MLflow child runs' start and end times."""
    import mlflow

    runs = work / "runs-sweep"
    n = 4 if gpu else 2
    sets = [f"data.path={work / 'digits'}", f"train.run_dir={runs}", "scale.cpus_per_worker=0.5",
            f"scale.use_gpu={'true' if gpu else 'false'}", "scale.gpus_per_worker=0.25", "tracking.log_model=false"]
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "sweeps/hsfe_ablation.py", "--smoke-test", "--num-samples", str(n),
                          "--name", "gpu-fraction", *[a for x in sets for a in ("--set", x)]],
                         capture_output=True, text=True, timeout=400)
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        raise RuntimeError(f"the sweep exited {run.returncode}: {(run.stdout + run.stderr)[-3000:]}")
    client = mlflow.MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    exp = client.get_experiment_by_name("hsfe-ablation")
    trials = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("mlflow.parentRunId")]
    events = sorted([(r.info.start_time, 1) for r in trials] + [(r.info.end_time or r.info.start_time, -1)
                                                                 for r in trials])  # an end before a start at a tie
    at_once = peak = 0
    for _, change in events:
        at_once += change
        peak = max(peak, at_once)
    if len(trials) != n or peak < 2:
        raise RuntimeError(f"expected {n} trials, at least 2 at once: {len(trials)} trials, at most {peak} at once")
    return {"wall_s": round(wall, 1), "trials": len(trials), "most_at_once": peak,
            "gpus_per_worker": 0.25 if gpu else None}


@section("simulator_gpu")
def _():
    if "torch" not in inspect.getsource(simulate):
        return {"skipped": "spklip.data.simulate is numpy only (no torch path): nothing to run on the GPU"}
    raise RuntimeError("spklip.data.simulate now has torch code: give it a GPU timing in this section")


report["failed_sections"] = failed
text = json.dumps(report, indent=1, default=str)
out = os.environ.get("OUT")
if out:
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "gpu_check.json").write_text(text + "\n")
    print(f"gpu_check: wrote {Path(out) / 'gpu_check.json'}", file=sys.stderr)
else:
    print(text)
sys.exit(1 if failed else 0)
PY
