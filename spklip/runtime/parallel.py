"""Running a build's parts as a Ray Data pipeline (`ray_mapper`), the parallel twin of
`spklip.data.parallel.serial_map`.

The pipeline: ``ray.data.from_items`` (one block per part) -> ``map_batches`` (the part's work: decode with
PyAV, simulate, check, and pack each clip into its shard row, `spklip.data.build.part_rows`; Ray tasks of one CPU,
at most ``workers`` at once) -> ``iter_batches`` in order into spklip's own shard writer in this process
(`shards.write_rows`: it only appends the ready rows and writes the full files in a few background threads, at
most that many in flight, in a temporary folder, renamed at the end, with the manifest). Parts and results travel
as pickled bytes in a binary column, so typed objects (`Row`, `Skipped`) cross the boundary whole.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import pickle
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import ray
import ray.data

from spklip.data.parallel import Mapper
from spklip.runtime.rayenv import connect, init_local

T = TypeVar("T")
R = TypeVar("R")


@contextlib.contextmanager
def ray_mapper(*, workers: int | None = None, address: str | None = None) -> Iterator[Mapper]:
    """A mapper that runs each part as a Ray task through Ray Data, results in order.

    Joins the Ray instance already initialised in this process, else the cluster at `address` (``auto``, or
    ``ray://...``), else starts a local one with `workers` CPUs; only an instance started here is shut down.
    `workers` also caps the tasks running at once (None: as many as the cluster has CPUs).
    """
    started = not ray.is_initialized()
    if started and address:
        connect(address, configure_logging=False)
    elif started:
        init_local(num_cpus=workers, include_dashboard=False, configure_logging=False)  # loopback, token auth
    try:
        yield functools.partial(_ray_map, workers=workers)
    finally:
        if started:
            ray.shutdown()


@dataclass(frozen=True)
class _PartError:
    """A part's own exception (a bad video ...), carried back as a result: Ray's wrappers lose its type and text."""

    error: BaseException


def _run_part(batch: dict[str, np.ndarray], fn: Callable[[Any], Iterable[Any]]) -> dict[str, np.ndarray]:
    """map_batches body: one pickled part in, its pickled results (or its error) out."""
    try:
        results = [pickle.dumps(r, protocol=5) for blob in batch["part"] for r in fn(pickle.loads(blob))]
    except Exception as e:  # noqa: BLE001 - raised again in the driver, as a one-process build raises it
        try:
            results = [pickle.dumps(_PartError(e), protocol=5)]
        except Exception:  # noqa: BLE001 - an exception that does not pickle: its text
            results = [pickle.dumps(_PartError(RuntimeError(f"{type(e).__name__}: {e}")), protocol=5)]
    return {"result": np.array(results, dtype=object)}


def _ray_map(fn: Callable[[T], Iterable[R]], parts: Sequence[T], *, workers: int | None) -> Iterator[R]:
    if not parts:
        return
    ctx = ray.data.DataContext.get_current()
    log = logging.getLogger("ray.data")
    saved = ctx.execution_options.preserve_order, ctx.enable_progress_bars, log.level
    ctx.execution_options.preserve_order = True  # results in the parts' order: the same shard files as serially
    ctx.enable_progress_bars = False  # the build shows one bar, over the clips written
    log.setLevel(logging.ERROR)  # not the execution plan and start/finish lines of every dataset
    try:
        ds = ray.data.from_items([{"part": pickle.dumps(p, protocol=5)} for p in parts],
                                 override_num_blocks=len(parts))
        ds = ds.map_batches(_run_part, fn_kwargs={"fn": fn}, batch_size=1, batch_format="numpy", num_cpus=1,
                            compute=ray.data.TaskPoolStrategy(size=workers) if workers else None)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for blob in batch["result"]:
                result = pickle.loads(blob)
                if isinstance(result, _PartError):
                    raise result.error
                yield result
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars, _ = saved
        log.setLevel(saved[2])
