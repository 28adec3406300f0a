"""Darts (issue 24, "why five"): two out-and-back darts at a clip's quarter points, the digit at the centre in between.
Whether K windows of the HSFE's radius cover the quarter points decides whether a class can be told from its
time-reverse, and the analytic K-window ceilings say so; a tiny build shows it in the spikes."""

import numpy as np
import pytest

from spklip.cli import main
from spklip.config.model import HsfeCfg
from spklip.data.moving_digits import DigitsSpec, _affine, caption, class_name, digit_clips
from spklip.data.phases import (ceilings, dart_centres, dart_spread_limit, missing_reverses, phase_track,
                                reverse_motion)
from spklip.data.shards import read_metadata
from spklip.data.simulate import SimParams
from test_data_phases import _centroid  # tests/ is on sys.path (pytest's default prepend import mode)

SWAPS = ("left-up", "up-left", "right-down", "down-right")  # closed under swapping the darts, no palindrome


def _windows(k: int, planes: int) -> list[int]:
    """The planes the K windows of spklip-tiny's radius (5) see, as HsfeCfg.layout places them."""
    _, step, first = HsfeCfg(num_subblocks=k, radius=5, step="auto").layout(planes)
    return sorted({first + i * step + j for i in range(k) for j in range(11)})


def test_dart_grammar_reverses_and_captions():
    assert reverse_motion("left-up", dart=10) == "up-left" and reverse_motion("left-up") == "down-right"
    assert reverse_motion("left:slow-up:fast", dart=10) == "up:fast-left:slow"
    assert missing_reverses(SWAPS, dart=10) == [] and missing_reverses(("left-up",), dart=10) == ["up-left"]
    assert caption(3, "left-up", 10) == "the digit three darts left, then up"
    assert class_name(3, "left:slow-up", 10) == "the digit three darting left slowly, then up"
    assert caption(3, "left-up") == "the digit three moves left, pauses, then moves up"  # without darts: as before


@pytest.mark.parametrize("planes", [32, 64, 128])
def test_darts_peak_at_the_quarter_points_rest_elsewhere_and_reverse_in_time(planes):
    c1, c2 = dart_centres(planes)
    assert c1 + c2 == planes - 1 and abs(c1 - (planes - 1) / 4) <= 0.5
    track = phase_track("left-up", planes, 0, 2.0, dart=10)  # [T, 2] px from the rest point
    moving = np.flatnonzero(np.abs(track).sum(1))
    assert list(moving) == list(range(c1 - 4, c1 + 5)) + list(range(c2 - 4, c2 + 5))  # 9 frames each, then rest
    np.testing.assert_array_equal(track[c1], [-10.0, 0.0])  # peak: 2 px/frame x 5 frames, to the left
    np.testing.assert_array_equal(track[c2], [0.0, -10.0])  # ... then up
    np.testing.assert_array_equal(phase_track("up-left", planes, 0, 2.0, dart=10), track[::-1])
    # the rendered affines: same draws -> the swapped class is the clip played backwards, and it rests at the centre
    spec = DigitsSpec(num_planes=planes, motions=SWAPS, dart=10)
    a = _affine(spec, "left-up", planes, np.random.default_rng(5), 0, 10)
    np.testing.assert_allclose(_affine(spec, "up-left", planes, np.random.default_rng(5), 0, 10), a[::-1], atol=1e-12)
    rest = np.setdiff1d(np.arange(planes), moving)
    np.testing.assert_array_equal(a[rest], a[rest[:1]].repeat(len(rest), 0))


def test_ceilings_follow_whether_the_windows_cover_the_quarter_points():
    def c(planes):
        out = ceilings(DigitsSpec(num_planes=planes, digits=(3, 5), motions=SWAPS, dart=10))
        return out["centred_window"], out["order_blind"], out["subblocks"]

    # 64 planes: K = 3 windows (0-10, 26-36, 52-62) miss both darts (frames 12-20, 43-51) and see the digit alone;
    # K = 5 (0, 13, 26, 39, 52) and K = 7 catch both; the average merges each class with its swap
    assert set(_windows(3, 64)).isdisjoint(set(range(12, 21)) | set(range(43, 52)))
    assert c(64) == (2 / 8, 4 / 8, {"3": 2 / 8, "5": 1.0, "7": 1.0})
    # 32 planes: darts at frames 4-12 and 19-27 reach even the centred window (10-20), and 3 windows cover the clip
    assert c(32) == (1.0, 4 / 8, {"3": 1.0, "5": 1.0, "7": 1.0})
    # K = 5's windows sit at the quarter points whatever the clip's length (0, 1/4, 1/2, 3/4, 1 of the span): fixed
    # dart times favour it by construction, which is what --dart-spread is for
    assert c(128)[2] == {"3": 2 / 8, "5": 1.0, "7": 1.0}  # K = 7: a window (19-29) glimpses the first dart
    assert "7" not in ceilings(DigitsSpec(num_planes=16, digits=(3,), motions=SWAPS, dart=2))["subblocks"]


def test_a_dart_spread_makes_the_ceilings_a_matter_of_coverage():
    """With each clip's dart times drawn within +-S planes, the ceilings are Bayes-optimal over the timings: for the
    K = 3 observer they lie between two counts over every timing, and a wider spread lets K = 3 see more darts."""
    assert dart_spread_limit(64, 10) == 11  # darts peak at 16 and 47 and move 4 frames either side
    spec = DigitsSpec(num_planes=64, digits=(3,), motions=SWAPS, dart=10, dart_spread=11)
    out = ceilings(spec)
    assert out["order_blind"] == 0.5 and out["subblocks"]["5"] == out["subblocks"]["7"] == 1.0
    assert out["centred_window"] < out["subblocks"]["3"] < 1.0
    # per timing (c1, c2): missing both darts leaves 1 of 2 right (a class or its swap); seeing a dart's peak frame
    # dates it exactly, so the class is known (a lower bound); seeing any moving frame is needed (an upper bound)
    seen = np.zeros(64, bool)
    seen[_windows(3, 64)] = True
    times = [(c1, c2) for c1 in range(16 - 11, 16 + 12) for c2 in range(47 - 11, 47 + 12)]
    peak = np.mean([seen[c1] or seen[c2] for c1, c2 in times])
    glimpse = np.mean([seen[c1 - 4: c1 + 5].any() or seen[c2 - 4: c2 + 5].any() for c1, c2 in times])
    assert peak + (1 - peak) / 2 <= out["subblocks"]["3"] <= glimpse + (1 - glimpse) / 2
    narrow = ceilings(DigitsSpec(num_planes=64, digits=(3,), motions=SWAPS, dart=10, dart_spread=4))
    assert narrow["subblocks"]["3"] < out["subblocks"]["3"]
    # the clip's draws: every shift in range, and a class's reverse is its clip played backwards at mirrored times
    for seed in range(20):
        a = _affine(spec, "left-up", 64, np.random.default_rng(seed), 0, 10, 11)
        rng = np.random.default_rng(seed)
        rng.uniform(-1, 1, 2)  # the jitter, then the dart times
        s1, s2 = rng.integers(-11, 12, 2)
        path = a[:, :, 2]  # [T, 2] translation part; moves only while a dart does
        moving = np.flatnonzero(np.abs(np.diff(path, axis=0)).sum(1) > 1e-9)
        assert moving.min() == 16 + s1 - 5 and moving.max() == 47 + s2 + 4
        np.testing.assert_array_equal(phase_track("up-left", 64, 0, 1.0, 10, (-s2, -s1)),
                                      phase_track("left-up", 64, 0, 1.0, 10, (s1, s2))[::-1])


def test_spec_refuses_darts_it_cannot_draw(tmp_path, capsys):
    for kw, match in [({"motions": ("left", "right")}, "--darts"), ({"motions": SWAPS, "pause": 5}, "--darts"),
                      ({"motions": SWAPS, "dart": 40}, "--darts"), ({"motions": ("left-up",)}, "up-left"),
                      ({"motions": SWAPS, "dart_spread": 12}, "--dart-spread"),
                      ({"motions": SWAPS, "dart": 0, "dart_spread": 1}, "--dart-spread")]:
        with pytest.raises(ValueError, match=match):
            DigitsSpec(num_planes=64, **{"dart": 10, **kw})
    assert "dart" not in DigitsSpec().builder_args()  # builds without --darts keep their fingerprints
    assert main(["data", "build", "moving-digits", "--out", str(tmp_path / "bad"), "--motions", "left,right",
                 "--darts", "10", "--no-progress"]) == 2
    assert "--darts" in capsys.readouterr().err


def test_a_tiny_dart_build_hides_the_order_from_three_windows_but_not_from_five(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["data", "build", "moving-digits", "--out", str(out), "--digits", "3", "--motions", ",".join(SWAPS),
                 "--darts", "10", "--speed", "1.5", "--clips-per-class", "24", "--unseen-classes", "0",
                 "--val-frac", "0", "--test-frac", "0", "--planes", "64", "--height", "32", "--width", "32",
                 "--background", "0", "--no-progress"]) == 0
    meta = read_metadata(out)
    assert meta["builder"]["dart"] == 10 and meta["builder"]["ceilings"]["all"]["subblocks"]["5"] == 1.0
    capsys.readouterr()
    assert main(["data", "inspect", str(out)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("ceilings"))
    assert "order-blind 0.500, K = 3 windows 0.250, K = 5 windows 1.000, K = 7 windows 1.000" in line, line

    spec = DigitsSpec(num_planes=64, height=32, width=32, digits=(3,), motions=SWAPS, clips_per_class=24,
                      unseen_classes=0, val_frac=0, test_frac=0, background=0.0, speed=1.5, dart=10)
    info, clips, _ = digit_clips(spec, SimParams())
    clips = list(clips)
    lu, ul = info.class_names.index(class_name(3, "left-up", 10)), info.class_names.index(class_name(3, "up-left", 10))

    def centroid(label, planes):  # mean over the class's clips of the spikes' centre of mass (x, y), px
        return _centroid(clips, label, planes)

    # in K = 3's windows the digit sits at the centre whatever the class (jitter +-4 px averages to ~0.5 px); in
    # K = 5's second window (planes 13-23) left-up's digit is left of up-left's, which is above it
    three = _windows(3, 64)
    assert np.abs(centroid(lu, three) - centroid(ul, three)).max() < 1.5
    dx, dy = centroid(lu, list(range(13, 24))) - centroid(ul, list(range(13, 24)))
    assert dx < -1.5 and dy > 1.5, (dx, dy)
