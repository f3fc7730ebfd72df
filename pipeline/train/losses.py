"""Stage-1 losses (paper Eqs. 1 and 2; supplement Eqs. 8 and 10) and the terms a stage-1 step adds up.

Every function takes probabilities (the outputs of `CorrespondenceHead` or `prototype_similarity`)
and returns a scalar float32 mean. The BCE runs in float32 with autocast off: under CUDA autocast
torch refuses `binary_cross_entropy` on autocast inputs, and torch's BCE clamps its logarithms at
-100 with a gradient that stays finite at probabilities of exactly 0 or 1 (a hand-written
-y log p would give NaN gradients there).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.models.ier import CorrespondenceHead, localization_map, localization_map_pairs, prototype_similarity


def _bce(probabilities: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary cross-entropy, float32, autocast off; with `keep` (bool, same shape), the mean over the kept
    entries only."""
    with torch.autocast(device_type=probabilities.device.type, enabled=False):
        if keep is None:
            return F.binary_cross_entropy(probabilities.float(), targets.float())
        losses = F.binary_cross_entropy(probabilities.float(), targets.float(), reduction="none")
        return (losses * keep).sum() / keep.sum().clamp_min(1)


def correspondence_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Eq. 1: BCE of the correspondence score, target 1 for an image with its own clip's audio,
    0 for an image with the audio of another video.

    positive, negative: probabilities of any shapes (the sampler decides how many negatives each
    positive gets; DSOL uses one). Positives and negatives weigh half each: the mean BCE of the
    positives plus that of the negatives, halved. With one negative per positive this is the plain
    mean over all pairs (the paper's 1:1 sampling); with every other video's audio as negatives
    (B - 1 per positive) a plain mean would let "no match anywhere" win (docs/decisions.md).
    """
    ones = torch.ones(positive.numel(), device=positive.device)
    zeros = torch.zeros(negative.numel(), device=negative.device)
    return 0.5 * _bce(positive.reshape(-1), ones) + 0.5 * _bce(negative.reshape(-1), zeros)


def _check_labels(labels: torch.Tensor, num_prototypes: int, allow_padding: bool) -> None:
    low = -1 if allow_padding else 0
    if labels.numel() and (labels.min() < low or labels.max() >= num_prototypes):
        raise ValueError(f"pseudo-class labels must lie in [{low}, {num_prototypes - 1}], "
                         f"got [{int(labels.min())}, {int(labels.max())}]")


def single_source_loss(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Supplement Eq. 8: mean over n = 1..K of BCE(sim(P^a_n, f^a), Y^n), Y the one-hot pseudo-class.

    probabilities (B, K) from `prototype_similarity`; labels (B,) pseudo-class ids in [0, K).
    Averaged over the K prototypes and the batch.
    """
    batch, num_prototypes = probabilities.shape
    if labels.shape != (batch,):
        raise ValueError(f"labels must have shape ({batch},), got {tuple(labels.shape)}")
    _check_labels(labels, num_prototypes, allow_padding=False)
    targets = F.one_hot(labels.long(), num_prototypes)
    return _bce(probabilities, targets)


def multi_hot(member_labels: torch.Tensor, num_prototypes: int) -> torch.Tensor:
    """Y (B, K) of Eqs. 2 / 10: the sum of the members' one-hot labels, clipped to 1; -1 pads rows."""
    _check_labels(member_labels, num_prototypes, allow_padding=True)
    present = (member_labels >= 0).float()  # padding adds 0 (at column 0, harmlessly)
    targets = torch.zeros(member_labels.shape[0], num_prototypes, device=member_labels.device)
    targets.scatter_add_(1, member_labels.long().clamp(min=0), present)
    return targets.clamp(max=1.0)


def mixture_loss(probabilities: torch.Tensor, member_labels: torch.Tensor,
                 ignore: torch.Tensor | None = None, empty_rows: int = 0) -> torch.Tensor:
    """Eq. 2 / supplement Eq. 10: mean over n of BCE(sim(P^a_n, F^a_n), Y^n) on mixtures,
    Y the multi-hot label of the mixture members (sum of their one-hots, clipped to 1).

    probabilities (B, K) from `prototype_similarity` on the expanded features F^a; member_labels
    (B, M) pseudo-class ids of each mixture's members, -1 where a mixture has fewer than M members.
    A row with one member and padding is a single-source sample (this is then Eq. 8), so a batch
    that holds both single clips and mixtures takes one call. `ignore` (B, K) bool leaves those
    terms out of the mean (`sibling_prototypes`). The last `empty_rows` rows are inputs in which nothing
    sounds: all -1, every target 0; elsewhere a row of all -1 is an error.
    """
    batch, num_prototypes = probabilities.shape
    if member_labels.dim() != 2 or member_labels.shape[0] != batch:
        raise ValueError(f"member_labels must have shape ({batch}, M), got {tuple(member_labels.shape)}")
    if not 0 <= empty_rows <= batch:
        raise ValueError(f"empty_rows must lie in [0, {batch}], got {empty_rows}")
    if (member_labels[:batch - empty_rows].max(dim=1).values < 0).any():
        raise ValueError("every mixture needs at least one member label (a row is all -1)")
    if (member_labels[batch - empty_rows:] >= 0).any():
        raise ValueError("the empty rows must have no member label (all -1)")
    targets = multi_hot(member_labels, num_prototypes)
    if ignore is None:
        return _bce(probabilities, targets)
    if ignore.shape != probabilities.shape:
        raise ValueError(f"ignore must have shape {tuple(probabilities.shape)}, got {tuple(ignore.shape)}")
    return _bce(probabilities, targets, keep=(~ignore).float())


def sibling_prototypes(member_labels: torch.Tensor, prototype_cosines: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, K) bool: the prototypes that are not among a row's members but whose P^a has a cosine above
    `threshold` with a member's P^a. K > the true classes splits a class into several visual clusters with
    the same sound (toy music: cosines 0.93-1.0 between such siblings, 0.23 on average between others); a
    label of 1 for one sibling and 0 for the other asks the audio for a distinction it cannot hear, and
    the loss then settles on the sibling's share, which for a class split in three or four stays below
    0.5 everywhere (docs/decisions.md, "Sibling prototypes"). Only the audio prototypes decide; no label.

    member_labels (B, M) as in `mixture_loss`; prototype_cosines (K, K) cos(P^a_i, P^a_j).
    """
    num_prototypes = prototype_cosines.shape[0]
    _check_labels(member_labels, num_prototypes, allow_padding=True)
    present = member_labels >= 0
    near = prototype_cosines[member_labels.clamp(min=0)] > threshold  # (B, M, K)
    near = (near & present[..., None]).any(dim=1)
    return near & (multi_hot(member_labels, num_prototypes) == 0)


def pseudo_class_loss(features: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """DSOL's classification task on the pseudo-classes: cross-entropy of softmax_k(cos(x, P_k) / tau) with
    each clip's cluster as its class (a classifier whose weights are the k-means centroids).

    features (B, D) (pooled object features f^v, or f^a); prototypes (K, D) (P^v, or the mean f^a per
    cluster); labels (B,) pseudo-class ids in [0, K). Float32, autocast off; mean over the batch.
    """
    batch, num_prototypes = features.shape[0], prototypes.shape[0]
    if labels.shape != (batch,):
        raise ValueError(f"labels must have shape ({batch},), got {tuple(labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    _check_labels(labels, num_prototypes, allow_padding=False)
    with torch.autocast(device_type=features.device.type, enabled=False):
        cosine = F.normalize(features.float(), dim=1) @ F.normalize(prototypes.float(), dim=1).T
        return F.cross_entropy(cosine / temperature, labels.long())


# --------------------------------------------------------------------------- the terms of a stage-1 step


def av_loss(head: CorrespondenceHead, visual: torch.Tensor, audio: torch.Tensor, video_ids: list[str],
            negatives: str) -> torch.Tensor:
    """Eq. 1 on a batch: each image with its own audio is a positive; with the audio of another video
    a negative: the next row's audio (`roll`, DSOL's one negative per positive) or every other row's (`all`).
    Pairs of two clips of the same video are never negatives."""
    positive, _ = head(localization_map(visual, audio))
    if negatives == "roll":
        negative, _ = head(localization_map(visual, audio.roll(1, dims=0)))
        other_video = torch.tensor([a != b for a, b in zip(video_ids, video_ids[-1:] + video_ids[:-1])],
                                   device=negative.device)
    else:
        negative, _ = head(localization_map_pairs(visual, audio))  # (B images, B audios)
        other_video = torch.tensor([[a != b for b in video_ids] for a in video_ids], device=negative.device)
    return correspondence_loss(positive, negative[other_video])


def class_loss(objects: torch.Tensor, audio: torch.Tensor, visual_prototypes: torch.Tensor,
               audio_centroids: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """DSOL's classification task: each clip's pseudo-class from its object feature (classifier P^v) plus the
    same from its f^a (classifier: the mean f^a of each cluster)."""
    return (pseudo_class_loss(objects, visual_prototypes, labels, temperature)
            + pseudo_class_loss(audio, audio_centroids, labels, temperature))


def aii_loss(prototypes: torch.Tensor, single_audio: torch.Tensor, expanded: torch.Tensor, labels: torch.Tensor,
             temperature: float, center: float, prototype_cosines: torch.Tensor, sibling_cos: float,
             no_source_audio: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 8 on the single clips' f^a (every prototype sees the same f^a) and Eq. 10 on the mixtures' expanded
    F^a, in one BCE (docs/decisions.md, "Eq. 8 on f^a"). labels (singles + mixtures, M) from `aii_labels`;
    prototypes with a cosine above `sibling_cos` to a member's are left out (1.0: the paper's loss, bit for bit).

    `no_source_audio` (Q, D): the f^a of Q inputs in which nothing sounds; their F^a are then the last Q rows of
    `expanded` (mixtures + Q rows), and both their f^a (Eq. 8) and their F^a (Eq. 10) get every target 0
    (docs/decisions.md, "The AII also learns where it must not step")."""
    singles, quiet = len(single_audio), 0 if no_source_audio is None else len(no_source_audio)
    audio = [single_audio] + ([no_source_audio] if quiet else [])
    single_like = torch.cat(audio)
    similarity = prototype_similarity(prototypes, torch.cat([
        single_like[:, None, :].expand(len(single_like), *prototypes.shape), expanded]), temperature, center)
    if quiet:  # rows: singles, no-source f^a, mixtures, no-source F^a; the empty rows go last
        similarity = torch.cat([similarity[:singles], similarity[singles + quiet:],
                                similarity[singles:singles + quiet]])
        padding = torch.full((quiet, labels.shape[1]), -1, dtype=labels.dtype, device=labels.device)
        labels = torch.cat([labels, padding, padding])
    ignore = sibling_prototypes(labels, prototype_cosines, sibling_cos) if sibling_cos < 1.0 else None
    return mixture_loss(similarity, labels, ignore, empty_rows=2 * quiet)


def single_step_loss(expanded: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """The mean squared length of a single clip's distinguishing steps, ||F^a_n - f^a||^2 = ||Delta^n||^2 over
    clips and prototypes: a single clip's F^a should be its f^a, which Eq. 8 has already placed by its class
    (docs/decisions.md, "The AII also learns where it must not step"). expanded (B, K, D); audio f^a (B, D)."""
    with torch.autocast(device_type=expanded.device.type, enabled=False):
        return (expanded.float() - audio.float()[:, None, :]).pow(2).sum(dim=-1).mean()
