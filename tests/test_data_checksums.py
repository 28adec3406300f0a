"""Parquet page checksums: shards are written with a CRC per page, `spklip data inspect` reads every page of every
file and names a corrupted one (exit 2), and spklip's own whole-page reads verify the checksums too."""

import pyarrow.parquet as pq
import pytest

from spklip.cli import main
from spklip.data.loader import SpikeShardDataset
from spklip.data.read import eval_batches
from spklip.data.shards import ShardError, validate_shards, write_shards
from test_data_shards import INFO, make_clips


def _flip_in_a_page(file) -> int:
    """Flip one byte in the middle of the first page of the ``spikes`` column chunk (page data, far from the
    footer); return its offset."""
    size = file.stat().st_size
    footer = int.from_bytes(file.read_bytes()[-8:-4], "little")  # the footer: its length, then b"PAR1"
    chunk = pq.read_metadata(file).row_group(0).column(1)
    assert chunk.path_in_schema == "spikes"
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    end = chunk.data_page_offset if chunk.has_dictionary_page else start + chunk.total_compressed_size
    at = (start + end) // 2
    assert at < size - 8 - footer
    data = bytearray(file.read_bytes())
    data[at] ^= 0x5A
    file.write_bytes(bytes(data))
    return at


@pytest.fixture
def dataset(tmp_path):
    write_shards(make_clips(n_per_class=8), tmp_path / "ds", INFO)
    return tmp_path / "ds"


def test_an_intact_dataset_inspects_fine(dataset, capsys):
    assert main(["data", "inspect", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert "checksums verified" in out and "fingerprint" in out


def test_a_flipped_byte_in_a_data_page_is_one_line_naming_the_file(dataset, capsys):
    meta = validate_shards(dataset)
    bad = dataset / meta["shards"]["train"][0]
    _flip_in_a_page(bad)
    validate_shards(dataset)  # the footers alone look healthy: that is what inspect used to read
    assert main(["data", "inspect", str(dataset)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"spklip: error: {bad}: corrupted Parquet shard"), err
    assert "CRC checksum" in err[0], err
    with pytest.raises(ShardError, match="corrupted Parquet shard"):
        SpikeShardDataset(dataset, "train")
    with pytest.raises(ShardError, match=str(bad)):
        list(eval_batches(str(dataset), "train", batch_size=4))
    assert list(eval_batches(str(dataset), "val", batch_size=4))  # the other files are untouched


def test_page_checksums_do_not_change_the_fingerprint(tmp_path):
    """The fingerprint hashes clip content, not file bytes: the same value as shards written without checksums."""
    meta = write_shards(make_clips(), tmp_path / "ds", INFO)
    again = write_shards(make_clips(), tmp_path / "ds2", INFO, target_shard_mb=1e-4)
    assert meta["fingerprint"] == again["fingerprint"] == "7bca9740d4a35fdb"
