"""The audio-grounded protocol: does a localiser light what it *hears*?
(docs/decisions.md, "The audio-grounded protocol")

DSOL's CIoU (pipeline.metrics.class_aware_iou) hands the metric the true sounding classes and thresholds each of
their maps relative to its own max, so a map always predicts a region and a model that ignores the audio scores
well. Here nothing true reaches the model's side:

- Each method gives, per image, candidate maps on one absolute scale in [0, 1] (IEr: its class-aware maps L^av_k,
  one per pseudo-class; AVOL: its one audio-visual map) with a gate score each (IEr: the heard score p^a_k of the
  map's pseudo-class; AVOL: none, always on), and per-class heard scores.
- The sound map of an image is the pixelwise max of the candidate maps whose gate passes the heard threshold
  (a class the model judges not heard contributes nothing; IEr's silent-object filter is inside L^av_k); its
  region is the pixels above one absolute map threshold. Both thresholds are chosen on val
  (`choose_thresholds`), so a model may predict nothing.
- Scored against the union of the *sounding* boxes (`iou30`, `auc`), object by object (`sounding_recall`,
  `silent_false_alarm`: an object is lit when at least `lit_share` of its box is in the region) and by its heard
  scores against the classes audible in the mixture (`heard_map`, precision and recall at the heard threshold).
- Controls on the same images and truth: each image with another image's audio (a derangement, no image keeps
  its own) and with digital silence. `reliance` = iou30(true) - iou30(deranged); `silence_empty` = share of
  images with an empty region under silence. A model that ignores the audio has reliance 0 and silence_empty 0.

Pure numpy and scikit-learn: `pipeline.evaluate` runs the networks and hands the outputs here; tests hand in
made-up ones.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from sklearn.metrics import average_precision_score

from pipeline.metrics import AUC_THRESHOLDS, auc, boxes_mask, resize_map, success_rate

CONDITIONS = ("true", "deranged", "silence")  # the audio each image is paired with
METRIC_KEYS = ("iou30", "auc", "sounding_recall", "silent_false_alarm", "heard_map", "heard_precision",
               "heard_recall", "empty")


class Outputs(NamedTuple):
    """What one method says about N images under one audio condition."""

    maps: list[np.ndarray]  # per image (M, h, w): candidate maps on an absolute scale in [0, 1]
    gates: np.ndarray  # (N, M): a candidate map counts where its gate >= the heard threshold
    heard: np.ndarray  # (N, C): per-class "heard" score in [0, 1], classes in the evaluation's order


class Truth(NamedTuple):
    """What is true of N images: their objects and the classes audible in their mixture."""

    objects: list[list[dict]]  # per image: {"class", "x0", "y0", "x1", "y1" (normalised), "sounding"}
    audible: np.ndarray  # (N, C) bool: class heard in the mixture (sounding on screen or off-screen)


class Thresholds(NamedTuple):
    map: float  # absolute level of the sound map above which a pixel is predicted
    heard: float  # a candidate map counts when its gate score is at least this


def derangement(count: int, seed: int, salt: str = "") -> np.ndarray:
    """A random permutation of range(count) with no fixed point: image i gets the audio of image perm[i].

    Drawn from `seed` and `salt` (e.g. the set's name) alone: the same pairing for every method and run.
    Raises ValueError for fewer than 2 images.
    """
    if count < 2:
        raise ValueError(f"deranged audio needs at least 2 images, got {count}")
    rng = np.random.default_rng([seed, zlib.crc32(salt.encode()), count])
    while True:  # a uniform permutation is a derangement with probability ~1/e: a few draws at most
        permutation = rng.permutation(count)
        if not np.any(permutation == np.arange(count)):
            return permutation


def sound_map(maps: np.ndarray, gates: np.ndarray, heard_threshold: float) -> np.ndarray:
    """The pixelwise max of the candidate maps (M, h, w) whose gate >= heard_threshold; zeros when none passes."""
    kept = maps[np.asarray(gates) >= heard_threshold]
    return kept.max(axis=0) if len(kept) else np.zeros(maps.shape[1:], dtype=maps.dtype)


def sound_maps(outputs: Outputs, heard_threshold: float, size: int) -> np.ndarray:
    """Every image's sound map resized to size x size: (N, size, size) float32."""
    return np.stack([resize_map(sound_map(maps, gates, heard_threshold), size)
                     for maps, gates in zip(outputs.maps, outputs.gates)]).astype(np.float32)


def region_iou(region: np.ndarray, truth: np.ndarray) -> float:
    """IoU of two boolean masks; 0.0 when both are empty (nothing predicted, nothing to find), never nan."""
    union = np.count_nonzero(region | truth)
    return np.count_nonzero(region & truth) / union if union else 0.0


def box_pixels(box: Mapping, height: int, width: int) -> tuple[slice, slice]:
    """The rows and columns whose pixel centres lie in a normalised box: the pixels of `boxes_mask([box], ...)`."""
    rows = (max(0, math.ceil(box["y0"] * height - 0.5)), min(height - 1, math.floor(box["y1"] * height - 0.5)))
    cols = (max(0, math.ceil(box["x0"] * width - 0.5)), min(width - 1, math.floor(box["x1"] * width - 0.5)))
    return slice(rows[0], rows[1] + 1), slice(cols[0], cols[1] + 1)


def lit(region: np.ndarray, objects: Sequence[Mapping], lit_share: float) -> list[bool]:
    """Per object: at least `lit_share` of its box's pixels are in the region (a box with no pixel is not lit)."""
    flags = []
    for obj in objects:
        rows, cols = box_pixels(obj, *region.shape)
        inside = region[rows, cols]
        flags.append(bool(inside.size) and np.count_nonzero(inside) >= lit_share * inside.size)
    return flags


class ImageScore(NamedTuple):
    iou: float  # region vs the union of the sounding boxes
    empty: bool  # nothing predicted
    lit: list[bool]  # per object of the image, in order


def score_images(maps: np.ndarray, truth: Truth, map_threshold: float, lit_share: float) -> list[ImageScore]:
    """Per image: IoU of its region (maps > map_threshold; maps at the mask size) and which objects it lights."""
    size = maps.shape[-1]
    scores = []
    for image_map, objects in zip(maps, truth.objects):
        region = image_map > map_threshold
        sounding = boxes_mask([obj for obj in objects if obj["sounding"]], size, size)
        scores.append(ImageScore(region_iou(region, sounding), not region.any(), lit(region, objects, lit_share)))
    return scores


def heard_metrics(heard: np.ndarray, audible: np.ndarray, threshold: float) -> dict:
    """heard_map: mean over classes with at least one audible image of the average precision of the heard scores
    (sklearn); heard_precision / heard_recall over all (image, class) pairs at `threshold` (0 when nothing is
    predicted / nothing audible, never a division error)."""
    heard, audible = np.asarray(heard, dtype=np.float64), np.asarray(audible, dtype=bool)
    scored = [average_precision_score(audible[:, c], heard[:, c]) for c in range(audible.shape[1])
              if audible[:, c].any()]
    predicted = heard >= threshold
    hits = np.count_nonzero(predicted & audible)
    return {"heard_map": float(np.mean(scored)) if scored else None,
            "heard_precision": hits / np.count_nonzero(predicted) if predicted.any() else 0.0,
            "heard_recall": hits / np.count_nonzero(audible) if audible.any() else None}


def condition_metrics(scores: list[ImageScore], truth: Truth, heard: np.ndarray, thresholds: Thresholds,
                      success: float) -> dict:
    """The METRIC_KEYS of one set, one method, one audio condition."""
    ious = [score.iou for score in scores]
    flags = [(flag, obj["sounding"]) for score, objects in zip(scores, truth.objects)
             for flag, obj in zip(score.lit, objects)]
    sounding = [flag for flag, is_sounding in flags if is_sounding]
    silent = [flag for flag, is_sounding in flags if not is_sounding]
    return {"iou30": success_rate(ious, success), "auc": auc(ious),
            "sounding_recall": float(np.mean(sounding)) if sounding else None,
            "silent_false_alarm": float(np.mean(silent)) if silent else None,
            **heard_metrics(heard, truth.audible, thresholds.heard),
            "empty": float(np.mean([score.empty for score in scores]))}


def set_metrics(outputs: Mapping[str, Outputs], truth: Truth, thresholds: Thresholds, size: int, lit_share: float,
                success: float) -> tuple[dict, dict[str, list[ImageScore]]]:
    """The grounded group of one set and one method: the true-audio metrics, one dict per control, reliance and
    silence_empty; and the per-image scores of every condition (for samples.csv and the report)."""
    per_condition, per_image = {}, {}
    for condition in CONDITIONS:
        maps = sound_maps(outputs[condition], thresholds.heard, size)
        per_image[condition] = score_images(maps, truth, thresholds.map, lit_share)
        per_condition[condition] = condition_metrics(per_image[condition], truth, outputs[condition].heard,
                                                     thresholds, success)
    group = dict(per_condition["true"])
    group["deranged"], group["silence"] = per_condition["deranged"], per_condition["silence"]
    group["reliance"] = per_condition["true"]["iou30"] - per_condition["deranged"]["iou30"]
    group["silence_empty"] = per_condition["silence"]["empty"]
    return group, per_image


def success_curve(ious: Sequence[float]) -> list[float]:
    """Share of images with IoU >= t for t in AUC_THRESHOLDS (what `auc` integrates): the plots' curve."""
    return [success_rate(ious, threshold) for threshold in AUC_THRESHOLDS]


def candidate_thresholds(steps: int) -> np.ndarray:
    """`steps - 1` levels evenly inside (0, 1): 1/steps, 2/steps, ..."""
    return np.arange(1, steps) / steps


def choose_heard_threshold(heard: np.ndarray, audible: np.ndarray, steps: int) -> float:
    """The level that maximises the F1 of the (image, class) heard decisions on val (ties: the lowest level)."""
    heard, audible = np.asarray(heard), np.asarray(audible, dtype=bool)
    best, best_f1 = float(candidate_thresholds(steps)[0]), -1.0
    for level in candidate_thresholds(steps):
        predicted = heard >= level
        hits = np.count_nonzero(predicted & audible)
        f1 = 2 * hits / max(np.count_nonzero(predicted) + np.count_nonzero(audible), 1)
        if f1 > best_f1 + 1e-12:
            best, best_f1 = float(level), f1
    return best


def choose_map_threshold(maps: np.ndarray, truth: Truth, steps: int) -> float:
    """The absolute level that maximises the mean IoU of the regions with the sounding boxes on val (ties: the
    lowest level). maps (N, S, S), already gated and resized."""
    levels = candidate_thresholds(steps)
    total = np.zeros(len(levels))
    size = maps.shape[-1]
    for image_map, objects in zip(maps, truth.objects):
        sounding = boxes_mask([obj for obj in objects if obj["sounding"]], size, size)
        # pixels above each level, inside and outside the sounding boxes: counts from the sorted values, exactly
        # the counts of (map > level) masks, without building one mask per level
        inside, outside = np.sort(image_map[sounding]), np.sort(image_map[~sounding])
        inter = len(inside) - np.searchsorted(inside, levels, side="right")
        union = len(inside) + len(outside) - np.searchsorted(outside, levels, side="right")
        total += np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return float(levels[int(np.argmax(total))])


def choose_thresholds(outputs: Sequence[Outputs], truths: Sequence[Truth], size: int, steps: int) -> Thresholds:
    """Both thresholds of one method from its true-audio outputs on the val sets: first the heard threshold (F1 of
    the heard decisions), then, with the maps it gates, the map threshold (mean IoU)."""
    heard = np.concatenate([output.heard for output in outputs])
    audible = np.concatenate([truth.audible for truth in truths])
    heard_threshold = choose_heard_threshold(heard, audible, steps)
    maps = np.concatenate([sound_maps(output, heard_threshold, size) for output in outputs])
    objects = [objects for truth in truths for objects in truth.objects]
    return Thresholds(choose_map_threshold(maps, Truth(objects, audible), steps), heard_threshold)
