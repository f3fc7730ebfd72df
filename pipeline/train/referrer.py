"""The Cross-modal Referrer (paper section 3.3, Eqs. 3-6; supplement Eqs. 15-16).

Given the visual embedding f^v of an image, the expanded audio features F^a of its (mixed) sound
and the stage-1 prototypes P^v, P^a:

- visual class maps L^v_k = l(f^v, P^v_k), and class-aware AV maps L^av_k = l(f^v, F^a_k) . L^v_k
  (the silent object filter: a class must be seen where it is heard);
- the visual-guided distribution p^va = softmax_k(GAP(L^av_k)) (Eq. 3);
- the audio-guided distribution: p^a_k = sim(P^a_k, F^a_k), masks m_k = [L^v_k > eps] with eps the
  mean of the class maps over the batch (Eqs. 15-16), p^av_k = GAP(m_k) p^a_k / sum_j GAP(m_j) p^a_j
  (Eq. 4), p^av = softmax(p^av) (Eq. 5) (the off-screen noise filter: a class heard but not seen
  drops out). `seen_mask: class_share` thresholds each position's softmax over the classes instead
  (docs/decisions.md, "Where a class is seen"): the head's visual maps are near 0.94
  everywhere, so Eq. 15's batch mean marks most of every mosaic as seen for every class;
- L_u = 1/2 KL(p^va || p^av) + 1/2 KL(p^av || p^va) (Eq. 6).

Maps are the correspondence head's probability maps, sigmoid(scale . cos + bias), so they lie in
[0, 1] and their product is a soft "and" (two negative cosines would otherwise multiply into a
positive). Both softmaxes divide by `temperature`: GAP values and Eq. 4's shares lie in [0, 1], and
a softmax over K such values is nearly uniform (docs/decisions.md).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from pipeline.models.ier import CorrespondenceHead, localization_map, localization_map_pairs


class ClassMaps(NamedTuple):
    audio_visual: torch.Tensor  # L^av (B, K, h, w): the class-aware maps, the system's output
    visual: torch.Tensor  # L^v (B, K, h, w): where each prototype's object is seen
    audio_visual_logit: torch.Tensor  # L^av on the logit scale (B, K, h, w): what evaluation softmaxes over K
    visual_logit: torch.Tensor  # L^v on the logit scale (B, K, h, w)


def class_aware_maps(head: CorrespondenceHead, visual: torch.Tensor, expanded: torch.Tensor,
                     visual_prototypes: torch.Tensor, silent_filter: bool) -> ClassMaps:
    """L^v_k and L^av_k for every image and pseudo-class.

    visual f^v (B, D, h, w); expanded F^a (B, K, D); visual_prototypes P^v (K, D). With
    `silent_filter` off (the ablation) L^av_k = l(f^v, F^a_k) alone.

    The logit form of L^av_k is the sum of its factors' logits, i.e. the log of the product of their
    odds: the same soft "and" as the product of probabilities, without the saturation of log(sigmoid)
    at the high end, where classes must be told apart (evaluation, docs/decisions.md).
    """
    visual_logits = head.logits(localization_map_pairs(visual, visual_prototypes))  # (B, K, h, w)
    audio_visual_logits = head.logits(localization_map(visual, expanded))  # (B, K, h, w)
    visual_maps, audio_visual = torch.sigmoid(visual_logits), torch.sigmoid(audio_visual_logits)
    if silent_filter:
        audio_visual = audio_visual * visual_maps
        audio_visual_logits = audio_visual_logits + visual_logits
    return ClassMaps(audio_visual, visual_maps, audio_visual_logits, visual_logits)


class Distributions(NamedTuple):
    visual_guided: torch.Tensor  # p^va (B, K), Eq. 3
    audio_guided: torch.Tensor  # p^av (B, K), Eq. 5


def seen_share(maps: ClassMaps, seen_mask: str, class_share: float) -> torch.Tensor:
    """GAP(m_k) (B, K): the share of each image where pseudo-class k is seen (Eqs. 4, 15-16).

    batch_mean: m_k = [L^v_k > eps], eps the mean of the class maps over the batch (the paper's Eq. 15).
    class_share: m_k = [softmax_k(logit L^v)(position) > class_share], the positions where class k takes
    more than `class_share` of the softmax over the classes (the normalisation evaluation's maps use).
    """
    if seen_mask == "batch_mean":
        return (maps.visual > maps.visual.mean()).float().mean(dim=(2, 3))
    if seen_mask == "class_share":
        return (torch.softmax(maps.visual_logit.float(), dim=1) > class_share).float().mean(dim=(2, 3))
    raise ValueError(f"seen_mask must be batch_mean or class_share, got {seen_mask!r}")


def distributions(maps: ClassMaps, audio_probability: torch.Tensor, offscreen_filter: bool,
                  temperature: float, seen_mask: str = "batch_mean", class_share: float = 0.3) -> Distributions:
    """p^va (Eq. 3) and p^av (Eqs. 4-5, 15-16) of a batch.

    audio_probability p^a (B, K): sim(P^a_k, F^a_k), the probability that pseudo-class k is heard.
    With `offscreen_filter` off (the ablation) p^av = softmax(p^a / sum p^a): what is heard counts
    whether or not it is seen. `seen_mask`, `class_share`: how GAP(m_k) is measured (seen_share).
    """
    visual_guided = torch.softmax(maps.audio_visual.mean(dim=(2, 3)) / temperature, dim=1)
    if offscreen_filter:
        weighted = seen_share(maps, seen_mask, class_share) * audio_probability
    else:
        weighted = audio_probability
    shares = weighted / weighted.sum(dim=1, keepdim=True).clamp_min(1e-8)  # Eq. 4
    return Distributions(visual_guided, torch.softmax(shares / temperature, dim=1))  # Eq. 5


def symmetric_kl(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Eq. 6: 1/2 KL(first || second) + 1/2 KL(second || first), both (B, K) distributions; batch mean."""
    log_first = first.clamp_min(1e-8).log()
    log_second = second.clamp_min(1e-8).log()
    forward = (first * (log_first - log_second)).sum(dim=1)
    backward = (second * (log_second - log_first)).sum(dim=1)
    return (0.5 * forward + 0.5 * backward).mean()


def referrer_loss(distribution: Distributions) -> torch.Tensor:
    """L_u (Eq. 6) in float32."""
    with torch.autocast(device_type=distribution.visual_guided.device.type, enabled=False):
        return symmetric_kl(distribution.visual_guided.float(), distribution.audio_guided.float())
