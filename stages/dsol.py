"""Stage dsol: the DSOL baseline, stage 2 as DSOL trains it (no AII, no off-screen filter) from DSOL's stage 1
(the stage-1 networks before the AII phase).

python -m stages.dsol <dataset>  ->  models/<dataset>/dsol.pt, reports/<dataset>/dsol.json,
                                    reports/<dataset>/dsol-live/ (per-epoch loss),
                                    models/<dataset>/dsol-checkpoints/ (resume point)
"""
from __future__ import annotations

from pipeline import paths
from pipeline.config import Params
from pipeline.stage import run_stage
from pipeline.train.stage2 import dsol_cmr, run_stage2


def body(params: Params, dataset: str) -> None:
    report = run_stage2(paths.synth(dataset), paths.dsol(dataset), params.model, dsol_cmr(params.cmr), params.seed)
    if not report:  # a torchrun process other than rank 0
        return
    print(f"dsol@{dataset}: {report['train_mosaics']} training mosaics, {report['epochs']} epochs, "
          f"final loss {report['final_loss']}")


if __name__ == "__main__":
    run_stage("dsol", body)
