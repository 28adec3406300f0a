"""HSFE ablation: which sub-block layout and extractor switches matter ("why five sub-blocks?", with data).

Swept: number of sub-blocks K (1-9 or "auto"), window radius r, step s ("auto" = spread the K windows evenly), MTF
branches M and channel step c, spatial attention, photon conservation, the temporal encoder's positional embedding
and pool (mean, concat, cls). The space is conditional so that every sample is a valid layout on the base model's
clip length N:
  * K windows of 2r+1 planes must fit with step >= 1, so r <= (N - K) / 2;
  * K = 1 is one centred window (no step); K = "auto" samples the step and takes as many windows as fit (at most 9);
  * M branches shrink the window by 2c per branch, so M <= (2r+1 - 1) / (2c) + 1.
Metric: validation prompt top-1 (closed-set classification by text prompts), maximised; ASHA stops weak trials.

    python sweeps/hsfe_ablation.py --smoke-test            # minutes on 2 CPUs
    python sweeps/hsfe_ablation.py --num-samples 40 --set data.path=runs/data/moving-digits
    python sweeps/hsfe_ablation.py --first model.hsfe.num_subblocks=1,3,5 --scheduler fifo   # K alone (make demo)
"""

import math

from spklip.runtime.tune.sweep import SweepSpec, main

K_CHOICES = [1, 2, 3, 4, 5, 6, 7, 8, 9, "auto"]


def space(trial, base):
    """Define-by-run HSFE space over dotted config keys (see spklip.runtime.tune.space)."""
    n = base.model.num_planes
    k = trial.suggest_categorical("model.hsfe.num_subblocks", K_CHOICES)
    r = trial.suggest_int("model.hsfe.radius", 1, max(1, (n - (1 if k == "auto" else k)) // 2))
    w = 2 * r + 1
    fixed = {}
    if k == "auto":  # step decides K = (N - w) // s + 1; keep K <= 9
        trial.suggest_int("model.hsfe.step", max(1, math.ceil((n - w) / 8)), max(1, n - w))
    elif k == 1:
        fixed["model.hsfe.step"] = "auto"  # one centred window; a step means nothing
    elif trial.suggest_categorical("_step_mode", ["auto", "fixed"]) == "auto":
        fixed["model.hsfe.step"] = "auto"
    else:
        trial.suggest_int("model.hsfe.step", 1, (n - w) // (k - 1))
    c = trial.suggest_int("model.hsfe.channel_step", 1, 3)
    trial.suggest_int("model.hsfe.num_branches", 1, min(6, (w - 1) // (2 * c) + 1))
    trial.suggest_categorical("model.hsfe.spatial_attention", [True, False])
    trial.suggest_categorical("model.hsfe.photon_conservation", [False, True])
    trial.suggest_categorical("model.temporal.pos_embed", [True, False])
    trial.suggest_categorical("model.temporal.pool", ["mean", "concat", "cls"])
    return fixed


SPEC = SweepSpec(
    name="hsfe-ablation",
    description=__doc__.splitlines()[0],
    space=space,
    metrics=(("val/top1", "max"),),
    # selected on val; the result is each run's best-on-val checkpoint on the test split (and zero-shot)
    report_metrics=(("test/top1", "max"), ("test/zeroshot/top1", "max"), ("test/zeroshot/factor/*", "max")),
    # 600 optimiser steps per trial (50 epochs of the demo data): what spklip-tiny needs to learn the direction of
    # motion with augmentation (docs/training.md); ASHA still stops weak trials at their evaluations (every 100 steps,
    # eval.every_steps)
    base={"model_preset": "spklip-tiny", "train.epochs": 10000, "train.max_steps": 600, "scale.num_workers": 0,
          "tracking.log_model": False, "optim.lr": 1e-3, "optim.warmup_steps": 10, "eval.few_shot_ks": [1],
          "eval.few_shot_seeds": 1},
    smoke={"train.epochs": 1, "train.max_steps": 4, "data.batch_size": 8, "eval.energy": False,
           "scale.max_failures": 0},
    num_samples=24,
    smoke_samples=2,
)

if __name__ == "__main__":
    raise SystemExit(main(SPEC))
