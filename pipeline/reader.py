"""The training reader: batches of tensors from a folder of feature (or synth) shards.

    reader = ShardReader("data/features/music/train_single", columns=("logmel", "image"),
                         batch_size=64, shuffle=True, seed=params.seed)
    loader = make_loader(reader, num_workers=2)
    for epoch in range(epochs):
        reader.set_epoch(epoch)
        for batch in loader:
            batch["logmel"]  # float32 (B, n_mels, n_frames)

How rows are dealt out. The unit of work is a Parquet row group (the features
stage writes `features.row_group_rows` rows per group). Each epoch the units
of the whole folder are put in an order (a permutation seeded by
(seed, epoch) when shuffling, file order otherwise) and dealt round-robin to
the consumers: `world_size` ranks times the DataLoader workers of each rank.
Every row therefore reaches exactly one consumer, once per epoch. A consumer
takes its units a window at a time (about `buffer_rows` rows), shuffles the
rows of the window (a partial batch carries over to the next window) and
cuts batches from it, so a batch mixes rows from all over the split while
memory stays at one window per consumer however big the split is.

Why not one permutation of all rows: each consumer would then need random
access to every row, which for Parquet means reading (and decompressing)
every row group in every worker, every epoch.

Memory and speed. A consumer keeps the row groups it has read, decoded, up to
`cache_bytes` (the toy splits, a few tens of MB, stay whole in memory: later
epochs read no file). Past the budget it streams from the files. The array
columns (`waveform`, `logmel`, `pixels`: fixed_size_binary bytes with their dtype
and shape in the schema metadata, see `pipeline.features.array_field`) and the
numeric columns are numpy views of Arrow memory and reach a batch through one
gather, with no Python work per row; `image` comes
from `pixels` (frame 0, stored decoded by the features stage) when the shards
have it, otherwise JPEG frames are decoded with torchvision (libjpeg-turbo).
"""
from __future__ import annotations

import multiprocessing
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed
import torch.utils.data

from pipeline.arrays import array_layout, array_values
from pipeline.shards import shard_paths

IMAGE = "image"  # frame `frame`, decoded: from `pixels`, the `frames` JPEGs, or a synth `image` JPEG
INDEX = "index"  # the row's position in the folder (shards in order, rows in order)
DEFAULT_COLUMNS = ("waveform", "logmel", IMAGE, INDEX)


class ShardReader(torch.utils.data.IterableDataset):
    """Yields dicts of batched tensors from the shards of one folder, one epoch per iteration.

    columns: what each batch holds. `waveform` int16 (B, samples), `logmel`
    float32 (B, n_mels, n_frames), `image` uint8 (B, 3, H, W), `index` int64 (B,);
    other numeric scalar columns (`clip_index`, `start_s`, `grid`) as tensors;
    any other column (`clip_id`, `labels`, `objects`, ...) as a Python list.
    cache_bytes: decoded row groups kept per consumer (process) for later epochs; 0 streams.
    frame, use_pixels: which frame `image` is; frame 0 comes from `pixels` unless use_pixels is False.
    transform: applied to every batch where it is made (in the DataLoader worker), e.g. uint8 -> float.
    rank, world_size: this process's share under DDP (default: torch.distributed's, else 0 of 1).
    """

    def __init__(self, folder: str | Path, columns: Sequence[str] = DEFAULT_COLUMNS, batch_size: int = 64,
                 shuffle: bool = False, seed: int = 0, drop_last: bool = False, buffer_rows: int = 1024,
                 cache_bytes: int = 256 * 2**20, frame: int = 0, use_pixels: bool = True,
                 transform: Callable[[dict], dict] | None = None, rank: int | None = None,
                 world_size: int | None = None):
        super().__init__()
        self.folder = Path(folder)
        self.paths = shard_paths(self.folder)
        if not self.paths:
            raise FileNotFoundError(f"{self.folder}: no shard-*.parquet files (run the stage that writes it)")
        if batch_size < 1 or buffer_rows < 1:
            raise ValueError("batch_size and buffer_rows must be >= 1")
        self.schema = pq.read_schema(self.paths[0])
        self.columns = list(columns)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.buffer_rows = buffer_rows
        self.cache_bytes = cache_bytes
        self.frame = frame
        self.transform = transform
        # Shared memory, so that set_epoch in the main process reaches persistent DataLoader workers.
        self._epoch = multiprocessing.RawValue("q", 0)
        if rank is None or world_size is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank = torch.distributed.get_rank() if distributed else 0
            world_size = torch.distributed.get_world_size() if distributed else 1
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size {world_size})")
        self.rank, self.world_size = rank, world_size

        # Units: (shard, row group, first row in the folder, rows), from the footers alone.
        self.units: list[tuple[int, int, int, int]] = []
        first_row = 0
        for shard, path in enumerate(self.paths):
            metadata = pq.read_metadata(path)
            for group in range(metadata.num_row_groups):
                rows = metadata.row_group(group).num_rows
                self.units.append((shard, group, first_row, rows))
                first_row += rows
        self.num_rows = first_row

        # Array columns: every fixed_size_binary column whose shape is in the schema metadata.
        metadata = self.schema.metadata or {}
        self.layouts: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        for field in self.schema:
            if pa.types.is_fixed_size_binary(field.type) and f"{field.name}_shape".encode() in metadata:
                try:
                    self.layouts[field.name] = array_layout(self.schema, field.name)
                except ValueError as err:
                    raise ValueError(f"{self.paths[0]}: {err}") from None
        if use_pixels and frame == 0 and "pixels" in self.layouts:
            self.image_source = "pixels"
        else:
            self.image_source = "frames" if "frames" in self.schema.names else IMAGE
        self.read_columns = self._columns_to_read()
        self._cache: dict[int, _Unit] = {}  # unit number -> decoded row group, per process
        self._cached_bytes = 0
        self._buffers = _BufferPool(batch_size)  # batch arrays, per process

    def _columns_to_read(self) -> list[str]:
        wanted = []
        for column in self.columns:
            source = self.image_source if column == IMAGE else column
            if column == INDEX:
                continue
            if source not in self.schema.names:
                raise KeyError(f"{self.folder}: no column {source!r} (have {', '.join(self.schema.names)})")
            wanted.append(source)
        return wanted

    @property
    def epoch(self) -> int:
        return self._epoch.value

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration follows (also in DataLoader workers)."""
        self._epoch.value = epoch

    # ------------------------------------------------------------------ dealing rows out

    def _unit_order(self) -> np.ndarray:
        if self.shuffle:
            return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.units))
        return np.arange(len(self.units))

    def consumer_units(self, consumer: int, consumers: int) -> list[int]:
        """The units (indices into self.units) that consumer `consumer` of `consumers` reads this epoch."""
        return self._unit_order()[consumer::consumers].tolist()

    def num_batches(self, num_workers: int = 0, rank: int | None = None) -> int:
        """Batches that `rank` (default: this one) yields this epoch with `num_workers` DataLoader workers.

        Ranks can get different counts (units differ in size); a DDP loop stops
        every rank at the smallest one: min(num_batches(w, r) for r in range(world_size)).
        """
        rank = self.rank if rank is None else rank
        workers = max(num_workers, 1)
        total = 0
        for worker in range(workers):
            consumer = rank * workers + worker
            rows = sum(self.units[unit][3] for unit in self.consumer_units(consumer, self.world_size * workers))
            total += rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)
        return total

    def __iter__(self) -> Iterator[dict]:
        worker = torch.utils.data.get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker else (0, 1)
        consumer, consumers = self.rank * workers + worker_id, self.world_size * workers
        units = self.consumer_units(consumer, consumers)
        rng = np.random.default_rng([self.seed, self.epoch, consumer, consumers])
        files: dict[int, pq.ParquetFile] = {}
        carry: _Unit | None = None  # rows of the last window that did not fill a batch
        window: list[_Unit] = []
        window_rows = 0
        for position, unit in enumerate(units):
            window.append(self._load(unit, files))
            window_rows += window[-1].rows
            if window_rows >= self.buffer_rows or position == len(units) - 1:
                carry = yield from self._window_batches(([carry] if carry else []) + window, rng)
                window, window_rows = [], 0
        if carry and not self.drop_last:
            yield self._batch([carry], np.zeros(carry.rows, dtype=np.int64), np.arange(carry.rows))

    def _load(self, unit: int, files: dict[int, pq.ParquetFile]) -> _Unit:
        if unit in self._cache:
            return self._cache[unit]
        shard, group, first_row, rows = self.units[unit]
        if shard not in files:
            files[shard] = pq.ParquetFile(self.paths[shard], memory_map=True)
        table = files[shard].read_row_group(group, columns=self.read_columns).combine_chunks()
        loaded = _Unit(table.append_column(INDEX, pa.array(np.arange(first_row, first_row + rows))), self.layouts)
        if self._cached_bytes + loaded.table.nbytes <= self.cache_bytes:
            self._cache[unit] = loaded
            self._cached_bytes += loaded.table.nbytes
        return loaded

    def _window_batches(self, window: list[_Unit], rng: np.random.Generator):
        """Yield the full batches of the window's rows (shuffled when asked); return the rest as a unit."""
        starts = np.cumsum([0] + [unit.rows for unit in window])
        order = rng.permutation(starts[-1]) if self.shuffle else np.arange(starts[-1])
        which = np.searchsorted(starts, order, side="right") - 1  # unit of each row, in order
        local = order - starts[which]  # row within that unit
        full = len(order) - len(order) % self.batch_size
        for start in range(0, full, self.batch_size):
            rows = slice(start, start + self.batch_size)
            yield self._batch(window, which[rows], local[rows])
        if full == len(order):
            return None
        rest_which, rest_local = which[full:], local[full:]
        rest = [window[unit].table.take(rest_local[rest_which == unit]) for unit in range(len(window))]
        # Rows keep their window order; the next window reshuffles them anyway.
        return _Unit(pa.concat_tables([table for table in rest if table.num_rows]).combine_chunks(), self.layouts)

    # ------------------------------------------------------------------ one batch

    def _batch(self, window: list[_Unit], which: np.ndarray, local: np.ndarray) -> dict:
        """The batch of rows `local[i]` of units `window[which[i]]`, transformed."""
        batch = self._columns_of(window, which, local)
        return self.transform(batch) if self.transform else batch

    def _columns_of(self, window: list[_Unit], which: np.ndarray, local: np.ndarray) -> dict:
        batch = {}
        for column in self.columns:
            source = self.image_source if column == IMAGE else column
            if column == IMAGE and source != "pixels":
                batch[IMAGE] = self._decode_images(window, which, local)
                continue
            if source in window[0].views:
                views = [unit.views[source] for unit in window]
                out = self._buffers.empty(len(which), views[0].shape[1:], views[0].dtype)
                batch[column] = torch.from_numpy(_gather(views, which, local, out))
            else:
                batch[column] = _gather_objects([unit.table.column(source) for unit in window], which, local)
        return batch

    def _decode_images(self, window: list[_Unit], which: np.ndarray, local: np.ndarray) -> torch.Tensor:
        # imported here: torchvision costs every process ~1 s to import, and stored pixels need no decoding
        from torchvision.io import ImageReadMode, decode_jpeg

        jpegs = _gather_objects([unit.jpegs(self.image_source, self.frame, self.folder) for unit in window],
                                which, local)
        images = decode_jpeg(jpegs, mode=ImageReadMode.RGB)
        shapes = {tuple(image.shape) for image in images}
        if len(shapes) > 1:
            raise ValueError(f"{self.folder}: frames of different sizes in one batch: {sorted(shapes)}")
        # decode_jpeg gives channel-strided views of HWC pixels; torch.stack copies those with
        # intra-op threads, which stalled ~1 s a batch on a busy 2-core machine. numpy copies in this thread.
        batch = np.empty((len(images), *images[0].shape), dtype=np.uint8)
        for position, image in enumerate(images):
            batch[position] = image.numpy()
        return torch.from_numpy(batch)


def _refcount(arrays: list[np.ndarray], index: int) -> int:
    return sys.getrefcount(arrays[index])


# The references an array held by a list alone shows when counted by `_refcount`.
_IDLE_REFCOUNT = _refcount([np.empty(0)], 0)


class _BufferPool:
    """The arrays of past batches, handed out again once nothing but the pool holds them.

    Why: a new array for every batch means fresh memory, which the kernel maps and
    zeroes on first touch (a page fault every 4 KiB); glibc hands blocks of a few MB
    back to the OS when they are freed, so that happens every batch, and it made
    gathering a streamed batch ~4x slower than the copy itself. An array is free
    when only the pool refers to it: a tensor made by torch.from_numpy (and every
    view of that tensor) keeps its array referenced; a DataLoader worker's batch
    drops it once the tensor is moved to shared memory.
    """

    def __init__(self, batch_rows: int, arrays_per_kind: int = 4):
        self.batch_rows = batch_rows
        self.arrays: dict[tuple, list[np.ndarray]] = {}  # (row shape, dtype) -> arrays of batch_rows rows
        self.arrays_per_kind = arrays_per_kind

    def empty(self, rows: int, row_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An uninitialised array (rows, *row_shape): the first rows of a pooled array (the view keeps
        the pooled array referenced) or, when none is idle, of a new one."""
        arrays = self.arrays.setdefault((tuple(row_shape), np.dtype(dtype).str), [])
        for index in range(len(arrays)):
            if _refcount(arrays, index) == _IDLE_REFCOUNT and len(arrays[index]) >= rows:
                return arrays[index][:rows]
        array = np.empty((max(rows, self.batch_rows), *row_shape), dtype=dtype)
        if len(arrays) < self.arrays_per_kind:  # a consumer that keeps its batches gets new arrays
            arrays.append(array)
        return array[:rows]


class _Unit:
    """A decoded row group (single-chunk columns) and numpy views of its array and numeric columns."""

    def __init__(self, table: pa.Table, layouts: dict[str, tuple[np.dtype, tuple[int, ...]]]):
        self.table = table
        self.rows = table.num_rows
        self.views = _column_views(table, layouts)
        self._jpegs: list[torch.Tensor] | None = None

    def jpegs(self, column: str, frame: int, folder: Path) -> list[torch.Tensor]:
        if self._jpegs is None:
            self._jpegs = _jpeg_views(self.table.column(column).chunk(0), frame, folder)
        return self._jpegs


def _column_views(table: pa.Table, layouts: dict[str, tuple[np.dtype, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    """numpy views (no copy) of the array columns, as (rows, *shape), and of the numeric scalar
    columns of a single-chunk table."""
    views = {}
    for name in table.column_names:
        if table.column(name).num_chunks != 1:
            continue
        array = table.column(name).chunk(0)
        if array.null_count:
            continue
        if name in layouts:
            views[name] = array_values(array, *layouts[name])
        elif pa.types.is_integer(array.type) or pa.types.is_floating(array.type):
            views[name] = array.to_numpy(zero_copy_only=True)
    return views


def _gather(views: list[np.ndarray], which: np.ndarray, local: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Rows `local[i]` of `views[which[i]]` into `out` (one vectorised copy per unit)."""
    for unit in np.unique(which):
        take = which == unit
        out[take] = views[unit][local[take]]
    return out


def _gather_objects(columns: list, which: np.ndarray, local: np.ndarray) -> list:
    """Like _gather for Python lists or Arrow columns (string, list, struct columns)."""
    out = [None] * len(which)
    for unit in np.unique(which).tolist():
        positions = np.flatnonzero(which == unit)
        source = columns[unit]
        if isinstance(source, list):
            values = [source[row] for row in local[positions].tolist()]
        else:
            values = source.take(pa.array(local[positions])).to_pylist()
        for position, value in zip(positions.tolist(), values):
            out[position] = value
    return out


def _jpeg_views(column: pa.Array, frame: int, folder: Path) -> list[torch.Tensor]:
    """uint8 tensors viewing the JPEG bytes of every row (frame `frame` of a list column, or a binary column)."""
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        list_offsets = column.offsets.to_numpy()
        counts = np.diff(list_offsets)
        if (counts <= frame).any():
            raise ValueError(f"{folder}: some rows have {counts.min()} frames, frame {frame} asked")
        items = list_offsets[:-1] + frame
        column = column.values
    else:
        items = np.arange(len(column))
    _, offsets_buffer, data_buffer = column.buffers()
    offset_type = np.int64 if pa.types.is_large_binary(column.type) else np.int32
    value_offsets = np.frombuffer(offsets_buffer, dtype=offset_type)[column.offset:]
    data = np.frombuffer(data_buffer, dtype=np.uint8)
    starts, ends = value_offsets[items], value_offsets[items + 1]
    with warnings.catch_warnings():
        # Arrow's buffers are read-only; the decoder only reads them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return [torch.from_numpy(data[start:end]) for start, end in zip(starts.tolist(), ends.tolist())]


def make_loader(reader: ShardReader, num_workers: int = 0, **loader_options) -> torch.utils.data.DataLoader:
    """A DataLoader over `reader`'s batches (the reader batches itself: batch_size=None).

    Workers persist across epochs (their row-group caches with them); `set_epoch`
    reaches them through shared memory. Create one loader and iterate it once per epoch.
    """
    options = dict(persistent_workers=num_workers > 0) | loader_options
    return torch.utils.data.DataLoader(reader, batch_size=None, num_workers=num_workers, **options)
