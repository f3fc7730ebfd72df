"""The features stage: splits by video, log-mel, shards, summary, determinism, interruption."""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import io
import json
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from pipeline.arrays import array_column, array_field, array_layout, array_values, clip_schema, parquet_options
from pipeline.audio import LogMel, no_source_logmels
from pipeline.config import load_params
from pipeline.features import assign_splits, decode_first_frames, run_features, sample_rate_of_clips
from pipeline.reader import ShardReader
from pipeline.shards import shard_paths, write_table
from pipeline.stage import StageError

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000
VIDEOS_SCHEMA = pa.schema([("video_id", pa.string()), ("status", pa.string()), ("reason", pa.string()),
                           ("n_clips", pa.int32())])


def jpeg(colour: tuple[int, int, int], size: int) -> bytes:
    buffer = io.BytesIO()
    picture = np.zeros((size, size, 3), dtype=np.uint8)
    picture[...] = colour
    picture[: size // 2, : size // 2] = 255 - np.array(colour)  # not a flat image: decoding has work to do
    Image.fromarray(picture).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_clips(clips_dir: Path, videos: list[tuple[str, str, list[str], int]], frame_size: int = 32,
                skipped: int = 1) -> None:
    """A clips folder as the clips stage writes it: (video_id, kind, labels, n_clips) per video, in
    index order, plus `skipped` videos the clips stage skipped. Rows are stored in reverse clip order."""
    rng = np.random.default_rng(0)
    index = []
    for number, (video_id, kind, labels, n_clips) in enumerate(videos):
        times = np.arange(n_clips * SAMPLE_RATE) / SAMPLE_RATE
        tone = 0.3 * np.sin(2 * np.pi * (200 + 40 * number) * times) + 0.02 * rng.standard_normal(len(times))
        waveform = (tone * 32767).astype(np.int16)
        rows = list(reversed(range(n_clips)))
        table = pa.Table.from_pydict({
            "clip_id": [f"{video_id}_{k:04d}" for k in rows],
            "video_id": [video_id] * n_clips,
            "clip_index": rows,
            "start_s": [float(k) for k in rows],
            "labels": [labels] * n_clips,
            "kind": [kind] * n_clips,
            "waveform": pa.FixedSizeListArray.from_arrays(
                pa.array(waveform.reshape(n_clips, SAMPLE_RATE)[rows].reshape(-1)), SAMPLE_RATE),
            "frames": [[jpeg((number * 20 % 256, k * 30 % 256, 90), frame_size)] for k in rows],
            "objects": [[[{"class": labels[0], "x0": 0.1, "y0": 0.1, "x1": 0.5, "y1": 0.5, "sounding": True}]]
                        for _ in rows],
        }, schema=clip_schema(SAMPLE_RATE))
        write_table(table, clips_dir / "videos" / f"{video_id}.parquet")
        index.append(dict(video_id=video_id, status="ok", reason="", n_clips=n_clips))
    index += [dict(video_id=f"gone{n}", status="skipped", reason="no audio stream", n_clips=0) for n in range(skipped)]
    write_table(pa.Table.from_pylist(index, schema=VIDEOS_SCHEMA), clips_dir / "videos.parquet")


def toy_videos(videos_per_class: int = 5, clips_per_video: int = 3) -> list[tuple[str, str, list[str], int]]:
    """Solo videos of three classes, interleaved in index order, and duets of two class pairs."""
    videos = [(f"{label}{n}", "solo", [label], clips_per_video)
              for n in range(videos_per_class) for label in ("cat", "dog", "owl")]
    videos += [("duet0", "duet", ["cat", "dog"], 2), ("duet1", "duet", ["dog", "cat"], 2),
               ("duet2", "duet", ["cat", "owl"], 2), ("duet3", "duet", ["cat", "dog"], 2)]
    return videos


@pytest.fixture(scope="module")
def params():
    return load_params(REPO / "params.yaml")


@pytest.fixture(scope="module")
def dataset_params(params):
    return dataclasses.replace(params.datasets["music"], test_videos_per_class=2, val_videos_per_class=1,
                               duet_test_videos_per_pair=1, duet_val_videos_per_pair=1)


@pytest.fixture(scope="module")
def built(tmp_path_factory, params, dataset_params):
    """Clips of toy_videos() and the features made from them."""
    root = tmp_path_factory.mktemp("features")
    write_clips(root / "clips", toy_videos())
    summary = run_features(root / "clips", root / "features", params.features, dataset_params, SAMPLE_RATE)
    return root, summary


def read_split(features_dir: Path, split: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(path) for path in shard_paths(features_dir / split)])


def clip_waveforms(clips_dir: Path) -> dict[str, np.ndarray]:
    """{clip_id: waveform} as the clips stage stored them (fixed_size_list<int16>)."""
    waveforms = {}
    for path in sorted((clips_dir / "videos").glob("*.parquet")):
        table = pq.read_table(path, columns=["clip_id", "waveform"])
        values = table.column("waveform").combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
        waveforms |= dict(zip(table.column("clip_id").to_pylist(), values))
    return waveforms


def file_digests(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


# --------------------------------------------------------------------------- splits


def test_assign_splits_takes_test_videos_first_then_alternates_per_class():
    videos = [dict(video_id=video_id, kind=kind, labels=labels) for video_id, kind, labels, _ in toy_videos(6)]
    splits = assign_splits(videos, test_videos_per_class=2, duet_test_videos_per_pair=1)
    assert [splits[f"dog{n}"] for n in range(6)] == \
        ["test", "test", "train_single", "train_mix", "train_single", "train_mix"]
    assert splits == {**{f"{label}{n}": splits[f"dog{n}"] for label in ("cat", "dog", "owl") for n in range(6)},
                      # the pair (cat, dog) is the same pair however its labels are ordered
                      "duet0": "duet", "duet1": "unused", "duet2": "duet", "duet3": "unused"}


def test_assign_splits_holds_out_val_videos_after_the_test_ones():
    videos = [dict(video_id=video_id, kind=kind, labels=labels) for video_id, kind, labels, _ in toy_videos(6)]
    splits = assign_splits(videos, test_videos_per_class=2, duet_test_videos_per_pair=1, val_videos_per_class=1,
                           duet_val_videos_per_pair=1)
    assert [splits[f"owl{n}"] for n in range(6)] == \
        ["test", "test", "val", "train_single", "train_mix", "train_single"]
    assert [splits[f"duet{n}"] for n in range(4)] == ["duet", "duet_val", "duet", "unused"]


def test_assign_splits_rejects_unknown_kinds_and_repeated_videos():
    with pytest.raises(ValueError, match="kind must be solo or duet"):
        assign_splits([dict(video_id="a", kind="trio", labels=["x"])], 1, 1)
    with pytest.raises(ValueError, match="listed twice"):
        assign_splits([dict(video_id="a", kind="solo", labels=["x"])] * 2, 1, 1)


# --------------------------------------------------------------------------- array columns


def test_array_columns_round_trip_through_parquet_with_slices_and_chunks(tmp_path):
    rng = np.random.default_rng(0)
    logmel = rng.normal(size=(10, 4, 3)).astype(np.float32)
    waveform = rng.integers(-32768, 32767, size=(10, 6)).astype(">i2")  # big-endian in: stored little-endian
    fields = [array_field("logmel", np.float32, (4, 3)), array_field("waveform", np.int16, (6,))]
    assert fields[0][0].type == pa.binary(48) and fields[0][1] == {"logmel_dtype": "<f4", "logmel_shape": "4,3"}
    assert fields[1][1] == {"waveform_dtype": "<i2", "waveform_shape": "6"}
    schema = pa.schema([field for field, _ in fields]).with_metadata(fields[0][1] | fields[1][1])
    table = pa.table({"logmel": array_column(logmel), "waveform": array_column(waveform)}, schema=schema)
    assert table.column("waveform")[1].as_py() == waveform[1].astype("<i2").tobytes()
    pq.write_table(table, tmp_path / "arrays.parquet", row_group_size=4,
                   **parquet_options(schema, "zstd"))
    metadata = pq.read_metadata(tmp_path / "arrays.parquet")
    assert {metadata.row_group(0).column(i).compression for i in range(2)} == {"UNCOMPRESSED"}
    read = pq.read_table(tmp_path / "arrays.parquet")
    assert read.column("logmel").num_chunks == 3  # one chunk per row group
    for name, written in (("logmel", logmel), ("waveform", waveform)):
        dtype, shape = array_layout(read.schema, name)
        np.testing.assert_array_equal(array_values(read.column(name), dtype, shape), written)
        chunk = read.column(name).chunk(1)  # rows 4..7, then a slice of it: offsets count
        np.testing.assert_array_equal(array_values(chunk.slice(1, 2), dtype, shape), written[5:7])
        assert array_values(chunk.slice(4), dtype, shape).shape == (0, *shape)
    combined = read.column("logmel").combine_chunks()
    view = array_values(combined, np.float32, (4, 3))
    assert view.ctypes.data == combined.buffers()[1].address and not view.flags.writeable  # a view, not a copy


def test_array_layout_rejects_metadata_that_does_not_fit():
    field, metadata = array_field("logmel", np.float32, (4, 3))
    with pytest.raises(ValueError, match=r"column logmel must be fixed_size_binary\[52\]"):
        array_layout(pa.schema([field]).with_metadata(metadata | {"logmel_shape": "13"}), "logmel")
    with pytest.raises(ValueError, match="logmel_shape / logmel_dtype must be like"):
        array_layout(pa.schema([field]), "logmel")
    # pixels written before `pixels_dtype` existed: bytes
    pixels, _ = array_field("pixels", np.uint8, (3, 2, 2))
    assert array_layout(pa.schema([pixels]).with_metadata({"pixels_shape": "3,2,2"}), "pixels") == \
        (np.dtype(np.uint8), (3, 2, 2))


# --------------------------------------------------------------------------- log-mel


def test_default_logmel_shape_and_no_empty_mel_filter(params):
    settings = dict(sample_rate=SAMPLE_RATE, **{name: getattr(params.features, name)
                                                 for name in ("n_mels", "f_max", "win_length", "hop_length",
                                                              "n_fft", "top_db")})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logmel = LogMel(**settings)
    assert [str(warning.message) for warning in caught] == []
    assert logmel(np.zeros(SAMPLE_RATE, dtype=np.int16)).shape == (64, 201)
    # the check can fail: a short n_fft leaves the lowest mel filters without an FFT bin
    with pytest.warns(UserWarning, match="mel filterbank has all zero values"):
        LogMel(**{**settings, "n_fft": 256})


def test_logmel_of_a_clip_ignores_its_batch_and_the_thread_count(params):
    logmel = LogMel(SAMPLE_RATE, 64, 8000.0, 160, 80, 1024, 80.0)
    rng = np.random.default_rng(1)
    batch = (rng.standard_normal((5, SAMPLE_RATE)) * np.array([[3000], [30], [3], [10000], [300]])).astype(np.int16)
    batch[0, SAMPLE_RATE // 2:] = 0  # a clip that ends in silence: its range hits top_db
    together = logmel(batch)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = torch.stack([logmel(clip) for clip in batch])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(together, alone)
    # top_db clamps each clip against its own peak, not the louder clip 3's: clip 0 keeps an 80 dB range
    assert together[0].amax() - together[0].amin() == pytest.approx(80.0)
    assert together[0].amax() < together[3].amax() - 5


# --------------------------------------------------------------------------- the stage


def test_every_clip_lands_once_in_the_split_of_its_video(built, dataset_params):
    root, summary = built
    videos = [dict(video_id=video_id, kind=kind, labels=labels) for video_id, kind, labels, _ in toy_videos()]
    expected = assign_splits(videos, dataset_params.test_videos_per_class, dataset_params.duet_test_videos_per_pair,
                             dataset_params.val_videos_per_class, dataset_params.duet_val_videos_per_pair)
    seen_clips = []
    for split in ("train_single", "train_mix", "val", "test", "duet_val", "duet"):
        table = read_split(root / "features", split)
        assert {expected[video_id] for video_id in table.column("video_id").to_pylist()} == {split}
        seen_clips += table.column("clip_id").to_pylist()
        assert summary["splits"][split]["clips"] == table.num_rows
        assert summary["splits"][split]["videos"] == len(set(table.column("video_id").to_pylist()))
    written = [f"{video_id}_{k:04d}" for video_id, _, _, n in toy_videos() if expected[video_id] != "unused"
               for k in range(n)]
    assert sorted(seen_clips) == sorted(written)  # each once: no clip in two splits, none lost
    assert summary["splits"]["test"] == dict(videos=6, clips=18, shards=1)
    assert summary["splits"]["val"] == dict(videos=3, clips=9, shards=1)
    assert summary["splits"]["duet"]["videos"] == 2 and summary["splits"]["duet_val"]["videos"] == 1
    assert summary["unused"]["videos"] == 1 and summary["unused"]["clips"] == 2
    assert summary["skipped_videos"] == 1
    assert (summary["test_videos_per_class"], summary["val_videos_per_class"],
            summary["duet_test_videos_per_pair"], summary["duet_val_videos_per_pair"]) == (2, 1, 1, 1)


def test_rows_follow_index_order_then_clip_index(built):
    root, _ = built
    table = read_split(root / "features", "train_single")
    order = [video_id for video_id, *_ in toy_videos()]
    keys = [(order.index(video_id), k) for video_id, k in
            zip(table.column("video_id").to_pylist(), table.column("clip_index").to_pylist())]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


def test_columns_shapes_and_values(built, params):
    root, summary = built
    table = read_split(root / "features", "test")
    schema = pq.read_schema(shard_paths(root / "features" / "test")[0])
    assert schema.names == clip_schema(SAMPLE_RATE).names + ["logmel", "pixels"]
    assert {key: schema.metadata[key.encode()].decode() for key in (
        "waveform_dtype", "waveform_shape", "logmel_dtype", "logmel_shape", "pixels_dtype", "pixels_shape")} == {
        "waveform_dtype": "<i2", "waveform_shape": "16000", "logmel_dtype": "<f4", "logmel_shape": "64,201",
        "pixels_dtype": "|u1", "pixels_shape": "3,32,32"}
    assert schema.field("waveform").type == pa.binary(2 * SAMPLE_RATE)
    assert schema.field("logmel").type == pa.binary(4 * 64 * 201)
    assert schema.field("pixels").type == pa.binary(3 * 32 * 32)
    # every column but waveform as the clips stage wrote it
    clips_schema = clip_schema(SAMPLE_RATE)
    assert [field for field in schema if field.name in clips_schema.names and field.name != "waveform"] == \
        [field for field in clips_schema if field.name != "waveform"]
    waveform = array_values(table.column("waveform"), *array_layout(schema, "waveform"))
    originals = clip_waveforms(root / "clips")
    np.testing.assert_array_equal(waveform, np.stack([originals[clip] for clip in table.column("clip_id").to_pylist()]))
    logmel = array_values(table.column("logmel"), *array_layout(schema, "logmel"))
    expected = LogMel(**summary["logmel"])(waveform.copy()).numpy()
    np.testing.assert_array_equal(logmel, expected)
    pixels = array_values(table.column("pixels"), *array_layout(schema, "pixels"))
    np.testing.assert_array_equal(pixels, decode_first_frames(table.column("frames")))


def test_summary_holds_the_logmel_settings_and_the_classes(built):
    root, summary = built
    assert json.loads((root / "features" / "summary.json").read_text()) == summary
    assert set(summary["logmel"]) == set(inspect.signature(LogMel).parameters)
    assert summary["logmel"]["sample_rate"] == SAMPLE_RATE
    assert summary["logmel_shape"] == [64, 201] and summary["pixels_shape"] == [3, 32, 32]
    assert summary["classes"] == ["cat", "dog", "owl"]
    assert summary["clip_seconds"] == 1.0


def test_sample_rate_comes_from_the_clips(built):
    root, _ = built
    assert sample_rate_of_clips(root / "clips") == SAMPLE_RATE


def test_same_clips_give_byte_identical_features(built, tmp_path, params, dataset_params):
    root, _ = built
    run_features(root / "clips", tmp_path / "again", params.features, dataset_params, SAMPLE_RATE)
    assert file_digests(tmp_path / "again") == file_digests(root / "features")


def test_reader_reads_what_the_stage_wrote(built):
    root, summary = built
    reader = ShardReader(root / "features" / "train_single", columns=("waveform", "logmel", "image", "clip_id"),
                         batch_size=7)
    table = read_split(root / "features", "train_single")
    batches = list(reader)
    clip_ids = [clip for batch in batches for clip in batch["clip_id"]]
    assert clip_ids == table.column("clip_id").to_pylist()
    assert batches[0]["logmel"].shape == (7, 64, 201) and batches[0]["image"].shape == (7, 3, 32, 32)
    assert batches[0]["waveform"].shape == (7, SAMPLE_RATE) and batches[0]["waveform"].dtype == torch.int16
    # the decoded arrays equal those written: the clips' waveforms, their log-mels, their frames
    waveform = torch.cat([batch["waveform"] for batch in batches]).numpy()
    originals = clip_waveforms(root / "clips")
    np.testing.assert_array_equal(waveform, np.stack([originals[clip] for clip in clip_ids]))
    np.testing.assert_array_equal(torch.cat([batch["logmel"] for batch in batches]).numpy(),
                                  LogMel(**summary["logmel"])(waveform.copy()).numpy())
    np.testing.assert_array_equal(torch.cat([batch["image"] for batch in batches]).numpy(),
                                  decode_first_frames(table.column("frames")))


def test_missing_clip_file_and_wrong_counts_are_named(tmp_path, params, dataset_params):
    # 4 videos per class: 2 test, 1 val, 1 train_single, so that only the broken file can stop the stage
    write_clips(tmp_path / "clips", toy_videos(4, 2))
    (tmp_path / "clips" / "videos" / "owl2.parquet").unlink()
    with pytest.raises(StageError, match=r"owl2\.parquet: not found"):
        run_features(tmp_path / "clips", tmp_path / "out", params.features, dataset_params, SAMPLE_RATE)
    write_clips(tmp_path / "clips2", toy_videos(4, 2))
    index = pq.read_table(tmp_path / "clips2" / "videos.parquet").to_pylist()
    index[0]["n_clips"] = 5
    write_table(pa.Table.from_pylist(index, schema=VIDEOS_SCHEMA), tmp_path / "clips2" / "videos.parquet")
    with pytest.raises(StageError, match=r"cat0\.parquet: 2 clips, videos\.parquet says 5"):
        run_features(tmp_path / "clips2", tmp_path / "out", params.features, dataset_params, SAMPLE_RATE)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("videos_per_class, val_videos_per_class, empty", [
    (3, 1, "train_single"),  # 2 test + 1 val videos per class leave nothing to train on
    (4, 0, "val"),  # no val video: thresholds would have to be chosen on test
])
def test_an_empty_train_single_or_val_split_is_a_one_line_error_naming_the_keys(
        tmp_path, params, dataset_params, videos_per_class, val_videos_per_class, empty):
    write_clips(tmp_path / "clips", toy_videos(videos_per_class, 2))
    dataset = dataclasses.replace(dataset_params, val_videos_per_class=val_videos_per_class)
    with pytest.raises(StageError) as err:
        run_features(tmp_path / "clips", tmp_path / "out", params.features, dataset, SAMPLE_RATE)
    assert str(err.value) == (f"{tmp_path / 'clips'}: no video for split {empty} (test_videos_per_class is 2, "
                              f"val_videos_per_class is {val_videos_per_class})")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- interrupted stage


def stage_dir(root: Path, repo_params: dict) -> Path:
    """A folder laid out like the repo: params.yaml (one row per shard, so that there is a midway)
    and data/clips/music."""
    repo_params["features"].update(shard_rows=1, row_group_rows=1)
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(repo_params))
    write_clips(root / "data" / "clips" / "music", toy_videos(12, 4), frame_size=16)
    return root


def run_stage(folder: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.features", "music", "--params", "params.yaml"],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def kill_midway(folder: Path, env: dict) -> None:
    """Start the stage and SIGKILL it once its temporary output folder holds a first shard."""
    process = subprocess.Popen([sys.executable, "-m", "stages.features", "music", "--params", "params.yaml"],
                               cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((folder / "data" / "features").glob(".music.*.tmp/*/shard-*.parquet")):
        assert process.poll() is None, "the stage ended before it wrote a first shard"
        assert time.monotonic() < deadline, "no shard after 120 s"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def test_a_killed_stage_leaves_no_output_and_a_rerun_matches_an_uninterrupted_run(tmp_path, repo_params, stage_env):
    interrupted = stage_dir(tmp_path / "interrupted", dict(repo_params))
    uninterrupted = stage_dir(tmp_path / "uninterrupted", dict(repo_params))
    output = interrupted / "data" / "features" / "music"

    kill_midway(interrupted, stage_env)
    assert not output.exists()  # nothing that looks finished
    assert list((interrupted / "data" / "features").glob(".music.*.tmp"))  # the killed run's leftovers

    done = run_stage(interrupted, stage_env)
    assert done.returncode == 0, done.stderr
    assert not list((interrupted / "data" / "features").glob(".music.*"))  # leftovers cleared
    reference = run_stage(uninterrupted, stage_env)
    assert reference.returncode == 0, reference.stderr
    digests = file_digests(output)
    assert len([name for name in digests if name.endswith(".parquet")]) > 10
    assert digests == file_digests(uninterrupted / "data" / "features" / "music")

    kill_midway(interrupted, stage_env)  # a killed rerun leaves the previous complete output as it was
    assert file_digests(output) == digests


def test_no_source_inputs_lie_at_their_level_and_repeat_with_the_generator():
    # The AII's no-source inputs (aii.no_source_share): noise at an RMS level inside the range, not silence, and
    # the same draws from the same generator.
    logmel = LogMel(sample_rate=16000, n_mels=64, f_max=8000.0, win_length=160, hop_length=80, n_fft=1024, top_db=80.0)
    quiet = no_source_logmels(3, 16000, (-100.0, -100.0), logmel, np.random.default_rng(0))
    loud = no_source_logmels(3, 16000, (-60.0, -60.0), logmel, np.random.default_rng(0))
    silence = logmel(torch.zeros(1, 16000))
    assert quiet.shape == (3, 64, 201) and no_source_logmels(0, 16000, (-90.0, -60.0), logmel,
                                                             np.random.default_rng(0)).shape == (0, 64, 201)
    # the same noise 40 dB louder reads 40 dB higher wherever it lies above the floor; silence is the floor
    torch.testing.assert_close((loud - quiet).median(), torch.tensor(40.0), atol=0.5, rtol=0)
    assert quiet.mean() > silence.mean() + 10
    assert torch.equal(quiet, no_source_logmels(3, 16000, (-100.0, -100.0), logmel, np.random.default_rng(0)))
