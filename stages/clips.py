"""clips stage: cut every downloaded video into clips of audio and frames (docs/data.md "clips")."""
from __future__ import annotations

from pipeline import paths
from pipeline.clips import run_clips
from pipeline.config import Params
from pipeline.stage import run_stage


def body(params: Params, dataset: str) -> None:
    run_clips(paths.raw(dataset), paths.clips(dataset), params.clips)


if __name__ == "__main__":
    run_stage("clips", body)
