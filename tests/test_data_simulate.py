"""The spike simulator: the integrate-and-fire count identity, a slow per-plane reference, streaming, seeds, noise."""

import numpy as np
import pytest

from spklip.data.simulate import (SimParams, SpikeSimulator, default_chunk_planes, iter_simulate, simulate_spikes,
                                  simulator_backend, to_intensity)


@pytest.fixture(params=["c", "numpy"])
def backend(request, monkeypatch):
    """Run a test with the fused C kernel and with the numpy loop (they must give the same bits)."""
    if request.param == "numpy":
        monkeypatch.setenv("SPKLIP_SIMULATOR", "numpy")
    elif simulator_backend() != "c":
        pytest.skip("no C compiler here: only the numpy loop runs")
    assert simulator_backend() == request.param
    return request.param


def reference_simulation(planes, initial, theta):
    """Slow per-plane integrate-and-fire with subtract reset (the textbook loop)."""
    acc = initial.copy()
    out = np.zeros(planes.shape, np.uint8)
    for n in range(planes.shape[0]):
        acc = acc + planes[n]
        fire = acc >= theta
        out[n] = fire
        acc = acc - theta * fire
    return out


def slow_simulation(frames, params: SimParams) -> np.ndarray:
    """The simulator as it was before the fused kernel (one video in memory, float64, one numpy pass per
    operation and plane): interpolate, draw the dark current in plane order, integrate-and-fire plane by plane.
    The fast simulator must give exactly these bits for a seed."""
    f = to_intensity(frames)  # [T, H, W] float64
    t, h, w = f.shape
    p = params.planes_per_frame
    sim = SpikeSimulator(params, h, w)  # the seeded initial charge and threshold map
    _, _, dark_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(params.seed).spawn(3))
    dark = dark_rng.random((t * p, h, w)) * (2.0 * params.dark_current) if params.dark_current > 0 else None
    nxt = np.concatenate([f[1:], f[-1:]])  # the last frame is held
    slope = nxt - f
    weights = np.arange(p, dtype=np.float64) / p
    charge, out = sim.initial.copy(), np.zeros((t * p, h, w), np.uint8)
    for n in range(t * p):
        k, j = divmod(n, p)
        plane = slope[k] * weights[j] + f[k] if weights[j] else f[k].copy()
        if dark is not None:
            plane = np.minimum(plane + dark[n], 1.0)
        charge = charge + plane
        fire = charge >= sim.theta
        charge = charge - fire * sim.theta
        out[n] = fire
    return out


SLOW_CASES = [  # (frames seed, shape, params): gray/RGB, uint8/float, every noise option, threshold 1 (the edge)
    (0, (9, 6, 7), SimParams()),
    (1, (7, 5, 4), SimParams(threshold=1.5, planes_per_frame=3, seed=11, mismatch=0.2)),
    (2, (6, 8, 6, 3), SimParams(planes_per_frame=2, seed=5, dark_current=0.05)),
    (3, (11, 4, 9), SimParams(threshold=1.0, planes_per_frame=4, seed=7, mismatch=0.5, dark_current=0.3)),
    (4, (5, 3, 5, 3), SimParams(threshold=5.0, planes_per_frame=5, seed=2, dark_current=0.01)),
    (5, (13, 16, 16), SimParams(threshold=1.0, seed=3)),
]


def _slow_case_frames(seed, shape):
    rng = np.random.default_rng(seed)
    if seed % 2:
        return rng.random(shape)
    frames = rng.integers(0, 256, size=shape, dtype=np.uint8)
    frames[:, 0] = 255  # saturated rows: charge 1 per plane, so threshold 1 fires every plane
    return frames


@pytest.mark.parametrize("seed, shape, params", SLOW_CASES)
def test_bit_identical_to_the_slow_per_plane_simulator(seed, shape, params, backend):
    frames = _slow_case_frames(seed, shape)
    expected = slow_simulation(frames, params)
    kwargs = dict(threshold=params.threshold, planes_per_frame=params.planes_per_frame, seed=params.seed,
                  mismatch=params.mismatch, dark_current=params.dark_current)
    assert expected.any()
    for chunk in (1, 3, 64):
        assert np.array_equal(simulate_spikes(frames, chunk_planes=chunk, **kwargs), expected), chunk
    assert np.array_equal(simulate_spikes(iter(frames), chunk_planes=5, **kwargs), expected)


def test_count_per_pixel_is_floor_of_initial_plus_summed_intensity():
    rng = np.random.default_rng(3)
    for trial in range(5):
        frames = rng.integers(0, 256, size=(int(rng.integers(1, 60)), 7, 9), dtype=np.uint8)
        threshold = float(rng.uniform(1.0, 6.0))
        seed = int(rng.integers(0, 2**31))
        spikes = simulate_spikes(frames, threshold=threshold, seed=seed, chunk_planes=int(rng.integers(1, 20)))
        initial = SpikeSimulator(SimParams(threshold, seed=seed), 7, 9).initial
        assert spikes.dtype == np.uint8 and set(np.unique(spikes)) <= {0, 1}
        assert ((initial >= 0) & (initial < threshold)).all()
        expected = np.floor((initial + (frames / 255.0).sum(0)) / threshold)
        assert np.array_equal(spikes.sum(0), expected), trial


def test_matches_slow_reference_with_interpolation_and_mismatch(backend):
    rng = np.random.default_rng(1)
    frames = rng.random((6, 5, 4))
    params = SimParams(threshold=1.5, planes_per_frame=3, seed=11, mismatch=0.2)
    spikes = simulate_spikes(frames, threshold=1.5, planes_per_frame=3, seed=11, mismatch=0.2)
    sim = SpikeSimulator(params, 5, 4)
    nxt = np.concatenate([frames[1:], frames[-1:]])  # the last frame is held
    planes = np.stack([frames + j / 3 * (nxt - frames) for j in range(3)], axis=1).reshape(18, 5, 4)
    assert spikes.shape == (18, 5, 4)
    assert np.array_equal(spikes, reference_simulation(planes, sim.initial, sim.theta))
    assert sim.theta.std() > 0 and sim.theta.min() >= 1.0


def test_rgb_iterator_and_chunking_give_the_same_bits(backend):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(10, 8, 6, 3), dtype=np.uint8)
    gray = rgb / 255.0 @ np.array([0.299, 0.587, 0.114])
    whole = simulate_spikes(rgb, planes_per_frame=2, seed=5, dark_current=0.05)
    assert whole.shape == (20, 8, 6)
    assert np.array_equal(whole, simulate_spikes(gray, planes_per_frame=2, seed=5, dark_current=0.05))
    frames_iter = (f for f in rgb)  # one RGB frame at a time
    assert np.array_equal(whole, simulate_spikes(frames_iter, planes_per_frame=2, seed=5, dark_current=0.05,
                                                 chunk_planes=3))
    chunks = list(iter_simulate(rgb, planes_per_frame=2, seed=5, dark_current=0.05, chunk_planes=4))
    assert len(chunks) > 2 and all(c.shape[0] <= 4 for c in chunks)
    assert np.array_equal(np.concatenate(chunks), whole)


def test_seed_and_noise_options_change_the_output():
    frames = np.full((40, 8, 8), 0.3)
    base = simulate_spikes(frames, seed=0)
    assert np.array_equal(base, simulate_spikes(frames, seed=0))
    assert not np.array_equal(base, simulate_spikes(frames, seed=1))
    dark = simulate_spikes(np.zeros((400, 8, 8)), dark_current=0.1, threshold=2.0)
    assert simulate_spikes(np.zeros((400, 8, 8))).sum() == 0  # the initial charge is below threshold
    assert 0.03 < dark.mean() < 0.07  # about dark_current / threshold spikes per plane


@pytest.mark.parametrize("kwargs, frames, match", [
    ({"threshold": 0.5}, np.zeros((2, 4, 4)), "threshold must be >= 1"),
    ({"planes_per_frame": 0}, np.zeros((2, 4, 4)), "planes_per_frame"),
    ({}, np.full((2, 4, 4), 2.0), r"\[0, 1\]"),
    ({}, np.full((2, 4, 4), np.nan), r"\[0, 1\]"),
    ({}, np.full((2, 4, 4), np.inf), r"\[0, 1\]"),
    ({"chunk_planes": 0}, np.zeros((2, 4, 4)), "chunk_planes"),
    ({}, np.zeros((2, 4, 4), np.int32), "dtype"),
    ({}, np.zeros((2, 4, 4, 2)), "RGB"),
    ({}, np.zeros((0, 4, 4)), "no frames"),
])
def test_bad_inputs(kwargs, frames, match):
    with pytest.raises(ValueError, match=match):
        simulate_spikes(frames, **kwargs)


def test_streaming_api_and_default_chunk():
    rng = np.random.default_rng(4)
    frames = rng.random((7, 6, 8))
    params = SimParams(planes_per_frame=3, seed=9, dark_current=0.1)
    sim = SpikeSimulator(params, 6, 8)
    parts = [sim.feed_frames(frames[:1]), sim.feed_frames(frames[1:5]), sim.feed_frames(frames[5:]), sim.finish()]
    assert [p.shape[0] for p in parts] == [0, 12, 6, 3]
    assert np.array_equal(np.concatenate(parts), slow_simulation(frames, params))
    with pytest.raises(ValueError, match="frame size"):
        sim.feed_frames(np.zeros((1, 5, 8)))
    planes = rng.random((5, 6, 8))  # fire(): per-plane intensities, no interpolation
    once = SpikeSimulator(SimParams(seed=2), 6, 8)
    assert np.array_equal(once.fire(planes), slow_simulation(planes, SimParams(seed=2)))
    assert default_chunk_planes(1080, 1920) == 16 and default_chunk_planes(64, 64) == 256
    assert [c.shape[0] for c in iter_simulate(np.zeros((40, 1080 // 8, 1920 // 8)), planes_per_frame=3)] == [120]


def test_kernel_is_built_once_into_the_user_cache_and_falls_back_to_numpy(tmp_path, monkeypatch):
    import spklip.data.simkernel as simkernel

    frames = np.random.default_rng(6).integers(0, 256, (6, 8, 8), np.uint8)
    expected = slow_simulation(frames, SimParams(planes_per_frame=2, seed=1))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    simkernel.load_kernel.cache_clear()
    try:
        if simkernel.load_kernel() is not None:  # a C compiler here: built into the cache, reused from there
            assert len(list((tmp_path / "cache" / "spklip").glob("spklip-simulate-*.so"))) == 1
            simkernel.load_kernel.cache_clear()
            assert simkernel.load_kernel() is not None
        (tmp_path / "bad.c").write_text("not C")
        monkeypatch.setattr(simkernel, "KERNEL_SOURCE", tmp_path / "bad.c")  # a failing build: the numpy loop, same bits
        simkernel.load_kernel.cache_clear()
        assert simkernel.load_kernel() is None and simulator_backend() == "numpy"
        assert np.array_equal(simulate_spikes(frames, planes_per_frame=2, seed=1), expected)
    finally:
        monkeypatch.undo()
        simkernel.load_kernel.cache_clear()


def test_mixed_dtypes_in_one_stream_and_a_bad_frame_midway(backend):
    """8-bit frames go to the kernel unconverted and floats unchecked until it reads them: a stream that mixes
    them gives the all-float bits, and an out-of-range float frame after good ones still fails with the range."""
    rng = np.random.default_rng(8)
    u8 = rng.integers(0, 256, (6, 5, 7), np.uint8)
    floats = u8 / 255.0
    params = dict(planes_per_frame=3, seed=4, mismatch=0.1)
    expected = simulate_spikes(floats, **params)
    mixed = [u8[0], floats[1], u8[2:4], floats[4:5], u8[5]]  # frames and chunks, both dtypes
    assert np.array_equal(simulate_spikes(iter(mixed), chunk_planes=4, **params), expected)
    assert np.array_equal(simulate_spikes(u8, **params), expected)
    bad = floats.copy()
    bad[4, 2, 3] = 1.5
    with pytest.raises(ValueError, match=r"\[0, 1\], got values in \[.*1\.5\]"):
        simulate_spikes(bad, **params)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        simulate_spikes(iter([floats[0], np.full((5, 7), np.nan)]), **params)


@pytest.mark.parametrize("params", [SimParams(planes_per_frame=4, seed=2, mismatch=0.1),
                                    SimParams(planes_per_frame=1, seed=3),
                                    SimParams(planes_per_frame=2, seed=4, dark_current=0.05)])
def test_threaded_kernel_calls_give_the_bits_of_one_thread(params, monkeypatch):
    """Threads share a call's pixels in disjoint block-aligned ranges: every split gives the one-thread bits, and an
    out-of-range value in the last thread's range still fails the call."""
    import spklip.data.simkernel as simkernel

    if simulator_backend() != "c":
        pytest.skip("no C compiler here: only the numpy loop runs")
    monkeypatch.setattr(simkernel, "MIN_THREAD_WORK", 1)  # thread even these small calls
    monkeypatch.setattr(simkernel, "BLOCK", 1024)  # blocks small enough for this frame to split into several
    frames = np.random.default_rng(9).random((5, 37, 61))  # 2257 pixels: 2 whole blocks and a partial one
    kwargs = dict(threshold=params.threshold, planes_per_frame=params.planes_per_frame, seed=params.seed,
                  mismatch=params.mismatch, dark_current=params.dark_current)
    expected = slow_simulation(frames, params)
    for threads in ("1", "2", "3", "7"):
        monkeypatch.setenv("SPKLIP_SIM_THREADS", threads)
        assert simkernel.kernel_threads() == int(threads)
        assert np.array_equal(simulate_spikes(frames, **kwargs), expected), threads
        assert np.array_equal(simulate_spikes((frames * 255).astype(np.uint8), **kwargs),
                              slow_simulation((frames * 255).astype(np.uint8), params)), threads
    bad = frames.copy()
    bad[3, -1, -1] = 1.5  # the last pixel: in the last range
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        simulate_spikes(bad, **kwargs)


def test_kernel_threads_follow_the_environment(monkeypatch):
    import spklip.data.simkernel as simkernel

    monkeypatch.delenv("SPKLIP_SIM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what Ray sets in a one-CPU task: a parallel build stays 1 each
    assert simkernel.kernel_threads() == 1
    monkeypatch.setenv("SPKLIP_SIM_THREADS", "3")
    assert simkernel.kernel_threads() == 3
    monkeypatch.delenv("SPKLIP_SIM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert simkernel.kernel_threads() >= 1
