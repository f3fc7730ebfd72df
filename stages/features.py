"""features stage: split clips by video and add their log-mel (docs/data.md "features")."""
from __future__ import annotations

import os

import torch

from pipeline import paths
from pipeline.config import Params
from pipeline.features import run_features, sample_rate_of_clips
from pipeline.stage import run_stage


def body(params: Params, dataset: str) -> None:
    # One thread per core this process may use (torch's default counts the machine's cores).
    # The log-mel values do not depend on the thread count (tests/test_features.py).
    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    clips_dir = paths.clips(dataset)
    # The sample rate is a property of the clips, not of this stage's params.
    run_features(clips_dir, paths.features(dataset), params.features, params.datasets[dataset],
                 sample_rate=sample_rate_of_clips(clips_dir))


if __name__ == "__main__":
    run_stage("features", body)
