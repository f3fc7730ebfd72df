"""The clips stage: cut every downloaded video into non-overlapping clips of audio and frames.

`data/raw/<ds>/` (manifest, videos, truth) -> `data/clips/<ds>/videos/<video_id>.parquet`
(one row per clip) and `data/clips/<ds>/videos.parquet` (one row per video:
ok or skipped with its reason). Formats: docs/data.md, section "clips".
"""
from __future__ import annotations

import collections
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.arrays import OBJECT, clip_schema
from pipeline.config import Clips
from pipeline.media import MediaError, decode_audio, decode_frames, encode_jpeg, probe
from pipeline.progress import progress
from pipeline.shards import atomic_dir, write_table
from pipeline.stage import StageError

OBJECT_FIELDS = [field.name for field in OBJECT]
MANIFEST_COLUMNS = ["video_id", "labels", "kind", "status", "path"]
TRUTH_COLUMNS = ["video_id", "frame", "time_s", *OBJECT_FIELDS]
VIDEOS_SCHEMA = pa.schema([
    ("video_id", pa.string()), ("status", pa.string()), ("reason", pa.string()), ("n_clips", pa.int32()),
])


def clip_samples(params: Clips) -> int:
    return round(params.sample_rate * params.clip_seconds)


def frame_rate(params: Clips) -> Fraction:
    """Frames per second that puts frame j of clip k at k * clip_seconds + j * clip_seconds / frames_per_clip."""
    return params.frames_per_clip / Fraction(params.clip_seconds).limit_denominator(10_000)


def objects_per_frame(truth_rows: pd.DataFrame, frame_times: np.ndarray) -> list[list[dict]]:
    """For each time, the objects of the rendered frame nearest to it (earlier one on a tie)."""
    if truth_rows.empty:
        return [[] for _ in frame_times]
    rows = truth_rows.sort_values("frame", kind="stable")
    records = rows[OBJECT_FIELDS].to_dict("records")
    # Rows of rendered frame r are records[starts[r]:starts[r + 1]].
    _, starts = np.unique(rows["frame"].to_numpy(), return_index=True)
    rendered_times = rows["time_s"].to_numpy()[starts]
    starts = [*starts.tolist(), len(records)]
    after = np.clip(np.searchsorted(rendered_times, frame_times), 0, len(rendered_times) - 1)
    before = np.clip(after - 1, 0, len(rendered_times) - 1)
    earlier_is_nearer = np.abs(frame_times - rendered_times[before]) <= np.abs(rendered_times[after] - frame_times)
    nearest = np.where(earlier_is_nearer, before, after)
    return [records[starts[index]:starts[index + 1]] for index in nearest]


def cut_video(path: str | Path, video_id: str, labels: list[str], kind: str, params: Clips,
              truth_rows: pd.DataFrame) -> tuple[pa.Table | None, str]:
    """The clips of one video as a table (docs/data.md), or (None, reason) when it gives none.

    Clips are full and non-overlapping; when audio and video differ in length
    the shorter one decides how many clips there are. A video whose audio is digital
    silence throughout (a muted upload) gives none.
    """
    try:
        info = probe(path)
    except MediaError as err:
        return None, f"unreadable: {err}"
    if not info.has_video:
        return None, "no video stream"
    if not info.has_audio:
        return None, "no audio stream"
    samples_per_clip = clip_samples(params)
    rate = frame_rate(params)
    # With a clip cap, decode one clip more than needed (never less: stream ends are inexact).
    max_seconds = (params.max_clips_per_video + 1) * params.clip_seconds if params.max_clips_per_video else None
    try:
        audio = decode_audio(path, params.sample_rate, max_seconds)
        frames = decode_frames(path, rate, params.frame_size, max_seconds)
    except MediaError as err:
        return None, f"undecodable: {err}"
    n_clips = min(len(audio) // samples_per_clip, len(frames) // params.frames_per_clip)
    if params.max_clips_per_video:
        n_clips = min(n_clips, params.max_clips_per_video)
    if n_clips == 0:
        return None, (f"shorter than one clip of {params.clip_seconds:g} s: {len(audio) / params.sample_rate:.2f} s "
                      f"of audio, {len(frames)} frames at {float(rate):g} fps")
    if not np.any(audio[:n_clips * samples_per_clip]):  # its clips would be labelled sounding, yet hold no sound
        return None, "audio is digital silence throughout (a muted upload?)"

    n_frames = n_clips * params.frames_per_clip
    frame_times = np.array([float(index / rate) for index in range(n_frames)])
    objects = objects_per_frame(truth_rows, frame_times)
    jpegs = [encode_jpeg(frame, params.jpeg_quality) for frame in frames[:n_frames]]
    per_clip = params.frames_per_clip
    waveform = pa.FixedSizeListArray.from_arrays(pa.array(audio[:n_clips * samples_per_clip]), samples_per_clip)
    table = pa.Table.from_pydict({
        "clip_id": [f"{video_id}_{index:04d}" for index in range(n_clips)],
        "video_id": [video_id] * n_clips,
        "clip_index": list(range(n_clips)),
        "start_s": [index * params.clip_seconds for index in range(n_clips)],
        "labels": [list(labels)] * n_clips,
        "kind": [kind] * n_clips,
        "waveform": waveform,
        "frames": [jpegs[index * per_clip:(index + 1) * per_clip] for index in range(n_clips)],
        "objects": [objects[index * per_clip:(index + 1) * per_clip] for index in range(n_clips)],
    }, schema=clip_schema(samples_per_clip))
    return table, ""


class VideoResult(NamedTuple):
    """One row of videos.parquet."""

    video_id: str
    status: str  # ok | skipped
    reason: str  # "" when ok
    n_clips: int


def _cut_and_write(job: dict) -> VideoResult:
    """Worker: cut one video and write its clips table."""
    if not Path(job["path"]).is_file():
        return VideoResult(job["video_id"], "skipped", f"file missing: {job['path']}", 0)
    table, reason = cut_video(job["path"], job["video_id"], job["labels"], job["kind"], job["params"],
                              job["truth_rows"])
    if table is None:
        return VideoResult(job["video_id"], "skipped", reason, 0)
    write_table(table, job["out_file"])
    return VideoResult(job["video_id"], "ok", "", table.num_rows)


def _read_table(path: Path, columns: list[str]) -> pa.Table:
    if not path.is_file():
        raise StageError(f"{path}: not found (run the download stage first)")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise StageError(f"{path}: not a readable Parquet file ({err})") from None
    missing = [name for name in columns if name not in table.column_names]
    if missing:
        raise StageError(f"{path}: missing columns {', '.join(missing)}")
    return table


def _map_in_order(function, jobs: list[dict], workers: int, description: str) -> list:
    """function(job) for every job, in job order, over `workers` processes, with a progress bar."""
    bar = dict(total=len(jobs), desc=description, unit="video")
    if workers <= 1 or len(jobs) <= 1:
        return [function(job) for job in progress(jobs, **bar)]
    # spawn, not fork: forking a process whose pyarrow thread pools are running is unsafe.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
        return list(progress(pool.map(function, jobs), **bar))


def run_clips(raw_dir: str | Path, out_dir: str | Path, params: Clips) -> pa.Table:
    """Cut every `ok` video of `raw_dir`'s manifest into `out_dir`; the per-video summary table.

    Raises StageError when fewer than `params.min_ok_videos` videos give clips;
    `out_dir` is then left as it was.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if abs(params.sample_rate * params.clip_seconds - clip_samples(params)) > 1e-6:
        raise StageError(f"clips.clip_seconds: {params.clip_seconds} s is not a whole number of samples "
                         f"at clips.sample_rate {params.sample_rate}")
    manifest = _read_table(raw_dir / "manifest.parquet", MANIFEST_COLUMNS).to_pandas()
    truth = _read_table(raw_dir / "truth.parquet", TRUTH_COLUMNS).to_pandas()
    truth_by_video = dict(list(truth.groupby("video_id", sort=False)))
    videos = manifest[manifest["status"] == "ok"]
    duplicated = videos["video_id"][videos["video_id"].duplicated()].tolist()
    if duplicated:
        raise StageError(f"{raw_dir / 'manifest.parquet'}: video_id {duplicated[0]!r} appears more than once")

    with atomic_dir(out_dir) as tmp_dir:
        (tmp_dir / "videos").mkdir()
        jobs = [
            dict(video_id=row.video_id, path=str(raw_dir / row.path), labels=list(row.labels), kind=row.kind,
                 params=params, truth_rows=truth_by_video.get(row.video_id, truth.iloc[:0]),
                 out_file=str(tmp_dir / "videos" / f"{row.video_id}.parquet"))
            for row in videos.itertuples()
        ]
        results = _map_in_order(_cut_and_write, jobs, params.workers, f"clips {raw_dir.name}")
        summary = pa.Table.from_pylist([result._asdict() for result in results], schema=VIDEOS_SCHEMA)
        write_table(summary, tmp_dir / "videos.parquet")

        ok = [result for result in results if result.status == "ok"]
        skipped = [result for result in results if result.status == "skipped"]
        print(f"clips {raw_dir.name}: {len(ok)} of {len(results)} videos cut into "
              f"{sum(result.n_clips for result in ok)} clips, {len(skipped)} skipped")
        for reason, count in collections.Counter(result.reason.split(":")[0] for result in skipped).most_common():
            print(f"  skipped {count}: {reason}")
        if len(ok) < params.min_ok_videos:
            first = "; ".join(f"{result.video_id}: {result.reason}" for result in skipped[:3])
            raise StageError(f"{raw_dir}: only {len(ok)} of {len(results)} videos gave clips "
                             f"(clips.min_ok_videos is {params.min_ok_videos}); first reasons: {first or 'none'}")
    return summary
