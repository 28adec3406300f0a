"""FSVE sweep: accuracy against energy per clip for the full-spiking visual encoder (two objectives, Pareto front).

Swept: FSVE variant (spiking backbone + temporal encoder, or everything spiking), SNN time steps T, membrane time
constant tau, firing threshold, surrogate-gradient function, reset mode, neuron (LIF / PLIF), residual form, and
the per-time-step loss (TET); docs/training.md measures them one at a time. Objectives: validation prompt top-1
(maximised) and energy per clip in mJ (45 nm MAC/AC accounting, minimised), searched with Optuna's NSGA-II
multi-objective sampler; the report adds the Pareto front as a plot. No early stopping (ASHA ranks one metric).

    python sweeps/fsve_sweep.py --smoke-test
    python sweeps/fsve_sweep.py --num-samples 32 --set data.path=runs/data/moving-digits
"""

from spklip.runtime.tune.sweep import SweepSpec, main


def space(trial, base):
    """Define-by-run FSVE space over dotted config keys (every combination is valid)."""
    trial.suggest_categorical("model.fsve.variant", ["snn-backbone", "full-snn"])
    trial.suggest_int("model.fsve.time_steps", 1, 6)
    trial.suggest_float("model.fsve.tau", 1.5, 4.0)
    trial.suggest_float("model.fsve.v_threshold", 0.25, 1.5)
    trial.suggest_categorical("model.fsve.surrogate", ["atan", "sigmoid", "rect"])
    trial.suggest_categorical("model.fsve.reset", ["hard", "soft"])
    trial.suggest_categorical("model.fsve.neuron", ["lif", "plif"])
    trial.suggest_categorical("model.fsve.residual", ["current", "sew", "membrane"])
    trial.suggest_categorical("model.fsve.loss_per_step", [False, True])


SPEC = SweepSpec(
    name="fsve-sweep",
    description=__doc__.splitlines()[0],
    space=space,
    metrics=(("val/top1", "max"), ("energy/energy_per_clip_mj", "min")),
    report_metrics=(("test/top1", "max"),),  # the Pareto front is chosen on val; its accuracy on test beside it
    base={"model_preset": "spklip-tiny-snn-backbone", "train.epochs": 10000, "train.max_steps": 600,
          "scale.num_workers": 0, "tracking.log_model": False, "optim.lr": 3e-3, "optim.warmup_steps": 10,
          "eval.energy": True,
          "eval.few_shot_ks": [1], "eval.few_shot_seeds": 1},
    smoke={"train.epochs": 1, "train.max_steps": 4, "data.batch_size": 8, "scale.max_failures": 0},
    scheduler="fifo",
    num_samples=24,
    smoke_samples=2,
)

if __name__ == "__main__":
    raise SystemExit(main(SPEC))
