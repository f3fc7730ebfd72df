"""download@<dataset>: fetch the dataset's videos into data/raw/<dataset>/ (see pipeline/download.py)."""
from __future__ import annotations

from pipeline import paths
from pipeline.config import Params
from pipeline.download import run_download
from pipeline.stage import run_stage


def body(params: Params, dataset: str) -> None:
    result = run_download(params, dataset, paths.raw(dataset).parent)
    print(f"download@{dataset}: {result.summary()}")
    for row in result.failures[:5]:
        print(f"  failed {row['video_id']}: {row['error']}")


if __name__ == "__main__":
    run_stage("download", body)
