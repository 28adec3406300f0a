"""Reading a user's ``.npy`` file (``spklip data simulate INPUT.npy``, ``spklip energy --spikes FILE.npy``): one line
naming the file for anything that is not a non-empty array of the expected rank, never numpy's bare exception text.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class NpyError(ValueError):
    """A ``.npy`` file that cannot be used: unreadable, pickled, empty, or of the wrong rank; names the file."""


def load_npy(path: str | os.PathLike, ranks: tuple[int, ...], expected: str, *, mmap: bool = True) -> np.ndarray:
    """Load `path` (memory-mapped unless ``mmap=False``) and check it holds a non-empty array of one of `ranks`.

    Args:
        path: the ``.npy`` file.
        ranks: the allowed numbers of dimensions (e.g. ``(3, 4)`` for frames ``[T, H, W(, 3)]``).
        expected: the expected layout for the message, e.g. ``"[T, H, W] or [T, H, W, 3] frames"``.
        mmap: memory-map the data instead of reading it.

    Raises:
        NpyError: not a readable ``.npy`` file (truncated, pickled objects, not numpy at all), an empty array, or
            one of another rank; the message names `path` and is one line.
        FileNotFoundError: `path` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        text = " ".join(str(e).split()) or type(e).__name__
        raise NpyError(f"{path}: not a readable .npy array ({text}); expected {expected}") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        arr.close()
        raise NpyError(f"{path}: not a single .npy array; expected {expected}")
    if arr.ndim not in ranks:
        raise NpyError(f"{path}: a {arr.ndim}-D array of shape {list(arr.shape)}; expected {expected}")
    if arr.size == 0:
        raise NpyError(f"{path}: an empty array of shape {list(arr.shape)}; expected {expected}")
    return arr
