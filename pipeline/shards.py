"""Atomic writing of Parquet files and shard directories.

Nothing a stage writes may look finished before it is: single files go to a
temporary name in the same folder and are renamed into place; shard folders
are filled under a temporary folder that replaces the target in one rename.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it to `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder; it replaces `path` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
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


def write_table(table: pa.Table, path: str | Path) -> None:
    """Write one Parquet file atomically (no statistics: they make files differ by writer)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_json(data: dict, path: str | Path) -> None:
    """Write a small JSON file atomically, keys sorted so reruns give the same bytes."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


class ShardWriter:
    """Append record batches; every `rows_per_shard` rows become `shard-NNNNN.parquet`.

    Shard boundaries depend only on the order and count of rows, so the same
    rows give the same files.
    """

    def __init__(self, folder: str | Path, schema: pa.Schema, rows_per_shard: int):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.rows_per_shard = rows_per_shard
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
        write_table(table.slice(0, rows), self.folder / f"shard-{self.shards_written:05d}.parquet")
        rest = table.slice(rows)
        self.pending = rest.to_batches()
        self.pending_rows = rest.num_rows
        self.shards_written += 1
        self.rows_written += rows

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()


def shard_paths(folder: str | Path) -> list[Path]:
    """The shards of a folder in order (empty list when the folder has none)."""
    return sorted(Path(folder).glob("shard-*.parquet"))
