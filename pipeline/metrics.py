"""Localisation metrics: IoU, success rate and AUC, and the class-aware CIoU and NSA of DSOL's evaluation.

docs/architecture.md. Pure numpy. Maps are bilinearly resized to 224 x 224 and thresholded relative to
their max; ground truth is the union of normalised boxes as a pixel mask.

The class-aware part follows DSOL's evaluation code (Hu et al., NeurIPS 2020, GitHub
DTaoo/Discriminative-Sounding-Objects-Localization), read for this module:

- `music-exp/test_stage_two.py` (and `test_stage_two_duet.py`) turn the stage-2 per-cluster object maps
  into probabilities with a softmax of 3 x the maps over the cluster (channel) axis, at feature resolution.
- `music-exp/eval.py` (Syn, threshold 0.5 x max) and `music-exp/eval_duet.py` (Duet, 0.2 x max) then sum,
  for each sounding class, the softmaxed maps of the clusters that `corr.npy` assigns to it, resize the sum
  to 224 x 224, and take the IoU with the class's boxes; CIoU is the mean over the image's sounding classes.
  NSA: every class channel that is not sounding is resized to 224 x 224 and scores the share of the *whole*
  map at or below the absolute value 0.2 (`np.sum(predmap <= 0.2) / (224 * 224)`), averaged over those
  channels and then over images. No box enters NSA.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

# A box: {"x0":..., "y0":..., "x1":..., "y1":...} (other keys such as "class" ignored) or (x0, y0, x1, y1),
# coordinates normalised to [0, 1] of the image width (x) and height (y).
Box = Mapping[str, float] | Sequence[float]

AUC_THRESHOLDS = np.arange(21) / 20  # 0, 0.05, ..., 1.0; exact multiples, unlike 0.05 * i (0.05 * 6 > 0.3)
EVAL_SIZE = 224  # maps and masks are compared at 224 x 224 (DSOL)
DSOL_SOFTMAX_SCALE = 3.0  # DSOL's temperature: torch.softmax(obj_mask * 3, 1)
NSA_THRESHOLD = 0.2  # DSOL's absolute level below which a silent class's map counts as quiet


def iou(heatmap: np.ndarray, gt_mask: np.ndarray, rel_threshold: float) -> float:
    """Intersection over union of a thresholded heatmap and a ground-truth mask.

    The predicted region is `heatmap > rel_threshold * max(heatmap)`: the threshold is relative to the map's
    own max, so scaling the map by a positive factor does not change the result. Edge cases: a heatmap whose
    max is not positive (all zero, or all negative) predicts nothing, since "above a share of a non-positive
    max" would otherwise select pixels that carry no evidence; an empty union (nothing predicted, nothing in
    the mask) gives 0.0 rather than DSOL's 0 / 0 = nan, so means over samples stay defined.

    heatmap: 2-D float array, finite. gt_mask: 2-D bool array of the same shape (True inside the object).
    Raises ValueError when the shapes differ, the arrays are not 2-D, or the heatmap has non-finite values.
    """
    heatmap = np.asarray(heatmap, dtype=np.float64)
    gt_mask = np.asarray(gt_mask, dtype=bool)
    if heatmap.shape != gt_mask.shape:
        raise ValueError(f"heatmap shape {heatmap.shape} differs from gt_mask shape {gt_mask.shape}")
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap and gt_mask must be 2-D, got shape {heatmap.shape}")
    if not np.all(np.isfinite(heatmap)):
        raise ValueError("heatmap has non-finite values")
    peak = heatmap.max()
    predicted = heatmap > rel_threshold * peak if peak > 0 else np.zeros_like(gt_mask)
    union = np.count_nonzero(predicted | gt_mask)
    if union == 0:
        return 0.0
    return np.count_nonzero(predicted & gt_mask) / union


def success_rate(ious: Iterable[float], threshold: float) -> float:
    """Share of the IoU values that are >= threshold (`iou50` at 0.5, `ciou30` at 0.3).

    Raises ValueError for an empty list: a rate over no samples is undefined, and 0 would look like a result.
    """
    values = np.asarray(list(ious), dtype=np.float64)
    if values.size == 0:
        raise ValueError("success_rate of an empty list of IoUs")
    return float(np.mean(values >= threshold))


def auc(ious: Iterable[float]) -> float:
    """Area under the success-rate curve for thresholds 0, 0.05, ..., 1.0 (21 points, trapezoids, x in [0, 1]).

    As DSOL's eval.py (sklearn.metrics.auc over 0.05 * i). All IoUs 1.0 give 1.0; all IoUs 0.5 give
    0.5 + 0.05 / 2 = 0.525 (rate 1 up to 0.5, then a trapezoid down to 0 at 0.55).
    Raises ValueError for an empty list.
    """
    values = list(ious)
    rates = [success_rate(values, threshold) for threshold in AUC_THRESHOLDS]
    return float(np.trapezoid(rates, AUC_THRESHOLDS))


def _box_corners(box: Box) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of a box given as a dict with those keys or as a 4-tuple."""
    if isinstance(box, Mapping):
        return float(box["x0"]), float(box["y0"]), float(box["x1"]), float(box["y1"])
    x0, y0, x1, y1 = box
    return float(x0), float(y0), float(x1), float(y1)


def boxes_mask(boxes: Iterable[Box], height: int, width: int) -> np.ndarray:
    """Boolean (height, width) mask of the union of normalised boxes.

    A pixel is inside a box when its centre ((col + 0.5) / width, (row + 0.5) / height) lies in the closed
    box [x0, x1] x [y0, y1]; centres make the mask independent of rounding box edges to pixels (DSOL truncates
    with int(), which shifts boxes up and left by up to a pixel). No boxes give an all-False mask.
    Raises ValueError for a box with x1 < x0 or y1 < y0 (corners swapped, not an empty box).
    """
    col_centres = (np.arange(width) + 0.5) / width
    row_centres = (np.arange(height) + 0.5) / height
    mask = np.zeros((height, width), dtype=bool)
    for box in boxes:
        x0, y0, x1, y1 = _box_corners(box)
        if x1 < x0 or y1 < y0:
            raise ValueError(f"box has x1 < x0 or y1 < y0: {box}")
        inside_rows = (row_centres >= y0) & (row_centres <= y1)
        inside_cols = (col_centres >= x0) & (col_centres <= x1)
        mask |= inside_rows[:, None] & inside_cols[None, :]
    return mask


@functools.lru_cache(maxsize=64)
def _bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) weights of a bilinear resize along one axis: each output index takes its lower and upper
    source index with weights 1 - t and t. Half-pixel centres (align_corners=False, as torch and cv2.resize),
    clamped at the borders like torch."""
    source = np.clip((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0, in_size - 1)
    lower = np.floor(source).astype(np.int64)
    upper = np.minimum(lower + 1, in_size - 1)
    weights = np.zeros((out_size, in_size))
    np.add.at(weights, (np.arange(out_size), lower), 1.0 - (source - lower))
    np.add.at(weights, (np.arange(out_size), upper), source - lower)
    weights.flags.writeable = False  # shared by every call through the cache
    return weights


def resize_map(heatmap: np.ndarray, size: int = EVAL_SIZE) -> np.ndarray:
    """Bilinear resize of a 2-D map to (size, size), float64.

    Same numbers as torch.nn.functional.interpolate(mode="bilinear", align_corners=False) and DSOL's
    cv2.resize (half-pixel centres, no antialiasing), without importing torch. Two small matrix products: the
    evaluation resizes tens of thousands of maps.
    """
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be 2-D, got shape {heatmap.shape}")
    return _bilinear_matrix(heatmap.shape[0], size) @ heatmap @ _bilinear_matrix(heatmap.shape[1], size).T


def class_maps(cluster_maps: np.ndarray, cluster_classes: Sequence[str], classes: Sequence[str],
               scale: float = DSOL_SOFTMAX_SCALE) -> np.ndarray:
    """Per-class probability maps (C, h, w) from per-pseudo-class (cluster) maps (K, h, w), as DSOL does.

    DSOL (music-exp/test_stage_two.py, eval.py) first takes a softmax of 3 x the raw maps over the cluster
    axis, so at every pixel the K clusters share probability 1, and then sums the softmaxed maps of the
    clusters assigned to each class. We keep that order: softmax over clusters, then sum (many-to-one).
    Consequences: a class with no cluster gets an all-zero map (not a share of the softmax); a cluster whose
    class is "" (no majority class) still competes in the softmax but adds to no class; the class maps sum
    to at most 1 at every pixel.

    `scale` is the softmax's factor: DSOL's 3 for its logit-scale maps. Maps of probabilities P_k go in as
    log P_k with scale 1, and the softmax is then P_k / sum_j P_j: the same normalisation across classes
    (softmax(3 P) of values in [0, 1] differs by at most e^3 between classes and is nearly uniform).

    cluster_maps: raw (pre-softmax) maps, one per cluster. cluster_classes: each cluster's true class by
    majority vote, "" for none. classes: the output order. Raises ValueError when the lengths differ or a
    cluster names a class that is not in `classes`.
    """
    cluster_maps = np.asarray(cluster_maps, dtype=np.float64)
    if cluster_maps.ndim != 3:
        raise ValueError(f"cluster_maps must be (K, h, w), got shape {cluster_maps.shape}")
    if len(cluster_classes) != cluster_maps.shape[0]:
        raise ValueError(f"{len(cluster_classes)} cluster classes for {cluster_maps.shape[0]} cluster maps")
    unknown = sorted({name for name in cluster_classes if name and name not in classes})
    if unknown:
        raise ValueError(f"clusters map to classes not in `classes`: {unknown}")
    logits = scale * cluster_maps
    exp = np.exp(logits - logits.max(axis=0, keepdims=True))  # shift by the max so exp cannot overflow
    probabilities = exp / exp.sum(axis=0, keepdims=True)
    per_class = np.zeros((len(classes), *cluster_maps.shape[1:]))
    class_index = {name: index for index, name in enumerate(classes)}
    for cluster, name in enumerate(cluster_classes):
        if name:
            per_class[class_index[name]] += probabilities[cluster]
    return per_class


def _check_classes(class_maps: Mapping[str, np.ndarray], names: Iterable[str]) -> None:
    """ValueError naming the classes that have no map."""
    missing = sorted(set(names) - set(class_maps))
    if missing:
        raise ValueError(f"no class map for {missing}")


def class_aware_iou(
    class_maps: Mapping[str, np.ndarray],
    class_boxes: Mapping[str, Iterable[Box]],
    sounding_classes: Iterable[str],
    rel_threshold: float,
    size: int = EVAL_SIZE,
) -> float:
    """CIoU of one image (paper Eq. 7): mean over its sounding classes of the IoU of the class's map and boxes.

    class_maps: class -> normalised 2-D map, e.g. `dict(zip(classes, class_maps(...)))`. class_boxes:
    class -> that class's boxes. Each sounding class's map is resized to size x size, thresholded at
    rel_threshold x its max (0.5 Syn/Unconstrained, 0.2 Duet) and compared with the union of its boxes.
    A sounding class with no boxes scores 0 (its mask is empty), so pass only visible sounding classes; in
    DSOL the sounding classes are exactly those with boxes. Raises ValueError when there is no sounding
    class or a sounding class has no map.
    """
    sounding = list(dict.fromkeys(sounding_classes))  # unique, in order: a class counts once
    if not sounding:
        raise ValueError("class_aware_iou of an image without sounding classes")
    _check_classes(class_maps, sounding)
    ious = [
        iou(resize_map(class_maps[name], size), boxes_mask(class_boxes.get(name, []), size, size), rel_threshold)
        for name in sounding
    ]
    return float(np.mean(ious))


def non_sounding_area(
    class_maps: Mapping[str, np.ndarray],
    sounding_classes: Iterable[str],
    threshold: float = NSA_THRESHOLD,
    size: int = EVAL_SIZE,
) -> float:
    """NSA of one image (DSOL): how quiet the silent classes' maps are, in [0, 1], higher is better.

    For every class in class_maps that is not sounding (whether its object is visible or not: DSOL loops
    over all class channels), resize its normalised map to size x size and take the share of the whole
    map at or below `threshold`, an absolute level (the maps are softmax probabilities), not a share of the
    max. The image's NSA is the mean over those classes. Returns nan when every class sounds (DSOL's mean of
    an empty list), so average images with np.nanmean. Raises ValueError when a sounding class has no map.
    """
    sounding = set(sounding_classes)
    _check_classes(class_maps, sounding)
    quiet_shares = [
        float(np.mean(resize_map(heatmap, size) <= threshold))
        for name, heatmap in class_maps.items()
        if name not in sounding
    ]
    if not quiet_shares:
        return float("nan")
    return float(np.mean(quiet_shares))
