"""Two-phase moving digits (issue 24, item 1): grammar, captions, time-reverse symmetry, the rest at the centre, the
analytic ceilings, and a tiny build where a centred window and an order-blind average really cannot split a class
from its time-reverse."""

import numpy as np
import pytest

from spklip.cli import main
from spklip.config.model import HsfeCfg
from spklip.data.moving_digits import DigitsSpec, _affine, caption, class_name, digit_clips
from spklip.data.phases import (ceilings, ceilings_line, default_window, missing_reverses, parse_motion, phase_track,
                                rest_frames, reverse_motion, with_speeds)
from spklip.config import load_config
from spklip.data.read import dataset_info
from spklip.data.shards import read_metadata
from spklip.data.simulate import SimParams
from spklip.config.registry import get_model_config

TURNS = ("left-up", "down-right", "up-left", "right-down")  # closed under time reversal, no palindrome


def test_grammar_reverses_and_captions():
    assert parse_motion("left:slow-up") == (("left", "slow"), ("up", None)) and parse_motion("left") is None
    assert reverse_motion("left-up") == "down-right" and reverse_motion("left:slow-up:fast") == "down:fast-right:slow"
    assert reverse_motion("left-right") == "left-right"  # a palindrome is its own reverse
    assert all(reverse_motion(reverse_motion(m)) == m for m in TURNS)
    assert missing_reverses(TURNS) == [] and missing_reverses(("left-up", "left")) == ["down-right"]
    assert with_speeds(("left-left",), ("slow", "fast")) == ("left:slow-left:slow", "left:fast-left:fast")
    assert with_speeds(("left-left",), ("slow-fast",)) == ("left:slow-left:fast",)
    assert caption(3, "left-up") == "the digit three moves left, pauses, then moves up"
    assert class_name(3, "left:slow-left:fast") == "the digit three moving left slowly, pausing, then moving left fast"
    assert caption(3, "left") == "the digit three moves left"  # one-phase motions as before
    for bad in ("left-up-down", "left-sideways", "left:quick-up"):
        with pytest.raises(ValueError, match="motion"):
            parse_motion(bad)
    with pytest.raises(ValueError, match="--speeds"):
        with_speeds(("left",), ("slow",))
    with pytest.raises(ValueError, match="--speeds"):
        with_speeds(("left-up",), ("slow-medium",))


def test_spec_wants_reverses_and_a_speed_that_keeps_the_digit_on_the_canvas():
    with pytest.raises(ValueError, match="--motions.*down-right"):
        DigitsSpec(motions=("left-up",))
    with pytest.raises(ValueError, match="--pause"):
        DigitsSpec(motions=TURNS, pause=0)
    spec = DigitsSpec(num_planes=64, height=64, width=64, digits=(3,), motions=TURNS, clips_per_class=2,
                      speed=1.5, unseen_classes=0)
    with pytest.raises(ValueError, match="--speed"):
        digit_clips(spec, SimParams())


@pytest.mark.parametrize("planes", [32, 64, 128])
def test_every_clip_rests_at_the_centre_in_the_middle_and_reverses_in_time(planes):
    w = default_window()
    assert w == 2 * get_model_config("spklip-tiny")["hsfe"]["radius"] + 1 == 11
    k, _, offset = HsfeCfg(num_subblocks=1, radius=w // 2, step="auto").layout(planes)  # the centred window
    rest = rest_frames(planes)
    s = (planes - rest) // 2
    assert s <= offset and offset + w - 1 <= s + rest - 1 and s + (s + rest - 1) == planes - 1  # symmetric rest
    for m in TURNS + ("left:slow-left:fast", "right:fast-right:slow"):
        track = phase_track(m, planes, rest, 0.5)  # [T, 2]
        assert np.all(track[s: s + rest] == 0) and np.all(np.abs(track[:s]).sum(1) > 0)
        np.testing.assert_array_equal(phase_track(reverse_motion(m), planes, rest, 0.5), track[::-1])
    # the rendered affines: same jitter, scale and handwriting draw -> the reverse class is the clip played backwards
    spec = DigitsSpec(num_planes=planes, motions=TURNS, speed=0.25)
    a = _affine(spec, "left-up", planes, np.random.default_rng(5), rest)
    b = _affine(spec, "down-right", planes, np.random.default_rng(5), rest)
    np.testing.assert_allclose(b, a[::-1], atol=1e-12)
    np.testing.assert_array_equal(a[offset: offset + w], a[offset: offset + 1].repeat(w, 0))  # still in the window


def test_ceilings_are_what_the_design_implies():
    def c(motions, digits=(3, 5), planes=32, **kw):
        out = ceilings(DigitsSpec(num_planes=planes, digits=digits, motions=motions, **kw))
        return out["centred_window"], out["order_blind"]

    assert c(TURNS) == (2 / 8, 4 / 8)  # the window sees only the digit; the average merges each reverse pair
    assert c(TURNS + ("left-right",)) == (2 / 10, 6 / 10)  # a palindrome is its own group
    speeds = with_speeds(("left-left", "right-right"), ("slow", "fast"))
    assert c(speeds, planes=64) == (2 / 8, 4 / 8)
    assert c(with_speeds(("left-left", "right-right"), ("slow-fast", "fast-slow")), planes=128) == (2 / 8, 4 / 8)
    assert c(("left", "right", "still")) == (1.0, 4 / 6)  # the old motions: 11 planes see the direction
    assert c(TURNS, pause=3) == (1.0, 4 / 8)  # a short rest lets the window see the phases: the ceiling says so
    seen = ceilings(DigitsSpec(digits=(3,), motions=TURNS), labels=[0, 1, 2])  # "right-down" held out
    assert (seen["classes"], seen["order_blind"]) == (3, 2 / 3) and seen["window"] == [10, 20]


def _window_means(clips, label, planes):
    """Mean spike image of `label`'s clips over the planes `planes` ([H, W]), and the two halves' means."""
    x = np.stack([c.spikes[planes].astype(np.float64).mean(0) for c in clips if c.label == label])  # [n, H, W]
    return x.mean(0), x[::2].mean(0), x[1::2].mean(0)


def _centroid(clips, label, planes):
    """Mean over `label`'s clips of the spikes' centre of mass (x, y) in px over the planes `planes`."""
    out = []
    for c in clips:
        if c.label == label:
            img = c.spikes[planes].astype(np.float64).sum(0)  # [H, W]
            ys, xs = np.indices(img.shape)
            out.append([(img * xs).sum() / img.sum(), (img * ys).sum() / img.sum()])
    return np.mean(out, axis=0)


def test_a_tiny_build_cannot_split_a_class_from_its_reverse_in_the_centre_or_on_average():
    spec = DigitsSpec(num_planes=32, height=32, width=32, digits=(3,), motions=TURNS, clips_per_class=24,
                      unseen_classes=0, val_frac=0, test_frac=0, background=0.0)
    info, clips, _ = digit_clips(spec, SimParams(threshold=1.5))
    clips = list(clips)
    lu, dr, ul = (info.class_names.index(class_name(3, m)) for m in ("left-up", "down-right", "up-left"))
    centre, first, whole = slice(10, 21), slice(0, 11), slice(0, 32)  # the centred window of spklip-tiny: 10-20

    def dist(a, b):
        return float(np.abs(a - b).mean())

    # average spike images over 24 clips (handwriting and jitter differ per clip): "noise" is the distance between
    # the two 12-clip halves of one class; a class and its reverse must be no further apart than that
    a, a1, a2 = _window_means(clips, lu, centre)
    assert dist(a, _window_means(clips, dr, centre)[0]) < 1.2 * dist(a1, a2)  # centred window: class ~ its reverse
    w, w1, w2 = _window_means(clips, lu, whole)
    assert dist(w, _window_means(clips, dr, whole)[0]) < 1.2 * dist(w1, w2)  # order-blind average: ~ its reverse
    assert dist(w, _window_means(clips, ul, whole)[0]) > 1.5 * dist(w1, w2)  # ... but not another turn
    # where the digit is (centre of mass, px; jitter +-4 px averages out to ~0.5 px): the same at rest in the centred
    # window, ~4 px apart per axis in the first window (left-up comes from the right, down-right from above)
    assert np.abs(_centroid(clips, lu, centre) - _centroid(clips, dr, centre)).max() < 1.5
    assert np.abs(_centroid(clips, lu, first) - _centroid(clips, dr, first)).min() > 2.5
    assert info.builder["ceilings"]["all"]["centred_window"] == 0.25 and info.builder["pause"] is None


def test_cli_builds_speed_classes_and_inspect_prints_the_ceilings(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["data", "build", "moving-digits", "--out", str(out), "--digits", "3,5", "--motions",
                 "left-left,right-right", "--speeds", "slow,fast", "--clips-per-class", "2", "--unseen-classes", "0",
                 "--planes", "64", "--height", "32", "--width", "32", "--speed", "0.25", "--no-progress"]) == 0
    meta = read_metadata(out)
    assert meta["clip_shape"] == [64, 32, 32] and len(meta["class_names"]) == 8
    assert "the digit five moving right fast, pausing, then moving right fast" in meta["class_names"]
    assert meta["builder"]["ceilings"]["seen"]["order_blind"] == 0.5
    # the typed facts training reads: what each class is made of, for the per-factor zero-shot breakdown
    facts = dataset_info(load_config(None, {"data.path": str(out), "model.num_planes": 64, "model.height": 32,
                                            "model.width": 32, "model.hsfe.radius": 5}), eval_only=True, split="train")
    assert facts.class_names == meta["class_names"] and facts.rows("train") == meta["splits"]["train"]
    assert facts.class_factors[1] == {"digit": "3", "phase1": "left:fast", "phase2": "left:fast"}
    assert [f["digit"] for f in facts.class_factors] == ["3"] * 4 + ["5"] * 4
    capsys.readouterr()
    assert main(["data", "inspect", str(out)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("ceilings"))
    assert "centred window (planes 26-36) 0.250, order-blind 0.500" in line
    assert ceilings_line({"kind": "video-folder"}) is None
    assert main(["data", "build", "moving-digits", "--out", str(tmp_path / "bad"), "--motions", "left-up",
                 "--planes", "32", "--no-progress"]) == 2
    assert "--motions" in capsys.readouterr().err


def test_unseen_pairs_are_held_out_as_named_and_inspect_prints_the_zero_shot_ceilings(tmp_path, capsys):
    """``--unseen 0:left,0:right,1:left,1:right``: a 2 x 2 block, so zero-shot must read the digit and the direction;
    an order-blind average tells the digit only (ceiling 0.5 over the 4 unseen classes)."""
    out = tmp_path / "ds"
    assert main(["data", "build", "moving-digits", "--out", str(out), "--digits", "0,1,2", "--motions",
                 "left,right,up", "--unseen", "0:left,0:right,1:left,1:right", "--clips-per-class", "2",
                 "--planes", "16", "--height", "16", "--width", "16", "--no-progress"]) == 0
    meta = read_metadata(out)
    held = sorted(meta["class_names"][i] for i in meta["unseen_labels"])
    assert held == ["the digit one moving left", "the digit one moving right", "the digit zero moving left",
                    "the digit zero moving right"]
    assert meta["builder"]["unseen"] == ["0:left", "0:right", "1:left", "1:right"]
    capsys.readouterr()
    assert main(["data", "inspect", str(out)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("ceilings"))
    assert "unseen 4 classes: centred window (planes 2-12) 1.000, order-blind 0.500" in line, line
    assert "unseen" not in DigitsSpec().builder_args()  # builds without --unseen keep their fingerprints
    for bad in ("0-left", "7:left", "0:spin", "0:left,0:left"):
        assert main(["data", "build", "moving-digits", "--out", str(tmp_path / "bad"), "--digits", "0,1",
                     "--motions", "left,right", "--unseen", bad, "--no-progress"]) == 2
        assert "--unseen" in capsys.readouterr().err
