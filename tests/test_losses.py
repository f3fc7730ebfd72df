"""Stage-1 losses against values worked by hand (paper Eq. 1, Eq. 2 / supplement Eq. 10, Eq. 8)."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.models.ier import prototype_similarity
from pipeline.train.losses import (aii_loss, correspondence_loss, mixture_loss, multi_hot, pseudo_class_loss,
                                   sibling_prototypes, single_source_loss, single_step_loss)

LN = math.log


def test_correspondence_loss_eq1():
    # Positive 0.8 vs target 1: -ln 0.8; negative 0.3 vs target 0: -ln(1 - 0.3) = -ln 0.7; mean of both.
    loss = correspondence_loss(torch.tensor([0.8]), torch.tensor([0.3]))
    assert math.isclose(loss.item(), (-LN(0.8) - LN(0.7)) / 2, rel_tol=1e-6)  # 0.28991
    # Two negatives per positive: positives and negatives weigh half each, not a third each.
    loss = correspondence_loss(torch.tensor([0.9]), torch.tensor([[0.2, 0.4]]))
    assert math.isclose(loss.item(), -LN(0.9) / 2 + (-LN(0.8) - LN(0.6)) / 4, rel_tol=1e-6)  # 0.2328


def test_single_source_loss_eq8_is_the_mean_over_prototypes():
    # K = 3, label 0: targets (1, 0, 0): -ln 0.8, -ln(1 - 0.1), -ln(1 - 0.4), averaged over n.
    probabilities = torch.tensor([[0.8, 0.1, 0.4]])
    loss = single_source_loss(probabilities, torch.tensor([0]))
    assert math.isclose(loss.item(), (-LN(0.8) - LN(0.9) - LN(0.6)) / 3, rel_tol=1e-6)  # 0.27978
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\]"):
        single_source_loss(probabilities, torch.tensor([3]))


def test_mixture_loss_eq10_uses_multi_hot_targets():
    probabilities = torch.tensor([[0.8, 0.1, 0.4],
                                  [0.5, 0.9, 0.2]])
    member_labels = torch.tensor([[0, 2],    # targets (1, 0, 1)
                                  [1, -1]])  # one member, padded: targets (0, 1, 0)
    expected = (-LN(0.8) - LN(0.9) - LN(0.4)    # row 1: 0.22314 + 0.10536 + 0.91629
                - LN(0.5) - LN(0.9) - LN(0.8)) / 6  # row 2: 0.69315 + 0.10536 + 0.22314
    assert math.isclose(mixture_loss(probabilities, member_labels).item(), expected, rel_tol=1e-6)


def test_multi_hot_sums_one_hots_and_clips_at_one():
    targets = multi_hot(torch.tensor([[2, 2, -1], [0, 1, 3], [-1, -1, 0]]), num_prototypes=4)
    assert targets.tolist() == [[0, 0, 1, 0], [1, 1, 0, 1], [1, 0, 0, 0]]


def test_mixture_loss_of_single_members_equals_single_source_loss():
    probabilities = torch.tensor([[0.7, 0.2], [0.3, 0.6]])
    labels = torch.tensor([0, 1])
    padded = torch.tensor([[0, -1], [-1, 1]])
    assert torch.allclose(mixture_loss(probabilities, padded), single_source_loss(probabilities, labels))


def test_sibling_prototypes_marks_near_duplicates_of_members_only():
    # P^a_0 and P^a_1 sound the same (cos 0.95), P^a_2 and P^a_3 are apart from them and from each other.
    cosines = torch.tensor([[1.0, 0.95, 0.1, 0.0],
                            [0.95, 1.0, 0.2, 0.0],
                            [0.1, 0.2, 1.0, 0.3],
                            [0.0, 0.0, 0.3, 1.0]])
    labels = torch.tensor([[0, -1],   # clip of 0: its sibling 1 is left out
                           [0, 1],    # both siblings are members: nothing to leave out
                           [2, 3],    # no near duplicate
                           [1, 2]])   # 0 is the sibling of member 1
    assert sibling_prototypes(labels, cosines, 0.9).tolist() == [[False, True, False, False],
                                                                  [False, False, False, False],
                                                                  [False, False, False, False],
                                                                  [True, False, False, False]]
    # 1.0 keeps every target (cosines never exceed it), 0.25 also reaches the pair (2, 3).
    assert not sibling_prototypes(labels, cosines, 1.0).any()
    assert sibling_prototypes(labels, cosines, 0.25)[2].tolist() == [False, False, False, False]
    assert sibling_prototypes(torch.tensor([[2, -1]]), cosines, 0.25).tolist() == [[False, False, False, True]]


def test_mixture_loss_leaves_ignored_terms_out_of_the_mean():
    probabilities = torch.tensor([[0.8, 0.7, 0.4],
                                  [0.5, 0.9, 0.2]])
    member_labels = torch.tensor([[0, -1],   # targets (1, 0, 0), the 0.7 of prototype 1 ignored
                                  [1, -1]])  # targets (0, 1, 0)
    ignore = torch.tensor([[False, True, False], [False, False, False]])
    expected = (-LN(0.8) - LN(0.6)                   # row 1 without its ignored term
                - LN(0.5) - LN(0.9) - LN(0.8)) / 5  # row 2
    assert math.isclose(mixture_loss(probabilities, member_labels, ignore).item(), expected, rel_tol=1e-6)
    assert torch.equal(mixture_loss(probabilities, member_labels, torch.zeros(2, 3, dtype=torch.bool)),
                       mixture_loss(probabilities, member_labels))
    with pytest.raises(ValueError, match="ignore must have shape"):
        mixture_loss(probabilities, member_labels, ignore[:1])


def test_empty_rows_target_every_prototype_zero():
    # Inputs in which nothing sounds: the last rows, all -1, every target 0; only there may a row be empty.
    probabilities = torch.tensor([[0.8, 0.3],
                                  [0.1, 0.6]])
    member_labels = torch.tensor([[0], [-1]])
    expected = (-LN(0.8) - LN(0.7) - LN(0.9) - LN(0.4)) / 4
    assert math.isclose(mixture_loss(probabilities, member_labels, empty_rows=1).item(), expected, rel_tol=1e-6)
    with pytest.raises(ValueError, match="at least one member"):
        mixture_loss(probabilities, torch.tensor([[-1], [0]]), empty_rows=1)
    with pytest.raises(ValueError, match="empty rows must have no member"):
        mixture_loss(probabilities, torch.tensor([[0], [1]]), empty_rows=1)


def test_aii_loss_gives_no_source_inputs_zero_targets_on_f_a_and_on_F_a():
    # aii_loss with no-source inputs = the BCE of its singles and mixtures plus all-zero targets on both the
    # no-source f^a (as Eq. 8) and their F^a (as Eq. 10), one mean over every term.
    torch.manual_seed(0)
    prototypes = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    single_audio, quiet_audio = torch.randn(2, 8), torch.randn(1, 8)
    expanded = torch.randn(2, 3, 8)  # one mixture's F^a, then the no-source input's F^a
    labels = torch.tensor([[0, -1], [1, -1], [0, 2]])  # two singles, one mixture
    loss = aii_loss(prototypes, single_audio, expanded, labels, 0.1, 0.5, torch.eye(3), 1.0, quiet_audio)
    similarity = torch.cat([prototype_similarity(prototypes, single_audio, 0.1, 0.5),
                            prototype_similarity(prototypes, expanded[:1], 0.1, 0.5),
                            prototype_similarity(prototypes, quiet_audio, 0.1, 0.5),
                            prototype_similarity(prototypes, expanded[1:], 0.1, 0.5)])
    targets = torch.tensor([[1., 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 0], [0, 0, 0]])
    torch.testing.assert_close(loss, torch.nn.functional.binary_cross_entropy(similarity, targets))


def test_single_step_loss_is_the_mean_squared_step():
    audio = torch.nn.functional.normalize(torch.randn(2, 4), dim=1)
    steps = torch.zeros(2, 3, 4)
    steps[0, 1, 2] = 2.0  # one step of length 2 among 6
    assert math.isclose(single_step_loss(audio[:, None] + steps, audio).item(), 4.0 / 6, rel_tol=1e-5)


def test_mixture_loss_rejects_bad_labels():
    probabilities = torch.full((2, 3), 0.5)
    with pytest.raises(ValueError, match="at least one member"):
        mixture_loss(probabilities, torch.tensor([[0, 1], [-1, -1]]))
    with pytest.raises(ValueError, match=r"must lie in \[-1, 2\]"):
        mixture_loss(probabilities, torch.tensor([[0, 3], [1, -1]]))
    with pytest.raises(ValueError, match="member_labels must have shape"):
        mixture_loss(probabilities, torch.tensor([0, 1]))


def test_saturated_probabilities_give_finite_loss_and_gradient():
    # torch clamps the log at -100: a sure-wrong answer costs 100, not inf, and the gradient stays finite.
    probabilities = torch.tensor([[0.0, 1.0]], requires_grad=True)
    loss = single_source_loss(probabilities, torch.tensor([0]))
    loss.backward()
    assert math.isclose(loss.item(), (100 + 100) / 2)
    assert torch.isfinite(probabilities.grad).all()


def test_losses_accept_bf16_inputs_under_autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        positive = torch.tensor([0.75], dtype=torch.bfloat16)
        negative = torch.tensor([0.25], dtype=torch.bfloat16)
        loss = correspondence_loss(positive, negative)
    assert loss.dtype == torch.float32
    assert math.isclose(loss.item(), -LN(0.75), rel_tol=1e-6)  # 0.75 and 0.25 are exact in bf16


def test_pseudo_class_loss_is_cross_entropy_over_cosines_to_the_centroids():
    # f = (1, 0); P_0 = (2, 0) (cos 1), P_1 = (0, 3) (cos 0); tau 0.5: logits (2, 0).
    # label 0: -ln(e^2 / (e^2 + 1)) = ln(1 + e^-2) = 0.12693; label 1: ln(1 + e^2) = 2.12693.
    features = torch.tensor([[1.0, 0.0], [4.0, 0.0]])  # the second row is the first scaled: the cosine ignores length
    prototypes = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    loss = pseudo_class_loss(features, prototypes, torch.tensor([0, 1]), temperature=0.5)
    assert math.isclose(loss.item(), (LN(1 + math.exp(-2)) + LN(1 + math.exp(2))) / 2, rel_tol=1e-6)  # 1.12693
    assert math.isclose(pseudo_class_loss(features[:1], prototypes, torch.tensor([0]), 0.5).item(),
                        LN(1 + math.exp(-2)), rel_tol=1e-6)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        pseudo_class_loss(features, prototypes, torch.tensor([0, 2]), 0.5)
    with pytest.raises(ValueError, match="temperature"):
        pseudo_class_loss(features, prototypes, torch.tensor([0, 1]), 0.0)
