"""The clips stage on real small videos: clip counts, timing of audio and frames, truth objects, skips."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.arrays import clip_schema
from pipeline.clips import cut_video, objects_per_frame, run_clips
from pipeline.config import load_params
from pipeline.media import decode_jpeg, ffmpeg_exe
from pipeline.stage import StageError
from tests.helpers import REPO
from tests.helpers.params import replace
from tests.test_media import LEVEL_STEP, grey_level, make_video

RENDER_FPS = 10  # make_video's frame rate, the toy truth's `frame / fps`

# video_id -> (video seconds, audio seconds) of the fixture's raw videos, in manifest order.
VIDEOS = {
    "colour": (3.4, 3.4),  # 3 clips; truth rows
    "short_audio": (3.4, 2.2),  # cut to the audio: 2 clips; no truth rows
    "silent": (2.0, None),  # no audio stream
    "corrupt": None,  # garbage bytes
    "tiny": (0.5, 0.5),  # shorter than one clip
    "audio_only": (None, 2.0),  # no video stream
    "missing": None,  # in the manifest as ok, file absent
}


def truth_rows(video_id: str, seconds: float) -> list[dict]:
    """A drum whose x0 is frame / 1000 on every rendered frame, and a silent person on even frames."""
    rows = []
    for frame in range(round(seconds * RENDER_FPS)):
        base = dict(video_id=video_id, frame=frame, time_s=frame / RENDER_FPS)
        rows.append(dict(base, **{"class": "drum"}, x0=frame / 1000, y0=0.1, x1=0.6, y1=0.7, sounding=True))
        if frame % 2 == 0:
            rows.append(dict(base, **{"class": "person"}, x0=0.5, y0=0.5, x1=0.9, y1=0.9, sounding=False))
    return rows


TRUTH_SCHEMA = pa.schema([
    ("video_id", pa.string()), ("frame", pa.int32()), ("time_s", pa.float64()), ("class", pa.string()),
    ("x0", pa.float32()), ("y0", pa.float32()), ("x1", pa.float32()), ("y1", pa.float32()),
    ("sounding", pa.bool_()),
])


def make_raw_dir(raw_dir):
    """data/raw/<ds>/ as the download stage writes it (docs/data.md), with a failed download too."""
    (raw_dir / "videos").mkdir(parents=True)
    for video_id, seconds in VIDEOS.items():
        path = raw_dir / "videos" / f"{video_id}.mp4"
        if video_id == "corrupt":
            path.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"not really a video" * 100)
        elif seconds:
            make_video(path, *seconds, colour_steps_per_second=2)
    rows = [dict(video_id=video_id, url=f"http://127.0.0.1/{video_id}.mp4", labels=["drum"], kind="solo",
                 start_s=0.0, status="ok", error="", attempts=1, path=f"videos/{video_id}.mp4")
            for video_id in [*VIDEOS, "gone"]]
    rows[-1].update(status="failed", error="HTTP Error 404", path="")
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([
        ("video_id", pa.string()), ("url", pa.string()), ("labels", pa.list_(pa.string())), ("kind", pa.string()),
        ("start_s", pa.float64()), ("status", pa.string()), ("error", pa.string()), ("attempts", pa.int32()),
        ("path", pa.string())])), raw_dir / "manifest.parquet")
    pq.write_table(pa.Table.from_pylist(truth_rows("colour", 3.4), schema=TRUTH_SCHEMA), raw_dir / "truth.parquet")
    return raw_dir


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
    return make_raw_dir(tmp_path_factory.mktemp("repo") / "data" / "raw" / "music")


def clip_params(**changes):
    """Small test settings: 1-s clips, 2 frames of 24 px per clip."""
    base = dict(clip_seconds=1.0, sample_rate=16000, frame_size=24, frames_per_clip=2, max_clips_per_video=0,
                min_ok_videos=2, workers=2)
    return replace(load_params(REPO / "params.yaml").clips, **{**base, **changes})


@pytest.fixture(scope="module")
def clips_dir(raw_dir, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("clips") / "music"
    run_clips(raw_dir, out_dir, clip_params())
    return out_dir


def read_clips(clips_dir, video_id) -> pa.Table:
    return pq.read_table(clips_dir / "videos" / f"{video_id}.parquet")


def test_full_non_overlapping_clips_with_docs_columns(clips_dir):
    table = read_clips(clips_dir, "colour")
    assert table.schema == clip_schema(16000)  # fixed_size_list<int16>[16000] and all, as docs/data.md says
    assert table["clip_id"].to_pylist() == ["colour_0000", "colour_0001", "colour_0002"]  # 3.4 s: 3 full clips
    assert table["clip_index"].to_pylist() == [0, 1, 2]
    assert table["start_s"].to_pylist() == [0.0, 1.0, 2.0]
    assert table["labels"].to_pylist() == [["drum"]] * 3 and table["kind"].to_pylist() == ["solo"] * 3


def test_frames_are_jpegs_of_the_right_size_taken_at_the_right_times(clips_dir):
    table = read_clips(clips_dir, "colour")
    for clip_index, frames in enumerate(table["frames"].to_pylist()):
        assert len(frames) == 2
        for frame_index, jpeg in enumerate(frames):
            frame = decode_jpeg(jpeg)
            assert frame.shape == (24, 24, 3)
            # Frame j of clip k is at k + j / 2 s; the colour steps every 0.5 s.
            assert round(grey_level(frame) / LEVEL_STEP) == 2 * clip_index + frame_index


def test_waveform_is_the_clips_second_of_audio(clips_dir):
    waveforms = np.asarray(read_clips(clips_dir, "colour")["waveform"].to_pylist(), dtype=np.float64) / 32768
    assert waveforms.shape == (3, 16000)
    # The sine's amplitude is 0.1 * (k + 1) in second k (away from the steps, where aac smears).
    rms = np.sqrt(np.mean(waveforms[:, 2000:14000] ** 2, axis=1))
    np.testing.assert_allclose(rms, 0.1 * np.arange(1, 4) / np.sqrt(2), rtol=0.05)


def test_objects_come_from_the_nearest_rendered_frame(clips_dir):
    objects = read_clips(clips_dir, "colour")["objects"].to_pylist()
    for clip_index, per_frame in enumerate(objects):
        for frame_index, frame_objects in enumerate(per_frame):
            rendered = RENDER_FPS * clip_index + RENDER_FPS // 2 * frame_index  # time k + j / 2
            drum, *person = frame_objects
            assert drum["class"] == "drum" and drum["sounding"] is True
            assert drum["x0"] == pytest.approx(rendered / 1000)
            if rendered % 2 == 0:
                assert person == [{"class": "person", "x0": 0.5, "y0": 0.5, "x1": pytest.approx(0.9),
                                   "y1": pytest.approx(0.9), "sounding": False}]
            else:
                assert person == []


def test_objects_between_rendered_frames_come_from_the_nearer_one():
    truth = pa.Table.from_pylist(truth_rows("v", 0.3), schema=TRUTH_SCHEMA).to_pandas()  # frames at 0, 0.1, 0.2
    times = np.array([0.04, 0.05, 0.06, 0.5, -0.1])
    drums = [frame_objects[0]["x0"] for frame_objects in objects_per_frame(truth, times)]
    assert drums == pytest.approx([0.0, 0.0, 0.001, 0.002, 0.0])  # x0 is frame / 1000; a tie takes the earlier
    assert objects_per_frame(truth.iloc[:0], times) == [[]] * 5


def test_audio_shorter_than_video_cuts_to_the_audio(clips_dir):
    table = read_clips(clips_dir, "short_audio")
    assert table.num_rows == 2
    assert table["objects"].to_pylist() == [[[], []], [[], []]]  # no truth rows: youtube-like


def test_every_ok_video_is_summarised_with_its_reason(clips_dir):
    summary = pq.read_table(clips_dir / "videos.parquet").to_pylist()
    assert [row["video_id"] for row in summary] == list(VIDEOS)  # manifest order; the failed download left out
    by_id = {row["video_id"]: row for row in summary}
    assert (by_id["colour"]["status"], by_id["colour"]["n_clips"], by_id["colour"]["reason"]) == ("ok", 3, "")
    assert (by_id["short_audio"]["status"], by_id["short_audio"]["n_clips"]) == ("ok", 2)
    expected_reasons = {
        "silent": "no audio stream",
        "corrupt": "unreadable: Invalid data found when processing input",
        "tiny": "shorter than one clip of 1 s: 0.50 s of audio",
        "audio_only": "no video stream",
        "missing": "file missing:",
    }
    for video_id, reason in expected_reasons.items():
        assert by_id[video_id]["status"] == "skipped" and by_id[video_id]["n_clips"] == 0
        assert by_id[video_id]["reason"].startswith(reason), by_id[video_id]["reason"]
    assert sorted(path.name for path in (clips_dir / "videos").iterdir()) == ["colour.parquet", "short_audio.parquet"]


def test_clip_cap_and_one_frame_per_clip(raw_dir):
    params = clip_params(max_clips_per_video=2, frames_per_clip=1, frame_size=16)
    table, reason = cut_video(raw_dir / "videos" / "colour.mp4", "colour", ["drum"], "solo", params,
                              pq.read_table(raw_dir / "truth.parquet").to_pandas())
    assert reason == "" and table.num_rows == 2
    frames = [decode_jpeg(clip[0]) for clip in table["frames"].to_pylist()]
    assert [frame.shape for frame in frames] == [(16, 16, 3)] * 2
    assert [round(grey_level(frame) / LEVEL_STEP) for frame in frames] == [0, 2]  # at 0 s and 1 s


def test_output_does_not_depend_on_the_worker_count(raw_dir, clips_dir, tmp_path):
    run_clips(raw_dir, tmp_path / "music", clip_params(workers=1))
    for name in ["videos.parquet", "videos/colour.parquet", "videos/short_audio.parquet"]:
        assert pq.read_table(tmp_path / "music" / name).equals(pq.read_table(clips_dir / name))


def test_too_few_good_videos_fail_the_stage_and_write_nothing(raw_dir, tmp_path):
    with pytest.raises(StageError) as error:
        run_clips(raw_dir, tmp_path / "music", clip_params(min_ok_videos=3, workers=1))
    message = str(error.value)
    assert "only 2 of 7 videos gave clips (clips.min_ok_videos is 3)" in message
    assert "silent: no audio stream; corrupt: unreadable" in message and "tiny: shorter than one clip" in message
    assert not (tmp_path / "music").exists()


def test_missing_manifest_names_the_file(tmp_path):
    with pytest.raises(StageError, match=r"raw/music/manifest.parquet: not found"):
        run_clips(tmp_path / "raw" / "music", tmp_path / "clips" / "music", clip_params())


def test_stage_script_end_to_end(raw_dir, tmp_path, repo_params, stage_env):
    shutil.copytree(raw_dir, tmp_path / "data" / "raw" / "music")
    repo_params["clips"].update(frame_size=32, frames_per_clip=1, min_ok_videos=2, workers=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params))
    command = [sys.executable, "-m", "stages.clips", "music", "--params", "params.yaml"]
    done = subprocess.run(command, cwd=tmp_path, env=stage_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "2 of 7 videos cut into 5 clips, 5 skipped" in done.stdout
    table = pq.read_table(tmp_path / "data" / "clips" / "music" / "videos" / "colour.parquet")
    assert table.num_rows == 3 and decode_jpeg(table["frames"][0][0].as_py()).shape == (32, 32, 3)

    repo_params["clips"].update(min_ok_videos=3)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params))
    failed = subprocess.run(command, cwd=tmp_path, env=stage_env, capture_output=True, text=True)
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines()[-1].startswith(
        "clips@music: error: data/raw/music: only 2 of 7 videos gave clips")
    assert pq.read_table(tmp_path / "data" / "clips" / "music" / "videos.parquet").num_rows == 7  # kept as it was


def test_a_muted_upload_gives_no_clips_and_says_why(tmp_path):
    # a real mp4 whose audio track is digital silence (ffmpeg's anullsrc, through the aac encoder): its clips
    # would be labelled sounding and hold nothing; the same video with a sine gives its clips
    muted = tmp_path / "muted.mp4"
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "color=c=gray:s=32x32:r=10:d=2.4", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "2.4",
                    "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", str(muted)], check=True)
    table, reason = cut_video(muted, "muted", ["drum"], "solo", clip_params(), pd.DataFrame())
    assert table is None and reason == "audio is digital silence throughout (a muted upload?)"
    sounding = make_video(tmp_path / "sounding.mp4", 2.4, 2.4)
    table, reason = cut_video(sounding, "sounding", ["drum"], "solo", clip_params(), pd.DataFrame())
    assert reason == "" and table.num_rows == 2
