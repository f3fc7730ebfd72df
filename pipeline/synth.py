"""Synthesised sets: mosaics of solo clips with mixed audio, and the duet set.

The paper (IEr, AAAI 2022) evaluates class-aware localisation on
MUSIC-Synthetic (four solo clips of distinct classes in a 2x2 grid, the audio
of two of them mixed: two sounding and two silent instruments) and on the
Unconstrained sets, which add off-screen sounds (heard, not seen) at the
interference levels of its Table 9: (sounding, silent, off-screen) =
(2, 2, 1), (3, 3, 2), (4, 4, 3). The stage-2 training set is made the same way
from the `train_mix` clips. One generic recipe, `make_mosaic_set`, builds all
of them from a `MixSet`; the duet set is the held-out duet clips as recorded.
Each test set has a val twin made the same way from the val videos (`val_syn`,
`val_un`, `val_duet`): evaluation chooses its thresholds there.

Mixing follows the paper: the mixture is the average of its members'
waveforms, each member first scaled by a random gain (volume jitter); the
log-mel of the mixture is computed with the same `LogMel` settings as the
features, read from `data/features/<ds>/summary.json`.
"""
from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image

from pipeline.arrays import array_column, array_field, array_layout, array_values, parquet_options
from pipeline.audio import LogMel, logmel_shape_of, read_logmel_settings
from pipeline.config import MixSet, Synth
from pipeline.progress import progress
from pipeline.shards import ShardWriter, atomic_dir, shard_paths, write_json
from pipeline.stage import StageError

# Empty tiles of a grid that is not full (3 + 3 clips in a 3x3 grid) are filled
# with mid grey: no edges, no colour, nothing a detector or a visual net could take for an object.
EMPTY_TILE_RGB = (128, 128, 128)
SAMPLES_PER_BATCH = 64  # mixtures mixed, log-mel'd and encoded together
INT16_MAX = 32767

# Which features split each set is made from.
SET_SOURCES = {"syn": "test", "un": "test", "train": "train_mix", "duet": "duet",
               "val_syn": "val", "val_un": "val", "val_duet": "duet_val"}
# The val sets follow the recipe of their test set (synth.syn, synth.un) with synth.val_count mosaics.
VAL_RECIPES = {"val_syn": "syn", "val_un": "un"}

BOX_FIELDS = [("x0", pa.float32()), ("y0", pa.float32()), ("x1", pa.float32()), ("y1", pa.float32())]
TILE_TYPE = pa.struct([("clip_id", pa.string()), ("class", pa.string()), *BOX_FIELDS, ("sounding", pa.bool_())])
OBJECT_TYPE = pa.struct([("class", pa.string()), *BOX_FIELDS, ("sounding", pa.bool_()), ("tile", pa.int32())])


def synth_schema(samples: int, logmel_shape: tuple[int, int]) -> pa.Schema:
    """The schema of `data/synth/<ds>/<set>/shard-*.parquet` (docs/data.md): `waveform` and `logmel`
    are array columns like the features' (`pipeline.features.array_field`)."""
    waveform, waveform_metadata = array_field("waveform", np.int16, (samples,))
    logmel, logmel_metadata = array_field("logmel", np.float32, logmel_shape)
    strings = pa.list_(pa.string())
    return pa.schema(
        [
            ("sample_id", pa.string()),
            ("image", pa.binary()),
            ("grid", pa.int32()),
            waveform,
            logmel,
            ("tiles", pa.list_(TILE_TYPE)),
            ("objects", pa.list_(OBJECT_TYPE)),
            ("sounding", strings),
            ("silent", strings),
            ("offscreen", strings),
            ("members", strings),
            ("gains", pa.list_(pa.float32())),
        ],
        metadata=waveform_metadata | logmel_metadata,
    )


# --------------------------------------------------------------------------- geometry


def grid_side(visible: int) -> int:
    """Tiles per side of the smallest square grid holding `visible` clips (4 -> 2, 6 -> 3, 8 -> 3)."""
    return math.isqrt(visible - 1) + 1


def tile_to_mosaic(box, tile_row: int, tile_col: int, grid: int) -> np.ndarray:
    """A normalised box of a frame -> the same box normalised to the mosaic.

    `box` is `(x0, y0, x1, y1)` or an array `(..., 4)` of them; the frame sits
    in tile (`tile_row`, `tile_col`) of a `grid` x `grid` mosaic.
    """
    box = np.asarray(box, dtype=np.float64)
    offset = np.array([tile_col, tile_row, tile_col, tile_row], dtype=np.float64)
    return (box + offset) / grid


def compose_mosaic(frames: Sequence[bytes], cells: Sequence[int], grid: int, tile_size: int,
                   clip_ids: Sequence[str]) -> Image.Image:
    """Paste each JPEG frame into its cell (row-major index) of a grid; other cells are grey."""
    mosaic = Image.new("RGB", (grid * tile_size, grid * tile_size), EMPTY_TILE_RGB)
    for frame, cell, clip_id in zip(frames, cells, clip_ids):
        with Image.open(io.BytesIO(frame)) as tile:
            if tile.size != (tile_size, tile_size):
                raise StageError(f"clip {clip_id}: frame is {tile.size[0]}x{tile.size[1]}, "
                                 f"expected {tile_size}x{tile_size} like the first clip")
            row, col = divmod(cell, grid)
            mosaic.paste(tile.convert("RGB"), (col * tile_size, row * tile_size))
    return mosaic


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# --------------------------------------------------------------------------- audio


def mix_waveforms(member_waveforms: np.ndarray, gains_db: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gain-jittered average of int16 waveforms, kept in int16 without clipping.

    member_waveforms: (batch, members, samples) int16; gains_db: (batch, members).
    Returns the mixtures (batch, samples) int16 and the gains actually applied
    (batch, members) float32, such that exactly

        mixture = rint(sum_m gains[m] * member[m] / members)    (in float64)

    A mixture whose peak would pass int16 has all its gains scaled down together.
    """
    members = member_waveforms.shape[1]
    waveforms = member_waveforms.astype(np.float64)

    def average(gains: np.ndarray) -> np.ndarray:
        return (gains.astype(np.float64)[..., None] * waveforms).sum(axis=1) / members

    gains = (10.0 ** (gains_db / 20.0)).astype(np.float32)
    peak = np.abs(average(gains)).max(axis=1)
    scale = np.minimum(1.0, INT16_MAX / np.maximum(peak, 1e-9))
    gains = (gains * scale[:, None]).astype(np.float32)
    # float32 rounding of the scaled gains can overshoot by a fraction of a step: the clip is a guard
    mixture = np.clip(np.rint(average(gains)), -INT16_MAX - 1, INT16_MAX).astype(np.int16)
    return mixture, gains


# --------------------------------------------------------------------------- input


@dataclass
class ClipPool:
    """The clips of one features split, with what mixing and mosaics need (frame 0 only)."""

    source: str  # where the clips come from, for messages
    clip_ids: list[str]
    labels: list[list[str]]
    kinds: list[str]
    waveforms: np.ndarray  # (clips, samples) int16, read-only (a view of the Arrow data)
    frames: list[bytes]  # frame 0 of each clip, JPEG
    objects: list[list[dict]]  # truth objects of frame 0 (class, x0, y0, x1, y1, sounding)
    logmels: np.ndarray | None = None  # (clips, n_mels, n_frames) float32, read-only, when read
    logmel_shape: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.clip_ids)

    def tile_size(self) -> int:
        """Side of the square frames (the first clip's frame; every tile is checked against it)."""
        with Image.open(io.BytesIO(self.frames[0])) as frame:
            return frame.size[0]


FEATURE_COLUMNS = ["clip_id", "labels", "kind", "waveform", "frames", "objects"]


def read_split(split_dir: str | Path, with_logmel: bool = False) -> ClipPool | None:
    """Read a features split folder; None when it is missing or holds no clips."""
    split_dir = Path(split_dir)
    columns = FEATURE_COLUMNS + (["logmel"] if with_logmel else [])
    tables = []
    layouts = None  # {column: (dtype, shape)} of the array columns, the same in every shard
    for path in shard_paths(split_dir):
        schema = pq.read_schema(path)
        missing = [name for name in columns if name not in schema.names]
        if missing:
            raise StageError(f"{path}: missing column(s) {', '.join(missing)}")
        try:
            shard_layouts = {name: array_layout(schema, name) for name in columns if name in ("waveform", "logmel")}
        except ValueError as err:
            raise StageError(f"{path}: {err}") from None
        dtype, shape = shard_layouts["waveform"]
        if dtype != np.int16 or len(shape) != 1:
            raise StageError(f"{path}: column waveform must hold int16 (samples,) arrays, got {dtype} {shape}")
        if with_logmel:
            dtype, shape = shard_layouts["logmel"]
            if dtype != np.float32 or len(shape) != 2:
                raise StageError(f"{path}: column logmel must hold float32 (n_mels, n_frames) arrays, "
                                 f"got {dtype} {shape}")
        if layouts is not None and shard_layouts != layouts:
            raise StageError(f"{path}: array shapes {shard_layouts} differ from the first shard's {layouts}")
        layouts = shard_layouts
        tables.append(pq.read_table(path, columns=columns))
    if not tables or sum(t.num_rows for t in tables) == 0:
        return None
    table = pa.concat_tables(tables)
    frame_counts = pc.list_value_length(table.column("frames")).to_numpy(zero_copy_only=False)
    if (frame_counts < 1).any():
        raise StageError(f"{split_dir}: clip {table.column('clip_id')[int(np.argmin(frame_counts))]} has no frame")
    per_frame_objects = table.column("objects").to_pylist()
    pool = ClipPool(
        source=str(split_dir),
        clip_ids=table.column("clip_id").to_pylist(),
        labels=table.column("labels").to_pylist(),
        kinds=table.column("kind").to_pylist(),
        waveforms=array_values(table.column("waveform"), *layouts["waveform"]),
        frames=pc.list_element(table.column("frames"), 0).to_pylist(),
        objects=[frames[0] if frames else [] for frames in per_frame_objects],
    )
    if with_logmel:
        pool.logmel_shape = layouts["logmel"][1]
        pool.logmels = array_values(table.column("logmel"), *layouts["logmel"])
    return pool


# --------------------------------------------------------------------------- mosaic sets


@dataclass
class MosaicPlan:
    """The random choices of a whole set, drawn before any pixel or sample is touched."""

    rows: np.ndarray  # (count, sounding + silent + offscreen) pool rows: sounding, silent, off-screen
    cells: np.ndarray  # (count, sounding + silent) grid cell (row-major) of each visible clip
    gains_db: np.ndarray  # (count, sounding + offscreen) volume jitter of each audio member


def plan_mosaics(clips: ClipPool, mix: MixSet, rng: np.random.Generator, name: str,
                 volume_jitter_db: float) -> MosaicPlan:
    """Draw the classes, clips, tile cells and gains of `mix.count` samples."""
    rows_of_class: dict[str, list[int]] = {}
    for row, (labels, kind) in enumerate(zip(clips.labels, clips.kinds)):
        if kind != "solo":
            continue
        if not labels:
            raise StageError(f"{clips.source}: solo clip {clips.clip_ids[row]} has no label")
        rows_of_class.setdefault(labels[0], []).append(row)
    classes = sorted(rows_of_class)
    needed = mix.sounding + mix.silent + mix.offscreen
    if needed > len(classes):
        raise StageError(f"synth.{name}: needs {needed} distinct classes, "
                         f"{clips.source} has {len(classes)}")
    visible = mix.sounding + mix.silent
    cells_total = grid_side(visible) ** 2
    rows = np.empty((mix.count, needed), dtype=np.int64)
    cells = np.empty((mix.count, visible), dtype=np.int64)
    for sample in range(mix.count):
        chosen = rng.choice(len(classes), size=needed, replace=False)
        for slot, class_index in enumerate(chosen):
            class_rows = rows_of_class[classes[class_index]]
            rows[sample, slot] = class_rows[rng.integers(len(class_rows))]
        cells[sample] = rng.permutation(cells_total)[:visible]
    gains_db = rng.uniform(-volume_jitter_db, volume_jitter_db, size=(mix.count, mix.sounding + mix.offscreen))
    return MosaicPlan(rows=rows, cells=cells, gains_db=gains_db)


def carry_objects(objects: list[dict], tile_index: int, row: int, col: int, grid: int,
                  tile_sounding: bool) -> list[dict]:
    """Truth objects of one frame -> mosaic objects of its tile.

    Boxes are clipped to the frame first (so that no box spills into a
    neighbour tile); an object left with no area is dropped. An object sounds
    in the mosaic only if it sounds in its clip and its tile is a sounding one.
    """
    carried = []
    for obj in objects:
        box = np.clip([obj["x0"], obj["y0"], obj["x1"], obj["y1"]], 0.0, 1.0)
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        x0, y0, x1, y1 = tile_to_mosaic(box, row, col, grid).tolist()
        carried.append({"class": obj["class"], "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                        "sounding": bool(obj["sounding"]) and tile_sounding, "tile": tile_index})
    return carried


def make_mosaic_set(clips: ClipPool, mix: MixSet, rng: np.random.Generator, *, name: str,
                    logmel: LogMel, volume_jitter_db: float, jpeg_quality: int,
                    batch_size: int = SAMPLES_PER_BATCH) -> Iterator[pa.Table]:
    """`mix.count` mosaic samples from the solo clips of `clips`, as tables of up to `batch_size` rows.

    Each sample takes `sounding + silent + offscreen` clips of distinct classes
    (labels[0]); the sounding and silent ones are shown at shuffled cells of a
    grid_side(sounding + silent) square grid, the sounding and off-screen ones
    are mixed. Rows follow `synth_schema`. Raises StageError at once when the
    pool has too few classes.
    """
    plan = plan_mosaics(clips, mix, rng, name, volume_jitter_db)
    return _render_mosaics(clips, mix, plan, name, logmel, jpeg_quality, batch_size)


def _render_mosaics(clips: ClipPool, mix: MixSet, plan: MosaicPlan, name: str, logmel: LogMel,
                    jpeg_quality: int, batch_size: int) -> Iterator[pa.Table]:
    grid = grid_side(mix.sounding + mix.silent)
    tile_size = clips.tile_size()
    samples = clips.waveforms.shape[1]
    schema = synth_schema(samples, logmel_shape_of(logmel, samples))
    audio_slots = list(range(mix.sounding)) + list(range(mix.sounding + mix.silent, plan.rows.shape[1]))
    for start in range(0, mix.count, batch_size):
        stop = min(start + batch_size, mix.count)
        audio_rows = plan.rows[start:stop][:, audio_slots]
        mixture, gains = mix_waveforms(clips.waveforms[audio_rows], plan.gains_db[start:stop])
        with torch.no_grad():
            log_mels = logmel(torch.from_numpy(mixture)).numpy()
        columns: dict[str, list] = {field: [] for field in schema.names}
        for offset, sample in enumerate(range(start, stop)):
            rows = plan.rows[sample].tolist()
            classes = [clips.labels[row][0] for row in rows]
            visible_rows = rows[: mix.sounding + mix.silent]
            cells = plan.cells[sample].tolist()
            mosaic = compose_mosaic([clips.frames[row] for row in visible_rows], cells, grid, tile_size,
                                    [clips.clip_ids[row] for row in visible_rows])
            tiles, objects = [], []
            for tile_index, (row, cell) in enumerate(zip(visible_rows, cells)):
                tile_row, tile_col = divmod(cell, grid)
                tile_sounding = tile_index < mix.sounding
                x0, y0, x1, y1 = tile_to_mosaic((0.0, 0.0, 1.0, 1.0), tile_row, tile_col, grid).tolist()
                tiles.append({"clip_id": clips.clip_ids[row], "class": classes[tile_index],
                              "x0": x0, "y0": y0, "x1": x1, "y1": y1, "sounding": tile_sounding})
                objects += carry_objects(clips.objects[row], tile_index, tile_row, tile_col, grid, tile_sounding)
            columns["sample_id"].append(f"{name}_{sample:06d}")
            columns["image"].append(encode_jpeg(mosaic, jpeg_quality))
            columns["grid"].append(grid)
            columns["tiles"].append(tiles)
            columns["objects"].append(objects)
            columns["sounding"].append(classes[: mix.sounding])
            columns["silent"].append(classes[mix.sounding: mix.sounding + mix.silent])
            columns["offscreen"].append(classes[mix.sounding + mix.silent:])
            columns["members"].append([clips.clip_ids[rows[slot]] for slot in audio_slots])
            columns["gains"].append(gains[offset].tolist())
        columns["waveform"] = array_column(mixture)
        columns["logmel"] = array_column(log_mels)
        yield pa.table(columns, schema=schema)


# --------------------------------------------------------------------------- duet set


def make_duet_set(clips: ClipPool, logmel_shape_expected: tuple[int, int],
                  batch_size: int = SAMPLES_PER_BATCH, name: str = "duet") -> Iterator[pa.Table]:
    """The duet clips as recorded: one 1x1 'mosaic' each, every labelled instrument sounding.

    Image, waveform and log-mel are the clip's own. `tiles` has one row per
    label (both cover the whole image), so that every visible class has its
    tile as in the mosaic sets; an object's `tile` is the row of its class, or
    0 for an object of no label (a distractor).
    """
    if clips.logmel_shape != logmel_shape_expected:
        raise StageError(f"{clips.source}: logmel_shape {clips.logmel_shape} differs from the "
                         f"LogMel settings' {logmel_shape_expected}")
    samples = clips.waveforms.shape[1]
    schema = synth_schema(samples, logmel_shape_expected)
    for start in range(0, len(clips), batch_size):
        rows = range(start, min(start + batch_size, len(clips)))
        columns: dict[str, list] = {field: [] for field in schema.names}
        for row in rows:
            labels = clips.labels[row]
            tiles = [{"clip_id": clips.clip_ids[row], "class": label, "x0": 0.0, "y0": 0.0, "x1": 1.0,
                      "y1": 1.0, "sounding": True} for label in labels]
            objects = []
            for obj in clips.objects[row]:
                tile_index = labels.index(obj["class"]) if obj["class"] in labels else 0
                objects += carry_objects([obj], tile_index, 0, 0, 1, tile_sounding=True)
            columns["sample_id"].append(f"{name}_{row:06d}")
            columns["image"].append(clips.frames[row])
            columns["grid"].append(1)
            columns["tiles"].append(tiles)
            columns["objects"].append(objects)
            columns["sounding"].append(list(labels))
            columns["silent"].append([])
            columns["offscreen"].append([])
            columns["members"].append([clips.clip_ids[row]])
            columns["gains"].append([1.0])
        columns["waveform"] = array_column(clips.waveforms[rows.start: rows.stop])
        columns["logmel"] = array_column(clips.logmels[rows.start: rows.stop])
        yield pa.table(columns, schema=schema)


# --------------------------------------------------------------------------- stage


def set_rng(seed: int, name: str) -> np.random.Generator:
    """The random stream of one set: from the seed and the set's name, independent of the other sets."""
    return np.random.default_rng([seed, *name.encode()])


def _write_set(batches: Iterator[pa.Table], folder: Path, total: int, synth: Synth, name: str) -> dict:
    counts = {"samples": 0, "tiles": 0, "objects": 0, "sounding_objects": 0, "shards": 0}
    schema = None
    writer = None
    with progress(total=total, desc=f"synth {name}", unit="sample") as bar:
        for table in batches:
            if writer is None:
                schema = table.schema
                # zstd (the shards' default) for all but the array columns, which stay raw (fast to read)
                writer = ShardWriter(folder, schema, synth.shard_rows, synth.row_group_rows,
                                     **parquet_options(schema, "zstd"))
            writer.write(table)
            objects = table.column("objects").combine_chunks().flatten()
            counts["samples"] += table.num_rows
            counts["tiles"] += int(pc.sum(pc.list_value_length(table.column("tiles"))).as_py() or 0)
            counts["objects"] += len(objects)
            counts["sounding_objects"] += int(pc.sum(objects.field("sounding")).as_py() or 0)
            bar.update(table.num_rows)
    if writer is None:
        folder.mkdir(parents=True, exist_ok=True)
    else:
        writer.close()
        counts["shards"] = writer.shards_written
    return counts


def run_synth(features_dir: str | Path, out_dir: str | Path, synth: Synth, seed: int) -> dict:
    """Build every set of one dataset from its features; returns (and writes) the summary.

    Writes `<out_dir>/<set>/shard-*.parquet` for syn, un, train, val_syn, val_un
    (and duet, val_duet when the features have duet clips) and
    `<out_dir>/summary.json`, all at once
    (the folder replaces the old one only when complete).
    """
    features_dir, out_dir = Path(features_dir), Path(out_dir)
    logmel = LogMel(**read_logmel_settings(features_dir))
    pools: dict[str, ClipPool | None] = {}
    summary: dict = {"sets": {}}
    with atomic_dir(out_dir) as tmp:
        for name in ("syn", "un", "train", *VAL_RECIPES):
            mix: MixSet = getattr(synth, name) if name not in VAL_RECIPES else dataclasses.replace(
                getattr(synth, VAL_RECIPES[name]), count=synth.val_count)
            split = SET_SOURCES[name]
            if split not in pools:
                pools[split] = read_split(features_dir / split)
            clips = pools[split]
            if mix.count and clips is None:
                raise StageError(f"synth.{name}: {features_dir / split} has no clips")
            info = {"source_split": split, "grid": grid_side(mix.sounding + mix.silent),
                    "sounding": mix.sounding, "silent": mix.silent, "offscreen": mix.offscreen}
            if mix.count:
                batches = make_mosaic_set(clips, mix, set_rng(seed, name), name=name, logmel=logmel,
                                          volume_jitter_db=synth.volume_jitter_db,
                                          jpeg_quality=synth.jpeg_quality)
                info["tile_size"] = clips.tile_size()
                info["source_clips"] = len(clips)
            else:
                batches = iter(())
            info.update(_write_set(batches, tmp / name, mix.count, synth, name))
            summary["sets"][name] = info
        duets = []
        for name in ("duet", "val_duet"):
            split = SET_SOURCES[name]
            duet = read_split(features_dir / split, with_logmel=True)
            if duet is None:
                summary["sets"][name] = {"source_split": split, "samples": 0,
                                         "skipped": f"{features_dir / split} has no clips"}
                continue
            duets.append(duet)
            batches = make_duet_set(duet, logmel_shape_of(logmel, duet.waveforms.shape[1]), name=name)
            info = {"source_split": split, "grid": 1, "source_clips": len(duet)}
            info.update(_write_set(batches, tmp / name, len(duet), synth, name))
            summary["sets"][name] = info
        samples = next((pool.waveforms.shape[1] for pool in [*pools.values(), *duets] if pool is not None), None)
        if samples is not None:
            summary["logmel_shape"] = list(logmel_shape_of(logmel, samples))
        write_json(summary, tmp / "summary.json")
    return summary
