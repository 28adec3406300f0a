"""The simulator's fused C kernel (`simkernel.c`): compiled once per machine with the system C compiler into the
user cache and loaded with ctypes; `load_kernel()` is None where that fails (no compiler, another platform), and
`spklip.data.simulate` then runs the same float64 loop in numpy with the same bits.

Why C and not a closed form: the charge is sequential in time per pixel, and a cumulative sum rounds differently
from the loop's add-then-subtract, so only the loop's own operations, in its order, keep the bits. No dependency is
added for it (numba is not installed; a C compiler usually is), and nothing but this file's ~40-line kernel runs.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

KERNEL_SOURCE = Path(__file__).with_name("simkernel.c")
# pixels per kernel block: a call's frames, charge, threshold, dark planes and output rows of one block stay in the L2
# cache (4096 px x 9 frames of float64 ~ 300 KB); longer inner loops than 1024's: 1.16x (AVX2) and 1.31x (AVX-512)
# at 240x320 x 4 planes, the same bits (the blocks only order the pixels, which are independent)
BLOCK = 4096
# -ffp-contract=off: no fused multiply-add (the numpy loop rounds the product); -fno-trapping-math only lets the
# compiler turn the compares into vector selects (no FP exceptions are observed); no -ffast-math, no -march.
KERNEL_FLAGS = ("-O3", "-shared", "-fPIC", "-ffp-contract=off", "-fno-trapping-math")


# pixel-planes per call below which one thread does the whole call: handing a part to another thread costs tens of
# microseconds, ~1/10 of this much work (a 64x64 clip's call stays on the caller's thread)
MIN_THREAD_WORK = 1 << 20
_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid that made it, size, pool): a forked child makes its own
_pool_lock = threading.Lock()


def kernel_threads() -> int:
    """Threads one kernel call may use: ``SPKLIP_SIM_THREADS``, else ``OMP_NUM_THREADS`` (Ray sets it to a task's
    CPUs, so a build's parallel tasks stay one thread each), else the CPUs this process may run on."""
    for var in ("SPKLIP_SIM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) >= 1:
            return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _executor(threads: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid() or _pool[1] < threads:
            if _pool is not None and _pool[0] == os.getpid():
                _pool[2].shutdown(wait=False)  # a bigger one replaces it (its idle threads exit)
            _pool = os.getpid(), threads, ThreadPoolExecutor(threads, thread_name_prefix="spklip-sim")
        return _pool[2]


def run_kernel(fn, args: tuple, n: int, work: int, threads: int | None = None) -> int:
    """``fn(*args, n, BLOCK, begin, end)`` over the pixels ``[0, n)``, split into `threads` (default
    `kernel_threads`) ranges of whole blocks when the call has `work` >= `MIN_THREAD_WORK` pixel-planes per thread;
    the ranges are disjoint, so the bits do not depend on the split. Returns the summed out-of-range counts."""
    threads = max(1, min(threads or kernel_threads(), work // MIN_THREAD_WORK, -(-n // BLOCK)))
    if threads == 1:
        return fn(*args, n, BLOCK, 0, n)
    edges = [min(n, -(-n * t // threads) // BLOCK * BLOCK) for t in range(threads)] + [n]  # block-aligned starts
    pool = _executor(threads - 1)
    parts = [pool.submit(fn, *args, n, BLOCK, lo, hi) for lo, hi in zip(edges[1:-1], edges[2:])]
    bad = fn(*args, n, BLOCK, edges[0], edges[1])  # the first range on this thread
    return bad + sum(p.result() for p in parts)


def _cache_dir() -> Path | None:
    """The per-user cache folder for the built kernel, or None where it cannot be made (then nothing is cached: a
    shared folder such as /tmp would let another user plant the library)."""
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spklip"
        base.mkdir(parents=True, exist_ok=True)
        return base if os.access(base, os.W_OK) else None
    except (OSError, RuntimeError):  # RuntimeError: no home folder
        return None


@dataclass(frozen=True)
class Kernel:
    """The two entry points of the built library (ctypes functions; both release the GIL during the call)."""

    fire: object  # float64 frames -> spikes; returns the count of input values outside [0, 1]
    fire_u8: object  # 8-bit frames (value / 255.0, as numpy divides) -> spikes


@functools.lru_cache(maxsize=None)
def load_kernel() -> Kernel | None:
    """The compiled kernel, built on first use into the user cache; None where that fails."""
    if platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64") or sys.platform == "win32":
        return None  # only 64-bit targets whose double arithmetic is plain IEEE (no x87 extended precision)
    compilers = [shlex.split(c) for c in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc") if c]
    cc = next((c for c in compilers if c and shutil.which(c[0])), None)
    if cc is None:
        return None
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    clones = [(*KERNEL_FLAGS, f"-DSPKLIP_CLONES={v}") for v in (4, 2)] if x86 else []  # AVX-512 + AVX2, AVX2
    for flags in [*clones, KERNEL_FLAGS]:
        lib = build_kernel(cc, flags)
        if lib is not None:
            break
    else:
        return None
    ptr = ctypes.c_void_p
    for fn in (lib.spklip_fire, lib.spklip_fire_u8):
        fn.argtypes = [ptr, ptr, ctypes.c_ssize_t, ctypes.c_int, ptr, ptr, ctypes.c_double, ptr, ctypes.c_int, ptr,
                       ptr, ctypes.c_ssize_t, ctypes.c_ssize_t, ctypes.c_ssize_t, ctypes.c_ssize_t]
        fn.restype = ctypes.c_ssize_t
    return Kernel(lib.spklip_fire, lib.spklip_fire_u8)


def build_kernel(cc: list[str], flags: tuple[str, ...]):
    """Compile (once: cached by a hash of the source and the command) and load the library; None on failure."""
    source = KERNEL_SOURCE.read_text()
    key = hashlib.sha256("\0".join([source, *cc, *flags, platform.machine(), sys.platform]).encode())
    name, cache = f"spklip-simulate-{key.hexdigest()[:16]}.so", _cache_dir()
    try:
        if cache is not None and (cache / name).exists():
            return ctypes.CDLL(str(cache / name))  # ctypes releases the GIL during the call
        with tempfile.TemporaryDirectory(dir=cache) as tmp:  # no cache: a private folder of the system's temp
            src, built = Path(tmp) / "simulate.c", Path(tmp) / name
            src.write_text(source)
            subprocess.run([*cc, *flags, "-o", str(built), str(src)], check=True, capture_output=True, timeout=120)
            if cache is None:
                return ctypes.CDLL(str(built))  # loaded: the file may go with its folder
            os.replace(built, cache / name)  # atomic: concurrent builders each rename a complete file
        return ctypes.CDLL(str(cache / name))
    except (OSError, subprocess.SubprocessError):
        return None
