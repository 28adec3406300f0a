"""SpikeCV .dat layout: hand-made bytes, round trip, block reads, and clear errors."""

import numpy as np
import pytest

from spklip.data.dat import DatFormatError, dat_num_planes, iter_dat, read_dat, write_dat


def test_layout_matches_hand_made_bytes(tmp_path):
    # 2 rows x 8 columns, 2 planes. Plane 0: only the top-left pixel fires; plane 1: bottom row pixels 0 and 3.
    spikes = np.zeros((2, 2, 8), np.uint8)
    spikes[0, 0, 0] = 1
    spikes[1, 1, 0] = spikes[1, 1, 3] = 1
    path = tmp_path / "a.dat"
    assert write_dat(path, spikes) == 2
    # Rows are stored bottom-up and the first pixel of each byte is its lowest bit.
    assert path.read_bytes() == bytes([0b0000_0000, 0b0000_0001, 0b0000_1001, 0b0000_0000])
    assert np.array_equal(read_dat(path, 2, 8), spikes)


def test_round_trip_and_blocks(tmp_path):
    rng = np.random.default_rng(0)
    spikes = (rng.random((37, 6, 12)) < 0.3).astype(np.uint8)
    path = tmp_path / "r.dat"
    write_dat(path, (spikes[i:i + 10] for i in range(0, 37, 10)))  # streamed in chunks
    assert dat_num_planes(path, 6, 12) == 37
    assert np.array_equal(read_dat(path, 6, 12), spikes)
    assert np.array_equal(read_dat(path, 6, 12, start=5, count=9), spikes[5:14])
    assert np.array_equal(np.concatenate(list(iter_dat(path, 6, 12, chunk=8))), spikes)


def test_bad_inputs_are_clear_errors_and_leave_no_file(tmp_path):
    path = tmp_path / "bad.dat"
    with pytest.raises(DatFormatError, match="not divisible by 8"):
        write_dat(path, np.zeros((2, 3, 5), np.uint8))
    with pytest.raises(DatFormatError, match="0 or 1"):
        write_dat(path, np.full((2, 2, 4), 2, np.uint8))
    assert not path.exists() and not list(tmp_path.iterdir())
    path.write_bytes(b"\x00" * 5)
    with pytest.raises(DatFormatError, match="whole number"):
        read_dat(path, 2, 8)
    with pytest.raises(DatFormatError, match="not divisible by 8"):
        read_dat(path, 3, 3)
    path.write_bytes(b"\x00" * 4)
    with pytest.raises(DatFormatError, match="requested"):
        read_dat(path, 2, 8, start=1, count=5)
