"""Features splits for tests: `data/features/<ds>/<split>/shard-*.parquet` written as the features stage writes them.

`write_feature_split` is the one way tests make such a folder: the real schema (`features_schema`: the clip
columns, `logmel` and, with pixels, `pixels`), the real `LogMel`, and the stage's `ShardWriter` with its Parquet
options. What a test cares about (labels, waveforms, frames, objects, pixels) comes in per clip; the rest gets
the defaults the features stage would give it.
"""
from __future__ import annotations

import collections
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from pipeline.arrays import COMPRESSION, DICTIONARY_COLUMNS, array_column, parquet_options
from pipeline.audio import LogMel
from pipeline.features import features_schema
from pipeline.shards import ShardWriter

# The features' log-mel at 16 kHz (params.yaml `features`): 64 mels up to 8 kHz, 80-sample hop.
LOGMEL_SETTINGS = dict(sample_rate=16000, n_mels=64, f_max=8000.0, win_length=160, hop_length=80,
                       n_fft=1024, top_db=80.0)


def jpeg_of(pixels: np.ndarray, quality: int = 95) -> bytes:
    """The JPEG of a (3, H, W) uint8 image."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0))).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_feature_split(folder: str | Path, clips: Sequence[Mapping], *, logmel_settings: Mapping = LOGMEL_SETTINGS,
                        samples: int | None = None, logmels: np.ndarray | None = None, rows_per_shard: int = 64,
                        row_group_rows: int | None = 16, batch_rows: int | None = None) -> pa.Table | None:
    """Write `clips`, in order, as the shards of a features split in `folder`; the table written (None, and an
    empty folder, when `clips` is empty).

    Each clip is a mapping with:
      labels      (required) its class labels;
      video_id, clip_id: one of them at least; a clip id is `<video_id>_<clip_index:04d>` (docs/data.md), so
                  either gives the other;
      clip_index  default: the number ending the clip id, else the count of the video's clips before it;
      start_s     default: clip_index x the clip length (samples / sample_rate);
      kind        default: "duet" with two labels or more, else "solo";
      waveform    int16 (samples,); default silence of `samples` samples;
      pixels      uint8 (3, H, W): frame 0 decoded, the `pixels` column (`features.store_pixels`); every clip or
                  none;
      frame       frame 0 as JPEG bytes (the only frame); default the JPEG (quality 95) of `pixels`;
      objects     frame 0's objects (dicts: class, x0, y0, x1, y1, sounding); default none.

    `logmel` is `LogMel(**logmel_settings)` of the waveforms, or `logmels` (rows, n_mels, n_frames) float32 where a
    test wants values it can recognise. Shards of `rows_per_shard` rows, row groups of `row_group_rows`; the rows
    reach the writer in batches of `batch_rows` (default: all at once).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not clips:
        return None
    sample_rate = int(logmel_settings["sample_rate"])
    waveforms = np.stack([_waveform(clip, samples) for clip in clips])
    if logmels is None:
        with torch.inference_mode():
            logmels = LogMel(**logmel_settings)(torch.from_numpy(waveforms)).numpy()
    logmels = np.asarray(logmels, dtype=np.float32)
    if len(logmels) != len(clips):
        raise ValueError(f"{len(logmels)} log-mels for {len(clips)} clips")
    with_pixels = {"pixels" in clip for clip in clips}
    if len(with_pixels) > 1:
        raise ValueError("pixels for some clips only: give them for every clip or for none")
    pixels = np.stack([clip["pixels"] for clip in clips]).astype(np.uint8) if with_pixels == {True} else None

    columns = collections.defaultdict(list)
    earlier_clips: collections.Counter = collections.Counter()
    for clip in clips:
        clip_id = clip.get("clip_id")
        if "video_id" in clip:
            video_id = clip["video_id"]
        elif clip_id and "_" in clip_id:
            video_id = clip_id.rsplit("_", 1)[0]
        else:
            raise ValueError(f"clip {clip_id!r}: give its video_id, or a clip_id <video_id>_<clip_index>")
        if "clip_index" in clip:
            clip_index = int(clip["clip_index"])
        elif clip_id and clip_id.rsplit("_", 1)[-1].isdigit():
            clip_index = int(clip_id.rsplit("_", 1)[-1])
        else:
            clip_index = earlier_clips[video_id]
        earlier_clips[video_id] += 1
        if "frame" in clip:
            frame = clip["frame"]
        elif "pixels" in clip:
            frame = jpeg_of(clip["pixels"])
        else:
            raise ValueError(f"clip {clip_id or video_id}: give its frame (JPEG bytes) or its pixels")
        columns["clip_id"].append(clip_id or f"{video_id}_{clip_index:04d}")
        columns["video_id"].append(video_id)
        columns["clip_index"].append(clip_index)
        columns["start_s"].append(float(clip.get("start_s", clip_index * waveforms.shape[1] / sample_rate)))
        columns["labels"].append(list(clip["labels"]))
        columns["kind"].append(clip.get("kind", "duet" if len(clip["labels"]) > 1 else "solo"))
        columns["frames"].append([frame])
        columns["objects"].append([list(clip.get("objects", []))])

    schema = features_schema(waveforms.shape[1], logmels.shape[1:], sample_rate,
                             pixels_shape=None if pixels is None else pixels.shape[1:])
    arrays = {"waveform": array_column(waveforms), "logmel": array_column(logmels)}
    if pixels is not None:
        arrays["pixels"] = array_column(pixels)
    table = pa.table({name: arrays[name] if name in arrays else columns[name] for name in schema.names},
                     schema=schema)
    batch_rows = batch_rows or table.num_rows
    with ShardWriter(folder, schema, rows_per_shard, row_group_rows,
                     **parquet_options(schema, COMPRESSION, DICTIONARY_COLUMNS)) as writer:
        for start in range(0, table.num_rows, batch_rows):
            writer.write(table.slice(start, batch_rows))
    return table


def _waveform(clip: Mapping, samples: int | None) -> np.ndarray:
    if "waveform" in clip:
        return np.asarray(clip["waveform"], dtype=np.int16)
    if samples is None:
        raise ValueError("clips without a waveform need `samples` (the length of their silence)")
    return np.zeros(samples, dtype=np.int16)
