"""The SpikeCV ``.dat`` spike-stream format: read, write and stream it without loading whole files.

Layout (SpikeCV ``load_dat.py`` / ``save_dat.py``): no header; each spike plane is ``H*W/8`` bytes; the plane is
stored vertically flipped (the camera's inverted image: the first bytes hold the *bottom* row of the upright
image), row-major, 8 pixels per byte with the first pixel in the lowest bit (``numpy.packbits(bitorder="little")``).
H and W are not stored; the caller gives them. `read_dat` returns upright planes, `write_dat` flips them back, so
the two are exact inverses and files interoperate with SpikeCV/Spike-Zoo readers at their default ``flipud=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from spklip.outdir import atomic_file


class DatFormatError(ValueError):
    """A ``.dat`` file or a spike array does not fit the format (size, shape or values)."""


def plane_bytes(height: int, width: int) -> int:
    """Bytes per spike plane of an ``height x width`` sensor; H*W must be a multiple of 8."""
    if height <= 0 or width <= 0:
        raise DatFormatError(f"height and width must be positive, got {height}x{width}")
    if (height * width) % 8:
        raise DatFormatError(f"H*W = {height}*{width} = {height * width} is not divisible by 8: a .dat plane packs "
                             "8 pixels per byte and has no padding")
    return height * width // 8


def dat_num_planes(path: str | os.PathLike, height: int, width: int) -> int:
    """Number of planes in a ``.dat`` file; a size that is not a whole number of planes is an error."""
    nbytes = plane_bytes(height, width)
    size = Path(path).stat().st_size
    if size % nbytes:
        raise DatFormatError(f"{path}: {size} bytes is not a whole number of {height}x{width} planes "
                             f"({nbytes} bytes each); wrong height/width, or a truncated or headered file?")
    return size // nbytes


def unpack_planes(packed: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[n, H*W/8]`` file bytes -> upright ``[n, H, W]`` uint8 spikes in {0, 1}."""
    n = packed.shape[0]
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=1, bitorder="little")  # [n, H*W]
    return np.ascontiguousarray(bits.reshape(n, height, width)[:, ::-1, :])  # stored bottom-up -> upright


def pack_planes(spikes: np.ndarray) -> np.ndarray:
    """Upright ``[n, H, W]`` spikes in {0, 1} -> ``[n, H*W/8]`` file bytes (flipped, LSB first)."""
    spikes = check_spikes(spikes)
    n, height, width = spikes.shape
    plane_bytes(height, width)
    flat = spikes[:, ::-1, :].reshape(n, height * width)  # upright -> bottom-up rows, [n, H*W]
    return np.packbits(flat, axis=1, bitorder="little")  # [n, H*W/8]


def check_spikes(spikes: np.ndarray) -> np.ndarray:
    """Validate a ``[N, H, W]`` spike array (bool or integers in {0, 1}) and return it as uint8."""
    arr = np.asarray(spikes)
    if arr.ndim != 3:
        raise DatFormatError(f"spikes must be [N, H, W], got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.view(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise DatFormatError(f"spikes must be bool or integer 0/1, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        raise DatFormatError(f"spikes must be 0 or 1, found values in [{arr.min()}, {arr.max()}]")
    return arr.astype(np.uint8, copy=False)


def read_dat(path: str | os.PathLike, height: int, width: int, *, start: int = 0,
             count: int | None = None) -> np.ndarray:
    """Read planes ``[start, start+count)`` of a ``.dat`` file as upright ``[n, H, W]`` uint8 spikes.

    The file is memory-mapped, so reading a block of a multi-GB recording touches only that block.

    Args:
        path: the ``.dat`` file.
        height: sensor rows H (not stored in the file).
        width: sensor columns W; H*W must be divisible by 8.
        start: first plane to read.
        count: planes to read (default: to the end of the file).

    Returns:
        uint8 array ``[n, H, W]`` with values in {0, 1}.

    Raises:
        DatFormatError: H*W not divisible by 8, a file size that is not a whole number of planes, or a
            requested range outside the file.
    """
    total = dat_num_planes(path, height, width)
    count = total - start if count is None else count
    if start < 0 or count < 0 or start + count > total:
        raise DatFormatError(f"{path}: planes [{start}, {start + count}) requested but the file holds {total}")
    if count == 0:
        return np.zeros((0, height, width), dtype=np.uint8)
    raw = np.memmap(path, dtype=np.uint8, mode="r", shape=(total, plane_bytes(height, width)))
    return unpack_planes(raw[start:start + count], height, width)


def iter_dat(path: str | os.PathLike, height: int, width: int, *, chunk: int = 256) -> Iterator[np.ndarray]:
    """Yield a ``.dat`` file as consecutive ``[<=chunk, H, W]`` blocks (bounded memory for long recordings)."""
    total = dat_num_planes(path, height, width)
    for start in range(0, total, chunk):
        yield read_dat(path, height, width, start=start, count=min(chunk, total - start))


def write_dat(path: str | os.PathLike, spikes: np.ndarray | Iterable[np.ndarray]) -> int:
    """Write spikes to a ``.dat`` file; returns the number of planes written.

    Args:
        path: destination; written in a temporary folder beside it first and renamed (`spklip.outdir.atomic_file`),
            so a failure leaves no partial file and nothing else is touched.
        spikes: one ``[N, H, W]`` array, or an iterable of ``[n_i, H, W]`` chunks (streamed, e.g. from
            `spklip.data.simulate.iter_simulate`), all with the same H and W.

    Raises:
        DatFormatError: values other than 0/1, H*W not divisible by 8, or chunks of different sizes.
    """
    path = Path(path)
    chunks = [spikes] if isinstance(spikes, np.ndarray) else spikes
    planes, shape = 0, None
    with atomic_file(path) as tmp:  # a marked .NAME.tmp-HOST-PID folder beside `path`: never a user's file
        with open(tmp, "wb") as f:
            for chunk in chunks:
                chunk = check_spikes(chunk)
                if shape is not None and chunk.shape[1:] != shape:
                    raise DatFormatError(f"chunk of shape {chunk.shape[1:]} after chunks of {shape}")
                shape = chunk.shape[1:]
                f.write(pack_planes(chunk).tobytes())
                planes += chunk.shape[0]
    return planes
