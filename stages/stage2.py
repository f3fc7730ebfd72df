"""Stage stage2: the Cross-modal Referrer on the stage-2 training mosaics.

python -m stages.stage2 <dataset>  ->  models/<dataset>/stage2.pt, reports/<dataset>/stage2.json,
                                      reports/<dataset>/stage2-live/ (per-epoch loss),
                                      models/<dataset>/stage2-checkpoints/ (resume point)
"""
from __future__ import annotations

from pathlib import Path

from pipeline.config import Params
from pipeline.stage import run_stage
from pipeline.train.stage2 import Stage2Paths, run_stage2


def body(params: Params, dataset: str) -> None:
    paths = Stage2Paths(stage1_model=Path("models") / dataset / "stage1.pt",
                        model=Path("models") / dataset / "stage2.pt", report=Path("reports") / dataset / "stage2.json",
                        checkpoints=Path("models") / dataset / "stage2-checkpoints",
                        live=Path("reports") / dataset / "stage2-live")
    report = run_stage2(Path("data/synth") / dataset, paths, params.model, params.cmr, params.seed)
    if not report:  # a torchrun process other than rank 0
        return
    print(f"stage2@{dataset}: {report['train_mosaics']} training mosaics, {report['epochs']} epochs, "
          f"final loss {report['final_loss']}")


if __name__ == "__main__":
    run_stage("stage2", body)
