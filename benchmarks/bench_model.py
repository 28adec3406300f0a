"""Model benchmark: clips/s and GMAC per clip per preset; batched vs per-sample-loop HSFE; HSFE efficiency.

Run with ``make bench-model`` (or ``python benchmarks/bench_model.py --help``). Every ratio is measured in this one
run on this machine (new vs reference, medians of repeated timings). Sections:

1. Per preset: visual-tower forward and forward+backward clips/s, dense-equivalent GMAC per clip (from the energy
   hooks on the meta device). On CPU the paper-size presets are only counted, not timed (one forward is 300-600
   GMAC; --paper-timing times them at batch 1). On a GPU everything runs under bf16 autocast.
2. Batched HSFE (one call over all B*K sub-blocks, M branches as one masked conv) vs the authors' way (Python loop
   over samples, sub-blocks and branches; tests/hsfe_reference.py) at batch 8: outputs must agree to 1e-5.
3. Paper-size HSFE (~269 GMAC per clip): achieved GMAC/s divided by the GMAC/s of a large matmul measured in the
   same run, eager (the default grouping) vs channels_last vs torch.compile.
4. HSFE grouping (issue 12), at the paper preset (batch 2, 250 planes of 240x320) and at a small config (the paper
   HSFE at 64 planes of 64x64, r=8, K=5, batch 2), eval, no grad, `--threads` threads: the default grouping
   (`model.hsfe.chunk_mb=auto`: cache-sized chunks of sub-blocks on CPU) vs one batch of all B*K sub-blocks
   (`chunk_mb=0`) vs the per-sub-block loop (tests/hsfe_reference.py's hsfe_subblock_loop), each also with
   channels_last (the default's also without its fused conv post-ops, `model.hsfe.fusion=none`: spklip.model.fused),
   and a 2048^3 fp32 matmul; all timed alternately, one call each per round (the order rotates),
   medians of `--rounds` rounds. Outputs must agree to 1e-5. `uptime` is printed before and after the run.

``--quick`` proves the script runs (tiny sizes, one round, chunk_mb=1 so the chunked path is taken); its figures
mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from spklip.model import list_models, resolve_cfg
from spklip.model.energy import estimate_energy
from spklip.model.hsfe import HSFE, cut_subblocks
from spklip.model.spklip import build_visual_tower
from spklip.torchutil import maybe_autocast

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the slow reference HSFE is test code
from hsfe_reference import hsfe_reference, hsfe_subblock_loop  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, reps: int, device: torch.device, warmup: int = 1) -> float:
    """Median wall seconds of `fn()` over `reps` runs after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def autocast(device: torch.device):
    """bf16 autocast on a GPU, plain fp32 on the CPU."""
    return maybe_autocast(device, torch.bfloat16 if device.type == "cuda" else None)


def spikes_for(cfg, batch: int, device: torch.device, rate: float = 0.1) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(batch, cfg.num_planes, cfg.height, cfg.width, generator=g) < rate).float().to(device)


def gmac_per_clip(cfg) -> float:
    """Dense-equivalent GMAC per clip of the visual tower, counted by the energy hooks on the meta device."""
    with torch.device("meta"):
        tower, x = build_visual_tower(cfg), torch.zeros(1, cfg.num_planes, cfg.height, cfg.width)
        return estimate_energy(tower, x).metrics()["dense_gmac_per_clip"]


def bench_preset(name: str, device: torch.device, batch: int, reps: int, timed: bool, backward: bool) -> dict:
    cfg = resolve_cfg(name)
    row = {"preset": name, "batch": batch, "gmac_per_clip": gmac_per_clip(cfg), "fwd_clips_s": float("nan"),
           "fwd_bwd_clips_s": float("nan"), "fwd_gmac_s": float("nan")}
    if not timed:
        return row
    torch.manual_seed(0)
    tower = build_visual_tower(cfg).to(device).train()
    x = spikes_for(cfg, batch, device)

    def fwd():
        with torch.no_grad(), autocast(device):
            tower(x)

    def fwd_bwd():
        with autocast(device):
            out = tower(x)
        out.float().sum().backward()

    t_f = median_time(fwd, reps, device)
    t_fb = median_time(fwd_bwd, reps, device) if backward else float("nan")
    return {**row, "fwd_clips_s": batch / t_f, "fwd_bwd_clips_s": batch / t_fb,
            "fwd_gmac_s": row["gmac_per_clip"] * batch / t_f}


def bench_loop_vs_batched(name: str, device: torch.device, batch: int, reps: int) -> dict:
    cfg = resolve_cfg(name)
    torch.manual_seed(0)
    hsfe = HSFE(cfg.hsfe).to(device).eval()
    k, step, offset = cfg.hsfe.layout(cfg.num_planes)
    x = spikes_for(cfg, batch, device)
    with torch.no_grad():
        batched = hsfe(cut_subblocks(x, cfg.hsfe.window, k, step, offset))
        loop = hsfe_reference(hsfe, x, cfg.num_planes)
        max_diff = (batched - loop).abs().max().item()
        assert max_diff < 1e-5, f"{name}: batched and loop HSFE differ by {max_diff}"
        t_b = median_time(lambda: hsfe(cut_subblocks(x, cfg.hsfe.window, k, step, offset)), reps, device)
        t_l = median_time(lambda: hsfe_reference(hsfe, x, cfg.num_planes), reps, device)
    return {"preset": name, "batch": batch, "subblocks": k, "batched_ms": t_b * 1e3, "loop_ms": t_l * 1e3,
            "speedup": t_l / t_b, "max_abs_diff": max_diff}


def matmul_gmac_s(device: torch.device, n: int, reps: int) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    with autocast(device):
        t = median_time(lambda: a @ b, reps, device)
    return n ** 3 / t / 1e9


def bench_paper_hsfe(device: torch.device, reps: int, compile_: bool) -> tuple[float, float, list[dict]]:
    cfg = resolve_cfg("spklip-paper")
    torch.manual_seed(0)
    hsfe = HSFE(cfg.hsfe).to(device).eval()
    k, step, offset = cfg.hsfe.layout(cfg.num_planes)
    blocks = cut_subblocks(spikes_for(cfg, 1, device), cfg.hsfe.window, k, step, offset)  # [5, 61, 240, 320]
    gmac = estimate_energy(hsfe, blocks).metrics()["dense_gmac_per_clip"] * blocks.shape[0]  # per clip (5 blocks)
    peak = matmul_gmac_s(device, 4096 if device.type == "cuda" else 2048, reps=5)
    rows = []
    variants = [("eager", False, False), ("channels_last", True, False)]
    if compile_:
        variants += [("compile", False, True), ("compile+channels_last", True, True)]
    for label, cl, comp in variants:
        fmt = torch.channels_last if cl else torch.contiguous_format
        model, x = hsfe.to(memory_format=fmt), blocks.contiguous(memory_format=fmt)
        fn = torch.compile(model) if comp else model
        with torch.no_grad(), autocast(device):
            t0 = time.perf_counter()
            fn(x)  # warm-up (compiles)
            first = time.perf_counter() - t0
            t = median_time(lambda: fn(x), reps, device, warmup=0)
        rows.append({"variant": label, "sec_per_clip": t, "gmac_s": gmac / t, "vs_matmul": gmac / t / peak,
                     "first_call_s": first})
    return gmac, peak, rows


# name -> (spklip-paper overrides, batch) for section 4; --quick shrinks both
GROUPING_CONFIGS = {
    "paper": ({}, 2),
    "small": ({"num_planes": 64, "height": 64, "width": 64, "hsfe": {"radius": 8, "step": "auto"}}, 2),
}
QUICK_GROUPING_CONFIGS = {
    "paper (quick)": ({"num_planes": 24, "height": 48, "width": 64, "hsfe": {"radius": 3, "step": "auto"}}, 2),
    "small (quick)": ({"num_planes": 24, "height": 16, "width": 16, "hsfe": {"radius": 3, "step": "auto"}}, 2),
}


def load_line() -> str:
    """`uptime`'s line (the load averages), or os.getloadavg() where there is no uptime."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_grouping(label: str, overrides: dict, batch: int, rounds: int, chunk_mb: int | str,
                   matmul_n: int) -> tuple[list[dict], dict]:
    """Section 4 on the CPU: one table row per variant, and the ratios the issue's targets are about."""
    cfg = resolve_cfg("spklip-paper", **overrides)
    torch.manual_seed(0)
    # NCHW variants pinned to contiguous maps; the channels_last ones are what memory_format="auto" runs on a CPU
    hsfe = HSFE(dataclasses.replace(cfg.hsfe, memory_format="contiguous")).eval()
    k, step, offset = cfg.hsfe.layout(cfg.num_planes)
    blocks = cut_subblocks(spikes_for(cfg, batch, torch.device("cpu")), cfg.hsfe.window, k, step, offset)
    with torch.device("meta"):  # exact dense MACs without running the convs
        per_block = estimate_energy(HSFE(cfg.hsfe), torch.zeros(1, *blocks.shape[1:])).metrics()
    gmac = per_block["dense_gmac_per_clip"] * blocks.shape[0]
    hsfe_cl = copy.deepcopy(hsfe).to(memory_format=torch.channels_last)
    hsfe_cl.cfg = dataclasses.replace(cfg.hsfe, memory_format="channels_last")
    blocks_cl = blocks.contiguous(memory_format=torch.channels_last)
    hsfe_unfused = copy.deepcopy(hsfe_cl)  # the default's layout and grouping with the eager layers (fusion="none")
    hsfe_unfused.cfg = dataclasses.replace(hsfe_cl.cfg, fusion="none")
    budget = "auto" if chunk_mb == "auto" else int(chunk_mb) * 2 ** 20

    def grouped(model, x, b):
        def run():
            model.chunk_budget = b
            return model(x)
        return run

    variants = {  # name -> one timed call
        "chunked": grouped(hsfe, blocks, budget),
        "chunked + channels_last": grouped(hsfe_cl, blocks_cl, budget),  # + fused post-ops (the default)
        "chunked + channels_last, no fusion": grouped(hsfe_unfused, blocks_cl, budget),
        "one batch": grouped(hsfe, blocks, 0),
        "one batch + channels_last": grouped(hsfe_cl, blocks_cl, 0),
        "per-sub-block loop": lambda: hsfe_subblock_loop(hsfe, blocks),
        "per-sub-block loop + channels_last": lambda: hsfe_subblock_loop(hsfe_cl, blocks_cl),
    }
    hsfe.chunk_budget = budget
    n, chunk = blocks.shape[0], hsfe.subblocks_per_call(blocks)
    per_call = dict(zip(variants, (chunk, chunk, chunk, n, n, 1, 1)))  # sub-blocks per extractor call
    a, b = torch.randn(matmul_n, matmul_n), torch.randn(matmul_n, matmul_n)
    matmul = lambda: a @ b  # noqa: E731
    times: dict[str, list[float]] = {name: [] for name in [*variants, "matmul"]}
    with torch.no_grad():
        ref = variants["per-sub-block loop"]()  # warm-up of every variant, and the equality check
        for name, fn in variants.items():
            diff = (fn() - ref).abs().max().item()
            assert diff < 1e-5, f"{label}: {name} differs from the per-sub-block loop by {diff}"
        del ref
        matmul()
        order = [*variants, "matmul"]
        for r in tqdm(range(rounds), desc=f"grouping {label}", leave=False):
            for name in order[r % len(order):] + order[:r % len(order)]:  # rotate: no variant always runs first
                times[name].append(timed(variants.get(name, matmul)))
    mm = matmul_n ** 3 / statistics.median(times["matmul"]) / 1e9
    rows = []
    for name in variants:
        t = statistics.median(times[name])
        rows.append({"config": label, "variant": name, "subblocks_per_call": per_call[name], "median_s": t,
                     "rounds_s": " / ".join(f"{v:.3g}" for v in times[name]), "gmac_s": gmac / t,
                     "vs_matmul": gmac / t / mm})
    med = {name: statistics.median(v) for name, v in times.items()}
    best = min(("chunked", "chunked + channels_last"), key=med.get)
    summary = {"config": label, "B*K": blocks.shape[0], "gmac": gmac, "matmul_gmac_s": mm,
               "chunked_vs_loop": med["per-sub-block loop"] / med["chunked"],
               "chunked_vs_one_batch": med["one batch"] / med["chunked"],
               "chunked_vs_matmul": gmac / med["chunked"] / mm,
               "best_chunked": best, "best_vs_loop": med["per-sub-block loop"] / med[best]}
    return rows, summary


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)] +
                     ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="*", default=None, help="presets for section 1 (default: all)")
    ap.add_argument("--batch", type=int, default=8, help="batch for CPU-size presets and the loop comparison")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-paper", action="store_true", help="skip paper-size presets and section 3")
    ap.add_argument("--paper-timing", action="store_true",
                    help="on CPU, also time paper presets (forward and forward+backward at batch 1; many minutes)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants of section 3")
    ap.add_argument("--grouping-only", action="store_true", help="run only section 4 (HSFE grouping, CPU)")
    ap.add_argument("--skip-grouping", action="store_true", help="skip section 4")
    ap.add_argument("--rounds", type=int, default=3, help="section 4: alternating rounds (medians over them)")
    ap.add_argument("--threads", type=int, default=2, help="section 4: torch threads")
    ap.add_argument("--chunk-mb", default=None,
                    help="section 4: model.hsfe.chunk_mb of the chunked variants (default auto; --quick: 1)")
    ap.add_argument("--quick", action="store_true",
                    help="prove the script runs: spklip-tiny only, tiny section 4 shapes, one round, no section 3")
    args = ap.parse_args()
    if args.quick:
        args.presets, args.batch, args.reps, args.skip_paper, args.rounds = ["spklip-tiny"], 2, 1, True, 1
    chunk_mb = args.chunk_mb or (1 if args.quick else "auto")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"load before: {load_line()}")
    if not args.grouping_only:
        names = args.presets or [n for n in list_models() if not (args.skip_paper and "paper" in n)]
        rows = []
        for name in tqdm(names, desc="presets"):
            cpu_paper = "paper" in name and device.type == "cpu"
            rows.append(bench_preset(name, device, 1 if cpu_paper else args.batch, 1 if cpu_paper else args.reps,
                                     timed=not cpu_paper or args.paper_timing, backward=True))
        print("\n## Presets (visual tower)\n" + table(rows))
        loop_presets = ("spklip-tiny",) if args.quick else ("spklip-tiny", "spklip-small")
        loops = [bench_loop_vs_batched(n, device, args.batch, args.reps) for n in loop_presets]
        print("\n## Batched vs per-sample/per-sub-block loop HSFE\n" + table(loops))
        if not args.skip_paper:
            gmac, peak, hs = bench_paper_hsfe(device, reps=2 if device.type == "cpu" else 5,
                                              compile_=not args.no_compile)
            print(f"\n## Paper HSFE: {gmac:.1f} GMAC per clip; large matmul {peak:.1f} GMAC/s\n" + table(hs))
    if not args.skip_grouping:
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        configs = QUICK_GROUPING_CONFIGS if args.quick else GROUPING_CONFIGS
        rows, summaries = [], []
        for label, (overrides, batch) in configs.items():
            r, summ = bench_grouping(label, overrides, batch, args.rounds, chunk_mb, 512 if args.quick else 2048)
            rows += r
            summaries.append(summ)
        torch.set_num_threads(threads)
        print(f"\n## HSFE grouping on CPU (eval, no grad, {args.threads} threads, chunk_mb={chunk_mb}, "
              f"{args.rounds} rounds; targets at paper size: chunked >= 1.3x the loop, >= 0.85 of the matmul; "
              "spklip's default on a CPU without autograd, model.hsfe.memory_format=auto and fusion=auto, is "
              "'chunked + channels_last' with fused post-ops)\n"
              + table(rows) + "\n\n" + table(summaries))
    print(f"load after: {load_line()}")


if __name__ == "__main__":
    main()
