"""Synth: mosaics, mixtures and the duet set, from small feature shards written here."""
from __future__ import annotations

import copy
import dataclasses
import io
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from pipeline.arrays import array_layout, array_values
from pipeline.audio import LogMel
from pipeline.config import MixSet, Synth
from pipeline.reader import ShardReader
from pipeline.shards import shard_paths
from pipeline.stage import StageError
from pipeline.synth import (
    EMPTY_TILE_RGB,
    ClipPool,
    compose_mosaic,
    grid_side,
    make_mosaic_set,
    mix_waveforms,
    read_split,
    run_synth,
    set_rng,
    tile_to_mosaic,
)
from tests.helpers.features import LOGMEL_SETTINGS, write_feature_split

TILE = 32  # frame side of the test clips (the real default is 128)
SAMPLES = 16000
CLASSES = [f"class{i:02d}" for i in range(11)]


# --------------------------------------------------------------------------- test data


def make_frame(rng: np.random.Generator, box) -> bytes:
    """A TILE x TILE JPEG: flat 16x16 blocks of random colour (JPEG-friendly), a white instrument box."""
    blocks = rng.integers(0, 256, size=(TILE // 16, TILE // 16, 3), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((16, 16, 1), dtype=np.uint8))
    x0, y0, x1, y1 = (round(v * TILE) for v in box)
    pixels[y0:y1, x0:x1] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def make_clip(rng: np.random.Generator, clip_id: str, labels: list[str], loud: bool = False) -> dict:
    """One features row: a tone per label, a frame with an instrument box per label and a silent person."""
    time = np.arange(SAMPLES) / 16000
    wave = sum(np.sin(2 * np.pi * rng.uniform(200, 2000) * time) for _ in labels)
    amplitude = 32767 / len(labels) if loud else rng.uniform(2000, 12000) / len(labels)
    waveform = np.rint(wave * amplitude).clip(-32768, 32767).astype(np.int16)
    objects = []
    for label in labels:
        x0, y0 = rng.uniform(0.0, 0.5, size=2)
        objects.append({"class": label, "x0": x0, "y0": y0, "x1": x0 + 0.4, "y1": y0 + 0.4,
                        "sounding": True})
    objects.append({"class": "person", "x0": 0.6, "y0": 0.1, "x1": 1.0, "y1": 0.9, "sounding": False})
    box = [objects[0][key] for key in ("x0", "y0", "x1", "y1")]
    return {"clip_id": clip_id, "labels": labels, "kind": "duet" if len(labels) > 1 else "solo",
            "waveform": waveform, "frame": make_frame(rng, box), "objects": objects}


def make_pool(classes: list[str], clips_per_class: int = 2, seed: int = 0, loud: bool = False) -> ClipPool:
    rng = np.random.default_rng(seed)
    rows = [make_clip(rng, f"{label}_v_{k:04d}", [label], loud) for label in classes
            for k in range(clips_per_class)]
    return ClipPool(source="memory", clip_ids=[r["clip_id"] for r in rows], labels=[r["labels"] for r in rows],
                    kinds=[r["kind"] for r in rows], waveforms=np.stack([r["waveform"] for r in rows]),
                    frames=[r["frame"] for r in rows], objects=[r["objects"] for r in rows])


def write_split(folder, rows: list[dict]) -> None:
    """Write rows as a features split (docs/data.md schema, no pixels) with the log-mel of each waveform."""
    table = write_feature_split(folder, rows, logmel_settings=LOGMEL_SETTINGS)
    if table is not None:
        for row, logmel in zip(rows, arrays_of(table, "logmel")):
            row["logmel"] = logmel  # what the synth's duet set must carry over


def write_features(features_dir, n_classes: int = 6, duet_clips: int = 3, val_clips_per_class: int = 2,
                   duet_val_clips: int = 2) -> dict[str, list[dict]]:
    """test, val and train_mix splits of solo clips, duet and duet_val splits, and the summary.json; the rows
    of each split. Every clip id starts with its split's name."""
    rng = np.random.default_rng(1)
    classes = CLASSES[:n_classes]
    splits = {split: [make_clip(rng, f"{split}-{label}-v{k}_{k:04d}", [label]) for label in classes
                      for k in range(per_class)]
              for split, per_class in (("test", 3), ("val", val_clips_per_class), ("train_mix", 2))}
    for split, clips in (("duet", duet_clips), ("duet_val", duet_val_clips)):
        splits[split] = [make_clip(rng, f"{split}-v{k}_{k:04d}",
                                   [classes[k % n_classes], classes[(k + 1) % n_classes]]) for k in range(clips)]
    for split, rows in splits.items():
        write_split(features_dir / split, rows)
    (features_dir / "train_single").mkdir()  # present and empty: synth does not read it
    (features_dir / "summary.json").write_text(json.dumps({"logmel": LOGMEL_SETTINGS}))
    return splits


def small_synth(**changes) -> Synth:
    synth = Synth(syn=MixSet(count=6, sounding=2, silent=2, offscreen=0),
                  un=MixSet(count=5, sounding=2, silent=2, offscreen=1),
                  train=MixSet(count=7, sounding=2, silent=1, offscreen=1),
                  val_count=4, volume_jitter_db=6.0, jpeg_quality=90, shard_rows=4, row_group_rows=3)
    return dataclasses.replace(synth, **changes)


def build(pool: ClipPool, mix: MixSet, name: str = "un", seed: int = 0, jpeg_quality: int = 90) -> pa.Table:
    batches = make_mosaic_set(pool, mix, set_rng(seed, name), name=name, logmel=LogMel(**LOGMEL_SETTINGS),
                              volume_jitter_db=6.0, jpeg_quality=jpeg_quality, batch_size=4)
    return pa.concat_tables(list(batches))


def decode(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def pixel_box(box, size: int) -> tuple[int, int, int, int]:
    return tuple(round(v * size) for v in box)


@pytest.fixture(scope="module")
def pool11() -> ClipPool:
    return make_pool(CLASSES, clips_per_class=2)


@pytest.fixture(scope="module")
def written_features(tmp_path_factory) -> tuple:
    """The features folder and the rows written to each split."""
    folder = tmp_path_factory.mktemp("features") / "music"
    return folder, write_features(folder)


@pytest.fixture(scope="module")
def features_dir(written_features):
    return written_features[0]


@pytest.fixture(scope="module")
def synth_dir(features_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "music"
    run_synth(features_dir, out, small_synth(), seed=0)
    return out


def read_set(synth_dir, name: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(path) for path in shard_paths(synth_dir / name)])


def arrays_of(table: pa.Table, name: str) -> np.ndarray:
    """The arrays of array column `name` (waveform, logmel) of a synth table, (rows, *shape)."""
    return array_values(table.column(name), *array_layout(table.schema, name))


# --------------------------------------------------------------------------- geometry


def test_tile_to_mosaic_known_box():
    # tile (row 1, col 0) of a 2x2 grid is the bottom-left quarter
    assert tile_to_mosaic((0.25, 0.5, 0.75, 1.0), 1, 0, 2).tolist() == [0.125, 0.75, 0.375, 1.0]
    assert tile_to_mosaic((0.0, 0.0, 1.0, 1.0), 2, 1, 3).tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1.0])
    many = tile_to_mosaic(np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]), 0, 1, 2)
    assert many.tolist() == [[0.5, 0.0, 0.75, 0.25], [0.75, 0.25, 1.0, 0.5]]


@pytest.mark.parametrize("visible, grid", [(1, 1), (2, 2), (4, 2), (5, 3), (6, 3), (8, 3), (9, 3), (10, 4)])
def test_grid_side(visible, grid):
    assert grid_side(visible) == grid


def test_boxes_round_trip_through_the_mosaic_pixels(pool11):
    table = build(pool11, MixSet(count=4, sounding=3, silent=3, offscreen=2), jpeg_quality=95)
    index = {clip_id: row for row, clip_id in enumerate(pool11.clip_ids)}
    checked = 0
    for sample in table.to_pylist():
        side = sample["grid"] * TILE
        tiles = sample["tiles"]
        frames = [pool11.frames[index[tile["clip_id"]]] for tile in tiles]
        cells = [round(tile["y0"] * sample["grid"]) * sample["grid"] + round(tile["x0"] * sample["grid"])
                 for tile in tiles]
        composed = np.asarray(compose_mosaic(frames, cells, sample["grid"], TILE, [t["clip_id"] for t in tiles]))
        stored = decode(sample["image"]).astype(int)
        assert stored.shape == (side, side, 3)
        for obj in sample["objects"]:
            tile = tiles[obj["tile"]]
            row = index[tile["clip_id"]]
            truth = next(o for o in pool11.objects[row] if o["class"] == obj["class"])
            fx0, fy0, fx1, fy1 = pixel_box([truth[k] for k in ("x0", "y0", "x1", "y1")], TILE)
            mx0, my0, mx1, my1 = pixel_box([obj[k] for k in ("x0", "y0", "x1", "y1")], side)
            original = decode(pool11.frames[row])[fy0:fy1, fx0:fx1]
            # before JPEG: the very same pixels
            np.testing.assert_array_equal(composed[my0:my1, mx0:mx1], original)
            # after JPEG: close to them, and far from the pixels one tile over
            error = np.abs(stored[my0:my1, mx0:mx1] - original).mean()
            assert error < 6, error
            shift = ((round(tile["x0"] * sample["grid"]) + 1) % sample["grid"]) * TILE - round(tile["x0"] * side)
            elsewhere = np.abs(stored[my0:my1, mx0 + shift:mx1 + shift] - original).mean()
            assert elsewhere > 3 * error, (elsewhere, error)
            checked += 1
    assert checked >= 4 * 6 * 2  # every tile's instrument and person


def test_empty_tiles_are_grey(pool11):
    table = build(pool11, MixSet(count=2, sounding=3, silent=3, offscreen=0), jpeg_quality=95)
    for sample in table.to_pylist():
        used = {(round(t["y0"] * 3), round(t["x0"] * 3)) for t in sample["tiles"]}
        image = decode(sample["image"]).astype(int)
        empty = [(r, c) for r in range(3) for c in range(3) if (r, c) not in used]
        assert len(empty) == 3
        for r, c in empty:
            # inside: JPEG's chroma upsampling blurs a few pixels across the tile edges
            tile = image[r * TILE + 4:(r + 1) * TILE - 4, c * TILE + 4:(c + 1) * TILE - 4]
            assert np.abs(tile - np.array(EMPTY_TILE_RGB)).max() <= 3


# --------------------------------------------------------------------------- composition


@pytest.mark.parametrize("sounding, silent, offscreen, grid", [(2, 2, 1, 2), (3, 3, 2, 3), (4, 4, 3, 3), (2, 2, 0, 2)])
def test_table9_levels(pool11, sounding, silent, offscreen, grid):
    table = build(pool11, MixSet(count=6, sounding=sounding, silent=silent, offscreen=offscreen))
    assert table.num_rows == 6
    class_of = {clip_id: labels[0] for clip_id, labels in zip(pool11.clip_ids, pool11.labels)}
    for sample in table.to_pylist():
        assert sample["grid"] == grid
        tiles = sample["tiles"]
        assert len(tiles) == sounding + silent
        assert [t["class"] for t in tiles] == sample["sounding"] + sample["silent"]
        assert [t["sounding"] for t in tiles] == [True] * sounding + [False] * silent
        assert len(sample["sounding"]) == sounding and len(sample["silent"]) == silent
        assert len(sample["offscreen"]) == offscreen
        every_class = sample["sounding"] + sample["silent"] + sample["offscreen"]
        assert len(set(every_class)) == len(every_class)
        # tiles sit on distinct cells of the grid
        cells = {(round(t["y0"] * grid), round(t["x0"] * grid)) for t in tiles}
        assert len(cells) == len(tiles)
        for t in tiles:
            assert t["x1"] - t["x0"] == pytest.approx(1 / grid) and t["y1"] - t["y0"] == pytest.approx(1 / grid)
            assert class_of[t["clip_id"]] == t["class"]
        # off-screen classes are heard, never seen
        pictured = {o["class"] for o in sample["objects"]} | {t["class"] for t in tiles}
        assert not pictured & set(sample["offscreen"])
        assert [class_of[m] for m in sample["members"]] == sample["sounding"] + sample["offscreen"]
        assert len(sample["gains"]) == sounding + offscreen
        # each tile carries its instrument and its person, inside the tile
        assert len(sample["objects"]) == 2 * len(tiles)
        for obj in sample["objects"]:
            tile = tiles[obj["tile"]]
            assert tile["x0"] - 1e-6 <= obj["x0"] < obj["x1"] <= tile["x1"] + 1e-6
            assert tile["y0"] - 1e-6 <= obj["y0"] < obj["y1"] <= tile["y1"] + 1e-6
            assert obj["class"] in (tile["class"], "person")


def test_sounding_flags(pool11):
    table = build(pool11, MixSet(count=8, sounding=2, silent=2, offscreen=1))
    for sample in table.to_pylist():
        for obj in sample["objects"]:
            tile = sample["tiles"][obj["tile"]]
            if obj["class"] == "person":
                assert not obj["sounding"]  # a distractor stays silent
            else:
                # the instrument of a sounding tile sounds, that of a silent tile does not
                assert obj["sounding"] == tile["sounding"] == (obj["class"] in sample["sounding"])


def test_too_few_classes_names_the_key(pool11):
    pool4 = make_pool(CLASSES[:4])
    with pytest.raises(StageError, match=r"^synth\.un: needs 5 distinct classes, memory has 4$"):
        make_mosaic_set(pool4, MixSet(count=3, sounding=2, silent=2, offscreen=1), set_rng(0, "un"), name="un",
                        logmel=LogMel(**LOGMEL_SETTINGS), volume_jitter_db=6.0, jpeg_quality=90)


def test_frame_of_another_size_is_an_error(pool11):
    pool = dataclasses.replace(pool11, frames=list(pool11.frames))
    buffer = io.BytesIO()
    Image.new("RGB", (TILE + 8, TILE)).save(buffer, format="JPEG")
    pool.frames[5] = buffer.getvalue()
    with pytest.raises(StageError, match=f"clip {pool.clip_ids[5]}: frame is 40x32, expected 32x32"):
        build(pool, MixSet(count=40, sounding=4, silent=4, offscreen=3))


# --------------------------------------------------------------------------- audio


def recompute_mixture(pool: ClipPool, sample: dict) -> np.ndarray:
    index = {clip_id: row for row, clip_id in enumerate(pool.clip_ids)}
    members = np.stack([pool.waveforms[index[m]] for m in sample["members"]]).astype(np.float64)
    gains = np.asarray(sample["gains"], dtype=np.float32).astype(np.float64)
    return np.rint((gains[:, None] * members).sum(axis=0) / len(members))


def test_mixture_is_the_gain_weighted_average(pool11):
    table = build(pool11, MixSet(count=10, sounding=3, silent=1, offscreen=2))
    for sample, waveform in zip(table.to_pylist(), arrays_of(table, "waveform")):
        np.testing.assert_array_equal(waveform, recompute_mixture(pool11, sample))
        gains_db = 20 * np.log10(sample["gains"])
        assert np.all(np.abs(gains_db) <= 6.0 + 1e-4)  # quiet members: no anti-clipping scale
    assert len({tuple(np.round(s, 3)) for s in table.column("gains").to_pylist()}) == 10


def test_loud_mixture_is_scaled_not_clipped():
    pool = make_pool(CLASSES[:5], loud=True)
    # members at full scale, all gains +12 dB: their average would pass int16 several times over
    mixture, gains = mix_waveforms(pool.waveforms[None, :3], np.full((1, 3), 12.0))
    assert np.abs(mixture.astype(int)).max() <= 32767
    assert np.abs(mixture.astype(int)).max() > 30000  # scaled to full range, not silenced
    assert np.all(gains < 10 ** (12 / 20))
    expected = np.rint((gains[0].astype(np.float64)[:, None] * pool.waveforms[:3]).sum(axis=0) / 3)
    np.testing.assert_array_equal(mixture[0], expected)


def test_logmel_is_the_log_mel_of_the_mixture(pool11):
    table = build(pool11, MixSet(count=5, sounding=2, silent=2, offscreen=1))
    logmel = LogMel(**LOGMEL_SETTINGS)
    assert table.schema.metadata[b"logmel_shape"] == b"64,201"
    assert table.schema.field("logmel").type == pa.binary(4 * 64 * 201)
    assert table.schema.field("waveform").type == pa.binary(2 * SAMPLES)
    assert array_layout(table.schema, "logmel") == (np.dtype(np.float32), (64, 201))
    assert array_layout(table.schema, "waveform") == (np.dtype(np.int16), (SAMPLES,))
    for waveform, stored in zip(arrays_of(table, "waveform"), arrays_of(table, "logmel")):
        expected = logmel(torch.from_numpy(waveform.copy())).numpy()
        np.testing.assert_allclose(stored, expected, atol=1e-3)


# --------------------------------------------------------------------------- stage


SET_SAMPLES = {"syn": 6, "un": 5, "train": 7, "val_syn": 4, "val_un": 4, "duet": 3, "val_duet": 2}


def test_run_synth_writes_every_set(synth_dir, features_dir):
    summary = json.loads((synth_dir / "summary.json").read_text())
    sets = summary["sets"]
    assert {name: sets[name]["samples"] for name in sets} == SET_SAMPLES
    assert sorted(p.name for p in synth_dir.iterdir()) == sorted([*SET_SAMPLES, "summary.json"])
    assert summary["logmel_shape"] == [64, 201]
    assert [p.name for p in shard_paths(synth_dir / "syn")] == ["shard-00000.parquet", "shard-00001.parquet"]
    for name, (grid, tiles) in {"syn": (2, 4), "un": (2, 4), "train": (2, 3), "val_syn": (2, 4),
                                "val_un": (2, 4)}.items():
        table = read_set(synth_dir, name)
        assert table.column("sample_id").to_pylist() == [f"{name}_{i:06d}" for i in range(table.num_rows)]
        assert set(table.column("grid").to_pylist()) == {grid}
        assert sets[name]["tiles"] == tiles * table.num_rows
        assert sets[name]["objects"] == 2 * tiles * table.num_rows
        assert decode(table.column("image")[0].as_py()).shape == (grid * TILE, grid * TILE, 3)
    # syn and un come from test, train from train_mix, the val sets from val (no test clip in them)
    for name, split in {"syn": "test", "un": "test", "train": "train_mix", "val_syn": "val", "val_un": "val",
                        "duet": "duet", "val_duet": "duet_val"}.items():
        members = {m for ms in read_set(synth_dir, name).column("members").to_pylist() for m in ms}
        assert members and all(m.startswith(f"{split}-") for m in members), name
        assert sets[name]["source_split"] == split
    assert read_set(synth_dir, "syn").column("offscreen").to_pylist() == [[]] * 6
    # the val sets follow the recipe of their test set, with synth.val_count mosaics
    for name, recipe in {"val_syn": "syn", "val_un": "un"}.items():
        assert [sets[name][key] for key in ("grid", "sounding", "silent", "offscreen")] == \
            [sets[recipe][key] for key in ("grid", "sounding", "silent", "offscreen")]
    assert read_set(synth_dir, "val_syn").column("offscreen").to_pylist() == [[]] * 4
    assert [len(o) for o in read_set(synth_dir, "val_un").column("offscreen").to_pylist()] == [1] * 4


@pytest.mark.parametrize("name, split", [("duet", "duet"), ("val_duet", "duet_val")])
def test_duet_set_is_the_duet_clips_as_recorded(synth_dir, written_features, name, split):
    features_dir, written = written_features
    duet_table = read_set(synth_dir, name)
    duet = duet_table.to_pylist()
    source = pq.read_table(features_dir / split / "shard-00000.parquet").to_pylist()
    assert len(duet) == len(source) == SET_SAMPLES[name]
    # sample ids carry the set's name: a test duet and a val duet never share one
    assert [sample["sample_id"] for sample in duet] == [f"{name}_{i:06d}" for i in range(len(duet))]
    np.testing.assert_array_equal(arrays_of(duet_table, "waveform"), [clip["waveform"] for clip in written[split]])
    np.testing.assert_array_equal(arrays_of(duet_table, "logmel"), [clip["logmel"] for clip in written[split]])
    for sample, clip in zip(duet, source):
        assert sample["grid"] == 1
        assert sample["image"] == clip["frames"][0]
        assert sample["waveform"] == clip["waveform"] and sample["logmel"] == clip["logmel"]  # the same bytes
        assert sample["sounding"] == clip["labels"] and sample["silent"] == sample["offscreen"] == []
        assert sample["members"] == [clip["clip_id"]]
        assert [t["class"] for t in sample["tiles"]] == clip["labels"]
        assert all(t["sounding"] and (t["x0"], t["y0"], t["x1"], t["y1"]) == (0, 0, 1, 1) for t in sample["tiles"])
        truth = clip["objects"][0]
        assert [o["class"] for o in sample["objects"]] == [o["class"] for o in truth]
        for obj, true in zip(sample["objects"], truth):
            assert obj["sounding"] == true["sounding"]
            assert [obj[k] for k in ("x0", "y0", "x1", "y1")] == pytest.approx(
                [min(max(true[k], 0.0), 1.0) for k in ("x0", "y0", "x1", "y1")])
            assert sample["tiles"][obj["tile"]]["class"] in (obj["class"], clip["labels"][0])


def test_shards_have_row_groups_for_the_reader(synth_dir):
    for name, samples in SET_SAMPLES.items():
        footers = [pq.read_metadata(path) for path in shard_paths(synth_dir / name)]
        groups = [footer.row_group(group).num_rows for footer in footers for group in range(footer.num_row_groups)]
        assert sum(groups) == samples and max(groups) == min(samples, 3), (name, groups)  # synth.row_group_rows
        assert len(ShardReader(synth_dir / name, columns=("index",)).units) == len(groups)


def test_reader_decodes_the_written_arrays(synth_dir, written_features):
    """What training reads back (pipeline/reader.py) is what synth computed: the mixtures of the
    features' clips with their gains, their log-mels, and the duet clips' own arrays."""
    _, written = written_features

    def pool_of(rows):  # the sources of a mosaic set, as generated (not read back)
        return ClipPool(source="written", clip_ids=[r["clip_id"] for r in rows],
                        labels=[r["labels"] for r in rows], kinds=[r["kind"] for r in rows],
                        waveforms=np.stack([r["waveform"] for r in rows]),
                        frames=[r["frame"] for r in rows], objects=[r["objects"] for r in rows])

    logmel = LogMel(**LOGMEL_SETTINGS)
    sources = {"un": "test", "val_un": "val", "duet": "duet", "val_duet": "duet_val"}
    for name, split in sources.items():
        pool = pool_of(written[split])
        table = read_set(synth_dir, name).to_pylist()
        reader = ShardReader(synth_dir / name, columns=("waveform", "logmel", "index"), batch_size=2, shuffle=True)
        for batch in reader:
            assert batch["waveform"].dtype == torch.int16 and batch["logmel"].shape[1:] == (64, 201)
            for row, waveform, stored in zip(batch["index"].tolist(), batch["waveform"], batch["logmel"]):
                if name.endswith("duet"):
                    np.testing.assert_array_equal(waveform.numpy(), written[split][row]["waveform"])
                    np.testing.assert_array_equal(stored.numpy(), written[split][row]["logmel"])
                else:
                    np.testing.assert_array_equal(waveform.numpy(), recompute_mixture(pool, table[row]))
                    np.testing.assert_allclose(stored.numpy(), logmel(waveform).numpy(), atol=1e-3)


@pytest.mark.parametrize("missing", [False, True])
def test_empty_duet_splits_are_skipped(tmp_path, missing):
    """vggsound has no duets: neither the test nor the val duet set is made, and the rest is."""
    features = tmp_path / "features"
    write_features(features, duet_clips=0, duet_val_clips=0)  # empty folders
    if missing:
        (features / "duet").rmdir()
        (features / "duet_val").rmdir()
    summary = run_synth(features, tmp_path / "synth", small_synth(), seed=0)
    for name, split in (("duet", "duet"), ("val_duet", "duet_val")):
        assert summary["sets"][name] == {"source_split": split, "samples": 0,
                                         "skipped": f"{features / split} has no clips"}
        assert not (tmp_path / "synth" / name).exists()
    assert summary["sets"]["val_syn"]["samples"] == 4 and summary["logmel_shape"] == [64, 201]


@pytest.mark.parametrize("missing", [False, True])
def test_an_empty_val_split_is_a_one_line_error_naming_the_set_and_folder(tmp_path, missing):
    features = tmp_path / "features"
    write_features(features, val_clips_per_class=0)  # an empty folder
    if missing:
        (features / "val").rmdir()
    with pytest.raises(StageError) as err:
        run_synth(features, tmp_path / "synth", small_synth(), seed=0)
    assert str(err.value) == f"synth.val_syn: {features / 'val'} has no clips"
    assert not (tmp_path / "synth").exists()


def test_val_sets_need_the_classes_of_their_recipe(tmp_path):
    # val_un follows synth.un (2 + 2 + 1 classes); a val split of 4 classes is named as val_un's problem
    write_features(tmp_path / "few", val_clips_per_class=0)
    write_split(tmp_path / "few" / "val", [make_clip(np.random.default_rng(2), f"val-{label}-v0_0000", [label])
                                           for label in CLASSES[:4]])
    with pytest.raises(StageError, match=r"^synth\.val_un: needs 5 distinct classes, .*val has 4$"):
        run_synth(tmp_path / "few", tmp_path / "synth", small_synth(), seed=0)
    assert not (tmp_path / "synth").exists()


def test_same_input_gives_byte_identical_files(synth_dir, features_dir, tmp_path):
    again = tmp_path / "again"
    run_synth(features_dir, again, small_synth(), seed=0)
    files = sorted(p.relative_to(synth_dir) for p in synth_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for path in files:
        assert (synth_dir / path).read_bytes() == (again / path).read_bytes(), path
    other_seed = tmp_path / "other"
    run_synth(features_dir, other_seed, small_synth(), seed=1)
    assert read_set(other_seed, "un").column("members") != read_set(synth_dir, "un").column("members")


def test_run_synth_errors_name_the_problem(features_dir, tmp_path):
    with pytest.raises(StageError, match=r"synth\.train: needs 7 distinct classes, .*train_mix has 6$"):
        run_synth(features_dir, tmp_path / "out", small_synth(train=MixSet(count=1, sounding=3, silent=3,
                                                                            offscreen=1)), seed=0)
    assert not (tmp_path / "out").exists()
    with pytest.raises(StageError, match=r"summary\.json: not found"):
        run_synth(tmp_path / "nowhere", tmp_path / "out", small_synth(), seed=0)


def test_read_split_missing_column(tmp_path):
    folder = tmp_path / "test"
    folder.mkdir()
    pq.write_table(pa.table({"clip_id": ["a"]}), folder / "shard-00000.parquet")
    with pytest.raises(StageError, match=r"shard-00000\.parquet: missing column\(s\) labels, kind, waveform"):
        read_split(folder)
    # a waveform stored as a list of int16 (the clips' form, not the features')
    rows = [make_clip(np.random.default_rng(0), "a_0000", ["x"])]
    write_split(folder, rows)
    table = pq.read_table(folder / "shard-00000.parquet")
    index = table.schema.get_field_index("waveform")
    waveform = pa.FixedSizeListArray.from_arrays(pa.array(rows[0]["waveform"]), SAMPLES)
    table = table.set_column(index, pa.field("waveform", waveform.type), waveform)
    pq.write_table(table, folder / "shard-00000.parquet")
    with pytest.raises(StageError, match=r"shard-00000\.parquet: column waveform must be fixed_size_binary"):
        read_split(folder)
    assert read_split(tmp_path / "absent") is None


def test_stage_end_to_end(tmp_path, repo_params, stage_env):
    write_features(tmp_path / "data" / "features" / "music")
    params = copy.deepcopy(repo_params)
    params["synth"].update(syn={"count": 3, "sounding": 2, "silent": 2, "offscreen": 0},
                           un={"count": 3, "sounding": 2, "silent": 2, "offscreen": 1},
                           train={"count": 4, "sounding": 2, "silent": 2, "offscreen": 2}, val_count=2)

    def run_stage(out: str) -> subprocess.CompletedProcess:
        (tmp_path / "test-params.yaml").write_text(yaml.safe_dump(params))
        done = subprocess.run([sys.executable, "-m", "stages.synth", "music", "--params", "test-params.yaml"],
                              cwd=tmp_path, env=stage_env, capture_output=True, text=True)
        if (tmp_path / "data" / "synth" / "music").exists():
            (tmp_path / "data" / "synth" / "music").rename(tmp_path / out)
        return done

    run = run_stage("first")
    assert run.returncode == 0, run.stderr
    assert "synth@music: un: 3 samples, grid 2, 12 tiles, 24 objects" in run.stdout
    assert "synth@music: val_un: 2 samples, grid 2, 8 tiles, 16 objects" in run.stdout
    summary = json.loads((tmp_path / "first" / "summary.json").read_text())
    assert {name: info["samples"] for name, info in summary["sets"].items()} == {
        "syn": 3, "un": 3, "train": 4, "val_syn": 2, "val_un": 2, "duet": 3, "val_duet": 2}
    # the data stages draw from data_seed: another training seed gives the same bytes, another data_seed not
    params["seed"] += 1
    assert run_stage("other_seed").returncode == 0
    def files(folder):
        return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())

    assert files(tmp_path / "first") == files(tmp_path / "other_seed")
    for path in files(tmp_path / "first"):
        assert (tmp_path / "first" / path).read_bytes() == (tmp_path / "other_seed" / path).read_bytes(), path
    params["data_seed"] += 1
    assert run_stage("other_data_seed").returncode == 0
    assert read_set(tmp_path / "other_data_seed", "un").column("members") != \
        read_set(tmp_path / "first", "un").column("members")
    # too few classes: one line naming the key, exit 2
    params["synth"]["un"]["offscreen"] = 3
    run = run_stage("failed")
    assert run.returncode == 2 and not (tmp_path / "failed").exists()
    assert run.stderr.strip().splitlines()[-1].startswith(
        "synth@music: error: synth.un: needs 7 distinct classes, data/features/music/test has 6")
