"""`--smoke-test` data: a tiny moving-digits dataset built on first use, so a smoke sweep runs on a fresh machine."""

from __future__ import annotations

from pathlib import Path

from spklip.config import ExperimentConfig, apply_overrides

# 3 digits x 3 motions x 6 clips: 54 clips (train 32, val 8, test 8, one unseen class), built in ~8 s.
SMOKE_BUILD = ["--digits", "0,1,2", "--motions", "left,right,up", "--clips-per-class", "6", "--seed", "0",
               "--no-progress"]


def ensure_smoke_data(cfg: ExperimentConfig) -> ExperimentConfig:
    """Use ``data.path`` if it holds shards; otherwise build ``<run_dir>/data/smoke-digits`` (once) and point to it.

    The clip shape comes from the config's model preset, so data and model agree.
    """
    if any(Path(cfg.data.path).glob("**/*.parquet")):
        return cfg
    out = Path(cfg.train.run_dir) / "data" / "smoke-digits"
    if not any(out.glob("**/*.parquet")):
        build_smoke_data(out, cfg.model_preset)
    return apply_overrides(cfg, {"data.path": str(out)})


def build_smoke_data(out: str | Path, preset: str = "spklip-tiny") -> Path:
    """Build the smoke-test moving-digits shards into `out` with the clip shape of model `preset`."""
    from spklip.cli import main as cli_main

    code = cli_main(["data", "build", "moving-digits", "--out", str(out), "--model", str(preset), *SMOKE_BUILD])
    if code != 0:
        raise RuntimeError(f"building the smoke-test dataset in {out} failed (exit {code})")
    return Path(out)
