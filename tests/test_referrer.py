"""The Cross-modal Referrer (pipeline/train/referrer.py; paper Eqs. 3-6, supplement Eqs. 15-16).

Small hand-made tensors with expected values worked out by hand in the comments. sigma(x) is the
logistic function 1 / (1 + e^-x).
"""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.models.ier import CorrespondenceHead
from pipeline.train.referrer import (ClassMaps, Distributions, class_aware_maps, distributions, referrer_loss,
                                     seen_share, symmetric_kl)


def sigma(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def maps_tensor(rows: list[list[list[float]]]) -> torch.Tensor:
    """(B, K, w) nested lists -> (B, K, 1, w): one row of positions per class map."""
    return torch.tensor(rows, dtype=torch.float32)[:, :, None, :]


def probability_maps(audio_visual: torch.Tensor, visual: torch.Tensor) -> ClassMaps:
    """ClassMaps from the two probability maps (distributions reads only those; the logit form follows them)."""
    return ClassMaps(audio_visual, visual, torch.logit(audio_visual, eps=1e-6), torch.logit(visual, eps=1e-6))


# --------------------------------------------------------------------------- symmetric_kl (Eq. 6)

# p = [0.5, 0.5], q = [0.9, 0.1]:
#   KL(p||q) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = 0.5 ln(25/9) = ln(5/3)          = 0.510826
#   KL(q||p) = 0.9 ln(0.9/0.5) + 0.1 ln(0.1/0.5) = 0.9 ln 1.8 + 0.1 ln 0.2         = 0.368064
#   1/2 KL(p||q) + 1/2 KL(q||p)                                                     = 0.439445
KL_PQ = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
KL_QP = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
SYMMETRIC = 0.5 * KL_PQ + 0.5 * KL_QP


def test_symmetric_kl_hand_value_for_two_class_distributions():
    assert KL_PQ == pytest.approx(math.log(5 / 3))
    assert SYMMETRIC == pytest.approx(0.439445, abs=1e-6)
    value = symmetric_kl(torch.tensor([[0.5, 0.5]]), torch.tensor([[0.9, 0.1]]))
    assert value.dim() == 0
    assert value.item() == pytest.approx(SYMMETRIC, rel=1e-5)


def test_symmetric_kl_is_zero_for_equal_distributions():
    p = torch.tensor([[0.2, 0.3, 0.5], [1 / 3, 1 / 3, 1 / 3], [0.7, 0.2, 0.1]])
    assert symmetric_kl(p, p.clone()).item() == pytest.approx(0.0, abs=1e-7)


def test_symmetric_kl_is_symmetric_and_non_negative():
    generator = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(4, 5, generator=generator), dim=1)
    q = torch.softmax(torch.randn(4, 5, generator=generator), dim=1)
    forward, backward = symmetric_kl(p, q), symmetric_kl(q, p)
    assert forward.item() == pytest.approx(backward.item(), rel=1e-6)
    assert forward.item() > 0
    # the two-class case the other way round gives the same hand value
    assert symmetric_kl(torch.tensor([[0.9, 0.1]]), torch.tensor([[0.5, 0.5]])).item() == pytest.approx(SYMMETRIC,
                                                                                                         rel=1e-5)


def test_symmetric_kl_is_the_batch_mean():
    # row 1: equal distributions (0); row 2: the hand case (0.439445) -> mean 0.219722, not the sum 0.439445
    first = torch.tensor([[0.3, 0.7], [0.5, 0.5]])
    second = torch.tensor([[0.3, 0.7], [0.9, 0.1]])
    assert symmetric_kl(first, second).item() == pytest.approx(SYMMETRIC / 2, rel=1e-5)
    # and a batch of the same row twice gives the row's value
    assert symmetric_kl(first[1:].repeat(2, 1), second[1:].repeat(2, 1)).item() == pytest.approx(SYMMETRIC, rel=1e-5)


# --------------------------------------------------------------------------- class_aware_maps

# f^v (B=1, D=2, h=1, w=2): position w=0 holds [1, 0], position w=1 holds [0, 1] (unit vectors).
VISUAL = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
# P^v (K=2, D=2): P_0 = [1, 0], P_1 = [0.6, 0.8] (unit).
#   cos(f^v, P_0) = [1, 0]      cos(f^v, P_1) = [0.6, 0.8]
VISUAL_PROTOTYPES = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
# F^a (B=1, K=2, D=2), not unit length (the map normalises): F_0 = [0, 2] -> [0, 1], F_1 = [-3, 0] -> [-1, 0]
#   cos(f^v, F_0) = [0, 1]      cos(f^v, F_1) = [-1, 0]
EXPANDED = torch.tensor([[[0.0, 2.0], [-3.0, 0.0]]])
SCALE = 2.0
# head with scale 2, bias 0: map = sigma(2 cos)
#   L^v_0 = [sigma(2), sigma(0)]        L^v_1 = [sigma(1.2), sigma(1.6)]
#   l(f^v, F_0) = [sigma(0), sigma(2)]  l(f^v, F_1) = [sigma(-2), sigma(0)]
EXPECTED_VISUAL = [[[sigma(2.0), 0.5], [sigma(1.2), sigma(1.6)]]]
EXPECTED_AUDIO_VISUAL = [[[0.5, sigma(2.0)], [sigma(-2.0), 0.5]]]
# with the silent object filter: L^av_k = l(f^v, F_k) * L^v_k
#   L^av_0 = [0.5 sigma(2), 0.5 sigma(2)]   L^av_1 = [sigma(-2) sigma(1.2), 0.5 sigma(1.6)]
EXPECTED_FILTERED = [[[0.5 * sigma(2.0), sigma(2.0) * 0.5], [sigma(-2.0) * sigma(1.2), 0.5 * sigma(1.6)]]]


def test_class_aware_maps_visual_maps_are_the_heads_maps_against_the_prototypes():
    maps = class_aware_maps(CorrespondenceHead(SCALE, 0.0), VISUAL, EXPANDED, VISUAL_PROTOTYPES, silent_filter=True)
    assert isinstance(maps, ClassMaps)
    assert maps.visual.shape == (1, 2, 1, 2)
    torch.testing.assert_close(maps.visual, maps_tensor(EXPECTED_VISUAL))
    # sigma(2) = 0.880797, sigma(1.2) = 0.768525, sigma(1.6) = 0.832018
    assert maps.visual[0, 0, 0, 0].item() == pytest.approx(0.880797, abs=1e-6)


def test_class_aware_maps_silent_filter_multiplies_by_the_visual_map():
    maps = class_aware_maps(CorrespondenceHead(SCALE, 0.0), VISUAL, EXPANDED, VISUAL_PROTOTYPES, silent_filter=True)
    assert maps.audio_visual.shape == (1, 2, 1, 2)
    torch.testing.assert_close(maps.audio_visual, maps_tensor(EXPECTED_FILTERED))
    # 0.5 * 0.880797 = 0.440399; sigma(-2) * sigma(1.2) = 0.119203 * 0.768525 = 0.091610
    assert maps.audio_visual[0, 1, 0, 0].item() == pytest.approx(0.091610, abs=1e-6)


def test_class_aware_maps_without_silent_filter_is_the_audio_map_alone():
    maps = class_aware_maps(CorrespondenceHead(SCALE, 0.0), VISUAL, EXPANDED, VISUAL_PROTOTYPES, silent_filter=False)
    torch.testing.assert_close(maps.audio_visual, maps_tensor(EXPECTED_AUDIO_VISUAL))
    torch.testing.assert_close(maps.visual, maps_tensor(EXPECTED_VISUAL))  # L^v is still returned


def test_class_aware_maps_logit_form_is_the_sum_of_the_factors_logits():
    # logits with scale 2, bias 0: visual 2 cos(f^v, P_k) = [[2, 0], [1.2, 1.6]];
    # audio 2 cos(f^v, F_k) = [[0, 2], [-2, 0]]
    # with the filter: their sum [[2, 2], [-0.8, 1.6]]; without: the audio logits alone
    filtered = class_aware_maps(CorrespondenceHead(SCALE, 0.0), VISUAL, EXPANDED, VISUAL_PROTOTYPES, silent_filter=True)
    torch.testing.assert_close(filtered.audio_visual_logit, maps_tensor([[[2.0, 2.0], [-0.8, 1.6]]]))
    alone = class_aware_maps(CorrespondenceHead(SCALE, 0.0), VISUAL, EXPANDED, VISUAL_PROTOTYPES, silent_filter=False)
    torch.testing.assert_close(alone.audio_visual_logit, maps_tensor([[[0.0, 2.0], [-2.0, 0.0]]]))
    # the logit is log(odds product): exp(logit) = prod of p / (1 - p) over the factors
    odds = EXPECTED_FILTERED[0][1][0] / (1 - sigma(-2.0)) / (1 - sigma(1.2))
    assert math.exp(filtered.audio_visual_logit[0, 1, 0, 0].item()) == pytest.approx(odds, rel=1e-5)
    # a softmax over the classes of the logit form tells apart maps whose probabilities are both near 1
    near_one = class_aware_maps(CorrespondenceHead(20.0, 0.0), VISUAL, EXPANDED, VISUAL_PROTOTYPES, silent_filter=False)
    assert near_one.audio_visual[0, 0, 0, 1].item() > 0.999999  # sigma(20): the probability saturates
    shares = torch.softmax(near_one.audio_visual_logit[0, :, 0, 1], dim=0)
    assert shares[0].item() == pytest.approx(1 / (1 + math.exp(-20.0)), rel=1e-6)  # logits 20 vs 0


def test_class_aware_maps_pairs_each_image_with_its_own_expanded_features_and_shared_prototypes():
    # two copies of the same image; image 2's F^a has its two vectors swapped.
    visual = VISUAL.repeat(2, 1, 1, 1)
    expanded = torch.cat([EXPANDED, EXPANDED.flip(1)])
    maps = class_aware_maps(CorrespondenceHead(SCALE, 0.0), visual, expanded, VISUAL_PROTOTYPES, silent_filter=False)
    # L^v is the same for both images (the prototypes are shared)
    torch.testing.assert_close(maps.visual[1], maps.visual[0])
    # image 2's class-0 map is l(f^v, F_1) = [sigma(-2), 0.5] and class-1 map is l(f^v, F_0) = [0.5, sigma(2)]
    torch.testing.assert_close(maps.audio_visual[1], maps_tensor(EXPECTED_AUDIO_VISUAL)[0].flip(0))
    assert maps.audio_visual[1, 0, 0, 0].item() == pytest.approx(sigma(-2.0), abs=1e-6)


def test_class_aware_maps_bias_enters_the_sigmoid():
    # scale 2, bias -1: L^v_0 at w=0 = sigma(2 * 1 - 1) = sigma(1), at w=1 = sigma(-1)
    maps = class_aware_maps(CorrespondenceHead(SCALE, -1.0), VISUAL, EXPANDED, VISUAL_PROTOTYPES, silent_filter=True)
    assert maps.visual[0, 0, 0].tolist() == pytest.approx([sigma(1.0), sigma(-1.0)], abs=1e-6)
    # L^av_0 at w=1 = sigma(2 * 1 - 1) * sigma(-1) = sigma(1) sigma(-1) = 0.731059 * 0.268941 = 0.196612
    assert maps.audio_visual[0, 0, 0, 1].item() == pytest.approx(sigma(1.0) * sigma(-1.0), abs=1e-6)


# --------------------------------------------------------------------------- distributions (Eqs. 3-5, 15-16)

def test_visual_guided_distribution_is_softmax_of_gap_over_temperature():
    # L^av_0 = [0.2, 0.4] -> GAP 0.3;  L^av_1 = [0.6, 1.0] -> GAP 0.8
    # temperature 0.5: logits [0.6, 1.6] -> p^va = [1 / (1 + e), e / (1 + e)] = [0.268941, 0.731059]
    audio_visual = maps_tensor([[[0.2, 0.4], [0.6, 1.0]]])
    maps = probability_maps(audio_visual, torch.full_like(audio_visual, 0.5))
    result = distributions(maps, torch.tensor([[0.5, 0.5]]), offscreen_filter=True, temperature=0.5)
    assert isinstance(result, Distributions)
    expected = [1 / (1 + math.e), math.e / (1 + math.e)]
    assert result.visual_guided[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert expected[0] == pytest.approx(0.268941, abs=1e-6)
    # temperature 1: logits [0.3, 0.8] -> [sigma(-0.5), sigma(0.5)] = [0.377541, 0.622459]
    result = distributions(maps, torch.tensor([[0.5, 0.5]]), offscreen_filter=True, temperature=1.0)
    assert result.visual_guided[0].tolist() == pytest.approx([sigma(-0.5), sigma(0.5)], abs=1e-6)


def test_visual_guided_distribution_does_not_depend_on_the_visual_maps_or_the_audio():
    audio_visual = maps_tensor([[[0.2, 0.4], [0.6, 1.0]]])
    one = distributions(probability_maps(audio_visual, torch.zeros_like(audio_visual)), torch.tensor([[0.9, 0.1]]),
                        offscreen_filter=True, temperature=0.5)
    two = distributions(probability_maps(audio_visual, maps_tensor([[[0.9, 0.0], [0.1, 0.7]]])),
                        torch.tensor([[0.1, 0.9]]), offscreen_filter=False, temperature=0.5)
    torch.testing.assert_close(one.visual_guided, two.visual_guided)


# Off-screen case: B=1, K=3, h=1, w=2.
#   L^v_0 = [0.9, 0.1], L^v_1 = [0.8, 0.7], L^v_2 = [0.1, 0.2]  (class 2 is nowhere to be seen)
#   eps = mean of all six values = 2.8 / 6 = 0.4667
#   m_0 = [1, 0] -> GAP 0.5;  m_1 = [1, 1] -> GAP 1.0;  m_2 = [0, 0] -> GAP 0
#   p^a = [0.5, 0.2, 0.99]: class 2 is heard loudest (an off-screen sound)
#   Eq. 4: GAP(m) * p^a = [0.25, 0.2, 0] / 0.45 = [5/9, 4/9, 0]
#   Eq. 5 at temperature 0.5: softmax([10/9, 8/9, 0])
OFFSCREEN_VISUAL = maps_tensor([[[0.9, 0.1], [0.8, 0.7], [0.1, 0.2]]])
OFFSCREEN_HEARD = torch.tensor([[0.5, 0.2, 0.99]])
OFFSCREEN_AV = maps_tensor([[[0.3, 0.1], [0.5, 0.6], [0.05, 0.1]]])


def test_offscreen_filter_drops_a_class_heard_but_not_seen():
    maps = probability_maps(OFFSCREEN_AV, OFFSCREEN_VISUAL)
    result = distributions(maps, OFFSCREEN_HEARD, offscreen_filter=True, temperature=0.5)
    expected = softmax([(5 / 9) / 0.5, (4 / 9) / 0.5, 0.0])
    assert result.audio_guided[0].tolist() == pytest.approx(expected, abs=1e-6)
    # class 2 is the most probable by p^a, yet the least probable by p^av
    assert OFFSCREEN_HEARD[0].argmax().item() == 2
    assert result.audio_guided[0].argmin().item() == 2
    assert result.audio_guided[0, 2].item() < result.audio_guided[0, 1].item() < result.audio_guided[0, 0].item()


def test_without_offscreen_filter_an_unseen_class_keeps_its_audio_share():
    # p^a / sum p^a = [0.5, 0.2, 0.99] / 1.69, then softmax of that / 0.5
    maps = probability_maps(OFFSCREEN_AV, OFFSCREEN_VISUAL)
    result = distributions(maps, OFFSCREEN_HEARD, offscreen_filter=False, temperature=0.5)
    expected = softmax([0.5 / 1.69 / 0.5, 0.2 / 1.69 / 0.5, 0.99 / 1.69 / 0.5])
    assert result.audio_guided[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert result.audio_guided[0].argmax().item() == 2
    # and the visual maps do not matter then
    other = distributions(probability_maps(OFFSCREEN_AV, torch.zeros_like(OFFSCREEN_VISUAL)), OFFSCREEN_HEARD,
                          offscreen_filter=False, temperature=0.5)
    torch.testing.assert_close(other.audio_guided, result.audio_guided)


def test_offscreen_threshold_is_the_mean_over_the_whole_batch_not_per_image():
    # B=2, K=2, w=2.
    #   image 0: L^v_0 = [0.9, 0.9], L^v_1 = [0.9, 0.1];  image 1: L^v_0 = [0.3, 0.4], L^v_1 = [0.2, 0.1]
    #   eps = (0.9 + 0.9 + 0.9 + 0.1 + 0.3 + 0.4 + 0.2 + 0.1) / 8 = 3.8 / 8 = 0.475
    #   image 0: GAP(m) = [1, 0.5]; p^a = [0.6, 0.3] -> [0.6, 0.15] / 0.75 = [0.8, 0.2]
    #            temperature 1: softmax([0.8, 0.2]) = [sigma(0.6), sigma(-0.6)] = [0.645656, 0.354344]
    #   image 1: every map below eps -> GAP(m) = [0, 0] -> shares [0, 0] -> p^av uniform [0.5, 0.5]
    #            (a per-image eps of 0.25 would see class 0 and give softmax([1, 0]) instead)
    visual = maps_tensor([[[0.9, 0.9], [0.9, 0.1]], [[0.3, 0.4], [0.2, 0.1]]])
    heard = torch.tensor([[0.6, 0.3], [0.9, 0.1]])
    result = distributions(probability_maps(visual.clone(), visual), heard, offscreen_filter=True, temperature=1.0)
    assert result.audio_guided[0].tolist() == pytest.approx([sigma(0.6), sigma(-0.6)], abs=1e-6)
    assert result.audio_guided[1].tolist() == pytest.approx([0.5, 0.5], abs=1e-6)
    assert torch.isfinite(result.audio_guided).all()


def test_offscreen_mask_is_strictly_above_eps():
    # all maps equal 0.5: eps = 0.5 and no position is > eps -> every share 0 -> uniform p^av,
    # although p^a strongly prefers class 0
    visual = torch.full((1, 3, 1, 2), 0.5)
    result = distributions(probability_maps(visual.clone(), visual), torch.tensor([[0.95, 0.02, 0.03]]),
                           offscreen_filter=True, temperature=0.1)
    assert result.audio_guided[0].tolist() == pytest.approx([1 / 3] * 3, abs=1e-6)


@pytest.mark.parametrize("offscreen_filter", [True, False])
def test_distributions_rows_sum_to_one(offscreen_filter):
    generator = torch.Generator().manual_seed(3)
    audio_visual = torch.rand(4, 5, 3, 3, generator=generator)
    visual = torch.rand(4, 5, 3, 3, generator=generator)
    heard = torch.rand(4, 5, generator=generator)
    result = distributions(probability_maps(audio_visual, visual), heard, offscreen_filter, temperature=0.1)
    for distribution in result:
        assert distribution.shape == (4, 5)
        assert (distribution >= 0).all()
        torch.testing.assert_close(distribution.sum(dim=1), torch.ones(4))


# --------------------------------------------------------------------------- referrer_loss (Eq. 6)

def test_referrer_loss_is_the_symmetric_kl_of_the_two_distributions():
    loss = referrer_loss(Distributions(torch.tensor([[0.5, 0.5]]), torch.tensor([[0.9, 0.1]])))
    assert loss.item() == pytest.approx(SYMMETRIC, rel=1e-5)  # 0.439445
    generator = torch.Generator().manual_seed(1)
    va = torch.softmax(torch.randn(3, 4, generator=generator), dim=1)
    av = torch.softmax(torch.randn(3, 4, generator=generator), dim=1)
    assert referrer_loss(Distributions(va, av)).item() == pytest.approx(symmetric_kl(va, av).item(), rel=1e-6)


def test_referrer_loss_is_float32_for_bfloat16_inputs():
    loss = referrer_loss(Distributions(torch.tensor([[0.5, 0.5]], dtype=torch.bfloat16),
                                       torch.tensor([[0.875, 0.125]], dtype=torch.bfloat16)))
    assert loss.dtype == torch.float32
    # bf16 holds 0.5 and 0.875 / 0.125 exactly:
    #   1/2 [0.5 ln(0.5/0.875) + 0.5 ln(0.5/0.125)] + 1/2 [0.875 ln(1.75) + 0.125 ln(0.25)]
    expected = 0.5 * (0.5 * math.log(0.5 / 0.875) + 0.5 * math.log(4.0)) \
        + 0.5 * (0.875 * math.log(1.75) + 0.125 * math.log(0.25))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def _loss_from_head(scale: float, heard: torch.Tensor,
                    offscreen_filter: bool) -> tuple[torch.Tensor, CorrespondenceHead]:
    head = CorrespondenceHead(scale, 0.0)
    maps = class_aware_maps(head, VISUAL, EXPANDED, VISUAL_PROTOTYPES, silent_filter=True)
    return referrer_loss(distributions(maps, heard, offscreen_filter, temperature=0.1)), head


@pytest.mark.parametrize("offscreen_filter", [True, False])
def test_referrer_loss_gradient_reaches_the_head_scale(offscreen_filter):
    # (p^av is the teacher, stage 2 freezes the audio side: whether p^a gets a gradient is not asserted)
    heard = torch.tensor([[0.3, 0.8]])
    loss, head = _loss_from_head(SCALE, heard, offscreen_filter)
    assert loss.item() > 0
    loss.backward()
    assert head.scale.grad is not None and head.scale.grad.abs().item() > 1e-6
    assert head.bias.grad is not None and head.bias.grad.abs().item() > 1e-6


def test_referrer_loss_gradient_on_the_scale_matches_finite_differences():
    # offscreen filter off so the hard masks cannot flip between the two evaluations
    heard = torch.tensor([[0.3, 0.8]])
    loss, head = _loss_from_head(SCALE, heard, offscreen_filter=False)
    loss.backward()
    step = 1e-2
    with torch.no_grad():
        upper = _loss_from_head(SCALE + step, heard, offscreen_filter=False)[0].item()
        lower = _loss_from_head(SCALE - step, heard, offscreen_filter=False)[0].item()
    numeric = (upper - lower) / (2 * step)
    assert abs(numeric) > 1e-4
    assert head.scale.grad.item() == pytest.approx(numeric, rel=2e-2)


# Class-share mask: B=1, K=3, w=2; the visual logits near saturation (every sigmoid above 0.98), as the
# trained head's visual maps are.
#   position 0: logits [6, 6, 4] -> softmax [e^2, e^2, 1] / (2 e^2 + 1) = [0.4683, 0.4683, 0.0634]
#   position 1: logits [4, 4, 4] -> softmax [1/3, 1/3, 1/3]
#   class_share 0.4: m = [1, 0], [1, 0], [0, 0] -> GAP [0.5, 0.5, 0]
#   class_share 0.3: m = [1, 1], [1, 1], [0, 1] -> GAP [1, 1, 0.5]
SATURATED_LOGITS = maps_tensor([[[6.0, 4.0], [6.0, 4.0], [4.0, 4.0]]])


def saturated_maps() -> ClassMaps:
    visual = torch.sigmoid(SATURATED_LOGITS)
    return ClassMaps(visual.clone(), visual, SATURATED_LOGITS.clone(), SATURATED_LOGITS)


def test_class_share_mask_counts_the_positions_where_a_class_takes_that_share_of_the_softmax():
    maps = saturated_maps()
    assert seen_share(maps, "class_share", 0.4)[0].tolist() == pytest.approx([0.5, 0.5, 0.0])
    assert seen_share(maps, "class_share", 0.3)[0].tolist() == pytest.approx([1.0, 1.0, 0.5])
    # the same maps through Eq. 15's batch mean: eps = (2 s(6) + 4 s(4)) / 6, between s(4) and s(6)
    assert seen_share(maps, "batch_mean", 0.0)[0].tolist() == pytest.approx([0.5, 0.5, 0.0])


def test_class_share_mask_drops_an_unseen_class_from_the_audio_guided_distribution():
    # p^a = [0.5, 0.2, 0.99]; class_share 0.4: GAP(m) p^a = [0.25, 0.1, 0] / 0.35 = [5/7, 2/7, 0]
    result = distributions(saturated_maps(), OFFSCREEN_HEARD, offscreen_filter=True, temperature=0.5,
                           seen_mask="class_share", class_share=0.4)
    expected = softmax([(5 / 7) / 0.5, (2 / 7) / 0.5, 0.0])
    assert result.audio_guided[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_class_share_mask_ignores_a_shift_of_every_logit_at_a_position():
    # the softmax over classes does not move when a position's logits all rise: only which class wins counts
    shifted = SATURATED_LOGITS + torch.tensor([3.0, -2.0]).view(1, 1, 1, 2)
    maps = ClassMaps(torch.sigmoid(shifted), torch.sigmoid(shifted), shifted, shifted)
    torch.testing.assert_close(seen_share(maps, "class_share", 0.4), seen_share(saturated_maps(), "class_share", 0.4))
    # Eq. 15's batch mean does move: logits [9, 9, 7] and [2, 2, 2] put eps = 0.940 between s(2) and s(7), so class 2,
    # which wins no position, now counts as seen at position 0, where every logit is high
    assert seen_share(maps, "batch_mean", 0.0)[0].tolist() == pytest.approx([0.5, 0.5, 0.5])


def test_unknown_seen_mask_is_an_error():
    with pytest.raises(ValueError, match="seen_mask"):
        seen_share(saturated_maps(), "area", 0.3)
