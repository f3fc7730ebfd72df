"""detect: YOLO label export, mAP50, the boxes file, offline training, the stage end to end.

The frames are small synthetic JPEGs: coloured shapes (one shape per class)
on noisy backgrounds, with their true boxes, written as feature shards laid
out as docs/data.md says. Every test runs with the network refused: any
connection or name lookup attempt is recorded and fails the test.
"""
from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image, ImageDraw

from pipeline.config import load_params
from pipeline.detect import (
    BOXES_SCHEMA,
    EVAL_SPLITS,
    TRAIN_SPLITS,
    average_precision,
    boxes_table,
    export_yolo_dataset,
    load_ultralytics,
    map50,
    predict_boxes,
    read_frames,
    run_detect,
    subsample,
    train_detector,
    yolo_label_lines,
)
from pipeline.stage import StageError
from tests.helpers import REPO
from tests.helpers.features import write_feature_split

FRAME_SIZE = 64
# class -> (fill colour, shape): distinct enough for a detector to start learning in a few epochs
SHAPES = {"guitar": ((40, 170, 40), "rectangle"), "person": ((40, 60, 230), "triangle"),
          "violin": ((220, 40, 40), "ellipse")}
SILENCE_SAMPLES = 1600  # the clips' waveforms: 0.1 s of silence (detect reads frames only)


# --------------------------------------------------------------------------- network guard


class NetworkGuard:
    """Refuse (and record) every connection and name lookup while installed."""

    def __init__(self):
        self.attempts: list[str] = []
        self.saved = {}

    def _refuse(self, what):
        def refuse(*args, **kwargs):
            self.attempts.append(f"{what}{args[1:2] if what.startswith('socket.') else args[:1]}")
            raise OSError(f"network refused by the test ({what})")

        return refuse

    def __enter__(self):
        targets = [(socket.socket, "connect"), (socket.socket, "connect_ex"), (socket, "create_connection"),
                   (socket, "getaddrinfo"), (socket, "gethostbyname")]
        for owner, name in targets:
            self.saved[(owner, name)] = getattr(owner, name)
            label = f"socket.{name}" if owner is socket.socket else name
            setattr(owner, name, self._refuse(label))
        return self

    def __exit__(self, *_):
        for (owner, name), original in self.saved.items():
            setattr(owner, name, original)


@pytest.fixture(scope="module", autouse=True)
def offline_ultralytics(tmp_path_factory):
    """ultralytics' config (settings, fonts) in a temporary folder, imported with the network refused."""
    saved = os.environ.get("YOLO_CONFIG_DIR")
    os.environ["YOLO_CONFIG_DIR"] = str(tmp_path_factory.mktemp("yolo-config"))
    with NetworkGuard() as guard:
        yield guard
    if saved is None:
        os.environ.pop("YOLO_CONFIG_DIR")
    else:
        os.environ["YOLO_CONFIG_DIR"] = saved
    assert guard.attempts == [], f"network attempts: {guard.attempts}"


# --------------------------------------------------------------------------- synthetic frames


def draw_frame(rng: np.random.Generator, classes: list[str]) -> tuple[bytes, list[dict]]:
    """A noisy background with one shape per class; the JPEG and its objects."""
    pixels = rng.normal(128, 40, (FRAME_SIZE, FRAME_SIZE, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    objects = []
    for name in classes:
        side = int(rng.integers(FRAME_SIZE // 4, FRAME_SIZE // 2))
        x0, y0 = (int(v) for v in rng.integers(0, FRAME_SIZE - side, 2))
        colour, shape = SHAPES[name]
        corners = [x0, y0, x0 + side - 1, y0 + side - 1]
        if shape == "triangle":
            draw.polygon([(x0, y0 + side - 1), (x0 + side - 1, y0 + side - 1), (x0 + side // 2, y0)], fill=colour)
        else:
            getattr(draw, shape)(corners, fill=colour)
        objects.append({"class": name, "x0": x0 / FRAME_SIZE, "y0": y0 / FRAME_SIZE,
                        "x1": (x0 + side) / FRAME_SIZE, "y1": (y0 + side) / FRAME_SIZE, "sounding": name != "person"})
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), objects


def write_features(root: Path, clips_per_split: dict[str, int], seed: int = 0, with_objects: bool = True) -> None:
    """Feature shards of `root/<split>/shard-00000.parquet`: frame 0 drawn with its objects (what detect reads),
    silent waveforms."""
    rng = np.random.default_rng(seed)
    for split, count in clips_per_split.items():
        clips = []
        for i in range(count):
            sounding = ("guitar", "violin")[i % 2]
            kind = "duet" if split.startswith("duet") else "solo"
            shown = [sounding, "person"] if i % 3 == 0 else [sounding]
            jpeg, objects = draw_frame(rng, shown)
            clips.append({"clip_id": f"{split}{i:03d}_0000", "video_id": f"{split}{i:03d}", "labels": [sounding],
                          "kind": kind, "frame": jpeg, "objects": objects if with_objects else []})
        write_feature_split(root / split, clips, samples=SILENCE_SAMPLES)


def params_file(tmp_path: Path, **detect) -> Path:
    """The repo's params.yaml with some `detect` values replaced, written under tmp_path."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["detect"].update(detect)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


TINY = {"model": str(REPO / "pipeline/yolo-toy.yaml"), "image_size": 64, "epochs": 2, "batch": 8,
        "max_train_images": 1000}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny offline training, run from an empty working directory.

    Returns the model, the evaluation frames, the params, the folder holding
    features/dataset/work, and the working directory (to check it stays empty).
    """
    root = tmp_path_factory.mktemp("trained")
    cwd = tmp_path_factory.mktemp("cwd")
    write_features(root / "features", {"train_single": 16, "train_mix": 8, "test": 8, "duet": 4})
    params = load_params(params_file(root, **TINY)).detect
    train = read_frames(root / "features", TRAIN_SPLITS)
    evaluation = read_frames(root / "features", EVAL_SPLITS)
    data_yaml = export_yolo_dataset(train, evaluation, sorted(SHAPES), root / "dataset")
    before = Path.cwd()
    os.chdir(cwd)
    try:
        model, _ = train_detector(load_ultralytics(), data_yaml, params, seed=0, workdir=root / "work")
    finally:
        os.chdir(before)
    return model, evaluation, params, root, cwd


# --------------------------------------------------------------------------- labels


def test_yolo_label_lines_centre_size_and_clipping():
    boxes = pd.DataFrame(
        [["violin", 0.1, 0.2, 0.5, 0.6], ["guitar", -0.2, 0.5, 0.4, 1.3], ["person", 0.7, 0.7, 0.7, 0.9]],
        columns=["class", "x0", "y0", "x1", "y1"],
    )
    lines = yolo_label_lines(boxes, {"guitar": 0, "person": 1, "violin": 2})
    # the guitar box is clipped to the frame; the zero-width person box is no object
    assert lines == ["2 0.300000 0.400000 0.400000 0.400000", "0 0.200000 0.750000 0.400000 0.500000"]


def test_export_writes_jpegs_as_they_are_and_one_label_file_per_frame(tmp_path):
    write_features(tmp_path / "features", {"train_single": 3, "test": 2})
    train = read_frames(tmp_path / "features", ("train_single",))
    evaluation = read_frames(tmp_path / "features", ("test",))
    data_yaml = export_yolo_dataset(train, evaluation, sorted(SHAPES), tmp_path / "dataset")
    spec = yaml.safe_load(data_yaml.read_text())
    assert spec["names"] == {0: "guitar", 1: "person", 2: "violin"}
    for clip_id, jpeg in zip(train.clip_ids, train.jpegs):
        assert (tmp_path / "dataset/images/train" / f"{clip_id}.jpg").read_bytes() == jpeg
        lines = (tmp_path / "dataset/labels/train" / f"{clip_id}.txt").read_text().splitlines()
        truth = train.truth[train.truth["clip_id"] == clip_id]
        assert len(lines) == len(truth)
        first = truth.iloc[0]
        cls, xc, yc, w, h = lines[0].split()
        assert spec["names"][int(cls)] == first["class"]
        assert float(xc) == pytest.approx((first["x0"] + first["x1"]) / 2, abs=1e-6)
        assert float(h) == pytest.approx(first["y1"] - first["y0"], abs=1e-6)
    assert len(list((tmp_path / "dataset/labels/val").glob("*.txt"))) == 2


def test_read_frames_takes_frame_zero_objects_and_requires_test(tmp_path):
    write_features(tmp_path, {"test": 3})
    frames = read_frames(tmp_path, EVAL_SPLITS, required=("test",))  # val and the duets are absent: fine
    assert frames.clip_ids == ["test000_0000", "test001_0000", "test002_0000"]
    assert Image.open(io.BytesIO(frames.jpegs[0])).size == (FRAME_SIZE, FRAME_SIZE)
    assert set(frames.truth["clip_id"]) == set(frames.clip_ids)
    assert list(frames.truth.columns) == ["clip_id", "class", "x0", "y0", "x1", "y1"]
    with pytest.raises(StageError, match="train_single: no feature shards"):
        read_frames(tmp_path, TRAIN_SPLITS, required=("train_single",))


def test_evaluation_frames_are_those_of_val_test_and_both_duet_splits(tmp_path):
    """Evaluate scores val (thresholds) and test against the detector's boxes: both need them."""
    assert set(EVAL_SPLITS) == {"val", "test", "duet_val", "duet"} and not set(EVAL_SPLITS) & set(TRAIN_SPLITS)
    write_features(tmp_path, {"train_single": 2, "train_mix": 2, "val": 2, "test": 2, "duet_val": 1, "duet": 1})
    frames = read_frames(tmp_path, EVAL_SPLITS, required=("test",))
    assert frames.clip_ids == ["val000_0000", "val001_0000", "test000_0000", "test001_0000", "duet_val000_0000",
                               "duet000_0000"]
    assert set(frames.truth["clip_id"]) == set(frames.clip_ids)


def test_subsample_is_seeded_and_keeps_truth_with_its_frames(tmp_path):
    write_features(tmp_path, {"train_single": 10})
    frames = read_frames(tmp_path, ("train_single",))
    first, again = subsample(frames, 4, seed=3), subsample(frames, 4, seed=3)
    assert first.clip_ids == again.clip_ids and len(first.clip_ids) == 4
    assert first.clip_ids == sorted(first.clip_ids)
    assert set(first.truth["clip_id"]) == set(first.clip_ids)
    assert subsample(frames, 100, seed=3) is frames


# --------------------------------------------------------------------------- mAP50


def boxes(rows, score=False):
    columns = ["clip_id", "class", *(["score"] if score else []), "x0", "y0", "x1", "y1"]
    return pd.DataFrame(rows, columns=columns)


TRUTH = boxes([["a", "violin", 0.1, 0.1, 0.5, 0.5], ["b", "violin", 0.5, 0.5, 0.9, 0.9],
               ["b", "guitar", 0.0, 0.0, 0.3, 0.3]])


def test_map50_perfect_predictions_give_one():
    perfect = TRUTH.assign(score=0.9)[["clip_id", "class", "score", "x0", "y0", "x1", "y1"]]
    score, per_class = map50(perfect, TRUTH)
    assert score == 1.0 and per_class == {"guitar": 1.0, "violin": 1.0}


def test_map50_no_predictions_give_zero():
    score, per_class = map50(boxes([], score=True), TRUTH)
    assert score == 0.0 and per_class == {"guitar": 0.0, "violin": 0.0}


def test_map50_half_of_the_boxes_found():
    # one of the two violins found; the guitar predicted on the wrong frame; a box of a class
    # with no truth (person) counts for no class
    predictions = boxes(
        [["a", "violin", 0.8, 0.1, 0.1, 0.5, 0.5], ["a", "guitar", 0.7, 0.0, 0.0, 0.3, 0.3],
         ["a", "person", 0.9, 0.0, 0.0, 1.0, 1.0]],
        score=True,
    )
    score, per_class = map50(predictions, TRUTH)
    assert per_class == {"guitar": 0.0, "violin": 0.5}
    assert score == 0.25


def test_average_precision_ranking_iou_threshold_and_duplicates():
    truth = boxes([["a", "violin", 0.1, 0.1, 0.5, 0.5], ["b", "violin", 0.5, 0.5, 0.9, 0.9]])
    # the best-scored box misses (IoU 1/3 < 0.5), then two hits: precision 1/2 at recall 1/2,
    # 2/3 at recall 1; the envelope gives 2/3 over the whole recall range
    ranked = boxes(
        [["a", "violin", 0.9, 0.1, 0.1, 0.5, 0.2333], ["a", "violin", 0.8, 0.12, 0.1, 0.5, 0.5],
         ["b", "violin", 0.7, 0.5, 0.5, 0.9, 0.9]],
        score=True,
    )
    assert average_precision(ranked, truth) == pytest.approx(2 / 3)
    # a second box on an already found object is a false positive
    duplicate = boxes([["a", "violin", 0.9, 0.1, 0.1, 0.5, 0.5], ["a", "violin", 0.8, 0.1, 0.1, 0.5, 0.5]], score=True)
    assert average_precision(duplicate, truth) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        average_precision(duplicate, truth.iloc[:0])


# --------------------------------------------------------------------------- boxes file


def test_boxes_table_schema_and_order():
    found = boxes([["b", "violin", 0.3, 0.1, 0.1, 0.2, 0.2], ["a", "guitar", 0.4, 0, 0, 1, 1],
                   ["b", "person", 0.9, 0.5, 0.5, 0.6, 0.6]], score=True)
    table = boxes_table(found)
    assert table.schema == BOXES_SCHEMA
    assert table.column("clip_id").to_pylist() == ["a", "b", "b"]
    assert table.column("class").to_pylist() == ["guitar", "person", "violin"]
    assert boxes_table(boxes([], score=True)).schema == BOXES_SCHEMA


# --------------------------------------------------------------------------- ultralytics, offline


def test_training_from_yaml_is_offline_and_leaves_nothing_in_the_working_directory(trained):
    model, evaluation, params, root, cwd = trained
    assert list(model.names.values()) == sorted(SHAPES)
    assert (root / "work/train/weights/best.pt").is_file()
    # ultralytics' integrations are off (dvclive would write dvc.yaml and dvclive/ here), and
    # its run folder went to the work folder, not runs/
    assert list(cwd.iterdir()) == []
    config = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics"
    assert (config / "Arial.ttf").is_file()
    settings = json.loads((config / "settings.json").read_text())
    assert settings["dvc"] is False and settings["sync"] is False


def test_predictions_are_boxes_in_the_frame(trained):
    model, evaluation, params, _, _ = trained
    found = predict_boxes(model, evaluation, params.image_size, batch=5)
    assert list(found.columns) == BOXES_SCHEMA.names
    assert set(found["clip_id"]) <= set(evaluation.clip_ids)
    assert set(found["class"]) <= set(SHAPES)
    corners = found[["x0", "y0", "x1", "y1"]].to_numpy()
    assert ((corners >= 0) & (corners <= 1)).all()
    assert (found["x1"] >= found["x0"]).all() and (found["score"] > 0).all()


def test_missing_architecture_yaml_is_a_stage_error(tmp_path):
    params = load_params(params_file(tmp_path, model="absent/yolo-toy.yaml")).detect
    with pytest.raises(StageError, match="detect.model: 'absent/yolo-toy.yaml' does not exist"):
        train_detector(load_ultralytics(), tmp_path / "data.yaml", params, seed=0, workdir=tmp_path)


def test_youtube_missing_weights_is_a_one_line_error(tmp_path):
    write_features(tmp_path / "features", {"test": 2}, with_objects=False)
    params = load_params(params_file(tmp_path, model="weights/yolov8n-oiv7.pt", class_map={"Violin": "violin"}))
    with pytest.raises(StageError, match=r"weights file weights/yolov8n-oiv7.pt not found; the youtube source"):
        run_detect(tmp_path / "features", tmp_path / "boxes.parquet", tmp_path / "detector.pt",
                   tmp_path / "detector.json", tmp_path / "detector-run.json", params.detect,
                   source="youtube", seed=0)
    assert not (tmp_path / "boxes.parquet").exists()


def test_youtube_maps_detector_classes_and_reports_no_map(trained, tmp_path):
    """The youtube path with local weights (the tiny toy detector stands in for pretrained ones)."""
    _, _, _, root, _ = trained
    write_features(tmp_path / "features", {"test": 6}, seed=5, with_objects=False)
    weights = root / "work/train/weights/best.pt"
    class_map = {"violin": "violin-music"}
    params = load_params(params_file(tmp_path, model=str(weights), image_size=64, confidence=0.0,
                                     class_map=class_map))
    report = run_detect(tmp_path / "features", tmp_path / "boxes.parquet", tmp_path / "detector.pt",
                        tmp_path / "detector.json", tmp_path / "detector-run.json", params.detect,
                        source="youtube", seed=0)
    table = pq.read_table(tmp_path / "boxes.parquet")
    assert table.schema == BOXES_SCHEMA
    # the barely trained detector finds boxes of more than one class at the 0.001 floor; only
    # violin is mapped, the others are dropped
    pretrained = load_ultralytics().YOLO(str(weights))
    found = predict_boxes(pretrained, read_frames(tmp_path / "features", ("test",)), 64, batch=8)
    assert found["class"].nunique() > 1
    assert table.num_rows == found["class"].isin(class_map).sum() > 0
    assert set(table.column("class").to_pylist()) == {"violin-music"}
    assert report["map50"] is None and "no ground-truth" in report["note"]
    assert json.loads((tmp_path / "detector.json").read_text()) == report
    assert (tmp_path / "detector.pt").read_bytes() == weights.read_bytes()


# --------------------------------------------------------------------------- the stage


SOCKET_GUARD = '''
import socket
def _refuse(*args, **kwargs):
    with open(%r, "a") as log:
        log.write(repr(args[:2]) + "\\n")
    raise OSError("network refused by the test")
socket.socket.connect = socket.socket.connect_ex = _refuse
socket.create_connection = socket.getaddrinfo = socket.gethostbyname = _refuse
'''


def test_stage_end_to_end_offline_and_deterministic(tmp_path):
    """`python -m stages.detect music` twice in a repo-like folder, the network refused."""
    write_features(tmp_path / "data/features/music", {"train_single": 16, "train_mix": 8, "val": 4, "test": 8,
                                                      "duet_val": 2, "duet": 4})
    params_path = params_file(tmp_path, **{**TINY, "epochs": 1})
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(SOCKET_GUARD % str(tmp_path / "attempts.log"))
    # run as in production: the stage's own offline settings, ultralytics not told it is under test
    # (it switches its integrations off under pytest), the config in .yolo/ of the working directory
    hidden = {"YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR", "PYTEST_CURRENT_TEST"}
    env = {key: value for key, value in os.environ.items() if key not in hidden}
    env["PYTHONPATH"] = f"{guard}{os.pathsep}{REPO}"

    outputs, weights = [], []
    for run_number in range(2):
        if run_number:  # the detector draws from data_seed: another training seed changes nothing
            params = yaml.safe_load(params_path.read_text())
            params["seed"] += 1
            params_path.write_text(yaml.safe_dump(params))
        run = subprocess.run([sys.executable, "-m", "stages.detect", "music", "--params", "params.yaml"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        outputs.append(pq.read_table(tmp_path / "data/boxes/music.parquet"))
        weights.append((tmp_path / "models/music/detector.pt").read_bytes())
    assert not (tmp_path / "attempts.log").exists(), (tmp_path / "attempts.log").read_text()
    assert "detect@music: 18 evaluation frames" in run.stdout  # val, test, duet_val and duet

    table = outputs[0]
    assert table.schema == BOXES_SCHEMA
    assert outputs[1].equals(table)  # same data_seed, same boxes
    assert {clip_id.rstrip("0123456789_") for clip_id in table.column("clip_id").to_pylist()} <= \
        {"val", "test", "duet_val", "duet"}  # boxes on evaluation frames only
    report = json.loads((tmp_path / "reports/music/detector.json").read_text())
    assert report["images"] == 18 and report["train_images"] == 24 and report["epochs"] == 1
    assert 0.0 <= report["map50"] <= 1.0 and set(report["per_class_ap50"]) == set(SHAPES)
    assert report["boxes"] == table.num_rows and "seconds" not in report  # a metric file holds no wall time
    assert "ultralytics_val_map50" in report  # ultralytics' own cross-check, on the val frames
    assert json.loads((tmp_path / "reports/music/detector-run.json").read_text())["seconds"] > 0
    assert (tmp_path / "models/music/detector.pt").stat().st_size > 100_000
    assert weights[1] == weights[0]  # the run's date, git state and wall times are left out of the file
    reloaded = load_ultralytics().YOLO(str(tmp_path / "models/music/detector.pt"))
    assert set(SHAPES) <= set(reloaded.names.values())  # ultralytics still loads it, class names and all
    assert (tmp_path / ".yolo/Ultralytics/settings.json").is_file()
    leftovers = {p.name for p in tmp_path.iterdir()} - {"data", "models", "reports", ".yolo", "params.yaml", "guard"}
    assert leftovers == set()  # no runs/, dvclive/ or dvc.yaml


def test_stage_bad_params_exit_with_one_line(tmp_path):
    write_features(tmp_path / "data/features/music", {"test": 2}, with_objects=False)
    params = yaml.safe_load(params_file(tmp_path).read_text())
    params["datasets"]["music"]["source"] = "youtube"
    params["detect"]["model"] = "absent.pt"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run = subprocess.run([sys.executable, "-m", "stages.detect", "music"], cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]
    assert "detect@music: error: detect.model: weights file absent.pt not found" in run.stderr
