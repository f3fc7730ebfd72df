"""The AII curriculum schedule and the mixture plans (pipeline/train/curriculum.py)."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.train.curriculum import members, mix_share, plan_mixtures


def test_mix_share_rises_linearly_from_p_start_to_p_end():
    assert mix_share(0.0, 0.5, 0.9, curriculum=True) == pytest.approx(0.5)
    assert mix_share(0.5, 0.5, 0.9, curriculum=True) == pytest.approx(0.7)
    assert mix_share(1.0, 0.5, 0.9, curriculum=True) == pytest.approx(0.9)
    assert mix_share(0.0, 0.5, 0.9, curriculum=False) == 0.9  # fixed at the end value
    assert mix_share(0.5, 0.5, 0.9, curriculum=False) == 0.9


def test_members_rise_in_equal_phases():
    # min 2, max 4: thirds of the AII phase with 2, 3, 4 sources.
    schedule = {progress: members(progress, 2, 4, curriculum=True)
                for progress in (0.0, 0.2, 0.33, 1 / 3, 0.5, 0.66, 0.67, 0.9, 1.0)}
    assert schedule == {0.0: 2, 0.2: 2, 0.33: 2, 1 / 3: 3, 0.5: 3, 0.66: 3, 0.67: 4, 0.9: 4, 1.0: 4}
    assert [members(p, 2, 3, curriculum=True) for p in (0.0, 0.49, 0.5, 1.0)] == [2, 2, 3, 3]  # halves
    assert [members(p, 2, 2, curriculum=True) for p in (0.0, 1.0)] == [2, 2]
    assert [members(p, 2, 4, curriculum=False) for p in (0.0, 0.5, 1.0)] == [4, 4, 4]


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="progress must be in"):
        mix_share(1.5, 0.5, 0.9, curriculum=True)
    with pytest.raises(ValueError, match="min_mix"):
        members(0.0, 1, 4, curriculum=True)
    with pytest.raises(ValueError, match="min_mix"):
        members(0.0, 4, 3, curriculum=True)


def test_plan_mixtures_draws_members_of_different_pseudo_classes():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 40 + [5] * 1 + [7] * 6)  # uneven clusters, gaps in ids
    plan = plan_mixtures(labels, count=500, members=3, rng=np.random.default_rng(0))
    assert plan.shape == (500, 3) and plan.dtype == np.int64
    assert plan.min() >= 0 and plan.max() < len(labels)
    member_classes = labels[plan]
    assert all(len(set(row)) == 3 for row in member_classes.tolist())
    assert set(np.unique(member_classes)) == {0, 1, 2, 5, 7}  # every class takes part
    assert len(np.unique(plan[member_classes == 2])) > 20  # clips drawn throughout a class, not one per class


def test_plan_mixtures_is_deterministic_given_the_rng():
    labels = np.repeat(np.arange(6), 5)
    first = plan_mixtures(labels, count=50, members=4, rng=np.random.default_rng(3))
    again = plan_mixtures(labels, count=50, members=4, rng=np.random.default_rng(3))
    other = plan_mixtures(labels, count=50, members=4, rng=np.random.default_rng(4))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_plan_mixtures_edge_cases():
    labels = np.array([3, 3, 8, 8])
    plan = plan_mixtures(labels, count=20, members=2, rng=np.random.default_rng(0))  # as many classes as members
    assert sorted(set(map(tuple, np.sort(labels[plan], axis=1).tolist()))) == [(3, 8)]
    assert plan_mixtures(labels, count=0, members=2, rng=np.random.default_rng(0)).shape == (0, 2)
    with pytest.raises(ValueError, match="cannot mix 3 clips of different pseudo-classes: only 2 classes"):
        plan_mixtures(labels, count=5, members=3, rng=np.random.default_rng(0))
