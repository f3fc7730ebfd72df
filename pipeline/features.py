"""Log-mel features (torchaudio) and the features stage.

The features stage splits the clips of a dataset by video into `train_single`,
`train_mix`, `val`, `test`, `duet_val` and `duet` (val: every choice, test: scored once),
adds the log-mel of every clip (and, with
`features.store_pixels`, its frame 0 decoded, so that training never decodes
JPEGs), and writes `data/features/<ds>/<split>/shard-NNNNN.parquet` plus
`summary.json` (docs/data.md, section "features").

The log-mel settings travel with the data (`data/features/<ds>/summary.json`,
key `logmel`) so that later stages that mix waveforms (synth, stage 1)
compute the mixture's log-mel exactly as the single clips' one was computed:
`LogMel(**summary["logmel"])`.
"""
from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from pipeline.arrays import (COMPRESSION, DICTIONARY_COLUMNS, array_column, array_field, array_layout, clip_schema,
                             parquet_options)
from pipeline.audio import LogMel, logmel_shape
from pipeline.config import Dataset, Features
from pipeline.progress import progress
from pipeline.shards import ShardWriter, atomic_dir, write_json
from pipeline.stage import StageError

SPLITS = ("train_single", "train_mix", "val", "test", "duet_val", "duet")
UNUSED = "unused"  # duet videos past the test and val duet videos of their class pair
FEATURES_BATCH = 256  # clips per log-mel call: large enough to amortise torch's per-call cost


# --------------------------------------------------------------------------- splits


def assign_splits(videos: Iterable[Mapping], test_videos_per_class: int,
                  duet_test_videos_per_pair: int, val_videos_per_class: int = 0,
                  duet_val_videos_per_pair: int = 0) -> dict[str, str]:
    """{video_id: split} for videos given in index order as mappings with `video_id`, `kind`, `labels`.

    Solo videos, per class (labels[0]) in index order: the first `test_videos_per_class`
    go to `test`, the next `val_videos_per_class` to `val`, the rest alternate
    `train_single`, `train_mix`. Duet videos, per class pair in index order: the first
    `duet_test_videos_per_pair` go to `duet` (the test duets), the next
    `duet_val_videos_per_pair` to `duet_val`, the rest are `unused` (the pipeline trains
    on solo videos only).
    """
    seen_per_group: collections.Counter = collections.Counter()
    splits: dict[str, str] = {}
    for video in videos:
        video_id, kind, labels = video["video_id"], video["kind"], list(video["labels"])
        if video_id in splits:
            raise ValueError(f"video {video_id}: listed twice")
        if kind == "solo":
            if not labels:
                raise ValueError(f"video {video_id}: solo video without a label")
            group = ("solo", labels[0])
            rank = seen_per_group[group]
            held_out = test_videos_per_class + val_videos_per_class
            if rank < test_videos_per_class:
                splits[video_id] = "test"
            elif rank < held_out:
                splits[video_id] = "val"
            else:
                splits[video_id] = ("train_single", "train_mix")[(rank - held_out) % 2]
        elif kind == "duet":
            group = ("duet", *sorted(labels))
            rank = seen_per_group[group]
            if rank < duet_test_videos_per_pair:
                splits[video_id] = "duet"
            elif rank < duet_test_videos_per_pair + duet_val_videos_per_pair:
                splits[video_id] = "duet_val"
            else:
                splits[video_id] = UNUSED
        else:
            raise ValueError(f"video {video_id}: kind must be solo or duet, got {kind!r}")
        seen_per_group[group] += 1
    return splits


# --------------------------------------------------------------------------- reading clips


def _read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    if not path.is_file():
        raise StageError(f"{path}: not found (run the clips stage first)")
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as err:
        raise StageError(f"{path}: not a readable Parquet file ({err})") from None


def read_video_index(clips_dir: str | Path) -> tuple[list[dict], int]:
    """The `ok` videos of `clips_dir` in index order, each {video_id, n_clips, kind, labels};
    and the count of videos the clips stage skipped."""
    clips_dir = Path(clips_dir)
    index_path = clips_dir / "videos.parquet"
    index = _read_parquet(index_path)
    missing = {"video_id", "status", "n_clips"} - set(index.column_names)
    if missing:
        raise StageError(f"{index_path}: missing columns {', '.join(sorted(missing))}")
    rows = index.select(["video_id", "status", "n_clips"]).to_pylist()
    videos = []
    for row in rows:
        if row["status"] != "ok" or row["n_clips"] == 0:
            continue
        path = clips_dir / "videos" / f"{row['video_id']}.parquet"
        first = _read_parquet(path, ["kind", "labels"]).slice(0, 1).to_pylist()
        if not first:
            raise StageError(f"{path}: no rows, but {index_path} lists {row['n_clips']} clips")
        videos.append(dict(video_id=row["video_id"], n_clips=row["n_clips"], **first[0]))
    return videos, len(rows) - len(videos)


def clip_timing(clips_dir: str | Path, videos: list[dict]) -> tuple[int, float]:
    """(samples per clip, clip length in seconds), read from the clips themselves.

    The clip length is start_s / clip_index of a clip past the first one; the
    sample rate is then samples / length.
    """
    clips_dir = Path(clips_dir)
    for video in videos:
        if video["n_clips"] < 2:
            continue
        path = clips_dir / "videos" / f"{video['video_id']}.parquet"
        table = _read_parquet(path, ["clip_index", "start_s", "waveform"])
        clip_samples = table.schema.field("waveform").type.list_size
        later = np.flatnonzero(table.column("clip_index").to_numpy() > 0)
        if clip_samples <= 0 or len(later) == 0:
            continue
        row = later[0]
        clip_seconds = table.column("start_s")[row].as_py() / table.column("clip_index")[row].as_py()
        return clip_samples, clip_seconds
    raise StageError(f"{clips_dir}: no video has two clips, so the clip length (and the sample rate) is unknown")


def sample_rate_of_clips(clips_dir: str | Path) -> int:
    """The audio sample rate of the clips: samples per clip / clip length."""
    videos, _ = read_video_index(clips_dir)
    clip_samples, clip_seconds = clip_timing(clips_dir, videos)
    return round(clip_samples / clip_seconds)


def _read_video_clips(clips_dir: Path, video: dict, schema: pa.Schema) -> pa.Table:
    """One video's clips, checked against videos.parquet and the clip schema, sorted by clip_index."""
    path = clips_dir / "videos" / f"{video['video_id']}.parquet"
    table = _read_parquet(path)
    try:
        table = table.select(schema.names).cast(schema)
    except (KeyError, pa.ArrowException) as err:
        raise StageError(f"{path}: does not match the clip schema of docs/data.md ({err})") from None
    if table.num_rows != video["n_clips"]:
        raise StageError(f"{path}: {table.num_rows} clips, videos.parquet says {video['n_clips']}")
    if set(table.column("video_id").unique().to_pylist()) != {video["video_id"]}:
        raise StageError(f"{path}: video_id column is not {video['video_id']!r} throughout")
    clip_index = table.column("clip_index").to_numpy()
    if len(np.unique(clip_index)) != len(clip_index):
        raise StageError(f"{path}: clip_index has duplicates")
    return table.take(np.argsort(clip_index, kind="stable"))


# --------------------------------------------------------------------------- the stage


def features_schema(clip_samples: int, shape: tuple[int, int], sample_rate: int,
                    pixels_shape: tuple[int, int, int] | None) -> pa.Schema:
    """The clip columns (`waveform` as an array column), then `logmel` (n_mels, n_frames) float32 and,
    when `pixels_shape` is given, `pixels` (frame 0 decoded, (3, H, W) uint8); layouts in the metadata."""
    waveform, metadata = array_field("waveform", np.int16, (clip_samples,))
    clips = clip_schema(clip_samples)
    schema = clips.set(clips.get_field_index("waveform"), waveform)
    arrays = [("logmel", np.float32, shape)] + ([("pixels", np.uint8, pixels_shape)] if pixels_shape else [])
    for name, dtype, array_shape in arrays:
        field, entries = array_field(name, dtype, array_shape)
        schema = schema.append(field)
        metadata |= entries
    return schema.with_metadata(metadata | {"sample_rate": str(sample_rate)})


def decode_first_frames(frames: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Frame 0 of every row of a `frames` column, decoded: uint8 (rows, 3, H, W)."""
    from torchvision.io import ImageReadMode, decode_jpeg  # here: importing torchvision costs each stage ~1 s

    try:
        first = pc.list_element(frames, 0).to_pylist()
        images = decode_jpeg([torch.frombuffer(bytearray(jpeg), dtype=torch.uint8) for jpeg in first],
                             mode=ImageReadMode.RGB)
    except (pa.ArrowException, RuntimeError) as err:
        raise ValueError(f"frame 0 of a clip cannot be decoded ({str(err).splitlines()[0]})") from None
    if len({tuple(image.shape) for image in images}) > 1:
        raise ValueError(f"frames of different sizes: {sorted({tuple(image.shape) for image in images})}")
    return np.stack([image.numpy() for image in images])


def add_features(table: pa.Table, logmel: LogMel, schema: pa.Schema) -> pa.Table:
    """`table` (clip rows, clip schema) as `schema`: `waveform` as an array column, then `logmel`
    (and `pixels` when `schema` has it)."""
    clip_samples = table.schema.field("waveform").type.list_size
    waveform = table.column("waveform").combine_chunks().flatten().to_numpy().reshape(-1, clip_samples)
    with torch.inference_mode():
        values = logmel(torch.from_numpy(waveform.copy())).numpy()  # copy: Arrow memory is read-only
    table = table.set_column(table.schema.get_field_index("waveform"), schema.field("waveform"),
                             array_column(waveform))
    table = table.append_column(schema.field("logmel"), array_column(values))
    if "pixels" in schema.names:
        pixels = decode_first_frames(table.column("frames"))
        if pixels[0].size != schema.field("pixels").type.byte_width:
            expected = schema.metadata[b"pixels_shape"].decode()
            raise ValueError(f"frames of {pixels.shape[1:]} pixels, expected {expected}")
        table = table.append_column(schema.field("pixels"), array_column(pixels))
    return table


def _write_split(clips_dir: Path, videos: list[dict], logmel: LogMel, schema: pa.Schema, folder: Path,
                 params: Features, description: str) -> int:
    """Write the clips of `videos` (in order) with their features as shards; the shard count."""
    clip_columns = clip_schema(array_layout(schema, "waveform")[1][0])
    with ShardWriter(folder, schema, params.shard_rows, params.row_group_rows,
                     **parquet_options(schema, COMPRESSION, DICTIONARY_COLUMNS)) as writer:
        pending: list[pa.Table] = []
        pending_rows = 0
        for position, video in enumerate(progress(videos, desc=description, unit="video")):
            pending.append(_read_video_clips(clips_dir, video, clip_columns))
            pending_rows += pending[-1].num_rows
            if pending_rows >= FEATURES_BATCH or position == len(videos) - 1:
                try:
                    writer.write(add_features(pa.concat_tables(pending), logmel, schema))
                except ValueError as err:
                    raise StageError(f"{clips_dir / 'videos'}: videos {pending[0].column('video_id')[0]} to "
                                     f"{video['video_id']}: {err}") from None
                pending, pending_rows = [], 0
    return writer.shards_written


def run_features(clips_dir: str | Path, out_dir: str | Path, features_params: Features,
                 dataset_params: Dataset, sample_rate: int) -> dict:
    """Split the clips of `clips_dir` by video, add log-mels, write `out_dir`; the summary.

    Rows go in index order of their video, then by clip index; the same clips and
    params give byte-identical shards. `out_dir` appears complete or not at all.
    """
    clips_dir, out_dir = Path(clips_dir), Path(out_dir)
    videos, skipped = read_video_index(clips_dir)
    if not videos:
        raise StageError(f"{clips_dir / 'videos.parquet'}: no video with status ok and clips")
    clip_samples, clip_seconds = clip_timing(clips_dir, videos)
    try:
        splits = assign_splits(videos, dataset_params.test_videos_per_class,
                               dataset_params.duet_test_videos_per_pair, dataset_params.val_videos_per_class,
                               dataset_params.duet_val_videos_per_pair)
    except ValueError as err:
        raise StageError(f"{clips_dir}: {err}") from None

    settings = dict(sample_rate=sample_rate, n_mels=features_params.n_mels, f_max=features_params.f_max,
                    win_length=features_params.win_length, hop_length=features_params.hop_length,
                    n_fft=features_params.n_fft, top_db=features_params.top_db)
    if settings["f_max"] > sample_rate / 2:
        raise StageError(f"features.f_max: {settings['f_max']} Hz is above the Nyquist frequency "
                         f"of the {sample_rate} Hz clips")
    logmel = LogMel(**settings)
    shape = logmel_shape(settings, clip_samples)
    pixels_shape = None
    if features_params.store_pixels:
        first_video = _read_parquet(clips_dir / "videos" / f"{videos[0]['video_id']}.parquet", ["frames"])
        pixels_shape = decode_first_frames(first_video.column("frames").slice(0, 1)).shape[1:]
    schema = features_schema(clip_samples, shape, sample_rate, pixels_shape)

    members = {split: [video for video in videos if splits[video["video_id"]] == split]
               for split in (*SPLITS, UNUSED)}
    for split in ("train_single", "val", "test"):
        if not members[split]:
            raise StageError(f"{clips_dir}: no video for split {split} (test_videos_per_class is "
                             f"{dataset_params.test_videos_per_class}, val_videos_per_class is "
                             f"{dataset_params.val_videos_per_class})")

    summary_splits = {}
    with atomic_dir(out_dir) as tmp_dir:
        for split in SPLITS:
            shards = 0
            if members[split]:
                shards = _write_split(clips_dir, members[split], logmel, schema, tmp_dir / split,
                                      features_params, f"features {out_dir.name}/{split}")
            summary_splits[split] = dict(videos=len(members[split]), shards=shards,
                                         clips=sum(video["n_clips"] for video in members[split]))
        unused = members[UNUSED]
        summary = dict(
            logmel=settings,
            logmel_shape=list(shape),
            pixels_shape=list(pixels_shape) if pixels_shape else None,
            sample_rate=sample_rate,
            clip_seconds=clip_seconds,
            classes=sorted({label for video in videos if splits[video["video_id"]] != UNUSED
                            for label in video["labels"]}),
            splits=summary_splits,
            unused=dict(videos=len(unused), clips=sum(v["n_clips"] for v in unused),
                        why="duet videos past the test and val duets of their class pair"),
            skipped_videos=skipped,
            test_videos_per_class=dataset_params.test_videos_per_class,
            val_videos_per_class=dataset_params.val_videos_per_class,
            duet_test_videos_per_pair=dataset_params.duet_test_videos_per_pair,
            duet_val_videos_per_pair=dataset_params.duet_val_videos_per_pair,
            row_group_rows=features_params.row_group_rows,
        )
        write_json(summary, tmp_dir / "summary.json")
    counts = ", ".join(f"{split} {s['videos']} videos / {s['clips']} clips" for split, s in summary_splits.items())
    print(f"features {out_dir.name}: {counts}; unused {len(unused)} duet videos; "
          f"log-mel {shape[0]}x{shape[1]} at {sample_rate} Hz")
    return summary
