"""Two-phase motions for moving digits, and the analytic accuracy ceilings of a data set's class structure.

Pure numpy (no torch): ``spklip data inspect`` uses it to print the ceilings of any moving-digits data set.

A two-phase motion ``A-B`` moves the digit in direction A towards the canvas centre, pauses there, then moves in
direction B: "the digit three moves left, pauses, then moves up". A phase may carry a speed class,
``left:slow-up:fast`` ("moves left slowly, pauses, then moves up fast"); without one it moves at the base speed.
Every clip is still at the (jittered) centre for the same middle planes, so a window there sees the digit alone
and still, whatever the class. Time-reversing ``A-B`` gives ``(-B)-(-A)`` with the same positions and dwell
(`reverse_motion`); a data set of two-phase motions must hold each class's reverse, so that an order-blind average
of the planes cannot tell a class from its reverse.

With ``dart`` planes (``--darts``), ``A-B`` is instead two darts: the digit rests at the centre, darts in direction A
and back over `dart` planes centred at a quarter of the clip, rests, then darts B and back centred at three
quarters (caption: "the digit three darts left, then up"). Between the darts the digit is at the
centre, so an observer whose windows miss a dart sees the digit alone and still there: the data asks whether the
sub-blocks cover *when* things happen (the sub-block count K at a given radius). With ``dart_spread`` S each clip
draws each dart's centre uniformly within +-S planes of its quarter point, independently, so a dart can happen
anywhere in its half of the clip and only windows that cover the clip see every dart. The time-reverse of darts
``A-B`` is ``B-A`` (the draws are mirror-symmetric, so a class and its reverse have the same timing statistics).

`ceilings` computes, from the class structure alone, the best top-1 accuracy some observers can reach under
uniform classes (and, for darts with a spread, uniform dart times: the Bayes-optimal accuracy over every timing
the builder can draw): ``centred_window`` sees only the centred window of the default layout (spklip-tiny's HSFE
with K = 1: 2r+1 = 11 planes); ``order_blind`` sees the whole clip but not the order of its planes (a spike average,
or the authors' position-free temporal encoder); ``subblocks`` sees, in order, the planes of K windows of that
radius laid out as `HsfeCfg.layout` lays them (``step: auto``), for K = 3, 5, 7. Classes whose observations are
identical are merged into one group; a group of g classes is right 1/g of the time at best, so the ceiling is
(groups) / (classes).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any, Mapping

import numpy as np

from spklip.config.model import HsfeCfg
from spklip.config.registry import get_model_config

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # (dx, dy) in image coordinates
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
SPEED_FACTORS = {"slow": 0.5, "fast": 1.5}  # x the base speed (``--speed``); no class: 1.0
SPEED_WORDS = {"slow": "slowly", "fast": "fast", None: ""}
AUTO_PAUSE_MARGIN = 2  # auto pause = the default centred window + this many planes
JITTER_FRAC = 1 / 8  # the builder's centre jitter, +- this share of the shorter canvas side
MAX_TRAVEL_FRAC = 3 / 8  # a phase may carry the digit's centre this share of the shorter side from the centre
DEFAULT_WINDOW_PRESET = "spklip-tiny"  # whose HSFE window the centred-window ceiling uses
CEILING_SUBBLOCKS = (3, 5, 7)  # the K-window observers `ceilings` reports

Phase = tuple[str, str | None]  # (direction, speed class or None)


def parse_motion(name: str) -> tuple[Phase, Phase] | None:
    """``"left:slow-up"`` -> ``(("left", "slow"), ("up", None))``; None if `name` has no ``-`` (a one-phase motion
    such as ``left`` or ``rotate``). Raises ValueError naming the bad part of a malformed two-phase name."""
    if "-" not in name:
        return None
    parts = name.split("-")
    if len(parts) != 2:
        raise ValueError(f"motion {name!r}: a phased motion has exactly two phases, DIR[:SPEED]-DIR[:SPEED]")
    phases = []
    for part in parts:
        direction, _, speed = part.partition(":")
        if direction not in DIRECTIONS or (speed and speed not in SPEED_FACTORS):
            raise ValueError(f"motion {name!r}: phase {part!r} must be DIR[:SPEED] with DIR in "
                             f"{', '.join(DIRECTIONS)} and SPEED in {', '.join(SPEED_FACTORS)}")
        phases.append((direction, speed or None))
    return phases[0], phases[1]


def is_phased(name: str) -> bool:
    """Whether `name` is a two-phase motion (``A-B``)."""
    return "-" in name


def motion_name(phases: tuple[Phase, Phase]) -> str:
    """The inverse of `parse_motion`."""
    return "-".join(d + (f":{s}" if s else "") for d, s in phases)


def reverse_motion(name: str, dart: int = 0) -> str:
    """The time-reverse of a two-phase motion: ``A:s-B:t`` -> ``(-B):t-(-A):s`` (same positions and dwell); of
    darts (`dart` > 0): ``B:t-A:s`` (a dart out and back, reversed, is the same dart)."""
    first, second = parse_motion(name)
    if dart:
        return motion_name((second, first))
    return motion_name(((OPPOSITE[second[0]], second[1]), (OPPOSITE[first[0]], first[1])))


def missing_reverses(motions: tuple[str, ...], dart: int = 0) -> list[str]:
    """The reverses of the two-phase motions (darts if `dart`) in `motions` that `motions` lacks (empty: closed
    under reversal)."""
    have = set(motions)
    return sorted({reverse_motion(m, dart) for m in motions if is_phased(m)} - have)


def with_speeds(motions: tuple[str, ...], speeds: tuple[str, ...]) -> tuple[str, ...]:
    """``--speeds``: each two-phase motion given without speeds, once per speed pattern.

    A pattern is one class for both phases (``slow``: ``left-up`` -> ``left:slow-up:slow``) or one per phase
    (``slow-fast``: ``left-left`` -> ``left:slow-left:fast``, "speeds up"). Raises ValueError naming ``--speeds``.
    """
    out = []
    for m in motions:
        phases = parse_motion(m)
        if phases is None or any(s for _, s in phases):
            raise ValueError(f"--speeds applies to two-phase motions without speeds (DIR-DIR); got {m!r}")
        for pattern in speeds:
            pair = pattern.split("-")
            if len(pair) == 1:
                pair = pair * 2
            if len(pair) != 2 or any(s not in SPEED_FACTORS for s in pair):
                raise ValueError(f"--speeds: {pattern!r} must be SPEED or SPEED-SPEED with SPEED in "
                                 f"{', '.join(SPEED_FACTORS)}")
            out.append(motion_name(((phases[0][0], pair[0]), (phases[1][0], pair[1]))))
    return tuple(dict.fromkeys(out))


def phrases(name: str, dart: int = 0) -> tuple[str, str]:
    """``(caption verb phrase, class-name phrase)`` of a two-phase motion:
    ``("moves left slowly, pauses, then moves up fast", "moving left slowly, pausing, then moving up fast")``;
    of darts: ``("darts left, then up", "darting left, then up")`` (short on purpose: MiniLM's embeddings of
    "darts left and back, then darts up and back" and of its swap are 0.996 alike, of "darts left, then up" and
    "darts up, then left" 0.979, about as far apart as the two-phase captions' 0.973)."""
    (d1, s1), (d2, s2) = parse_motion(name)
    one, two = f"{d1} {SPEED_WORDS[s1]}".strip(), f"{d2} {SPEED_WORDS[s2]}".strip()
    if dart:
        return f"darts {one}, then {two}", f"darting {one}, then {two}"
    return f"moves {one}, pauses, then moves {two}", f"moving {one}, pausing, then moving {two}"


def rest_frames(num_planes: int, planes_per_frame: int = 1, pause: int | None = None,
                window: int | None = None) -> int:
    """Frames the digit rests at the centre: `pause` planes, or (None) the default centred window + 2 planes, at
    most half the clip; in frames, rounded up to the parity of the clip's frame count so that the rest sits
    exactly in the middle (frames ``[s, s + rest)``, s = (T - rest) // 2, mirror-symmetric)."""
    n_frames = math.ceil(num_planes / planes_per_frame)
    if pause is None:
        pause = min((window or default_window()) + AUTO_PAUSE_MARGIN, max(1, num_planes // 2))
    rest = math.ceil(pause / planes_per_frame)
    return min(n_frames, rest + (rest - n_frames) % 2)


def dart_centres(n_frames: int) -> tuple[int, int]:
    """Frames at which the two darts peak: a quarter and three quarters of the clip, mirror-symmetric."""
    first = round((n_frames - 1) / 4)
    return first, n_frames - 1 - first


def dart_spread_limit(n_frames: int, dart: float) -> int:
    """The largest spread (frames) that keeps both darts inside the clip and apart."""
    c1, c2 = dart_centres(n_frames)
    half = math.ceil(dart / 2) - 1  # frames a dart moves either side of its peak
    return max(-1, min(c1 - half, (c2 - c1 - 2 * half - 1) // 2))


def phase_track(name: str, n_frames: int, pause: int, speed: float, dart: float = 0,
                shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    """``[T, 2]`` offsets (px) of the digit's centre from its rest point, per frame, for a two-phase motion.

    Frames ``[s, e]`` (s = (T - pause) // 2, e = s + pause - 1; `pause` frames from `rest_frames`) are the rest; phase
    one reaches the rest point at frame s, phase two leaves it after frame e, each at its own speed (px/frame).
    Darts (`dart` frames > 0; `pause` unused): a dart centred at frame c moves ``v * max(0, dart/2 - |t - c|)`` from
    the rest point (out at v px/frame, peak at c, back), at c = `dart_centres` + `shift` (frames, one per dart: the
    clip's draw within the spread); the digit rests elsewhere.
    """
    (d1, s1), (d2, s2) = parse_motion(name)
    v1 = np.array(DIRECTIONS[d1], float) * speed * SPEED_FACTORS.get(s1, 1.0)  # px per frame
    v2 = np.array(DIRECTIONS[d2], float) * speed * SPEED_FACTORS.get(s2, 1.0)
    if dart:
        t = np.arange(n_frames, dtype=np.float64)[:, None]  # [T, 1]
        c1, c2 = np.add(dart_centres(n_frames), shift)
        return v1 * np.maximum(0.0, dart / 2 - np.abs(t - c1)) + v2 * np.maximum(0.0, dart / 2 - np.abs(t - c2))
    s = (n_frames - pause) // 2
    e = s + pause - 1
    t = np.arange(n_frames, dtype=np.float64)[:, None]  # [T, 1]
    return np.where(t < s, v1 * (t - s), 0.0) + np.where(t > e, v2 * (t - e), 0.0)  # [T, 2]


def max_travel(name: str, n_frames: int, pause: int, speed: float, dart: float = 0) -> float:
    """Largest distance (px) of the digit's centre from its rest point over the clip."""
    return float(np.abs(phase_track(name, n_frames, pause, speed, dart)).max(initial=0.0))


def default_window(preset: str = DEFAULT_WINDOW_PRESET) -> int:
    """2r+1 of `preset`'s HSFE (the window a single centred sub-block sees)."""
    return 2 * int(get_model_config(preset).get("hsfe", {}).get("radius", 30)) + 1


def _get(spec: Any, key: str, default: Any = None) -> Any:
    return spec.get(key, default) if isinstance(spec, Mapping) else getattr(spec, key, default)


def _track(motion: str, n_frames: int, pause: int, speed: float, dart: float = 0,
           shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    """``[T, 4]`` canonical per-frame state (dx, dy, angle, log scale) without the per-clip jitter, handwriting,
    random scale or rotation sense: what distinguishes one motion from another."""
    t = np.arange(n_frames, dtype=np.float64)
    out = np.zeros((n_frames, 4))
    if is_phased(motion):
        out[:, :2] = phase_track(motion, n_frames, pause, speed, dart, shift)
    elif motion in DIRECTIONS:
        out[:, :2] = np.array(DIRECTIONS[motion]) * speed * (t[:, None] - (n_frames - 1) / 2)
    elif motion == "rotate":
        out[:, 2] = np.deg2rad(6.0 * speed) * t
    elif motion in ("grow", "shrink"):
        out[:, 3] = 0.025 * speed * (1 if motion == "grow" else -1) * (t - (n_frames - 1) / 2)
    return out


def plane_views(motion: str, num_planes: int, planes_per_frame: int, pause: int, speed: float,
                dart: float = 0, shift: tuple[int, int] = (0, 0)) -> list[tuple]:
    """What each spike plane shows (`pause`: rest frames; `dart`, `shift`: as in `phase_track`): the two frames'
    states it interpolates between and its weight (the simulator's linear interpolation; the last frame is held),
    rounded so that equal views compare equal."""
    n_frames = math.ceil(num_planes / planes_per_frame)
    track = np.round(_track(motion, n_frames, pause, speed, dart, shift), 6) + 0.0  # + 0.0: no -0.0
    views = []
    for n in range(num_planes):
        f, j = divmod(n, planes_per_frame)
        views.append((tuple(track[f]), tuple(track[min(f + 1, n_frames - 1)]) if j else (), j))
    return views


def ceilings(spec: Any, labels: list[int] | None = None, planes_per_frame: int = 1,
             window: int | None = None) -> dict[str, Any]:
    """Analytic top-1 ceilings of two observers on a moving-digits data set, under uniform classes.

    Args:
        spec: a `DigitsSpec` or its builder dict (``digits``, ``motions``, ``num_planes``, ``speed``, ``pause``,
            ``dart``, ``dart_spread``).
        labels: the classes competing (indices into digit x motion, digit-major); None: all of them.
        planes_per_frame: the simulator's (planes interpolate between frames).
        window: planes of the centred window; None: the default preset's 2r+1 (spklip-tiny: 11).

    Returns:
        ``{"centred_window": x, "order_blind": y, "subblocks": {"K": z}, "window": [first, last], "classes": C,
        "groups": {observer: G}}``: x, y and each z are (groups of identical observations) / (classes) (with a dart
        spread: the Bayes-optimal accuracy over the classes and every dart timing, G distinct observations). The centred
        window is HsfeCfg.layout's with K = 1 (offset (N - w) // 2); a window longer than the clip is the whole
        clip. A K whose windows do not fit the clip is left out of ``subblocks``.
    """
    digits, motions = list(_get(spec, "digits")), list(_get(spec, "motions"))
    n, speed = int(_get(spec, "num_planes")), float(_get(spec, "speed", 1.0))
    dart = (_get(spec, "dart") or 0) / planes_per_frame  # frames
    spread = (_get(spec, "dart_spread") or 0) // planes_per_frame  # frames
    w = min(window or default_window(), n)
    pause = rest_frames(n, planes_per_frame, _get(spec, "pause"), window)
    offset = (n - w) // 2
    pairs = [(d, m) for d in digits for m in motions]
    chosen = range(len(pairs)) if labels is None else labels
    shifts = [(a, b) for a in range(-spread, spread + 1) for b in range(-spread, spread + 1)]  # equally likely
    views = {(m, sh): plane_views(m, n, planes_per_frame, pause, speed, dart, sh) for m in motions for sh in shifts}

    def bayes(observe) -> tuple[float, int]:  # (best top-1, distinct observations) of an observer seeing observe(views)
        counts: dict = defaultdict(Counter)  # observation -> class -> timings giving it
        for i in chosen:
            digit, motion = pairs[i]
            for sh in shifts:
                counts[(digit, observe(views[(motion, sh)]))][i] += 1
        best = sum(max(by_class.values()) for by_class in counts.values())
        return best / max(len(chosen) * len(shifts), 1), len(counts)

    def windows(planes):
        return lambda v: tuple(v[p] for p in planes)

    centred, centred_groups = bayes(windows(range(offset, offset + w)))
    blind, blind_groups = bayes(lambda v: tuple(sorted(v)))
    out = {"centred_window": centred, "order_blind": blind, "subblocks": {},
           "window": [offset, offset + w - 1], "classes": len(chosen),
           "groups": {"centred_window": centred_groups, "order_blind": blind_groups}}
    for k in CEILING_SUBBLOCKS:
        if w + k - 1 > n:
            continue
        _, step, first = HsfeCfg(num_subblocks=k, radius=(w - 1) // 2, step="auto").layout(n)
        out["subblocks"][str(k)] = bayes(windows(sorted({first + i * step + j for i in range(k) for j in range(w)})))[0]
    return out


def ceilings_line(meta: Mapping[str, Any]) -> str | None:
    """The ``ceilings`` line of ``spklip data inspect`` for a moving-digits data set (None for other kinds): the
    stored ceilings, or (data sets built before they were stored) ones computed from the builder's arguments."""
    if meta.get("kind") != "moving-digits":
        return None
    builder = meta.get("builder", {})
    ppf = int((meta.get("simulator") or {}).get("planes_per_frame", 1))
    unseen = sorted(meta.get("unseen_labels", []))
    stored = builder.get("ceilings")
    if stored is None or "subblocks" not in stored.get("all", {}):  # built before the K-window ceilings existed
        seen = [i for i in range(len(meta.get("class_names", []))) if i not in set(unseen)]
        stored = {"all": ceilings(builder, None, ppf), "seen": ceilings(builder, seen, ppf)}
    if unseen and "unseen" not in stored:  # the zero-shot competition: cheap, so computed here, never stored
        stored = {**stored, "unseen": ceilings(builder, unseen, ppf)}
    parts = []
    for key in ("seen", "unseen", "all"):
        if key not in stored:
            continue
        c = stored[key]
        k_windows = "".join(f", K = {k} windows {z:.3f}" for k, z in c.get("subblocks", {}).items())
        parts.append(f"{key} {c['classes']} classes: centred window (planes {c['window'][0]}-{c['window'][1]}) "
                     f"{c['centred_window']:.3f}, order-blind {c['order_blind']:.3f}{k_windows}")
    return "; ".join(parts) + " (analytic top-1 ceilings under uniform classes)"


def class_factors(meta: Mapping[str, Any]) -> list[dict[str, str]] | None:
    """What each class of a moving-digits data set is made of, for the per-factor zero-shot breakdown: for class i
    (digit-major over ``digits x motions``, the builder's order) ``{"digit": "3", "phase1": "left", "phase2":
    "up:fast"}`` when every motion is two-phase, else ``{"digit": "3", "motion": "left"}``. None for other kinds."""
    if meta.get("kind") != "moving-digits":
        return None
    builder = meta.get("builder") or {}
    digits, motions = list(builder.get("digits", [])), list(builder.get("motions", []))
    if not digits or not motions:
        return None
    phased = all(is_phased(m) for m in motions)
    out = []
    for d in digits:
        for m in motions:
            if phased:
                first, second = m.split("-")
                out.append({"digit": str(d), "phase1": first, "phase2": second})
            else:
                out.append({"digit": str(d), "motion": m})
    return out
