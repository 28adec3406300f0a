"""`--smoke-test` data: a tiny moving-digits dataset built on first use, so a smoke sweep runs on a fresh machine."""

from __future__ import annotations

from pathlib import Path

from spklip.config import ExperimentConfig, apply_overrides

SMOKE_CLIPS_PER_CLASS = 4


def ensure_smoke_data(spec, cfg: ExperimentConfig) -> ExperimentConfig:
    """Use ``data.path`` if it holds shards; otherwise build ``<run_dir>/data/smoke-digits`` (once) and point to it.

    The clip shape comes from the sweep's base model preset, so data and model agree.
    """
    if (Path(cfg.data.path) / "_metadata.json").exists() or any(Path(cfg.data.path).glob("**/*.parquet")):
        return cfg
    from spklip.cli import main as cli_main

    out = Path(cfg.train.run_dir) / "data" / "smoke-digits"
    if not any(out.glob("**/*.parquet")):
        preset = spec.base.get("model_preset", cfg.model_preset)
        code = cli_main(["data", "build", "moving-digits", "--out", str(out), "--model", str(preset),
                         "--clips-per-class", str(SMOKE_CLIPS_PER_CLASS), "--seed", "0"])
        if code != 0:
            raise RuntimeError(f"building the smoke-test dataset in {out} failed (exit {code})")
    return apply_overrides(cfg, {"data.path": str(out)})
