"""A rehearsal of `source: youtube` for music, offline: a real-format MUSIC index and DSOL-format boxes reach evaluate.

The tiny toy pipeline (tests/conftest.py `tiny_pipeline`, already reproduced under DVC) is copied and its music role
switched to `source: youtube`:

- Videos: toy-rendered videos of the classes that MUSIC and the toy world share (accordion, saxophone, trumpet,
  violin, flute, and the toy guitar as MUSIC's acoustic_guitar), renamed to YouTube-like ids and listed in
  MUSIC_solo_videos.json / MUSIC_duet_videos.json in the real format (roudimit/MUSIC_dataset). The index files and the
  videos are served over loopback HTTP (`pipeline.download.serve_folder`, as tests/test_download.py does).
- Download: the one stage that cannot run as it is, since it fetches `https://www.youtube.com/watch?v=<id>`. It runs
  in this process with that watch-URL template pointed at the loopback server (the rest is the real youtube path:
  the index fetched over HTTP, yt-dlp, the media check, the manifest), and `dvc commit download@music` records its
  output; every later music stage runs under `dvc repro`.
- Detector: the youtube path needs local pretrained weights and `detect.class_map`. The least contrived weights at
  hand are the toy path's own detector of the tiny run (models/music/detector.pt), an ultralytics checkpoint whose
  class names are toy classes, as yolov8n-oiv7.pt's are Open Images classes; it is copied out of DVC's outputs (detect
  replaces them) and `detect.class_map` maps the toy names to MUSIC's. Trained for one epoch on 32 frames, it finds
  no box on these videos (the test checks detector.json), so every box-matched number comes from the reference boxes.
- Reference boxes: a DSOL-format box file (the format of DSOL's solotest.json / duettest.json, read by
  `pipeline.sources.dsol_boxes`) made from the generator's truth boxes of the sounding objects, one frame at each whole
  second, keyed `<id>_0_1000/frame_SSS/NNNNN.jpg` with NNNNN = 30 x SSS. It covers every clip of val and test, solo
  and duet: DSOL's boxed videos are the first five of each class in MUSIC's index, so a real run has them in both
  splits (docs/decisions.md), and val needs boxes to choose the thresholds on.

The toy objects are drawn large (85-95 % of the frame side), so that even a barely trained model's region overlaps
them: the test checks the plumbing (the box-matched metrics are computed on the reference boxes and are not zero), not
the model. A second case takes the reference boxes away and keeps no detector box: evaluate must stop with one line.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import download
from pipeline.config import ToyWorld, load_params
from pipeline.sources import toy
from pipeline.sources.dsol_boxes import CLASS_CATEGORIES, FRAME_RATE, read_dsol_boxes
from tests.helpers.processes import DVC, dvc_environment, run

pytestmark = pytest.mark.slow

# Toy class -> MUSIC class, for the classes both have (MUSIC's other five have no toy sound or glyph).
MUSIC_NAMES = {"accordion": "accordion", "guitar": "acoustic_guitar", "saxophone": "saxophone",
               "trumpet": "trumpet", "violin": "violin", "flute": "flute"}
WEIGHTS = "weights/toy-music-detector.pt"  # the toy run's detector, outside DVC's outputs
# index ids that must never become paths or stop the stage: one that climbs out of data/, a NUL, 300 characters
BAD_IDS = ["../../../../../escaped", "bad\x00id-x", "x" * 300]
BOXES = "reference/dsol-toy-boxes.json"  # the DSOL-format box file of the evaluation clips


def youtube_id(toy_video_id: str) -> str:
    """An 11-character YouTube-like id, fixed for each toy video."""
    return base64.urlsafe_b64encode(hashlib.sha256(toy_video_id.encode()).digest()).decode()[:11]


def render_music_videos(params_path: Path, folder: Path) -> tuple[dict, pd.DataFrame, ToyWorld]:
    """Render the rehearsal's videos into `folder` as <youtube id>.mp4 and write its MUSIC index files there; the
    index {kind: {key: [ids]}}, the truth rows (video_id = youtube id, class = MUSIC name) and the toy world."""
    tiny_toy = load_params(params_path).datasets["music"].toy
    world = dataclasses.replace(
        tiny_toy, classes=list(MUSIC_NAMES), solo_videos_per_class=4, duet_videos=4, seconds_per_video=2,
        object_scale=[0.85, 0.95], distractors=[0, 0])  # large objects: see the module docstring
    videos, truth = toy.render_world(world, 0, "music", folder)
    index: dict[str, dict[str, list[str]]] = {"solo": {}, "duet": {}}
    for video in videos:
        (folder / f"{video.video_id}.mp4").rename(folder / f"{youtube_id(video.video_id)}.mp4")
        key = " ".join(MUSIC_NAMES[label] for label in video.labels)
        index[video.kind].setdefault(key, []).append(youtube_id(video.video_id))
    truth = truth.to_pandas()
    truth["video_id"] = truth["video_id"].map(youtube_id)
    truth["class"] = truth["class"].map(lambda name: MUSIC_NAMES.get(name, name))  # distractors keep theirs
    for kind in ("solo", "duet"):
        name = f"MUSIC_{kind}_videos.json"
        (folder / name).write_text(json.dumps({"version": "toy rehearsal", "videos": index[kind]}, indent=4))
    return index, truth, world


def dsol_entries(truth: pd.DataFrame, places: list[tuple[str, int]], fps: int, size: int) -> dict:
    """DSOL-format entries of the sounding objects at each (youtube id, second): the rendered frame at that second."""
    entries = {}
    for video_id, second in places:
        rows = truth[(truth["video_id"] == video_id) & (truth["frame"] == second * fps) & truth["sounding"]]
        boxes = []
        for row in rows.to_dict("records"):
            normbox = [float(row["x0"]), float(row["y0"]), float(row["x1"] - row["x0"]), float(row["y1"] - row["y0"])]
            boxes.append({"box": [round(v * size) for v in normbox], "normbox": normbox,
                          "category_id": CLASS_CATEGORIES[row["class"]]})
        entries[f"{video_id}_0_1000/frame_{second:03d}/{FRAME_RATE * second:05d}.jpg"] = {
            "bbox": boxes, "wdith": size, "height": size}
    return entries


def clips_of(repo: Path, splits: tuple[str, ...]) -> list[tuple[str, int]]:
    """(video id, whole second) of every clip of the features stage's `splits`."""
    places = []
    for split in splits:
        for shard in sorted((repo / "data/features/music" / split).glob("*.parquet")):
            table = pq.read_table(shard, columns=["video_id", "start_s"]).to_pydict()
            places += [(video, int(start)) for video, start in zip(table["video_id"], table["start_s"])]
    return places


def set_params(repo: Path, change) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    change(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def youtube_repo(tiny_pipeline, tmp_path_factory) -> Path:
    """A copy of the tiny pipeline with music on `source: youtube`, reproduced up to stage 2 (detect and evaluate
    not yet), with the DSOL-format box file of its evaluation clips."""
    root = tmp_path_factory.mktemp("youtube-rehearsal")
    repo = root / "repo"
    shutil.copytree(tiny_pipeline, repo, symlinks=True)
    env = dvc_environment()
    (repo / WEIGHTS).parent.mkdir()
    shutil.copyfile(repo / "models/music/detector.pt", repo / WEIGHTS)
    served = root / "served"
    index, truth, world = render_music_videos(repo / "params.yaml", served)
    with download.serve_folder(served) as base_url, pytest.MonkeyPatch.context() as patch:
        def to_youtube(params):
            music = params["datasets"]["music"]
            music["source"] = "youtube"
            # the box file is written below, once the features stage has split the videos
            music["youtube"].update(index_url=f"{base_url}/MUSIC_solo_videos.json",
                                    duet_index_url=f"{base_url}/MUSIC_duet_videos.json", reference_boxes=[BOXES])
            params["detect"].update(model=WEIGHTS, class_map=dict(MUSIC_NAMES))
            params["download"]["sleep_s"] = 0.0

        set_params(repo, to_youtube)
        solo_index = served / "MUSIC_solo_videos.json"
        listed = json.loads(solo_index.read_text())
        listed["videos"]["violin"] += BAD_IDS
        solo_index.write_text(json.dumps(listed, indent=4))
        patch.setattr(download, "YOUTUBE_WATCH", f"{base_url}/{{}}.mp4")
        videos = repo / "data/raw/music/videos"
        before = {path.name for path in videos.iterdir()} if videos.is_dir() else set()  # the toy run's
        result = download.run_download(load_params(repo / "params.yaml"), "music", raw_root=repo / "data/raw")
    # every good id fetched; each bad one a recorded skip, never fetched, never a path
    assert result.ok == sum(len(ids) for kind in index.values() for ids in kind.values())
    skipped = [row for row in result.rows if row["status"] != "ok"]
    assert [row["video_id"] for row in skipped] == BAD_IDS
    assert all(row["error"].startswith("skipped: not a YouTube id") and row["attempts"] == 0 and row["path"] == ""
               for row in skipped)
    assert not [path for path in root.parent.rglob("*escaped*")]
    good = [video_id for kind in index.values() for ids in kind.values() for video_id in ids]
    assert {path.name for path in videos.iterdir()} - before == {f"{video_id}.mp4" for video_id in good}
    run(DVC + ["commit", "-f", "download@music"], repo, env)
    run(DVC + ["repro", "features@music"], repo, env)
    # as DSOL's boxed videos in a real run (module docstring), the box file covers val and test, solo and duet
    places = clips_of(repo, ("val", "test", "duet_val", "duet"))
    assert {video for video, _ in places} and {second for _, second in places} == {0, 1}
    (repo / BOXES).parent.mkdir()
    (repo / BOXES).write_text(json.dumps(dsol_entries(truth, places, world.fps, world.image_size)))
    assert len(read_dsol_boxes(repo / BOXES)) == len(places)
    run(DVC + ["repro", "stage2@music"], repo, env)
    return repo


def test_reference_boxes_reach_evaluate(youtube_repo):
    env = dvc_environment()
    out = run(DVC + ["repro", "evaluate@music"], youtube_repo, env)
    assert "Running stage 'download@music'" not in out and "Running stage 'detect@music'" in out
    detector = json.loads((youtube_repo / "reports/music/detector.json").read_text())
    assert detector["source"] == "youtube" and detector["boxes"] == 0  # every box-matched number: reference boxes
    metrics = json.loads((youtube_repo / "reports/music/metrics.json").read_text())
    assert (metrics["source"], metrics["boxes"], metrics["split"]) == ("youtube", "reference+detector", "test")
    assert metrics["single"]["iou50"] > 0 and metrics["single"]["auc"] > 0, metrics["single"]
    assert metrics["grounded"]["single"]["iou30"] > 0, metrics["grounded"]["single"]


def test_no_boxes_at_all_stops_evaluate_with_one_line(youtube_repo, tmp_path):
    """No reference boxes and no detector box, on a copy. detect and evaluate run as DVC runs them, without DVC:
    download@music depends on all of `datasets.music`, so DVC would fetch again once reference_boxes changes."""
    repo = tmp_path / "repo"
    shutil.copytree(youtube_repo, repo, symlinks=True)
    env = dvc_environment()

    def no_boxes(params):
        params["datasets"]["music"]["youtube"]["reference_boxes"] = []
        params["detect"]["confidence"] = 1.0  # keeps no box, whatever the detector finds

    set_params(repo, no_boxes)
    run([sys.executable, "-m", "stages.detect", "music"], repo, env)
    assert pq.read_metadata(repo / "data/boxes/music.parquet").num_rows == 0
    done = subprocess.run([sys.executable, "-m", "stages.evaluate", "music"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evaluate@music: error: "), done.stderr[-2000:]
    assert "box" in lines[0]
