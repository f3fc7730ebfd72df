"""The AII curriculum (paper section 3.2) and the plan of which clips each mixture mixes.

`progress` runs from 0 at the start of the AII phase to 1 at its end (e.g. finished steps / all
steps). The share of mixed samples rises linearly from p_start to p_end; the number of members
per mixture rises in equal-length phases from min_mix to max_mix (2..4: 2 in the first third, 3 in
the middle third, 4 in the last). Without the curriculum both sit at their end values throughout.
"""
from __future__ import annotations

import numpy as np


def _check_progress(progress: float) -> None:
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress}")


def mix_share(progress: float, p_start: float, p_end: float, curriculum: bool) -> float:
    """Share of the samples that are mixtures at `progress`: p_start -> p_end linearly (p_end if no curriculum)."""
    _check_progress(progress)
    if not curriculum:
        return p_end
    return p_start + (p_end - p_start) * progress


def members(progress: float, min_mix: int, max_mix: int, curriculum: bool) -> int:
    """Sources per mixture at `progress`: min_mix .. max_mix in equal-length phases (max_mix if no curriculum)."""
    _check_progress(progress)
    if not 2 <= min_mix <= max_mix:
        raise ValueError(f"need 2 <= min_mix <= max_mix, got min_mix={min_mix}, max_mix={max_mix}")
    if not curriculum:
        return max_mix
    levels = max_mix - min_mix + 1
    return min_mix + min(int(progress * levels), levels - 1)  # progress 1.0 belongs to the last phase


def plan_mixtures(labels: np.ndarray, count: int, members: int, rng: np.random.Generator) -> np.ndarray:
    """Draw `count` mixtures of `members` clips each, every member from a DIFFERENT pseudo-class.

    labels (N,): the pseudo-class of each single-source clip. For each mixture, `members` distinct
    classes are drawn uniformly among the classes present, then one clip uniformly within each class
    (so small clusters are not starved by big ones). Returns (count, members) int64 indices into
    `labels`; the same `rng` state gives the same plan.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if members < 1 or count < 0:
        raise ValueError(f"need members >= 1 and count >= 0, got members={members}, count={count}")
    classes, class_sizes = np.unique(labels, return_counts=True)
    if len(classes) < members:
        raise ValueError(f"cannot mix {members} clips of different pseudo-classes: only {len(classes)} "
                         f"classes among {len(labels)} clips")
    by_class = np.argsort(labels, kind="stable")  # clip indices grouped class by class, in class order
    class_starts = np.concatenate([[0], np.cumsum(class_sizes)[:-1]])

    # Distinct classes per row: the `members` smallest of K random keys, in chunks to bound memory.
    chunk_rows = max(1, 2**20 // len(classes))
    chosen_classes = np.concatenate(
        [np.argsort(rng.random((min(chunk_rows, count - start), len(classes))), axis=1)[:, :members]
         for start in range(0, count, chunk_rows)] or [np.zeros((0, members), dtype=np.int64)])
    offsets = rng.integers(0, class_sizes[chosen_classes])
    return by_class[class_starts[chosen_classes] + offsets].astype(np.int64)
