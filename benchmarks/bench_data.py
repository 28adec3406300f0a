"""Data-pipeline throughput (``make bench-data``): simulator, shard writing, Ray Data / DataLoader read+decode.

Prints medians over repeats, and ratios measured in the same run against a reference:
* simulator: `simulate_spikes` (the fused kernel, or its numpy fallback: the backend is printed) vs the textbook
  per-plane loop (vectorised over pixels only) on the same 240x320 frames (float64 with 4 planes per frame, and
  uint8 with 1), timed alternately in wall time (the kernel on its default threads and on one), equal bits
  checked; the load (``uptime``) before and after; and the simulator's peak traced memory (tracemalloc: numpy
  buffers included) streaming 1080p frames with the default chunk;
* storage: bits per pixel-plane on disk for a moving-digits dataset vs 8 (uint8 planes) and 1 (raw packbits);
* streaming input (``--streaming`` alone): clips/s the training split's streaming Ray Dataset
  (`spklip.runtime.reader.streaming_dataset`) yields to 2 workers at spklip-small's clip shape, once the start-up is paid
  (later epochs of the same dataset), against clips/s one spklip-small train step consumes per worker (2 workers);
  their ratio (median of rounds), the first epoch's rate (start-up included) and the DataLoader reference.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from unittest import mock
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spklip.data.shards import write_shards  # noqa: E402
from spklip.data.simkernel import kernel_threads  # noqa: E402
from spklip.data.simulate import (SimParams, SpikeSimulator, default_chunk_planes, iter_simulate,  # noqa: E402
                                  simulate_spikes, simulator_backend)


def median_time(fn, repeats: int, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)


def reference_simulator(frames: np.ndarray, ppf: int, threshold: float, seed: int) -> np.ndarray:
    """The per-plane integrate-and-fire loop (SpikeCV style), vectorised over pixels only."""
    sim = SpikeSimulator(SimParams(threshold, ppf, seed), *frames.shape[1:])
    acc, out = sim.initial.copy(), np.zeros((frames.shape[0] * ppf, *frames.shape[1:]), np.uint8)
    nxt = np.concatenate([frames[1:], frames[-1:]])
    for t in range(frames.shape[0]):
        for j in range(ppf):
            acc += frames[t] + j / ppf * (nxt[t] - frames[t])
            fire = acc >= threshold
            out[t * ppf + j] = fire
            acc -= threshold * fire
    return out


def load() -> str:
    """``uptime``'s line (the load averages), or /proc/loadavg where there is no uptime."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def bench_simulator(frames_n: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:240, 0:320]
    frames = np.stack([0.5 + 0.5 * np.sin((x + 3 * t) / 17.0) * np.cos((y - 2 * t) / 23.0)
                       for t in range(frames_n)]) * rng.uniform(0.8, 1.0, (1, 240, 320))  # [T, 240, 320]
    print(f"simulator: before: {load()}")
    # float frames with 4 interpolated planes per frame; uint8 frames (decoded video) with 1, the CLI default
    for name, fr, ppf in (("float64", frames, 4), ("uint8", np.round(frames * 255).astype(np.uint8), 1)):
        def reference(fr=fr, ppf=ppf):  # the loop takes intensities: the uint8 -> [0, 1] conversion is timed too
            return reference_simulator(fr / 255.0 if fr.dtype == np.uint8 else fr, ppf, 2.0, 0)

        assert np.array_equal(simulate_spikes(fr, planes_per_frame=ppf), reference())
        new, one, ref = [], [], []
        simulate = lambda: simulate_spikes(fr, planes_per_frame=ppf, seed=0)  # noqa: E731
        for _ in range(repeats):  # alternately, so all three see the same machine; wall time (the kernel threads)
            new.append(median_time(simulate, 5))
            with mock.patch.dict(os.environ, {"SPKLIP_SIM_THREADS": "1"}):  # the kernel on one thread
                one.append(median_time(simulate, 5))
            ref.append(median_time(reference, 5))
        new_s, one_s, ref_s = statistics.median(new), statistics.median(one), statistics.median(ref)
        pp = frames_n * ppf * 240 * 320
        print(f"simulator ({simulator_backend()}, {kernel_threads()} threads) 240x320 {name}, {frames_n} frames x "
              f"{ppf} planes: {pp / new_s / 1e6:.1f} M pixel-planes/s (reference per-plane loop {pp / ref_s / 1e6:.1f}"
              f" M/s; ratio {ref_s / new_s:.2f}x; rounds {' / '.join(f'{r / n:.2f}' for r, n in zip(ref, new))}; "
              f"one thread {pp / one_s / 1e6:.1f} M/s, ratio {ref_s / one_s:.2f}x), wall-time medians of {repeats} "
              f"rounds of 5, equal bits")
    print(f"simulator: after: {load()}")


def bench_simulator_memory(frames_n: int) -> None:
    """Peak traced memory streaming 1080p uint8 frames through `iter_simulate` (default chunk, P = 1 and 4)."""
    base = np.random.default_rng(1).integers(0, 256, (1080, 1920), np.uint8)
    for ppf in (1, 4):
        tracemalloc.start()
        planes = sum(c.shape[0] for c in iter_simulate((np.roll(base, t, axis=1) for t in range(frames_n)),
                                                       planes_per_frame=ppf))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"simulator memory 1080p, {frames_n} frames x {ppf} planes ({planes} planes, chunk "
              f"{default_chunk_planes(1080, 1920)} planes): peak {peak / 2**20:.0f} MiB traced (tracemalloc)")


def bench_shards(clips_per_class: int, repeats: int, ray_read: bool) -> None:
    from spklip.config import load_config
    from spklip.data.loader import SpikeShardDataset
    from spklip.runtime.reader import ray_train_dataset, torch_batches
    from spklip.data.moving_digits import DigitsSpec, digit_clips

    spec = DigitsSpec(clips_per_class=clips_per_class)
    info, clips, total = digit_clips(spec, SimParams())
    clips = list(clips)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ds"
        write = median_time(lambda: write_shards(clips, out, info, overwrite=True), repeats)
        meta = write_shards(clips, out, info, overwrite=True)
        print(f"shard write: {total / write:.0f} clips/s ({total} clips of {tuple(meta['clip_shape'])}, "
              f"median of {repeats})")
        bpp = meta["bits_per_pixel_plane"]
        print(f"on disk: {bpp:.3f} bits per pixel-plane (firing rate {np.mean([c.spikes.mean() for c in clips]):.3f}"
              f"); {8 / bpp:.1f}x smaller than uint8 planes, {1 / bpp:.1f}x smaller than raw packbits")
        ds = SpikeShardDataset(out, "train")
        import torch

        loader = torch.utils.data.DataLoader(ds, batch_size=32)
        t_dl = median_time(lambda: sum(b["spikes"].shape[0] for b in loader), repeats)
        print(f"DataLoader read+decode (1 process): {len(ds) / t_dl:.0f} clips/s ({len(ds)} train clips)")
        if ray_read:
            import ray
            import ray.data

            ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
            ray.data.DataContext.get_current().enable_progress_bars = False
            def epoch(rds):
                return sum(b["spikes"].shape[0] for b in torch_batches(rds, 32, epoch=1))

            streamed = ray_train_dataset(load_config(overrides=[f"data.path={out}", "data.materialize=false"]))
            t_ray = median_time(lambda: epoch(streamed), repeats)
            print(f"Ray Data streaming epoch (read+decode+shuffle -> torch): {len(ds) / t_ray:.0f} clips/s "
                  f"(ratio to DataLoader {t_dl / t_ray:.2f}x; mostly Ray Data's per-execution start-up; the training reader, page checksums verified)")
            mat = ray_train_dataset(load_config(overrides=[f"data.path={out}", "data.materialize=true"]))
            t_mat = median_time(lambda: epoch(mat), repeats)
            print(f"Ray Data in-memory epoch (shuffle -> torch): {len(ds) / t_mat:.0f} clips/s "
                  f"(ratio to DataLoader {t_dl / t_mat:.2f}x)")
            ray.shutdown()


def bench_streaming(clips_n: int, rounds: int, workers: int = 2) -> None:
    """Input rate of the streaming training set vs the consumption rate of spklip-small train steps."""
    from concurrent.futures import ThreadPoolExecutor

    import ray
    import ray.data
    import torch

    from spklip.config import load_config
    from spklip.data.loader import SpikeShardDataset
    from spklip.data.shards import Clip, DatasetInfo
    from spklip.loss import ClipLoss
    from spklip.model import create_model
    from spklip.runtime import reader as train_data
    from spklip.train.loop import Loop

    cfg0 = load_config(overrides=["model_preset=spklip-small"])
    shape = (cfg0.model.num_planes, cfg0.model.height, cfg0.model.width)
    bs = cfg0.data.batch_size
    rng = np.random.default_rng(0)
    info = DatasetInfo("test", [f"class {i}" for i in range(8)], [], shape, {})
    clips = [Clip(spikes=(rng.random(shape) < 0.1).astype(np.uint8), label=i % 8, caption=f"class {i % 8}",
                  split="train", source="rng", clip_id=f"c{i}", sim_seed=i) for i in range(clips_n)]
    print(f"streaming: before: {load()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        write_shards(clips, root, info, target_shard_mb=clips_n * int(np.prod(shape)) / 8 / 2**20 / 8)  # ~8 files
        del clips
        cfg = load_config(overrides=["model_preset=spklip-small", f"data.path={root}", "data.materialize=false"])
        loader = torch.utils.data.DataLoader(SpikeShardDataset(root, "train"), batch_size=bs)
        t_dl = median_time(lambda: sum(b["spikes"].shape[0] for b in loader), max(1, rounds))

        model = create_model(cfg.model, loss_cfg=cfg.loss)
        loop = Loop.create(cfg, model, ClipLoss(cfg.loss), torch.device("cpu"), 100)
        batch = next(iter(loader))

        def step():
            loop.micro_step(batch, 1.0, sync=True)
            loop.optimizer_step()

        step()  # first-call overheads
        t_step = median_time(step, max(3, rounds))
        consume = workers * bs / t_step  # each worker trains on its own core

        ray.init(address="local", num_cpus=workers, include_dashboard=False, configure_logging=False)
        try:
            ray.data.DataContext.get_current().enable_progress_bars = False
            ds = train_data.ray_train_dataset(cfg)  # built once, as for a run
            parts = ds.streaming_split(workers, equal=True)

            def worker(part):  # per epoch: (clips, seconds) of this worker's shard
                out = []
                for epoch in range(rounds + 1):
                    t = time.perf_counter()
                    n = sum(len(b["caption"]) for b in train_data.train_batches(part, cfg, epoch))
                    out.append((n, time.perf_counter() - t))
                return out

            with ThreadPoolExecutor(workers) as pool:
                per_worker = list(pool.map(worker, parts))
        finally:
            ray.shutdown()
    rates = [sum(w[e][0] for w in per_worker) / max(w[e][1] for w in per_worker) for e in range(rounds + 1)]
    steady = statistics.median(rates[1:]) if rounds else rates[0]
    n = sum(w[0][0] for w in per_worker)
    print(f"streaming input ({workers} workers, spklip-small clips {shape}, {n} clips an epoch, built once): "
          f"{steady:.0f} clips/s in later epochs (median of {rounds}: {' / '.join(f'{r:.0f}' for r in rates[1:])}); "
          f"first epoch, start-up included: {rates[0]:.0f} clips/s")
    print(f"consumption: a spklip-small train step of {bs} clips takes {t_step:.2f} s on one core: "
          f"{consume:.1f} clips/s for {workers} workers; input / consumption ratio {steady / consume:.1f}x "
          f"(first epoch {rates[0] / consume:.1f}x)")
    print(f"DataLoader reference (1 process, read+decode): {len(loader.dataset) / t_dl:.0f} clips/s")
    print(f"streaming: after: {load()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=32, help="240x320 frames simulated")
    p.add_argument("--clips-per-class", type=int, default=10, help="moving-digits clips per class (80 classes)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (the simulator's are alternated)")
    p.add_argument("--memory-frames", type=int, default=32, help="1080p frames streamed for the memory figure")
    p.add_argument("--quick", action="store_true", help="a short run that proves the benchmark works (8 frames, "
                   "3 rounds, 4 memory frames, 2 clips per class, no Ray): not for figures")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray Data read and the streaming input")
    p.add_argument("--streaming", action="store_true", help="run only the streaming input vs consumption benchmark")
    p.add_argument("--streaming-clips", type=int, default=256, help="spklip-small-shaped clips in its training split")
    p.add_argument("--streaming-rounds", type=int, default=3, help="timed epochs after the first")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (2 spin-waiting threads made "
                   "torch.stack in the DataLoader collate 20x slower on a loaded 2-core machine)")
    add_parallel_build_args(p)
    args = p.parse_args()
    if args.quick:
        args.frames, args.repeats, args.memory_frames, args.clips_per_class, args.no_ray = 8, 3, 4, 2, True
        args.build_clips_per_class, args.paper_clips = 1, 1
    import torch

    torch.set_num_threads(args.threads)
    print(f"torch threads: {args.threads}; load average: {' '.join(open('/proc/loadavg').read().split()[:3])}")
    if args.streaming:
        bench_streaming(args.streaming_clips, args.streaming_rounds)
        return
    if not args.parallel_build:
        bench_simulator(args.frames, args.repeats)
        bench_simulator_memory(args.memory_frames)
        bench_shards(args.clips_per_class, args.repeats, not args.no_ray)
        if not args.no_ray:
            bench_streaming(args.streaming_clips, args.streaming_rounds)
    if not args.no_parallel_build:
        bench_parallel_build(args)


UCF101_VIDEOS, PAPER_PLANES, PAPER_H, PAPER_W = 13_320, 250, 240, 320  # UCF101 at the paper's clip size


def add_parallel_build_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("parallel build (spklip data build --workers)")
    g.add_argument("--parallel-build", action="store_true", help="run only the parallel-build benchmark")
    g.add_argument("--no-parallel-build", action="store_true", help="skip the parallel-build benchmark")
    g.add_argument("--build-clips-per-class", type=int, default=4,
                   help="moving-digits clips per class built serially and with the workers (80 classes)")
    g.add_argument("--build-workers", type=int, default=2, help="Ray workers (CPUs of the local Ray instance)")
    g.add_argument("--paper-clips", type=int, default=4, help="paper-size clips (250 planes of 240x320, 4 planes "
                   "per frame) simulated, packed and written (one file each), for the UCF101 projection")


def bench_parallel_build(args: argparse.Namespace) -> None:
    """clips/s of a moving-digits build in one process vs a Ray Data build with `--build-workers` workers (same
    fingerprint), and the projected time of UCF101 at the paper's size on 64 cores: 13,320 x the workers' time for
    one paper-size clip on one core (simulate, then `clip_row`: check, bit-pack, hash) / (64 x the measured
    parallel efficiency), next to the driver's share for the whole set: `write_rows` of rows the workers packed
    (append, Parquet-encode and zstd-compress into the shard files, in its `WRITER_THREADS` writer threads)."""
    import ray
    import ray.data

    from spklip.data.build import build_dataset
    from spklip.data.moving_digits import DigitsSpec
    from spklip.data.shards import WRITER_THREADS, Clip, DatasetInfo, clip_row, write_rows

    workers = args.build_workers
    spec, sim = DigitsSpec(clips_per_class=args.build_clips_per_class), SimParams()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        serial = build_dataset(Path(tmp) / "serial", "moving-digits", spec, sim)
        t_serial = time.perf_counter() - t
        ray.init(address="local", num_cpus=workers, include_dashboard=False, configure_logging=False)
        try:
            ray.data.DataContext.get_current().enable_progress_bars = False
            warm = DigitsSpec(digits=(0,), motions=("left", "right"), clips_per_class=workers, unseen_classes=0)
            build_dataset(Path(tmp) / "warm", "moving-digits", warm, sim, workers=workers)  # workers import torch
            t = time.perf_counter()
            parallel = build_dataset(Path(tmp) / "parallel", "moving-digits", spec, sim, workers=workers)
            t_parallel = time.perf_counter() - t
        finally:
            ray.shutdown()
        assert parallel["fingerprint"] == serial["fingerprint"], "a parallel build differs from the serial one"
        n = serial["num_clips"]
        speedup = t_serial / t_parallel
        print(f"build moving-digits {n} clips of {tuple(serial['clip_shape'])}: 1 process {n / t_serial:.1f} "
              f"clips/s, {workers} Ray workers {n / t_parallel:.1f} clips/s ({speedup:.2f}x; same fingerprint "
              f"{serial['fingerprint']}; load average {open('/proc/loadavg').read().split()[0]})")

        y, x = np.mgrid[0:PAPER_H, 0:PAPER_W]
        ppf = 4
        frames = np.stack([0.5 + 0.5 * np.sin((x + 3 * t) / 17.0) * np.cos((y - 2 * t) / 23.0)
                           for t in range(-(-PAPER_PLANES // ppf))])  # [63, 240, 320]
        clips = []
        t = time.perf_counter()
        for i in range(args.paper_clips):
            spikes = simulate_spikes(frames, planes_per_frame=ppf, seed=i)[:PAPER_PLANES]
            clips.append(Clip(spikes=spikes, label=0, caption="c", split="train", source="synthetic",
                              clip_id=f"c{i}", sim_seed=i))
        t_sim = (time.perf_counter() - t) / args.paper_clips
        info = DatasetInfo("video-folder", ["c"], [], (PAPER_PLANES, PAPER_H, PAPER_W), sim.to_dict())
        t = time.perf_counter()
        rows = [clip_row(clip, info) for clip in clips]  # in the workers in a parallel build
        t_pack = (time.perf_counter() - t) / args.paper_clips
        del clips
        clip_mb = len(rows[0].values["spikes"]) / 2**20  # one file a clip: the writer threads overlap the files
        t = time.perf_counter()
        write_rows(rows, Path(tmp) / "paper", info, target_shard_mb=clip_mb)  # the driver's share
        t_write = (time.perf_counter() - t) / args.paper_clips
    cores, efficiency = 64, min(1.0, speedup / workers)
    compute = UCF101_VIDEOS * (t_sim + t_pack) / (cores * efficiency)
    driver = UCF101_VIDEOS * t_write
    print(f"UCF101 at the paper's size ({UCF101_VIDEOS} videos, {PAPER_PLANES} planes of {PAPER_H}x{PAPER_W}): "
          f"a worker simulates a clip in {t_sim:.2f} s and packs it in {t_pack:.3f} s on one core; the driver "
          f"writes it in {t_write:.3f} s ({WRITER_THREADS} writer threads, on this machine's cores); on {cores} "
          f"cores at the measured efficiency {efficiency:.2f}: workers {compute / 60:.1f} min, driver "
          f"{driver / 60:.1f} min, so about {max(compute, driver) / 60:.1f} min (video decoding not included)")


if __name__ == "__main__":
    main()
