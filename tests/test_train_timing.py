"""`spklip.train.timing`: the start-up timeline and the run's time breakdown add up (plain Python, no Ray)."""

import time

import pytest

from spklip.train.timing import (PHASES, RunTiming, Timeline, epoch_metrics, process_started_at, read_timing,
                                 startup_metrics)


def test_timeline_phases_add_up_to_the_last_milestone():
    tl = Timeline(start=time.time() - 1.0)
    tl.mark("config")
    time.sleep(0.05)
    tl.mark("import")
    tl.mark("config")  # a repeated milestone adds up
    phases = tl.phases()
    assert list(phases) == ["config", "import"]
    assert phases["config"] >= 1.0 and phases["import"] >= 0.05
    assert sum(phases.values()) == pytest.approx(tl.marks[-1][1] - tl.start)
    copy = tl.copy()
    copy.mark("first_step")
    assert len(tl.marks) == 3  # a copy's marks are its own
    total, metrics = startup_metrics(copy)
    assert total >= 1.05 and metrics["time/startup_s"] == total
    assert sum(v for k, v in metrics.items() if k.startswith("time/startup/")) == pytest.approx(total, abs=0.05)


def test_run_timing_fractions_and_file(tmp_path):
    timing = RunTiming(startup_s=4.0, startup={"config": 1.0, "first_step": 3.0})
    timing.add_epoch({"data": 1.0, "step": 6.0, "eval": 2.0, "bn": 0.5, "checkpoint": 0.5}, wall_s=14.0)
    timing.add_epoch({"data": 1.0, "step": 6.0, "eval": 2.0, "bn": 0.5, "checkpoint": 0.5}, wall_s=24.0)
    assert timing.totals["step"] == 12.0 and timing.epochs == 2
    assert timing.step_fraction == pytest.approx(0.5) and timing.model_fraction == pytest.approx(17 / 24)
    assert read_timing(tmp_path) is None
    timing.write(tmp_path)
    saved = read_timing(tmp_path)
    assert saved["totals"] == timing.totals and saved["model_fraction"] == pytest.approx(17 / 24)
    assert saved["startup_s"] == 4.0 and not list(tmp_path.glob("*.tmp"))


def test_epoch_metrics_name_every_phase():
    m = epoch_metrics({"step": 3.0, "data": 1.0}, epoch_s=5.0)
    assert set(m) == {f"time/{p}_s" for p in PHASES} | {"time/epoch_s", "time/other_s"}
    assert m["time/eval_s"] == 0.0 and m["time/other_s"] == pytest.approx(1.0)


def test_process_start_is_before_now():
    started = process_started_at()
    assert started is None or started <= time.time()
