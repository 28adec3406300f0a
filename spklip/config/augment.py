"""Training-time augmentation of spike clips (applied by the training loop; see spklip/data/augment.py)."""

from __future__ import annotations

from dataclasses import dataclass

from spklip.config.base import ConfigError


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
        if self.time_shift < 0 or self.shift_px < 0:
            raise ConfigError(f"augment.time_shift and augment.shift_px must be >= 0, got {self.time_shift}, "
                              f"{self.shift_px}")
        for key in ("spike_dropout", "hflip", "vflip"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0 + (key != "spike_dropout"):
                raise ConfigError(f"augment.{key} must be in [0, 1{')' if key == 'spike_dropout' else ']'}, "
                                  f"got {value}")
