"""Running a build's work, part by part: the `Mapper` type and the in-process mapper (`serial_map`).

A builder splits its work into parts a worker can make alone (a moving-digits class, one video, one recording) and
maps a picklable function over them. Every mapper yields the results in the parts' order, so the shards a parallel
build writes (`spklip.runtime.parallel.ray_mapper`, a Ray Data pipeline) are the same files, with the same
fingerprint, as a one-process build (every clip's randomness comes from its own seed, never from the order or the
process that makes it).
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")
Mapper = Callable[[Callable[[T], Iterable[R]], Sequence[T]], Iterator[R]]  # (fn: part -> results, parts) -> results


def serial_map(fn: Callable[[T], Iterable[R]], parts: Sequence[T]) -> Iterator[R]:
    """Every result of `fn` over `parts`, in order, made in this process (lazily: one part at a time)."""
    for part in parts:
        yield from fn(part)
