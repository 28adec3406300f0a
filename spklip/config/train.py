"""Training-side config: optimiser, loop, scaling (Ray Train), evaluation and tracking (MLflow)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from spklip.config.base import MAX_NAME_CHARS, ConfigError, check_length, check_nonempty, check_range


RUN_NAME_MAX_BYTES = 200  # a run name is a folder name (255 bytes at most), with room for Ray's suffixes


@dataclass(frozen=True)
class OptimCfg:
    lr: float = 3e-4
    weight_decay: float = 0.05
    betas: tuple[float, ...] = (0.9, 0.98)
    warmup_steps: int = 50  # linear warmup, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global grad norm (0 disables)
    accum_steps: int = 1  # gradient accumulation steps per optimiser step

    def __post_init__(self):
        check_range("optim.lr", self.lr, 0, low_open=True)
        check_range("optim.weight_decay", self.weight_decay, 0)
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas must hold two values, got {list(self.betas)}")
        for i, beta in enumerate(self.betas):
            check_range(f"optim.betas[{i}]", beta, 0, 1, high_open=True)
        check_range("optim.warmup_steps", self.warmup_steps, 0)
        check_range("optim.min_lr_ratio", self.min_lr_ratio, 0, 1)
        check_range("optim.grad_clip", self.grad_clip, 0)
        check_range("optim.accum_steps", self.accum_steps, 1)


@dataclass(frozen=True)
class TrainCfg:
    epochs: int = 10
    max_steps: int = 0  # stop after this many optimiser steps (0: run all epochs)
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    log_every: int = 10  # steps between training-metric reports
    checkpoint_every: int = 0  # steps between extra, unscored checkpoints (0: only those of the evaluations,
    # `eval.every_steps`)
    keep_checkpoints: int = 2  # best-k checkpoints kept by metric
    metric: str = "val/top1"  # metric that ranks checkpoints and sweep trials
    metric_mode: Literal["max", "min"] = "max"
    run_dir: str = "runs"  # local root for Ray storage, MLflow sqlite file and artifacts
    # an optimiser step whose loss or gradient norm is NaN/inf: "stop" the run (one line naming the step, the
    # weights left as they were), or "skip" it (no update; counted as train/skipped_steps)
    nonfinite: Literal["stop", "skip"] = "stop"
    nonfinite_skips: int = 20  # skip: stop anyway after this many consecutive skipped steps (a diverged run)
    # CUDA throughput (spklip/train/loop.py, `prepare_for_device`; cudnn.benchmark and pinned, non-blocking batch
    # copies are always on with a CUDA device). channels_last: the visual tower's conv weights and the HSFE maps in
    # NHWC, the fast layout of bf16 convs on tensor cores; auto = on CUDA only, true also on CPU, false never (the
    # model's own model.hsfe.memory_format then applies). ANN visual towers only (fsve.variant=none)
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool = False  # torch.compile the visual tower's training forward (evaluation stays eager); the first
    # steps pay the compilation (minutes at the paper's size on a CPU)

    def __post_init__(self):
        check_range("train.epochs", self.epochs, 1)
        check_range("train.max_steps", self.max_steps, 0)
        check_range("train.seed", self.seed, 0)  # numpy seed sequences take no negative entropy
        check_range("train.log_every", self.log_every, 1)
        check_range("train.checkpoint_every", self.checkpoint_every, 0)
        check_range("train.keep_checkpoints", self.keep_checkpoints, 1)
        check_nonempty("train.metric", self.metric)
        check_length("train.metric", self.metric, MAX_NAME_CHARS)  # an MLflow metric key
        check_nonempty("train.run_dir", self.run_dir)
        check_range("train.nonfinite_skips", self.nonfinite_skips, 1)


@dataclass(frozen=True)
class ScaleCfg:
    num_workers: int = 1  # Ray Train workers (0: local mode, the loop in this process, without Ray)
    use_gpu: bool | Literal["auto"] = "auto"  # true/false (YAML's yes/no read as booleans), or auto: GPUs if any
    cpus_per_worker: float = 0.5  # fractional so that Ray Data keeps a CPU on small machines
    # GPUs each worker holds when it uses GPUs: a fraction (0.25) packs that many workers (e.g. sweep trials of a
    # small preset) on one GPU; above 1 a whole number (Ray's rule)
    gpus_per_worker: float = 1.0
    # torch intra-op threads of each worker (``torch.set_num_threads``); 0 = auto: the worker's CPU share,
    # floor(cpus_per_worker) and at least 1 (what Ray reserves for it; give one worker all N cores of a machine with
    # cpus_per_worker=N), and in local mode (num_workers=0) every CPU the process may use
    threads_per_worker: int = 0
    max_failures: int = 2  # worker restarts allowed; each resumes from the last checkpoint
    address: str = ""  # Ray cluster address ("" = RAY_ADDRESS or an in-process Ray); needs num_workers >= 1
    placement: Literal["PACK", "SPREAD"] = "PACK"  # Train workers' placement group: PACK fills few nodes (Ray's
    # default), SPREAD puts one worker per node where it can (best effort: what is left takes them all)

    def __post_init__(self):
        check_range("scale.num_workers", self.num_workers, 0)
        check_range("scale.cpus_per_worker", self.cpus_per_worker, 0, low_open=True)
        check_range("scale.threads_per_worker", self.threads_per_worker, 0)
        check_range("scale.gpus_per_worker", self.gpus_per_worker, 0, low_open=True)
        if self.gpus_per_worker > 1 and self.gpus_per_worker != int(self.gpus_per_worker):
            raise ConfigError(f"scale.gpus_per_worker must be at most 1 or a whole number (Ray cannot split a "
                              f"worker over GPUs), got {self.gpus_per_worker}")
        check_range("scale.max_failures", self.max_failures, -1)  # Ray's FailureConfig: -1 retries forever
        if self.address and self.num_workers == 0:  # local mode never connects: the cluster would go unused
            raise ConfigError(f"scale.address={self.address} names a Ray cluster, but scale.num_workers=0 (local "
                              f"mode) runs the loop in this process: set scale.num_workers to 1 or more")


@dataclass(frozen=True)
class EvalCfg:
    # When to evaluate (precise BN, the protocol below, then a checkpoint scored by it): after every N-th optimiser
    # step (every_steps; 0 = never in between), or, when every_epochs > 0, after every N-th epoch instead; the run's
    # last step always. 100 steps: 6 evaluations in the demo's 600-step runs (each costs ~20-40 optimiser steps of
    # spklip-tiny on a CPU), whatever the dataset's size
    every_steps: int = 100
    every_epochs: int = 0
    few_shot_ks: tuple[int, ...] = (1, 2, 4, 8, 16)
    few_shot_seeds: int = 5  # episodes per k
    retrieval_ks: tuple[int, ...] = (1, 5, 10)
    few_shot_steps: int = 100  # full-batch AdamW steps of the prompt-initialised linear head
    few_shot_lr: float = 1e-2  # learning rate of that head
    few_shot_head: Literal["mix", "linear"] = "mix"  # mix: prompt + support prototypes (spklip/eval/fewshot.py)
    few_shot_prior: float = 1.0  # mix: the prompt embedding counts as this many support clips
    batch_size: int = 32  # clips per forward pass during evaluation
    energy: bool = True  # log energy per clip (spklip.model.energy) beside accuracy
    train_clips: int = 64  # also score prompt top-1 on this many random (unaugmented) training clips each epoch
    # (``trainset/top1``), so over-fitting shows as train >> val; 0 = off
    bn_recal_batches: int = 16  # precise BN: before each evaluation, re-estimate BatchNorm statistics on this many
    # random training micro-batches (spklip/eval/precise_bn.py); 0 = off (the running averages)

    def __post_init__(self):
        for key in ("few_shot_ks", "retrieval_ks"):
            for i, k in enumerate(getattr(self, key)):
                check_range(f"eval.{key}[{i}]", k, 1)
        check_range("eval.every_steps", self.every_steps, 0)
        check_range("eval.every_epochs", self.every_epochs, 0)
        check_range("eval.few_shot_seeds", self.few_shot_seeds, 1)
        check_range("eval.few_shot_steps", self.few_shot_steps, 0)
        check_range("eval.few_shot_lr", self.few_shot_lr, 0, low_open=True)
        check_range("eval.few_shot_prior", self.few_shot_prior, 0)
        check_range("eval.batch_size", self.batch_size, 1)
        check_range("eval.train_clips", self.train_clips, 0)
        check_range("eval.bn_recal_batches", self.bn_recal_batches, 0)


@dataclass(frozen=True)
class TrackingCfg:
    enabled: bool = True
    uri: str = ""  # "" -> MLFLOW_TRACKING_URI, else sqlite:///<run_dir>/mlflow.db
    experiment: str = "spklip"
    run_name: str = ""
    log_model: bool = True  # log the best checkpoint as an MLflow logged model (safetensors + config, no pickle)
    # register the best checkpoint's model under this name (aliases "best" and "latest": models:/NAME@best);
    # "" = no registration for `spklip train`; a sweep registers its best trial as the sweep's name by default
    register_as: str = ""
    system_metrics: bool = True  # MLflow's system metrics (CPU, memory, disk, network; GPU when present)
    system_metrics_interval_s: float = 10.0  # seconds between samples

    def __post_init__(self):
        check_nonempty("tracking.experiment", self.experiment)
        check_length("tracking.experiment", self.experiment, MAX_NAME_CHARS)  # MLflow names: refused after start
        check_length("tracking.register_as", self.register_as, MAX_NAME_CHARS)
        check_length("tracking.run_name", self.run_name, MAX_NAME_CHARS, max_bytes=RUN_NAME_MAX_BYTES)
        check_range("tracking.system_metrics_interval_s", self.system_metrics_interval_s, 0, low_open=True)
