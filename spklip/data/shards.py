"""Parquet spike shards: one row per clip, spikes bit-packed in a binary column, zstd, split into size-bounded files.

On disk a dataset is a folder::

    DIR/manifest.json                 dataset metadata (read_metadata): schema version, classes, splits, fingerprint
    DIR/<split>/part-00000.parquet    rows of one split (train, val, test, unseen), <= target size each

Each row holds ``spikes`` (``numpy.packbits(bitorder="little")`` of the C-order ``[N, H, W]`` planes), its shape
(``num_planes``, ``height``, ``width``), ``caption``, ``class_name``, ``label``, ``split``, ``source``,
``clip_id`` and the simulator parameters (``sim_*``; null for real recordings). Every Parquet file also carries the
dataset header and ``schema_version`` in its key-value metadata under ``spklip``, and a CRC-32 page checksum on
every page (``write_page_checksum``), which spklip's own reads verify (`open_shard`, `read_shard`; Ray Data's read
tasks do not) and `verify_pages` (``spklip data inspect``) checks for every page of every file. Everything is
written into a temporary sibling folder and renamed at the end, so a failure never leaves a partial dataset behind;
an existing folder is replaced only when it is a spklip dataset (its manifest lists every file in it), see
`spklip.outdir`.

``DIR`` may also be an ``s3://bucket/prefix`` URI (`spklip.data.storage`). An object store has no rename, so there a
build is staged in a local temporary folder as above and then uploaded with the manifest last: the manifest is the
commit (readers open nothing without it, and it lists only files already uploaded). While uploading, a marker
``_spklip_partial.json`` lists the files being written, so an interrupted upload is recognised as spklip's and
replaced by the next ``overwrite`` build; replacing a dataset deletes its manifest first, so from then until the new
manifest lands the prefix holds no dataset (never a mix of old and new files), see `upload_dataset`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from spklip.data import storage
from spklip.outdir import RefusedError, check_replaceable, make_temp, read_marker, replace_dir

SCHEMA_VERSION = 1
METADATA_KEY = b"spklip"
MANIFEST = "manifest.json"
PARTIAL = "_spklip_partial.json"  # on an object store, while a build uploads: the files it is writing
ROW_GROUP_BYTES = 32 * 2**20  # packed spikes per Parquet row group (the unit readers fetch)
WRITER_THREADS = 4  # shard files a build writes at once (zstd + Parquet encoding, GIL released), `write_rows`
SEEN_SPLITS = ("train", "val", "test")  # seen classes, disjoint clips
SPLITS = SEEN_SPLITS + ("unseen",)  # unseen: every clip of the held-out classes (zero-/few-shot)
SCHEMA = pa.schema([
    ("clip_id", pa.string()), ("spikes", pa.binary()),
    ("num_planes", pa.int32()), ("height", pa.int32()), ("width", pa.int32()),
    ("caption", pa.string()), ("class_name", pa.string()), ("label", pa.int64()),
    ("split", pa.string()), ("source", pa.string()),
    ("sim_threshold", pa.float64()), ("sim_planes_per_frame", pa.int32()), ("sim_seed", pa.int64()),
    ("sim_mismatch", pa.float64()), ("sim_dark_current", pa.float64()),
])


class ShardError(ValueError):
    """A shard folder is missing, has the wrong schema, or a clip does not fit the dataset."""


@dataclass
class Clip:
    """One clip on its way into the shards."""

    spikes: np.ndarray  # [N, H, W] uint8 in {0, 1}
    label: int  # index into DatasetInfo.class_names
    caption: str  # the sentence paired with the clip for contrastive training
    split: str  # one of SPLITS
    source: str  # where it came from (file and frame range, digit image index ...)
    clip_id: str  # unique within the dataset
    sim_seed: int | None = None  # the simulator seed of this clip (None for real recordings)


@dataclass(frozen=True)
class Skipped:
    """An input a build left out, and why (listed in the manifest under ``skipped``, not part of the header)."""

    path: str
    reason: str


@dataclass
class DatasetInfo:
    """The dataset-level header written into every shard and the manifest."""

    kind: str  # builder name: moving-digits, video-folder, dat-folder
    class_names: list[str]  # by label id (seen and unseen classes)
    unseen_labels: list[int]  # labels held out of train/val/test
    clip_shape: tuple[int, int, int]  # (N, H, W)
    simulator: dict[str, Any] | None  # SimParams.to_dict() without the per-clip seed; None for recordings
    builder: dict[str, Any] = field(default_factory=dict)  # the builder's arguments, for provenance
    skipped: list[Skipped] = field(default_factory=list)  # inputs left out (manifest only: not in the header)

    def header(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "kind": self.kind, "class_names": list(self.class_names),
                "unseen_labels": sorted(self.unseen_labels), "clip_shape": list(self.clip_shape),
                "simulator": self.simulator, "builder": self.builder}


def pack_spikes(spikes: np.ndarray) -> bytes:
    """``[N, H, W]`` uint8 {0, 1} -> bit-packed bytes (C order, first pixel in the lowest bit)."""
    return np.packbits(np.asarray(spikes, dtype=np.uint8).reshape(-1), bitorder="little").tobytes()


def unpack_spikes(column: Any, shape: tuple[int, int, int]) -> np.ndarray:
    """A binary column of B packed clips (pyarrow array, or a sequence of bytes) -> uint8 ``[B, N, H, W]``.

    Vectorised: the clips' bytes are viewed as one ``[B, nbytes]`` buffer and unpacked in one call.
    """
    n_bits = int(np.prod(shape))
    nbytes = math.ceil(n_bits / 8)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if isinstance(column, pa.Array):
        if column.null_count:
            raise ShardError("spikes column holds nulls")
        width = np.int64 if pa.types.is_large_binary(column.type) else np.int32
        offsets = np.frombuffer(column.buffers()[1], dtype=width)[column.offset:column.offset + len(column) + 1]
        if len(column) and not (np.diff(offsets) == nbytes).all():
            raise ShardError(f"a packed clip does not hold {nbytes} bytes for shape {tuple(shape)}")
        data = np.frombuffer(column.buffers()[2], dtype=np.uint8) if len(column) else np.zeros(0, np.uint8)
        packed = data[offsets[0]:offsets[-1]] if len(column) else data
    else:
        packed = np.frombuffer(b"".join(column), dtype=np.uint8)
        if packed.size != len(column) * nbytes:
            raise ShardError(f"a packed clip does not hold {nbytes} bytes for shape {tuple(shape)}")
    batch = packed.size // nbytes
    bits = np.unpackbits(packed.reshape(batch, nbytes), axis=1, count=n_bits, bitorder="little")  # [B, N*H*W]
    return bits.reshape(batch, *shape)  # [B, N, H, W]


def decode_batch(batch: pa.Table | dict[str, Any]) -> dict[str, np.ndarray]:
    """A batch of shard rows -> ``{"spikes": uint8 [B,N,H,W], "label": int64 [B], "caption", "class_name",
    "clip_id": str [B]}`` (the function Ray Data maps over batches, also used by `SpikeShardDataset`)."""
    cols = batch  # a pyarrow Table (columns stay Arrow arrays: no copy of the packed bytes) or a dict
    shape_cols = [np.asarray(cols[k]) for k in ("num_planes", "height", "width")]
    if len(shape_cols[0]) == 0:
        raise ShardError("empty batch")
    if any((c != c[0]).any() for c in shape_cols):
        raise ShardError("clips of different shapes in one batch")
    shape = tuple(int(c[0]) for c in shape_cols)
    spikes = unpack_spikes(cols["spikes"], shape)
    text = {k: np.asarray(cols[k].to_pylist() if hasattr(cols[k], "to_pylist") else cols[k], dtype=object)
            for k in ("caption", "class_name", "clip_id")}
    return {"spikes": spikes, "label": np.asarray(cols["label"], dtype=np.int64), **text}


@dataclass(frozen=True)
class Row:
    """One clip packed for its shard (`clip_row`): what a worker hands the driver, which only appends it."""

    values: dict[str, Any]  # the Parquet row: SCHEMA's column -> value (spikes bit-packed)
    digest: str  # blake2b of the packed spikes, label, split and caption: the clip's part of the fingerprint

    @property
    def clip_id(self) -> str:
        return self.values["clip_id"]

    @property
    def split(self) -> str:
        return self.values["split"]


def clip_row(clip: Clip, info: DatasetInfo) -> Row:
    """Check `clip` against the dataset header `info`, bit-pack its spikes and hash it: the per-clip work of a
    build, pure (no state), so a parallel build's workers do it and the driver only appends the rows in order.

    Raises:
        ShardError: the clip's shape, values, split or label does not fit `info` (a duplicate ``clip_id`` is
            found when the row is added, `write_rows`).
    """
    spikes = np.asarray(clip.spikes)
    if spikes.shape != tuple(info.clip_shape):
        raise ShardError(f"clip {clip.clip_id}: shape {spikes.shape} differs from the dataset's "
                         f"{tuple(info.clip_shape)}")
    if spikes.dtype != np.uint8 or (spikes.size and spikes.max() > 1):
        raise ShardError(f"clip {clip.clip_id}: spikes must be uint8 in {{0, 1}}")
    if clip.split not in SPLITS:
        raise ShardError(f"clip {clip.clip_id}: unknown split {clip.split!r} (expected one of {SPLITS})")
    if not 0 <= clip.label < len(info.class_names):
        raise ShardError(f"clip {clip.clip_id}: label {clip.label} outside 0..{len(info.class_names) - 1}")
    if (clip.label in info.unseen_labels) != (clip.split == "unseen"):
        raise ShardError(f"clip {clip.clip_id}: split {clip.split!r} does not fit label {clip.label} "
                         "(clips of held-out classes go to 'unseen', all others to train/val/test)")
    packed = pack_spikes(spikes)
    digest = hashlib.blake2b(packed + json.dumps([clip.label, clip.split, clip.caption]).encode(),
                             digest_size=16).hexdigest()
    sim = info.simulator or {}
    n, h, w = spikes.shape
    return Row({"clip_id": clip.clip_id, "spikes": packed, "num_planes": n, "height": h, "width": w,
                "caption": clip.caption, "class_name": info.class_names[clip.label], "label": int(clip.label),
                "split": clip.split, "source": clip.source, "sim_threshold": sim.get("threshold"),
                "sim_planes_per_frame": sim.get("planes_per_frame"), "sim_seed": clip.sim_seed,
                "sim_mismatch": sim.get("mismatch"), "sim_dark_current": sim.get("dark_current")}, digest)


def _write_file(table: pa.Table, path: Path, rows_per_group: int) -> None:
    """One shard file: zstd, row groups of `rows_per_group`, a CRC-32 checksum on every page (a flipped byte in a
    page is then an error on read, not bad data). Its bytes depend only on `table`: the same in any thread."""
    pq.write_table(table, path, compression="zstd", row_group_size=rows_per_group, write_page_checksum=True)


class _FileWrites:
    """Full shard files written by `threads` background threads, at most `threads` files in flight (memory: a few
    shards): Parquet encoding and zstd release the GIL, so files are written while the rows of the next ones come
    in. Files are independent and named by the caller in order, so the files are the same as written one by one.

    A failed write is raised (as one ShardError naming the file) at the next `submit` or at `drain`; `close` waits
    for the writes still running and drops the queued ones, so nothing writes into the folder afterwards.
    """

    def __init__(self, threads: int):
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="spklip-shard-writer")
        self.limit = max(1, threads)
        self.pending: deque[tuple[str, Future]] = deque()  # (file, its write), oldest first

    def submit(self, rel: str, write: Callable[[], None]) -> None:
        while self.pending and (self.pending[0][1].done() or len(self.pending) >= self.limit):
            self._result(*self.pending.popleft())  # a failed write stops the build here, not after the last row
        self.pending.append((rel, self.pool.submit(write)))

    def drain(self) -> None:
        while self.pending:
            self._result(*self.pending.popleft())

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _result(rel: str, write: Future) -> None:
        try:
            write.result()
        except Exception as e:  # noqa: BLE001 - any failure of a write (disk full, permissions, Arrow) is one error
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ShardError(f"cannot write shard {rel} ({type(e).__name__}: {why}); no dataset was written") from e


class _ShardWriter:
    """Buffers rows per split and hands a split's rows to the file writers (`_FileWrites`) whenever its buffer
    reaches the target size."""

    def __init__(self, root: Path, info: DatasetInfo, target_bytes: int, writes: _FileWrites):
        self.root, self.info, self.target, self.writes = root, info, target_bytes, writes
        self.schema = SCHEMA.with_metadata({METADATA_KEY: json.dumps(info.header()).encode()})
        self.rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
        self.held = dict.fromkeys(SPLITS, 0)
        self.files: dict[str, list[str]] = {s: [] for s in SPLITS}
        self.counts = dict.fromkeys(SPLITS, 0)
        self.digests: dict[str, str] = {}

    def add_row(self, row: Row) -> None:
        """Append a ready row (`clip_row`) to its split, writing the split's file once it is full."""
        if row.clip_id in self.digests:
            raise ShardError(f"duplicate clip_id {row.clip_id!r}")
        self.digests[row.clip_id] = row.digest
        split = row.split
        self.rows[split].append(row.values)
        self.held[split] += len(row.values["spikes"])
        self.counts[split] += 1
        if self.held[split] >= self.target:
            self.flush(split)

    def flush(self, split: str) -> None:
        if not self.rows[split]:
            return
        rel = f"{split}/part-{len(self.files[split]):05d}.parquet"  # named here, in row order, whoever writes it
        (self.root / split).mkdir(exist_ok=True)
        table = pa.Table.from_pylist(self.rows[split], schema=self.schema)  # copies the rows: the buffer is freed
        clip_bytes = math.ceil(int(np.prod(self.info.clip_shape)) / 8)
        rows_per_group = max(1, ROW_GROUP_BYTES // clip_bytes)  # row groups of ~32 MB packed, whatever the clip size
        self.writes.submit(rel, functools.partial(_write_file, table, self.root / rel, rows_per_group))
        self.files[split].append(rel)
        self.rows[split], self.held[split] = [], 0

    def manifest(self) -> dict[str, Any]:
        """The manifest (call after `_FileWrites.drain`: it sums the files' sizes)."""
        header = self.info.header()
        fingerprint = hashlib.sha256(json.dumps([header, sorted(self.digests.items())]).encode()).hexdigest()
        nbytes = sum((self.root / f).stat().st_size for files in self.files.values() for f in files)
        pixel_planes = sum(self.counts.values()) * int(np.prod(self.info.clip_shape))
        return {**header, "fingerprint": fingerprint[:16], "splits": self.counts,
                "shards": {s: f for s, f in self.files.items() if f}, "num_clips": sum(self.counts.values()),
                "bytes_on_disk": nbytes, "bits_per_pixel_plane": 8 * nbytes / max(pixel_planes, 1),
                "skipped": [{"path": s.path, "reason": s.reason} for s in self.info.skipped]}


def write_shards(clips: Iterable[Clip], out_dir: str | os.PathLike, info: DatasetInfo, *,
                 target_shard_mb: float = 64.0, overwrite: bool = False) -> dict[str, Any]:
    """Write clips as a Parquet shard folder and return its metadata (what `read_metadata` gives back).

    Args:
        clips: the clips, streamed (only one shard's worth per split is held in memory).
        out_dir: the dataset folder; it must not exist unless ``overwrite``.
        info: the dataset header (classes, held-out labels, clip shape, simulator, builder arguments).
        target_shard_mb: a split's file is closed once its packed spikes reach this size.
        overwrite: replace an existing spklip dataset or empty folder (only after the new one is complete).

    Raises:
        ShardError: a clip that does not fit ``info`` (shape, values, split, label, duplicate id), no clips at all,
            or an existing ``out_dir`` without ``overwrite``. Nothing is left on disk then.
        spklip.outdir.RefusedError: ``out_dir`` is a file, a link, or a folder that is not a spklip dataset or
            holds files its manifest does not list (with or without ``overwrite``); it is left untouched.
    """
    return write_rows((clip_row(clip, info) for clip in clips), out_dir, info, target_shard_mb=target_shard_mb,
                      overwrite=overwrite)


def write_rows(rows: Iterable[Row], out_dir: str | os.PathLike, info: DatasetInfo, *,
               target_shard_mb: float = 64.0, overwrite: bool = False,
               writer_threads: int = WRITER_THREADS) -> dict[str, Any]:
    """`write_shards` for clips already packed with `clip_row` (by a parallel build's workers): the rows are
    appended in the order given and written; the same files and fingerprint as `write_shards` of their clips.

    Full files are written by `writer_threads` background threads (at most that many files in flight), so one
    driver keeps up with many workers; the files, their names and the manifest do not depend on the thread count.
    The fingerprint is the SHA-256 of the header and the clips' digests sorted by ``clip_id``, so it does not
    depend on the order the rows come in (the shard files do).

    Raises:
        ShardError: as `write_shards`, and a file that cannot be written (naming it); nothing is left on disk.
    """
    check_out_dir(out_dir, overwrite)
    if storage.is_uri(out_dir):  # staged locally, then uploaded with the manifest last (the module docstring)
        with tempfile.TemporaryDirectory(prefix="spklip-stage-") as stage:
            meta = write_rows(rows, Path(stage) / "dataset", info, target_shard_mb=target_shard_mb,
                              writer_threads=writer_threads)
            upload_dataset(Path(stage) / "dataset", str(out_dir), overwrite)
        return meta
    out = Path(out_dir)
    if set(info.unseen_labels) - set(range(len(info.class_names))):
        raise ShardError(f"unseen labels {info.unseen_labels} outside 0..{len(info.class_names) - 1}")
    tmp = make_temp(out)  # also clears what an interrupted earlier build left beside `out`
    writes = _FileWrites(writer_threads)
    try:
        writer = _ShardWriter(tmp, info, int(target_shard_mb * 2**20), writes)
        for row in rows:
            writer.add_row(row)
        for split in SPLITS:
            writer.flush(split)
        writes.drain()
        if not writer.digests:
            raise ShardError("no clips to write")
        meta = writer.manifest()
        (tmp / MANIFEST).write_text(json.dumps(meta, indent=1))
        check_out_dir(out, overwrite)  # again: `out` may have changed during a long build
        replace_dir(tmp, out)
    finally:
        writes.close()  # the writes still running finish first: nothing is written into `tmp` once it is removed
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def upload_dataset(local: Path, uri: str, overwrite: bool) -> None:
    """Upload the finished dataset folder `local` to the object-store prefix `uri`, committing it by writing the
    manifest last.

    Order: the marker `PARTIAL` (the new files), the old manifest deleted (the old dataset is gone from here on),
    the old files the new dataset does not reuse deleted, the shards uploaded, the manifest, the marker deleted.
    A reader never sees a manifest listing a missing or replaced file; one that opened the old manifest before the
    replacement may fail on a file that changed under it (replace a dataset nobody is reading, or use a new prefix).
    """
    check_out_dir(uri, overwrite)  # again: the prefix may have changed during a long build
    new = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    shards = [f for f in new if f != MANIFEST]
    storage.write_text(storage.join(uri, PARTIAL), json.dumps({"spklip_partial": True, "files": new}))
    old = storage.list_files(uri)
    storage.remove(uri, [f for f in old if f == MANIFEST])
    storage.remove(uri, [f for f in old if f not in new and f not in (MANIFEST, PARTIAL)])
    fs, root = storage.resolve(uri)
    local_fs = pafs.LocalFileSystem()
    for rel in shards:
        pafs.copy_files(str(local / rel), f"{root}/{rel}", source_filesystem=local_fs, destination_filesystem=fs)
    pafs.copy_files(str(local / MANIFEST), f"{root}/{MANIFEST}", source_filesystem=local_fs,
                    destination_filesystem=fs)  # the commit
    storage.remove(uri, [PARTIAL])


def _owned_files(root: str | Path, marker: str, listed: Callable[[dict], list[str]],
                 required: tuple[str, ...]) -> set[str] | None:
    try:
        data = json.loads(storage.read_text(storage.join(root, marker)))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or not all(k in data for k in required):
        return None
    try:
        return {marker, *(str(f) for f in listed(data))}
    except (AttributeError, TypeError):
        return None


def dataset_files(root: str | Path) -> set[str] | None:
    """The files spklip wrote in a dataset folder (its manifest and the shards it lists); None if no manifest."""
    if not storage.is_uri(root):
        meta = read_marker(Path(root) / MANIFEST, ("schema_version", "fingerprint", "shards"))
        try:
            return {MANIFEST, *(str(f) for files in meta["shards"].values() for f in files)} if meta else None
        except (AttributeError, TypeError):
            return None
    owned = _owned_files(root, MANIFEST, lambda m: [f for files in m["shards"].values() for f in files],
                         ("schema_version", "fingerprint", "shards"))
    partial = _owned_files(root, PARTIAL, lambda m: m["files"], ("spklip_partial", "files"))
    if owned is None and partial is None:
        return None
    return (owned or set()) | (partial or set())


def _check_out_prefix(uri: str, overwrite: bool) -> None:
    """`check_out_dir` for an object-store prefix: absent (no object below it), or a spklip dataset (or an
    interrupted upload of one) holding nothing else."""
    present = storage.list_files(uri)
    if not present:
        return
    owned = dataset_files(uri)
    if owned is None:
        raise RefusedError(f"{uri} holds objects but no spklip dataset (no {MANIFEST}); spklip will not replace it "
                           "(choose another prefix or remove it yourself)")
    foreign = sorted(set(present) - owned)
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise RefusedError(f"{uri} holds objects spklip did not write ({', '.join(foreign[:3])}{more}); spklip will "
                           "not replace it (move them out or choose another prefix)")
    if not overwrite:
        raise ShardError(f"{uri} already exists; pass overwrite=True (--overwrite) to replace it")


def check_out_dir(out: str | os.PathLike, overwrite: bool) -> None:
    """Raise unless `write_shards` may write `out`: absent, or (with `overwrite`) empty or a spklip dataset.

    Raises:
        RefusedError: `out` is a file, a link, or a folder that is not a spklip dataset or holds other files.
        ShardError: `out` exists and `overwrite` is off.
    """
    if storage.is_uri(out):
        _check_out_prefix(str(out), overwrite)
        return
    check_replaceable(out, dataset_files, "a spklip dataset")
    if os.path.lexists(out) and not overwrite:
        raise ShardError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The dataset metadata of a shard folder.

    Returns:
        dict with ``schema_version``, ``kind``, ``class_names`` (by label id), ``unseen_labels``, ``seen_labels``,
        ``seen_classes``, ``unseen_classes``, ``clip_shape`` [N, H, W], ``simulator`` (None for recordings),
        ``builder``, ``splits`` (clips per split), ``shards`` (files per split), ``num_clips``, ``skipped``
        (``[{"path", "reason"}]``: inputs the build left out; empty for datasets built before it existed),
        ``bytes_on_disk``, ``bits_per_pixel_plane`` and ``fingerprint`` (a stable 16-hex-digit content hash:
        the same clips, labels, captions and header give the same value; an MLflow tag).

    Raises:
        ShardError: no manifest, or one written by another schema version.
    """
    root = path if storage.is_uri(path) else Path(path)
    manifest = storage.join(root, MANIFEST)
    if not storage.is_file(manifest):
        raise ShardError(f"{root} is not a spike shard folder (no {MANIFEST}); build one with `spklip data build`")
    meta = _parse_manifest(manifest, root)
    unseen = set(meta["unseen_labels"])
    meta["seen_labels"] = [i for i in range(len(meta["class_names"])) if i not in unseen]
    meta["seen_classes"] = [meta["class_names"][i] for i in meta["seen_labels"]]
    meta["unseen_classes"] = [meta["class_names"][i] for i in sorted(unseen)]
    meta.setdefault("skipped", [])
    return meta


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


_MANIFEST_KEYS: dict[str, tuple[str, Callable[[Any], bool]]] = {  # key: (what it must be, check)
    "kind": ("a string", lambda v: isinstance(v, str)),
    "class_names": ("a list of strings", _is_str_list),
    "unseen_labels": ("a list of integers", lambda v: isinstance(v, list) and all(_is_int(x) for x in v)),
    "clip_shape": ("three integers >= 1 [N, H, W]",
                   lambda v: isinstance(v, list) and len(v) == 3 and all(_is_int(x) and x >= 1 for x in v)),
    "simulator": ("a mapping or null", lambda v: v is None or isinstance(v, dict)),
    "fingerprint": ("a string", lambda v: isinstance(v, str)),
    "splits": ("a mapping of split to clip count",
               lambda v: isinstance(v, dict) and all(_is_int(x) and x >= 0 for x in v.values())),
    "shards": ("a mapping of split to a list of relative file names",
               lambda v: isinstance(v, dict) and all(_is_str_list(x) for x in v.values())),
    "num_clips": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "bytes_on_disk": ("a number >= 0", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0),
    "bits_per_pixel_plane": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
}


def _parse_manifest(manifest: str | Path, root: str | Path) -> dict[str, Any]:
    """The manifest at `manifest` as a dict, checked key by key: every problem is a ShardError naming the file
    (not JSON, not an object, another schema version, a missing or mistyped key, a file outside the folder)."""
    try:
        meta = json.loads(storage.read_text(manifest))
    except (UnicodeDecodeError, ValueError) as e:
        why = e.msg if isinstance(e, json.JSONDecodeError) else type(e).__name__
        raise ShardError(f"{manifest}: not a spklip dataset manifest (not JSON: {why}); rebuild the dataset") from None
    if not isinstance(meta, dict):
        raise ShardError(f"{manifest}: not a spklip dataset manifest (a JSON {type(meta).__name__}, not an object)")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ShardError(f"{root}: shard schema version {meta.get('schema_version')!r}, this spklip reads version "
                         f"{SCHEMA_VERSION}; rebuild the dataset with `spklip data build`")
    for key, (what, ok) in _MANIFEST_KEYS.items():
        if key not in meta:
            raise ShardError(f"{manifest}: no {key!r} in this manifest; rebuild the dataset")
        if not ok(meta[key]):
            raise ShardError(f"{manifest}: {key!r} must be {what}; rebuild the dataset")
    names = len(meta["class_names"])
    if any(not 0 <= label < names for label in meta["unseen_labels"]):
        raise ShardError(f"{manifest}: 'unseen_labels' outside 0..{names - 1}; rebuild the dataset")
    for files in meta["shards"].values():
        for rel in files:
            if Path(rel).is_absolute() or ".." in Path(rel).parts or not rel:
                raise ShardError(f"{manifest}: shard file {rel!r} is not inside the dataset folder")
    return meta


@contextlib.contextmanager
def reading(file: str | os.PathLike):
    """``with reading(file): ...``: an OS or Arrow error while reading `file` becomes a ShardError naming it."""
    try:
        yield
    except (OSError, pa.ArrowException) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if "checksum verification failed" in why:
            raise ShardError(f"{file}: corrupted Parquet shard (a page does not match its CRC checksum: "
                             f"{why.split('failed for ')[-1]}); rebuild the dataset") from e
        raise ShardError(f"{file}: cannot read this Parquet shard ({why}); rebuild the dataset") from e


def open_shard(file: str | os.PathLike) -> pq.ParquetFile:
    """``pq.ParquetFile`` that verifies page checksums on every page it reads (files written before spklip wrote
    checksums have none: their pages are read unverified)."""
    fs, path = storage.resolve(file)
    return pq.ParquetFile(path, page_checksum_verification=True, filesystem=fs)


def read_shard(file: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """``pq.read_table`` of one shard file, verifying page checksums."""
    fs, path = storage.resolve(file)
    return pq.read_table(path, columns=columns, page_checksum_verification=True, filesystem=fs)


def verify_pages(file: str | os.PathLike) -> None:
    """Read and decode every page of every column of `file` (one row group at a time), verifying checksums.

    Raises:
        ShardError: naming the file: a page that fails its checksum, or one that does not decompress or decode.
    """
    with reading(file):
        shard = open_shard(file)
        for group in range(shard.num_row_groups):
            shard.read_row_group(group)


def validate_shards(path: str | os.PathLike, pages: bool = False) -> dict[str, Any]:
    """Check a shard folder (manifest, files, Parquet schema and its version) and return `read_metadata`.

    Args:
        path: the dataset folder.
        pages: also read every page of every file (`verify_pages`): catches corrupted data pages, which the
            footers do not show, at the cost of reading the whole dataset once.

    Raises:
        ShardError: naming the file and the problem (missing file, missing or mistyped column, wrong version,
            with ``pages`` a corrupted page).
    """
    meta = read_metadata(path)
    for files in meta["shards"].values():
        for rel in files:
            file = storage.join(path, rel)
            if not storage.is_file(file):
                raise ShardError(f"{file} is listed in {MANIFEST} but missing")
            with reading(file):
                fs, fs_path = storage.resolve(file)
                schema = pq.read_schema(fs_path, filesystem=fs)
            for f in SCHEMA:
                if f.name not in schema.names or schema.field(f.name).type != f.type:
                    found = schema.field(f.name).type if f.name in schema.names else "missing"
                    raise ShardError(f"{file}: column {f.name!r} should be {f.type}, found {found}")
            header = json.loads((schema.metadata or {}).get(METADATA_KEY, b"{}"))
            if header.get("schema_version") != SCHEMA_VERSION:
                raise ShardError(f"{file}: schema version {header.get('schema_version')!r}, expected "
                                 f"{SCHEMA_VERSION}")
            if pages:
                verify_pages(file)
    return meta


def split_files(path: str | os.PathLike, split: str, meta: dict[str, Any] | None = None) -> list[Path | str]:
    """The Parquet files of one split (``Path``s, or URIs for a dataset on an object store); an unknown or empty
    split is a clear error."""
    meta = meta or read_metadata(path)
    if split not in SPLITS:
        raise ShardError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
    if not meta["splits"].get(split):
        raise ShardError(f"split {split!r} of {path} is empty (clips per split: {meta['splits']})")
    return [storage.join(path, rel) for rel in meta["shards"][split]]
