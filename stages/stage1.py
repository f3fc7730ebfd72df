"""Stage stage1: correspondence, clustering and the Audio-Instance-Identifier on the single-source clips.

python -m stages.stage1 <dataset>  ->  models/<dataset>/stage1.pt, reports/<dataset>/stage1.json,
                                      reports/<dataset>/stage1-live/ (per-epoch losses),
                                      models/<dataset>/stage1-checkpoints/ (resume point)
"""
from __future__ import annotations

from pipeline import paths
from pipeline.config import Params
from pipeline.stage import run_stage
from pipeline.train.stage1 import run_stage1


def body(params: Params, dataset: str) -> None:
    report = run_stage1(paths.features(dataset), paths.stage1(dataset), params.model, params.stage1, params.aii,
                        params.seed)
    if not report:  # a torchrun process other than rank 0
        return
    print(f"stage1@{dataset}: {report['train_clips']} training clips, {report['clusters']} clusters "
          f"({report['empty_clusters']} empty), {report['test_clips']} test clips, {report['test_mixtures']} "
          f"test mixtures: nmi {report['nmi']:.3f}, map {report['map']:.3f}, precision {report['precision']:.3f}, "
          f"recall {report['recall']:.3f}")


if __name__ == "__main__":
    run_stage("stage1", body)
