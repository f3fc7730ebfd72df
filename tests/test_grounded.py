"""The audio-grounded protocol (pipeline/grounded.py) on hand-made worlds and hand-made models.

Each image is a 2x2 mosaic of four objects of distinct classes, two of them sounding. Every image's sounding
pair is its own (disjoint from every other image's), so another image's audio names classes this image does
not sound. The made-up "models" turn (image, audio) into the outputs evaluation hands to the metrics:
- `looks_only`: lights every visible object and says it hears every class, whatever the audio;
- `oracle`: lights exactly the boxes of the classes in the audio (true classes of the audio, as in the issue);
- `blind`: predicts nothing and hears nothing.
"""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.grounded import (CONDITIONS, Outputs, Thresholds, Truth, box_pixels, choose_thresholds, derangement, lit,
                               region_iou, set_metrics, sound_map)
from pipeline.metrics import boxes_mask

CLASSES = [f"c{index}" for index in range(16)]
TILES = [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.5)]  # (x0, y0) of each tile
MAP_SIDE = 8  # the models' maps: 8 x 8, resized to 224 by the metrics
SIZE = 224


def world(images: int = 8):
    """Objects, audible classes and shown classes of `images` mosaics: image i sounds c(2i), c(2i+1) and shows two
    silent objects of the next image's pair."""
    objects, audible, shown = [], np.zeros((images, len(CLASSES)), dtype=bool), []
    for image in range(images):
        sounding = [2 * image, 2 * image + 1]
        silent = [(2 * image + 2) % len(CLASSES), (2 * image + 3) % len(CLASSES)]
        image_objects = []
        for tile, (label, is_sounding) in enumerate([(c, True) for c in sounding] + [(c, False) for c in silent]):
            x0, y0 = TILES[(tile + image) % 4]
            # each object fills its tile: the models' 8 x 8 maps draw it exactly
            image_objects.append({"class": CLASSES[label], "x0": x0, "y0": y0, "x1": x0 + 0.5, "y1": y0 + 0.5,
                                  "sounding": is_sounding})
        objects.append(image_objects)
        audible[image, sounding] = True
        shown.append(sounding + silent)
    return Truth(objects, audible), shown


def class_map(obj: dict) -> np.ndarray:
    """A MAP_SIDE map at 0.9 inside the object's box."""
    return boxes_mask([obj], MAP_SIDE, MAP_SIDE).astype(np.float32) * 0.9


def model_outputs(kind: str, truth: Truth, audio: np.ndarray) -> Outputs:
    """A made-up model's outputs: audio (N, C) is the multi-hot of the classes each image hears."""
    maps, gates = [], []
    for image_objects, heard in zip(truth.objects, audio):
        candidates = np.zeros((len(CLASSES), MAP_SIDE, MAP_SIDE), np.float32)
        for obj in image_objects:
            candidates[CLASSES.index(obj["class"])] = class_map(obj)
        if kind == "blind":
            candidates[:] = 0.0
        maps.append(candidates)
        gates.append(heard.astype(np.float32) if kind == "oracle" else
                     np.full(len(CLASSES), 1.0 if kind == "looks_only" else 0.0, np.float32))
    heard = {"oracle": audio.astype(np.float32), "looks_only": np.full(audio.shape, 0.6, np.float32),
             "blind": np.zeros(audio.shape, np.float32)}[kind]
    return Outputs(maps, np.stack(gates), heard)


def conditions(kind: str, truth: Truth) -> dict[str, Outputs]:
    """The model under the true audio, deranged audio (another image's) and digital silence."""
    permutation = derangement(len(truth.objects), seed=0, salt="test")
    audio = truth.audible
    return {"true": model_outputs(kind, truth, audio),
            "deranged": model_outputs(kind, truth, audio[permutation]),
            "silence": model_outputs(kind, truth, np.zeros_like(audio))}


THRESHOLDS = Thresholds(map=0.5, heard=0.5)


def grounded(kind: str) -> dict:
    truth, _ = world()
    group, _ = set_metrics(conditions(kind, truth), truth, THRESHOLDS, SIZE, lit_share=0.3, success=0.3)
    return group


def test_a_model_that_ignores_the_audio_does_not_rely_on_it():
    group = grounded("looks_only")
    assert group["reliance"] == pytest.approx(0.0)
    assert group["silence_empty"] == 0.0 and group["silence"]["empty"] == 0.0
    assert group["silent_false_alarm"] == 1.0  # it lights the silent objects as brightly as the sounding ones
    assert group["sounding_recall"] == 1.0
    assert group["iou30"] == 1.0  # half of what it lights sounds: IoU 0.5 >= 0.3, as DSOL's CIoU would reward
    assert group["deranged"]["iou30"] == group["iou30"]


def test_the_oracle_relies_on_the_audio_and_is_quiet_under_silence():
    group = grounded("oracle")
    assert group["iou30"] == 1.0 and group["auc"] > 0.9
    assert group["reliance"] == pytest.approx(1.0)
    assert group["silence_empty"] == 1.0
    assert group["silent_false_alarm"] == 0.0 and group["sounding_recall"] == 1.0
    assert group["heard_map"] == 1.0 and group["heard_precision"] == 1.0 and group["heard_recall"] == 1.0
    assert group["deranged"]["heard_recall"] == 0.0  # it hears the other image's classes, not this one's


def test_a_model_that_predicts_nothing_scores_zero_without_division_errors():
    with np.errstate(all="raise"):
        group = grounded("blind")
    # auc integrates the success rate from t = 0, where every IoU counts: all-zero IoUs give 0.05 / 2
    assert group["iou30"] == 0.0 and group["auc"] == pytest.approx(0.025) and group["empty"] == 1.0
    assert group["sounding_recall"] == 0.0 and group["silent_false_alarm"] == 0.0
    assert group["heard_precision"] == 0.0 and group["heard_recall"] == 0.0
    assert group["reliance"] == 0.0 and group["silence_empty"] == 1.0
    assert set(group) >= {"deranged", "silence"} and set(group["deranged"]) == set(group["silence"])


def test_derangement_moves_every_image_and_is_reproducible():
    for count in (2, 3, 17, 200):
        permutation = derangement(count, seed=0, salt="syn")
        assert sorted(permutation) == list(range(count)) and not np.any(permutation == np.arange(count))
        assert np.array_equal(permutation, derangement(count, seed=0, salt="syn"))
    assert not np.array_equal(derangement(50, 0, "syn"), derangement(50, 0, "un"))
    with pytest.raises(ValueError, match="at least 2 images"):
        derangement(1, seed=0)


def test_sound_map_keeps_only_the_heard_candidates():
    maps = np.stack([np.full((2, 2), 0.2), np.full((2, 2), 0.8)])
    assert np.all(sound_map(maps, np.array([0.9, 0.1]), 0.5) == 0.2)
    assert np.all(sound_map(maps, np.array([0.1, 0.1]), 0.5) == 0.0)  # nothing heard: nothing drawn


def test_lit_needs_the_share_of_the_box():
    region = np.zeros((10, 10), dtype=bool)
    region[:, :3] = True  # the left 30 % of the image
    left_box = {"x0": 0.0, "y0": 0.0, "x1": 0.99, "y1": 0.99}  # the whole image: 30 % lit
    assert lit(region, [left_box], 0.3) == [True]
    assert lit(region, [left_box], 0.31) == [False]
    assert region_iou(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 0.0


def test_thresholds_chosen_on_val_separate_the_oracle():
    truth, _ = world()
    chosen = choose_thresholds([conditions("oracle", truth)["true"]], [truth], SIZE, steps=20)
    assert 0.0 < chosen.heard <= 1.0 and chosen.map < 0.9  # heard scores 1 / 0; maps 0.9 inside the boxes
    group, _ = set_metrics(conditions("oracle", truth), truth, chosen, SIZE, lit_share=0.3, success=0.3)
    assert group["iou30"] == 1.0 and group["silence_empty"] == 1.0


def test_every_condition_reports_the_same_keys():
    group = grounded("looks_only")
    keys = set(group["deranged"])
    assert keys == set(group["silence"]) and keys <= set(group)
    assert len(CONDITIONS) == 3


def test_box_pixels_are_the_pixels_of_the_box_mask():
    rng = np.random.default_rng(0)
    for _ in range(200):
        x0, x1 = sorted(rng.uniform(-0.1, 1.1, 2))
        y0, y1 = sorted(rng.uniform(-0.1, 1.1, 2))
        box = {"x0": x0, "y0": y0, "x1": x1, "y1": y1}
        height, width = rng.integers(1, 40, 2)
        mask = np.zeros((height, width), dtype=bool)
        rows, cols = box_pixels(box, height, width)
        mask[rows, cols] = True
        assert np.array_equal(mask, boxes_mask([box], height, width)), box
