"""The training shard reader: contents, shapes, exactly-once dealing over workers and ranks, shuffling."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from pipeline.arrays import array_column, array_field
from pipeline.reader import ShardReader, make_loader
from pipeline.shards import ShardWriter
from tests.helpers.features import write_feature_split

ROWS = 150  # 3 shards of 64, 64, 22 rows; row groups of 16 rows: 10 units of work
SAMPLES, MELS, FRAMES, SIDE = 100, 4, 5, 16


def colour_of(row: int) -> tuple[int, int, int]:
    return (row * 37 % 256, row * 91 % 256, row * 13 % 256)


def written_arrays() -> dict[str, np.ndarray]:
    """The array columns of the test split: every element differs, and says its row and position."""
    rows = np.arange(ROWS)
    pixels = np.zeros((ROWS, 3, SIDE, SIDE), dtype=np.uint8)
    for row in rows:
        pixels[row] = np.array(colour_of(row), dtype=np.uint8)[:, None, None]
    waveform = (rows[:, None] * SAMPLES + np.arange(SAMPLES) - 7000).astype(np.int16)  # negative ones too
    logmel = rows[:, None, None] * 1000.0 + np.arange(MELS)[:, None] * 10.0 + np.arange(FRAMES) - 0.5
    return {"waveform": waveform, "logmel": logmel.astype(np.float32), "pixels": pixels}


def write_split(folder: Path) -> None:
    """A features split (docs/data.md) whose every value says which row it is."""
    arrays = written_arrays()
    clips = [{"clip_id": f"clip{row:04d}", "video_id": f"video{row:04d}", "clip_index": row,
              "labels": [f"class{row % 3}"], "waveform": arrays["waveform"][row], "pixels": arrays["pixels"][row]}
             for row in range(ROWS)]  # frame 0: the JPEG of the pixels
    # batches of 50 rows, which do not line up with the shards
    write_feature_split(folder, clips, logmels=arrays["logmel"], rows_per_shard=64, row_group_rows=16, batch_rows=50)


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("reader") / "train_single"
    write_split(folder)
    return folder


def epoch_indices(split: Path, workers: int = 0, rank: int = 0, world_size: int = 1, epoch: int = 0,
                  **options) -> list[int]:
    reader = ShardReader(split, columns=("index",), rank=rank, world_size=world_size, **options)
    reader.set_epoch(epoch)
    batches = list(make_loader(reader, num_workers=workers))
    assert len(batches) == reader.num_batches(workers)
    return [int(row) for batch in batches for row in batch["index"]]


def test_batches_hold_the_right_rows_with_the_right_shapes(split):
    reader = ShardReader(split, columns=("waveform", "logmel", "image", "index", "clip_id", "labels", "clip_index"),
                         batch_size=32, shuffle=True, seed=3)
    batches = list(reader)
    assert [len(batch["index"]) for batch in batches] == [32, 32, 32, 32, 22]
    batch = batches[0]
    assert batch["waveform"].dtype == torch.int16 and batch["waveform"].shape == (32, SAMPLES)
    assert batch["logmel"].dtype == torch.float32 and batch["logmel"].shape == (32, MELS, FRAMES)
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (32, 3, SIDE, SIDE)
    assert batch["index"].dtype == torch.int64 and batch["clip_index"].dtype == torch.int32
    written = written_arrays()
    for batch in batches:
        rows = batch["index"].numpy()
        np.testing.assert_array_equal(batch["waveform"].numpy(), written["waveform"][rows])
        np.testing.assert_array_equal(batch["logmel"].numpy(), written["logmel"][rows])
        np.testing.assert_array_equal(batch["clip_index"].numpy(), rows)
        assert batch["clip_id"] == [f"clip{row:04d}" for row in rows]
        assert batch["labels"] == [[f"class{row % 3}"] for row in rows]
        np.testing.assert_array_equal(batch["image"].numpy()[:, :, 0, 0], [colour_of(row) for row in rows])


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("cache_bytes", [0, 2**30])
def test_decoded_arrays_equal_the_written_arrays(split, workers, cache_bytes):
    reader = ShardReader(split, columns=("waveform", "logmel", "image", "index"), batch_size=24, shuffle=True,
                         cache_bytes=cache_bytes)
    written = written_arrays()
    for epoch in (0, 1):  # the second epoch comes from the cache when it is on
        reader.set_epoch(epoch)
        batches = list(make_loader(reader, num_workers=workers))
        rows = np.concatenate([batch["index"].numpy() for batch in batches])
        assert sorted(rows) == list(range(ROWS))
        for name, column in (("waveform", "waveform"), ("logmel", "logmel"), ("pixels", "image")):
            decoded = torch.cat([batch[column] for batch in batches]).numpy()
            assert decoded.dtype == written[name].dtype
            np.testing.assert_array_equal(decoded, written[name][rows])


def test_dropped_batches_lend_their_memory_kept_ones_stay_intact(split):
    reader = ShardReader(split, columns=("logmel", "index"), batch_size=7, cache_bytes=0)  # the last batch: 3 rows
    addresses = [batch["logmel"].data_ptr() for batch in reader]  # each batch dropped at once
    pooled = [array.ctypes.data for arrays in reader._buffers.arrays.values() for array in arrays]
    assert len(addresses) == 22 and set(addresses) <= set(pooled) and len(pooled) <= 4  # dropped arrays reused
    kept_rows = [(batch["index"].clone(), batch["logmel"][1:3]) for batch in reader]  # views keep their arrays
    assert len({logmel.untyped_storage().data_ptr() for _, logmel in kept_rows}) == len(kept_rows)
    written = written_arrays()["logmel"]
    for rows, logmel in kept_rows:
        np.testing.assert_array_equal(logmel.numpy(), written[rows[1:3].numpy()])


def test_array_metadata_that_does_not_fit_the_column_is_an_error(tmp_path):
    field, metadata = array_field("logmel", np.float32, (MELS, FRAMES))
    schema = pa.schema([field]).with_metadata(metadata | {"logmel_shape": f"{MELS},{FRAMES + 1}"})
    with ShardWriter(tmp_path, schema, rows_per_shard=8) as writer:
        writer.write(pa.table({"logmel": array_column(written_arrays()["logmel"][:3])}, schema=schema))
    with pytest.raises(ValueError, match=r"shard-00000\.parquet: column logmel must be fixed_size_binary\[96\]"):
        ShardReader(tmp_path, columns=("logmel",))


def test_jpeg_frames_decode_to_the_stored_pixels(split):
    stored = next(iter(ShardReader(split, columns=("image", "index"), batch_size=40)))
    decoded = next(iter(ShardReader(split, columns=("image", "index"), batch_size=40, use_pixels=False)))
    assert torch.equal(stored["index"], decoded["index"])
    assert decoded["image"].shape == stored["image"].shape
    assert (decoded["image"].int() - stored["image"].int()).abs().max() <= 3  # JPEG is lossy


def test_only_the_asked_columns_are_read(split):
    reader = ShardReader(split, columns=("logmel", "waveform"))
    assert reader.read_columns == ["logmel", "waveform"]
    assert set(next(iter(reader))) == {"logmel", "waveform"}
    with pytest.raises(KeyError, match="no column 'spectrogram'"):
        ShardReader(split, columns=("spectrogram",))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("shuffle", [False, True])
def test_every_row_once_per_epoch_over_workers_and_ranks(split, workers, shuffle):
    alone = epoch_indices(split, workers, shuffle=shuffle, batch_size=10)
    assert sorted(alone) == list(range(ROWS))
    ranks = [epoch_indices(split, workers, rank, 2, shuffle=shuffle, batch_size=10) for rank in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == list(range(ROWS))
    assert ranks[0] and ranks[1]


def test_unshuffled_order_is_file_order(split):
    assert epoch_indices(split, batch_size=7) == list(range(ROWS))


def test_shuffling_changes_with_the_epoch_and_repeats_with_the_seed(split):
    first = epoch_indices(split, shuffle=True, seed=5, epoch=0, buffer_rows=64)
    assert first != list(range(ROWS))
    assert epoch_indices(split, shuffle=True, seed=5, epoch=0, buffer_rows=64) == first
    assert epoch_indices(split, shuffle=True, seed=5, epoch=1, buffer_rows=64) != first
    assert epoch_indices(split, shuffle=True, seed=6, epoch=0, buffer_rows=64) != first
    # the cache changes where rows come from, never which rows or in what order
    assert epoch_indices(split, shuffle=True, seed=5, epoch=0, buffer_rows=64, cache_bytes=0) == first


def test_set_epoch_reaches_persistent_workers(split):
    reader = ShardReader(split, columns=("index",), shuffle=True, seed=2, batch_size=16)
    loader = make_loader(reader, num_workers=2)
    assert loader.persistent_workers
    for epoch in (0, 1, 2):
        reader.set_epoch(epoch)
        seen = [int(row) for batch in loader for row in batch["index"]]
        assert seen == epoch_indices(split, 2, shuffle=True, seed=2, batch_size=16, epoch=epoch)


def test_drop_last_gives_only_full_batches(split):
    reader = ShardReader(split, columns=("index",), batch_size=32, shuffle=True, drop_last=True, rank=1,
                         world_size=2)
    sizes = [len(batch["index"]) for batch in make_loader(reader, num_workers=2)]
    assert set(sizes) == {32} and len(sizes) == reader.num_batches(2)


def test_an_empty_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shard"):
        ShardReader(tmp_path)


def test_synth_shards_with_a_jpeg_image_column_are_decoded(tmp_path):
    jpegs = []
    for row in range(20):
        buffer = io.BytesIO()
        Image.new("RGB", (24, 24), colour_of(row)).save(buffer, format="JPEG", quality=95)
        jpegs.append(buffer.getvalue())
    schema = pa.schema([("sample_id", pa.string()), ("image", pa.binary())])
    with ShardWriter(tmp_path, schema, rows_per_shard=8) as writer:
        writer.write(pa.table({"sample_id": [f"un_{row:06d}" for row in range(20)], "image": jpegs}, schema=schema))
    batches = list(make_loader(ShardReader(tmp_path, columns=("image", "index", "sample_id"), batch_size=6),
                               num_workers=2))
    rows = np.concatenate([batch["index"].numpy() for batch in batches])
    assert sorted(rows) == list(range(20))
    images = torch.cat([batch["image"] for batch in batches])
    assert images.shape == (20, 3, 24, 24)
    assert (images[:, :, 5, 5].int() - torch.tensor([colour_of(row) for row in rows])).abs().max() <= 3
