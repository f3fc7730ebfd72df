"""Atomic writing of Parquet files and shard directories.

Nothing a stage writes may look finished before it is: single files go to a
temporary name in the same folder and are renamed into place; shard folders
are filled under a temporary folder that replaces the target in one rename.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create private (0600/0700) temporaries; finished outputs get the usual modes.
FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()


def _temp_prefix(path: Path) -> str:
    # The writer's pid is in the name so that a later run can tell a dead writer's leftovers.
    return f".{path.name}.{os.getpid()}."


def _remove_stale_temps(path: Path) -> None:
    """Delete temporaries for `path` left by writers that were killed (their pid is gone)."""
    prefix = f".{path.name}."
    for leftover in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = leftover.name[len(prefix):].split(".")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # that writer is still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, owned by someone else
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it to `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder; it replaces `path` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, DIR_MODE)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_table(table: pa.Table, path: str | Path, row_group_rows: int | None = None,
                **parquet_options) -> None:
    """Write one Parquet file atomically; the same table and options give the same bytes.

    `row_group_rows` sets the rows per row group (None: one group per file); row groups
    are the unit that readers fetch alone (pipeline/reader.py). `parquet_options` go to
    `pyarrow.parquet.write_table` (e.g. compression, use_dictionary).
    """
    options = dict(compression="zstd", row_group_size=row_group_rows) | parquet_options
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **options)


def write_json(data: dict, path: str | Path) -> None:
    """Write a small JSON file atomically, keys sorted so reruns give the same bytes."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


class ShardWriter:
    """Append record batches; every `rows_per_shard` rows become `shard-NNNNN.parquet`.

    Shard boundaries depend only on the order and count of rows, and each shard is
    written from one contiguous table, so the same rows give the same bytes however
    they were batched on the way in.
    """

    def __init__(self, folder: str | Path, schema: pa.Schema, rows_per_shard: int,
                 row_group_rows: int | None = None, **parquet_options):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.rows_per_shard = rows_per_shard
        self.row_group_rows = row_group_rows
        self.parquet_options = parquet_options
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0
        self.shards_written = 0
        self.rows_written = 0

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        table = table.cast(self.schema)
        self.pending.extend(table.to_batches())
        self.pending_rows += table.num_rows
        while self.pending_rows >= self.rows_per_shard:
            self._flush(self.rows_per_shard)

    def close(self) -> None:
        if self.pending_rows:
            self._flush(self.pending_rows)

    def _flush(self, rows: int) -> None:
        table = pa.Table.from_batches(self.pending, schema=self.schema)
        # Parquet page layout follows the chunk layout: combine so that bytes depend on rows only.
        shard = table.slice(0, rows).combine_chunks()
        write_table(shard, self.folder / f"shard-{self.shards_written:05d}.parquet", self.row_group_rows,
                    **self.parquet_options)
        rest = table.slice(rows)
        self.pending = rest.to_batches()
        self.pending_rows = rest.num_rows
        self.shards_written += 1
        self.rows_written += rows

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()


def shard_paths(folder: str | Path) -> list[Path]:
    """The shards of a folder in order (empty list when the folder has none)."""
    return sorted(Path(folder).glob("shard-*.parquet"))
