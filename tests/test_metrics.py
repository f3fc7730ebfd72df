"""Localisation metrics on hand-made maps whose IoU, AUC, CIoU and NSA are worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.metrics import (
    AUC_THRESHOLDS,
    auc,
    boxes_mask,
    class_aware_iou,
    class_maps,
    iou,
    non_sounding_area,
    resize_map,
    success_rate,
)


def columns_mask(columns, height=4, width=4):
    """A (height, width) bool mask that is True in the given columns."""
    mask = np.zeros((height, width), dtype=bool)
    mask[:, list(columns)] = True
    return mask


# --- iou ---------------------------------------------------------------------------------------------------------


def test_iou_perfect_map_is_one():
    gt = columns_mask([1, 2])
    assert iou(gt.astype(float), gt, 0.1) == 1.0


def test_iou_disjoint_map_is_zero():
    assert iou(columns_mask([0]).astype(float), columns_mask([2, 3]), 0.1) == 0.0


def test_iou_partial_overlap():
    # Predicted columns 0-1 (8 pixels), truth columns 1-2 (8 pixels): intersection column 1 = 4 pixels,
    # union columns 0-2 = 12 pixels, IoU = 4 / 12 = 1/3.
    assert iou(columns_mask([0, 1]).astype(float), columns_mask([1, 2]), 0.5) == pytest.approx(1 / 3, abs=1e-15)


def test_iou_threshold_is_relative_to_the_max_and_strict():
    heatmap = np.array([[1.0, 0.5], [0.4, 0.0]])
    gt = np.array([[True, True], [False, False]])
    # 0.5 x max = 0.5: only the 1.0 pixel is strictly above; IoU = 1 / 2.
    assert iou(heatmap, gt, 0.5) == 0.5
    # Scaling the map scales its max too: same region, same IoU.
    assert iou(heatmap * 37.0, gt, 0.5) == 0.5
    assert iou(heatmap * 1e-6, gt, 0.5) == 0.5
    # 0.45 x max: 1.0 and 0.5 are above, 0.4 is not: exactly the truth.
    assert iou(heatmap, gt, 0.45) == 1.0


def test_iou_scale_invariance_on_a_random_map():
    rng = np.random.default_rng(0)
    heatmap = rng.random((7, 9))
    gt = rng.random((7, 9)) > 0.6
    assert iou(heatmap, gt, 0.3) == iou(heatmap * 4.2, gt, 0.3)


def test_iou_edge_cases():
    zeros = np.zeros((3, 3))
    empty = np.zeros((3, 3), dtype=bool)
    full = np.ones((3, 3), dtype=bool)
    assert iou(zeros, empty, 0.1) == 0.0  # empty union
    assert iou(zeros, full, 0.1) == 0.0  # an all-zero map predicts nothing
    assert iou(-np.ones((3, 3)), full, 0.1) == 0.0  # nor does a map with a negative max
    assert iou(np.ones((3, 3)), full, 0.1) == 1.0  # a flat positive map predicts everything


def test_iou_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        iou(np.zeros((4, 4)), np.zeros((4, 5), dtype=bool), 0.5)


def test_iou_rejects_non_2d_and_nan():
    with pytest.raises(ValueError):
        iou(np.zeros((2, 2, 2)), np.zeros((2, 2, 2), dtype=bool), 0.5)
    with pytest.raises(ValueError):
        iou(np.array([[np.nan, 1.0]]), np.array([[True, False]]), 0.5)


# --- success_rate and auc ----------------------------------------------------------------------------------------


def test_success_rate():
    assert success_rate([0.2, 0.5, 0.7, 0.49], 0.5) == 0.5  # 0.5 itself counts (>=)
    assert success_rate([0.2, 0.5, 0.7, 0.49], 0.0) == 1.0
    assert success_rate(np.array([0.1, 0.1]), 0.3) == 0.0


def test_success_rate_empty_raises():
    with pytest.raises(ValueError):
        success_rate([], 0.5)
    with pytest.raises(ValueError):
        auc([])


def test_auc_thresholds_are_exact():
    assert len(AUC_THRESHOLDS) == 21
    assert AUC_THRESHOLDS[0] == 0.0 and AUC_THRESHOLDS[-1] == 1.0
    # ciou30 is the rate at the 7th threshold; 0.05 * 6 would be 0.30000000000000004 and drop an IoU of 0.3.
    assert AUC_THRESHOLDS[6] == 0.3
    assert success_rate([0.3], AUC_THRESHOLDS[6]) == 1.0


def test_auc_of_known_lists():
    # Rate 1 at every threshold: area 1.
    assert auc([1.0, 1.0, 1.0]) == 1.0  # exactly 1.0 in floating point too
    # Rate 1 for t = 0 .. 0.5, 0 from 0.55: 0.5 plus the trapezoid (1 + 0) / 2 * 0.05 = 0.525.
    assert auc([0.5, 0.5]) == pytest.approx(0.525, abs=1e-12)
    # Rate 1 only at t = 0, then 0: one trapezoid, 0.05 / 2 = 0.025.
    assert auc([0.0]) == pytest.approx(0.025, abs=1e-12)
    # [1, 0]: rate 1 at t = 0, 0.5 after: (1 + 0.5) / 2 * 0.05 + 19 * 0.5 * 0.05 = 0.0375 + 0.475 = 0.5125.
    assert auc([1.0, 0.0]) == pytest.approx(0.5125, abs=1e-12)


# --- boxes_mask and resize_map -----------------------------------------------------------------------------------


def test_boxes_mask_on_a_4x4_grid():
    # Pixel centres are at 0.125, 0.375, 0.625, 0.875 on both axes.
    boxes = [
        {"class": "violin", "x0": 0.25, "y0": 0.0, "x1": 0.75, "y1": 0.5, "sounding": True},  # cols 1-2, rows 0-1
        (0.8, 0.8, 1.0, 1.0),  # only the centre (0.875, 0.875): pixel (3, 3)
        (0.0, 0.0, 0.1, 0.1),  # contains no centre
    ]
    expected = np.array([
        [0, 1, 1, 0],
        [0, 1, 1, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 1],
    ], dtype=bool)
    mask = boxes_mask(boxes, 4, 4)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, expected)


def test_boxes_mask_non_square_and_closed_edges():
    # Height 2 (centres 0.25, 0.75), width 4: a box from y = 0.25 includes the row whose centre is on its edge.
    mask = boxes_mask([(0.0, 0.25, 0.5, 0.25)], 2, 4)
    np.testing.assert_array_equal(mask, [[1, 1, 0, 0], [0, 0, 0, 0]])
    assert not boxes_mask([], 3, 5).any()


def test_boxes_mask_rejects_swapped_corners():
    with pytest.raises(ValueError):
        boxes_mask([(0.6, 0.0, 0.4, 1.0)], 4, 4)


@pytest.mark.parametrize("shape,size", [((7, 7), 224), ((3, 5), 4), ((14, 14), 8), ((4, 4), 4)])
def test_resize_map_matches_torch_bilinear(shape, size):
    heatmap = np.random.default_rng(1).random(shape)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(heatmap)[None, None], size=(size, size), mode="bilinear", align_corners=False,
    )[0, 0].numpy()
    resized = resize_map(heatmap, size)
    assert resized.shape == (size, size)
    np.testing.assert_allclose(resized, expected, rtol=0, atol=1e-12)


# --- class_maps --------------------------------------------------------------------------------------------------


def test_class_maps_many_to_one_softmax():
    classes = ["cello", "violin", "flute"]
    cluster_classes = ["violin", "cello", "violin", ""]  # two clusters -> violin, one ignored, flute has none
    # Two pixels. Pixel 0: all maps 0, softmax 1/4 each. Pixel 1: cluster 0 at ln(2) / 3, so exp(3 x) = 2
    # against 1 for the others: probabilities 2/5, 1/5, 1/5, 1/5.
    cluster_maps = np.zeros((4, 1, 2))
    cluster_maps[0, 0, 1] = math.log(2) / 3
    maps = class_maps(cluster_maps, cluster_classes, classes)
    assert maps.shape == (3, 1, 2)
    np.testing.assert_allclose(maps[0, 0], [1 / 4, 1 / 5], atol=1e-12)  # cello: cluster 1
    np.testing.assert_allclose(maps[1, 0], [1 / 4 + 1 / 4, 2 / 5 + 1 / 5], atol=1e-12)  # violin: clusters 0 + 2
    np.testing.assert_array_equal(maps[2], 0.0)  # flute: no cluster
    # The "" cluster keeps its share of the softmax: classes sum to 1 minus that share.
    np.testing.assert_allclose(maps.sum(axis=0)[0], [3 / 4, 4 / 5], atol=1e-12)


def test_class_maps_scale_is_three():
    # Two clusters at 0 and 1 at one pixel: softmax of 3 x gives 1 / (1 + e^3) and e^3 / (1 + e^3).
    maps = class_maps(np.array([[[0.0]], [[1.0]]]), ["a", "b"], ["a", "b"])
    assert maps[0, 0, 0] == pytest.approx(1 / (1 + math.e ** 3), rel=1e-12)
    assert maps[1, 0, 0] == pytest.approx(math.e ** 3 / (1 + math.e ** 3), rel=1e-12)


def test_class_maps_of_probability_maps_in_log_space_normalise_across_classes():
    # IEr's maps are probabilities: passed as logs with scale 1, each pixel's map values are divided by their sum.
    probabilities = np.array([[[0.6, 0.1]], [[0.2, 0.1]], [[0.2, 0.0001]]])
    maps = class_maps(np.log(probabilities), ["a", "b", "a"], ["a", "b"], scale=1.0)
    np.testing.assert_allclose(maps[0, 0], [0.8, 0.1001 / 0.2001], rtol=1e-12)
    np.testing.assert_allclose(maps[1, 0], [0.2, 0.1 / 0.2001], rtol=1e-12)
    # softmax(3 x) of the same probabilities would be nearly flat: 0.6 against 0.2 gives only e^1.2 = 3.3x
    flat = class_maps(probabilities, ["a", "b", "c"], ["a", "b", "c"])
    assert flat[0, 0, 0] == pytest.approx(math.exp(1.8) / (math.exp(1.8) + 2 * math.exp(0.6)), rel=1e-12)


def test_class_maps_large_values_do_not_overflow():
    maps = class_maps(np.array([[[1000.0]], [[999.0]]]), ["a", "b"], ["a", "b"])
    assert np.all(np.isfinite(maps))
    assert maps[:, 0, 0].sum() == pytest.approx(1.0)


def test_class_maps_a_term_shared_by_every_cluster_cancels():
    # Without the AII, F^a_k = f^a for every k: the audio-visual logit z^av is one map for all clusters, and the
    # softmax over clusters of z^av + z^v_k equals that of z^v_k alone (docs/decisions.md, the w/o AII row).
    rng = np.random.default_rng(0)
    visual_logits = rng.normal(size=(5, 6, 6))
    shared_audio_logit = rng.normal(scale=3.0, size=(1, 6, 6))
    owners, classes = ["a", "b", "a", "", "c"], ["a", "b", "c"]
    together = class_maps(visual_logits + shared_audio_logit, owners, classes, scale=1.0)
    np.testing.assert_allclose(together, class_maps(visual_logits, owners, classes, scale=1.0), atol=1e-12)
    # A term that differs between clusters does not cancel.
    per_cluster_audio_logit = rng.normal(scale=3.0, size=(5, 6, 6))
    assert not np.allclose(class_maps(visual_logits + per_cluster_audio_logit, owners, classes, scale=1.0), together)


def test_class_maps_rejects_bad_inputs():
    with pytest.raises(ValueError):
        class_maps(np.zeros((3, 2, 2)), ["a", "b"], ["a", "b"])  # 2 names for 3 clusters
    with pytest.raises(ValueError, match="drum"):
        class_maps(np.zeros((2, 2, 2)), ["a", "drum"], ["a", "b"])  # a class that is not in classes
    with pytest.raises(ValueError):
        class_maps(np.zeros((2, 2)), ["a", "b"], ["a", "b"])  # not (K, h, w)


# --- class_aware_iou and non_sounding_area -----------------------------------------------------------------------

LEFT_HALF = {"class": "violin", "x0": 0.0, "y0": 0.0, "x1": 0.5, "y1": 1.0, "sounding": True}


def test_class_aware_iou_one_found_one_missed():
    # A 2 x 2 map hot in its left column, resized to 224: bilinear values fall from 1 to 0 across the middle;
    # above 0.5 x max exactly where the column index < 112, i.e. the left half, which is the box's mask.
    left = np.array([[1.0, 0.0], [1.0, 0.0]])
    maps = {"violin": left, "cello": left[:, ::-1], "flute": left}
    boxes = {"violin": [LEFT_HALF], "cello": [{**LEFT_HALF, "class": "cello"}]}
    assert class_aware_iou(maps, boxes, ["violin"], 0.5) == 1.0
    assert class_aware_iou(maps, boxes, ["cello"], 0.5) == 0.0  # the cello map is on the right
    assert class_aware_iou(maps, boxes, ["violin", "cello"], 0.5) == 0.5
    assert class_aware_iou(maps, boxes, ["violin", "cello", "violin"], 0.5) == 0.5  # a class counts once


def test_class_aware_iou_small_size_and_missing_boxes():
    # size 4 from a 4 x 4 map is the identity; violin's map covers columns 0-1 = its box (x in [0, 0.5]).
    maps = {"violin": columns_mask([0, 1]).astype(float), "flute": np.ones((4, 4))}
    boxes = {"violin": [(0.0, 0.0, 0.5, 1.0)]}
    assert class_aware_iou(maps, boxes, ["violin"], 0.5, size=4) == 1.0
    # flute sounds but has no boxes: empty mask, IoU 0, mean (1 + 0) / 2.
    assert class_aware_iou(maps, boxes, ["violin", "flute"], 0.5, size=4) == 0.5


def test_class_aware_iou_errors():
    maps = {"violin": np.ones((2, 2))}
    with pytest.raises(ValueError):
        class_aware_iou(maps, {}, [], 0.5)
    with pytest.raises(ValueError, match="cello"):
        class_aware_iou(maps, {}, ["cello"], 0.5)


def test_class_aware_iou_from_cluster_maps():
    # End to end: two clusters of violin hot on the left, cello's cluster hot on the right.
    cluster_maps = np.zeros((3, 2, 2))
    cluster_maps[0, :, 0] = cluster_maps[1, :, 0] = 2.0
    cluster_maps[2, :, 1] = 2.0
    classes = ["violin", "cello"]
    maps = dict(zip(classes, class_maps(cluster_maps, ["violin", "violin", "cello"], classes)))
    boxes = {"violin": [LEFT_HALF], "cello": [{**LEFT_HALF, "x0": 0.5, "x1": 1.0}]}
    assert class_aware_iou(maps, boxes, classes, 0.5) == 1.0


def test_non_sounding_area():
    maps = {
        "violin": np.ones((2, 2)),  # sounding: not counted (it would score 0)
        "flute": np.array([[0.1, 0.2], [0.3, 0.9]]),  # 0.1 and 0.2 (inclusive) are quiet: 2 / 4
        "erhu": np.zeros((2, 2)),  # entirely quiet: 1
    }
    assert non_sounding_area(maps, ["violin"], size=2) == pytest.approx(0.75, abs=1e-15)  # (0.5 + 1) / 2
    # The level is absolute, not relative to the max: a tenth of flute's map is quiet everywhere.
    maps["flute"] = maps["flute"] / 10
    assert non_sounding_area(maps, ["violin"], size=2) == 1.0


def test_non_sounding_area_whole_map_at_224():
    maps = {"violin": np.ones((3, 3)), "flute": np.full((3, 3), 0.1), "cello": np.full((3, 3), 0.5)}
    assert non_sounding_area(maps, ["violin"]) == pytest.approx(0.5, abs=1e-15)  # (1 + 0) / 2


def test_non_sounding_area_all_sounding_is_nan_and_unknown_raises():
    maps = {"violin": np.ones((2, 2))}
    assert math.isnan(non_sounding_area(maps, ["violin"]))
    with pytest.raises(ValueError, match="cello"):
        non_sounding_area(maps, ["cello"])
