"""Stage stage2: the Cross-modal Referrer on the stage-2 training mosaics.

python -m stages.stage2 <dataset>  ->  models/<dataset>/stage2.pt, reports/<dataset>/stage2.json,
                                      reports/<dataset>/stage2-live/ (per-epoch loss),
                                      models/<dataset>/stage2-checkpoints/ (resume point)
"""
from __future__ import annotations

from pipeline import paths
from pipeline.config import Params
from pipeline.stage import run_stage
from pipeline.train.stage2 import run_stage2


def body(params: Params, dataset: str) -> None:
    report = run_stage2(paths.synth(dataset), paths.stage2(dataset), params.model, params.cmr, params.seed)
    if not report:  # a torchrun process other than rank 0
        return
    print(f"stage2@{dataset}: {report['train_mosaics']} training mosaics, {report['epochs']} epochs, "
          f"final loss {report['final_loss']}")


if __name__ == "__main__":
    run_stage("stage2", body)
