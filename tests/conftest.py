"""Shared fixtures: one Ray session for the whole test run (``ray_session``), started only if none is running."""

import os
from collections import Counter

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance (2 CPUs, no dashboard, small object store) shared by every test that asks for it.

    Safe to use from any module: if Ray is already initialised (by another fixture or test) it is reused and left
    running; only an instance started here is shut down at the end of the session.
    """
    import ray

    from spklip.runtime.rayenv import init_local

    started = False
    if not ray.is_initialized():
        for attempt in range(3):
            try:
                init_local(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20,
                           configure_logging=False)  # loopback only, token auth
                break
            except Exception as e:  # Ray waits a fixed 30 s for its raylet; a saturated 2-core CI box can miss it
                ray.shutdown()
                if attempt == 2 or "timed out during startup" not in str(e):
                    raise
        started = True
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False  # progress bars flood captured logs
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture
def no_ray(monkeypatch):
    """Fail a test whose command would start Ray (it should have stopped before: bad input, a held folder...)."""
    from spklip.runtime import launcher

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started")
    monkeypatch.setattr(launcher, "ensure_ray", refuse)


@pytest.fixture
def built_datasets(monkeypatch):
    """How many training datasets this process builds during the test, by kind (``streaming``, ``in_memory``): the
    two builders of `spklip.runtime.reader` wrapped to count their calls."""
    from spklip.runtime import reader as train_data

    built: Counter = Counter()

    def counting(kind, build):
        def wrapped(cfg):
            built[kind] += 1
            return build(cfg)
        return wrapped
    monkeypatch.setattr(train_data, "streaming_dataset", counting("streaming", train_data.streaming_dataset))
    monkeypatch.setattr(train_data, "in_memory_dataset", counting("in_memory", train_data.in_memory_dataset))
    return built
