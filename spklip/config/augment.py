"""Training-time augmentation of spike clips (applied by the training loop; see spklip/data/augment.py)."""

from __future__ import annotations

from dataclasses import dataclass

from spklip.config.base import check_range


@dataclass(frozen=True)
class AugmentCfg:
    time_shift: int = 3  # max |dt| planes a clip is shifted in time (empty planes shifted in); 0 = off
    shift_px: int = 8  # max |dy|, |dx| pixels a clip is translated (empty outside); 0 = off
    spike_dropout: float = 0.0  # probability of dropping each spike (re-thinning)
    hflip: float = 0.0  # probability of a horizontal mirror, with left <-> right swapped in the caption
    vflip: float = 0.0  # probability of a vertical mirror, with up <-> down swapped in the caption

    @property
    def enabled(self) -> bool:
        return bool(self.time_shift or self.shift_px or self.spike_dropout or self.hflip or self.vflip)

    def __post_init__(self):
        check_range("augment.time_shift", self.time_shift, 0)
        check_range("augment.shift_px", self.shift_px, 0)
        check_range("augment.spike_dropout", self.spike_dropout, 0, 1, high_open=True)  # 1 would drop every spike
        check_range("augment.hflip", self.hflip, 0, 1)
        check_range("augment.vflip", self.vflip, 0, 1)
