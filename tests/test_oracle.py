"""The oracle stage: IEr's networks trained with the true classes (the ceiling evaluate scores IEr against)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import Model, Oracle
from pipeline.models.oracle import load_oracle
from pipeline.oracle import box_targets, mirrored, run_oracle
from pipeline.paths import OraclePaths
from pipeline.stage import StageError
from tests.helpers.features import LOGMEL_SETTINGS, write_feature_split
from tests.helpers.params import load_repo_params

SAMPLES = 4000  # 0.25-s clips
SIDE = 64
CLASSES = ["class0", "class1", "class2", "class3"]
COLOURS = [(230, 40, 40), (40, 200, 40), (40, 40, 230), (230, 230, 40)]
FREQUENCIES = [300.0, 700.0, 1500.0, 3100.0]


def make_split(folder: Path, clips_per_class: int, seed: int, class_count: int = len(CLASSES)) -> None:
    """Each class a coloured square at a random place (its box in `objects`) and a tone of its own frequency."""
    rng = np.random.default_rng(seed)
    clips = []
    for label, (colour, frequency) in enumerate(zip(COLOURS[:class_count], FREQUENCIES[:class_count])):
        for clip in range(clips_per_class):
            pixels = rng.integers(0, 80, size=(3, SIDE, SIDE), dtype=np.uint8)
            x, y = rng.integers(0, SIDE - 24, size=2)
            pixels[:, y:y + 24, x:x + 24] = np.array(colour, dtype=np.uint8)[:, None, None]
            wave = np.sin(2 * np.pi * frequency * np.arange(SAMPLES) / 16000) * rng.uniform(3000, 9000)
            box = {"class": CLASSES[label], "x0": x / SIDE, "y0": y / SIDE, "x1": (x + 24) / SIDE,
                   "y1": (y + 24) / SIDE, "sounding": True}
            clips.append({"video_id": f"{CLASSES[label]}-v{clip % 3}", "clip_id": f"{CLASSES[label]}-v{clip % 3}_"
                          f"{clip:04d}", "labels": [CLASSES[label]], "waveform": np.rint(wave).astype(np.int16),
                          "pixels": pixels, "objects": [box]})
    write_feature_split(folder, clips, logmel_settings=LOGMEL_SETTINGS, rows_per_shard=64, row_group_rows=16)


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory) -> Path:
    features = tmp_path_factory.mktemp("oracle") / "features"
    make_split(features / "train_single", 12, seed=1)
    make_split(features / "val", 4, seed=2)
    (features / "summary.json").write_text(json.dumps({"logmel": LOGMEL_SETTINGS}))
    return features


def tiny_settings(**oracle_changes) -> tuple[Model, Oracle]:
    params = load_repo_params()
    params["model"].update(width=4, dim=16, hidden=16, image_size=SIDE, visual_pretrained="")
    params["oracle"].update({"epochs": 12, "visual_epochs": 10, "batch_size": 8, "max_mix": 2, "lr": 0.005,
                             "device": "cpu"} | oracle_changes)
    return Model(**params["model"]), Oracle(**params["oracle"])


@pytest.fixture(scope="module")
def trained(features_dir, tmp_path_factory) -> tuple[OraclePaths, dict]:
    out = tmp_path_factory.mktemp("oracle-out")
    paths = OraclePaths(out / "oracle.pt", out / "oracle.json")
    model, oracle = tiny_settings()
    return paths, run_oracle(features_dir, paths, model, oracle, seed=0)


def test_the_oracle_learns_the_classes_it_is_told(trained):
    paths, report = trained
    assert report == json.loads(paths.report.read_text())
    assert report["classes"] == CLASSES and report["train_clips"] == 48 and report["val"]["clips"] == 16
    assert set(report["final_losses"]) == {"audio_loss"}  # the last passes train the audio side only
    # four tones and four colours: told the classes, both sides tell them apart on held-out clips
    assert report["val"]["audio_accuracy"] >= 0.75, report
    assert report["val"]["visual_accuracy"] >= 0.5, report


def test_the_oracle_file_loads_and_maps_each_class_where_its_object_is(trained, features_dir):
    paths, _ = trained
    model, _ = tiny_settings()
    oracle = load_oracle(paths.model, model)
    assert oracle.classes == CLASSES and oracle.config["kind"] == "oracle"
    logits = oracle.model.eval().class_logits(torch.zeros(2, 3, SIDE, SIDE))
    assert logits.shape == (2, 4, SIDE // 16, SIDE // 16)
    assert oracle.model.heard_logits(torch.zeros(3, 1, 64, SAMPLES // 80 + 1)).shape == (3, 4)


def test_a_stage1_file_or_other_widths_are_one_line_errors(trained, tmp_path):
    paths, _ = trained
    model, _ = tiny_settings()
    saved = torch.load(paths.model, weights_only=True)
    stage1_like = tmp_path / "stage1.pt"
    torch.save({"state_dict": saved["state_dict"], "config": saved["config"] | {"kind": "stage1"}}, stage1_like)
    with pytest.raises(StageError, match="not an oracle model file"):
        load_oracle(stage1_like, model)
    wider = Model(**(load_repo_params()["model"] | {"width": 8, "dim": 16, "hidden": 16}))
    with pytest.raises(StageError) as caught:
        load_oracle(paths.model, wider)
    assert str(caught.value) == f"{paths.model}: trained with model.width = 4, params.yaml has 8"
    with pytest.raises(StageError, match="not found"):
        load_oracle(tmp_path / "missing.pt", model)


def test_a_batch_that_does_not_fill_the_canvases_is_one_line(features_dir, tmp_path):
    model, oracle = tiny_settings(batch_size=6)
    paths = OraclePaths(tmp_path / "oracle.pt", tmp_path / "oracle.json")
    with pytest.raises(StageError) as caught:
        run_oracle(features_dir, paths, model, oracle, seed=0)
    assert str(caught.value) == "oracle.batch_size = 6 does not fill canvases of oracle.canvas^2 = 4 clips"
    assert not paths.model.exists()


def test_box_targets_mark_the_positions_inside_the_box_of_the_clips_class():
    box = {"class": "class1", "x0": 0.0, "y0": 0.5, "x1": 0.5, "y1": 1.0, "sounding": True}
    targets = box_targets([[box], []], np.array([1, 2]), (3, 4, 4))
    assert targets.shape == (2, 3, 4, 4)
    assert targets[0, 1].tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    assert targets[0, [0, 2]].sum() == 0 and targets[1].sum() == 0  # other classes, and a clip with no box
    # a box that holds no cell centre marks the cell of its own centre
    small = {"class": "class0", "x0": 0.3, "y0": 0.3, "x1": 0.45, "y1": 0.45, "sounding": True}
    assert box_targets([[small]], np.array([0]), (3, 2, 2))[0, 0].tolist() == [[1, 0], [0, 0]]
    flipped = mirrored(box)
    assert (flipped["x0"], flipped["x1"], flipped["y0"]) == (0.5, 1.0, 0.5)
    assert box_targets([[flipped]], np.array([1]), (3, 4, 4))[0, 1].tolist() == \
        [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]



def test_mixtures_never_ask_for_more_classes_than_there_are(tmp_path):
    """max_mix 4 on a two-class dataset: the mixtures have two members, no error."""
    features = tmp_path / "features"
    make_split(features / "train_single", 4, seed=1, class_count=2)
    make_split(features / "val", 2, seed=2, class_count=2)
    (features / "summary.json").write_text(json.dumps({"logmel": LOGMEL_SETTINGS}))
    model, oracle = tiny_settings(epochs=1, visual_epochs=1, max_mix=4)
    paths = OraclePaths(tmp_path / "oracle.pt", tmp_path / "oracle.json")
    report = run_oracle(features, paths, model, oracle, seed=0)
    assert report["classes"] == CLASSES[:2] and paths.model.is_file()
