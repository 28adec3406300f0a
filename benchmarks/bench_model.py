"""Model benchmark: clips/s and GMAC per clip per preset; batched vs per-sample-loop HSFE; HSFE efficiency.

Run with ``make bench-model`` (or ``python benchmarks/bench_model.py --help``). Every ratio is measured in this one
run on this machine (new vs reference, medians of repeated timings). Sections:

1. Per preset: visual-tower forward and forward+backward clips/s, dense-equivalent GMAC per clip (from the energy
   hooks on the meta device). On CPU the paper-size presets are only counted, not timed (one forward is 300-600
   GMAC; --paper-timing times them at batch 1). On a GPU everything runs under bf16 autocast.
2. Batched HSFE (one call over all B*K sub-blocks, M branches as one masked conv) vs the authors' way (Python loop
   over samples, sub-blocks and branches; spklip.model.reference) at batch 8: outputs must agree to 1e-5.
3. Paper-size HSFE (~269 GMAC per clip): achieved GMAC/s divided by the GMAC/s of a large matmul measured in the
   same run, eager vs channels_last vs torch.compile.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tqdm import tqdm

from spklip.model import list_models, resolve_cfg
from spklip.model.energy import estimate_energy
from spklip.model.hsfe import HSFE, cut_subblocks
from spklip.model.reference import hsfe_reference
from spklip.model.spklip import build_visual_tower
from spklip.torchutil import maybe_autocast


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
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    names = args.presets or [n for n in list_models() if not (args.skip_paper and "paper" in n)]
    rows = []
    for name in tqdm(names, desc="presets"):
        cpu_paper = "paper" in name and device.type == "cpu"
        rows.append(bench_preset(name, device, 1 if cpu_paper else args.batch, 1 if cpu_paper else args.reps,
                                 timed=not cpu_paper or args.paper_timing, backward=True))
    print("\n## Presets (visual tower)\n" + table(rows))
    loops = [bench_loop_vs_batched(n, device, args.batch, args.reps) for n in ("spklip-tiny", "spklip-small")]
    print("\n## Batched vs per-sample/per-sub-block loop HSFE\n" + table(loops))
    if not args.skip_paper:
        gmac, peak, hs = bench_paper_hsfe(device, reps=2 if device.type == "cpu" else 5,
                                          compile_=not args.no_compile)
        print(f"\n## Paper HSFE: {gmac:.1f} GMAC per clip; large matmul {peak:.1f} GMAC/s\n" + table(hs))


if __name__ == "__main__":
    main()
