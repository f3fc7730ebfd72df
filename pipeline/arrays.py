"""Storage codecs: array columns in Parquet, Parquet write options, and the clips files' schema.

The big numeric columns (`waveform`, `logmel`, `pixels`) hold one fixed-shape array per row,
stored as fixed_size_binary: the array's little-endian bytes, row-major, with its dtype and
shape in the schema metadata (`<name>_dtype`, `<name>_shape`). Parquet stores a
fixed_size_list as a nested list with a repetition level per element, which pyarrow decodes
~20x slower (0.066 ms vs 0.003 ms per 64x201 log-mel row); plain bytes decode at memcpy speed
and read back as numpy views with no per-row work (docs/data.md).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

# lz4 for the small columns, dictionary pages for the repetitive strings only; the array columns
# are stored uncompressed (`parquet_options`).
COMPRESSION = "lz4"
DICTIONARY_COLUMNS = ["video_id", "kind", "labels.list.element"]


def array_field(name: str, dtype: np.dtype | str, shape: Sequence[int]) -> tuple[pa.Field, dict[str, str]]:
    """The fixed_size_binary field of an array column and its schema metadata entries."""
    dtype = np.dtype(dtype).newbyteorder("<")
    shape = tuple(int(n) for n in shape)
    width = dtype.itemsize * math.prod(shape)
    return pa.field(name, pa.binary(width)), {f"{name}_dtype": dtype.str, f"{name}_shape": ",".join(map(str, shape))}


def array_column(values: np.ndarray) -> pa.FixedSizeBinaryArray:
    """Rows of `values` (rows, *shape) as a fixed_size_binary column of their little-endian bytes."""
    values = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
    width = values.dtype.itemsize * math.prod(values.shape[1:])
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(values), [None, pa.py_buffer(values)])


def array_layout(schema: pa.Schema, name: str) -> tuple[np.dtype, tuple[int, ...]]:
    """(dtype, shape of one row) of array column `name`, from the schema metadata.

    A missing `<name>_dtype` means bytes (uint8): shards written before the key
    existed store only `pixels_shape`. Raises ValueError when the metadata is
    missing or does not match the column's byte width.
    """
    kind = schema.field(name).type
    if not pa.types.is_fixed_size_binary(kind):
        raise ValueError(f"column {name} must be fixed_size_binary (an array column, docs/data.md), got {kind}")
    metadata = schema.metadata or {}
    shape_text = metadata.get(f"{name}_shape".encode(), b"").decode()
    dtype_text = metadata.get(f"{name}_dtype".encode(), b"|u1").decode()
    try:
        shape = tuple(int(n) for n in shape_text.split(","))
        dtype = np.dtype(dtype_text)
    except (TypeError, ValueError):
        raise ValueError(f"schema metadata {name}_shape / {name}_dtype must be like '64,201' / '<f4', "
                         f"got {shape_text!r} / {dtype_text!r}") from None
    if kind.byte_width != dtype.itemsize * math.prod(shape):
        raise ValueError(f"column {name} must be fixed_size_binary[{dtype.itemsize * math.prod(shape)}] "
                         f"({dtype_text} {shape_text}), got {kind}")
    return dtype, shape


def parquet_options(schema: pa.Schema, compression: str, dictionary: Sequence[str] | None = None) -> dict:
    """`pyarrow.parquet.write_table` options: `compression` for every column but the array columns,
    which are stored uncompressed and without dictionary: raw audio, log-mel and pixel bytes gain
    little or nothing from lz4 (the toy log-mel and waveform grow) and then decode at memcpy speed
    (0.003 vs 0.005 ms a log-mel row with lz4). Dictionary pages for the `dictionary` columns (leaf
    paths, e.g. `labels.list.element`), or for every other column when None."""
    arrays = {field.name for field in schema if pa.types.is_fixed_size_binary(field.type)
              and f"{field.name}_shape".encode() in (schema.metadata or {})}
    leaves = {field.name: _leaf_paths(field.name, field.type) for field in schema}
    codecs = {leaf: "none" if name in arrays else compression for name, paths in leaves.items() for leaf in paths}
    if dictionary is None:
        dictionary = [leaf for name, paths in leaves.items() if name not in arrays for leaf in paths]
    return dict(compression=codecs, use_dictionary=list(dictionary))


def _leaf_paths(path: str, kind: pa.DataType) -> list[str]:
    """The Parquet column paths of an Arrow field (a list's values are `<path>.list.element`)."""
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _leaf_paths(f"{path}.list.element", kind.value_type)
    if pa.types.is_struct(kind):
        return [leaf for child in kind for leaf in _leaf_paths(f"{path}.{child.name}", child.type)]
    return [path]


def array_values(column: pa.Array | pa.ChunkedArray, dtype: np.dtype, shape: Sequence[int]) -> np.ndarray:
    """The arrays of a fixed_size_binary column as one read-only numpy array (rows, *shape).

    A view of Arrow's memory (no copy) when the column is one chunk; null rows are not allowed.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        raise ValueError("array column with null rows")
    if len(column) == 0:
        return np.empty((0, *shape), dtype=dtype)
    width = column.type.byte_width
    data = np.frombuffer(column.buffers()[1], dtype=np.uint8)
    rows = data[column.offset * width:(column.offset + len(column)) * width]  # a slice starts at its offset
    values = rows.view(dtype).reshape(len(column), *shape)
    values.flags.writeable = False  # Arrow arrays are immutable, and may share this memory
    return values


OBJECT = pa.struct([
    ("class", pa.string()),
    ("x0", pa.float32()), ("y0", pa.float32()), ("x1", pa.float32()), ("y1", pa.float32()),
    ("sounding", pa.bool_()),
])


def clip_schema(clip_samples: int) -> pa.Schema:
    """The columns of a clip row (docs/data.md); the waveform length is fixed by the params."""
    return pa.schema([
        ("clip_id", pa.string()),
        ("video_id", pa.string()),
        ("clip_index", pa.int32()),
        ("start_s", pa.float64()),
        ("labels", pa.list_(pa.string())),
        ("kind", pa.string()),
        ("waveform", pa.list_(pa.int16(), clip_samples)),
        ("frames", pa.list_(pa.binary())),
        ("objects", pa.list_(pa.list_(OBJECT))),
    ])
