"""Stage synth: mosaics with mixed audio (syn, un, train) and the duet set, and their val twins, from the features.

python -m stages.synth <dataset>   ->  data/synth/<dataset>/{syn,un,train,duet,val_syn,val_un,val_duet}/, summary.json
"""
from __future__ import annotations

from pipeline import paths
from pipeline.config import Params
from pipeline.stage import run_stage
from pipeline.synth import run_synth


def body(params: Params, dataset: str) -> None:
    summary = run_synth(paths.features(dataset), paths.synth(dataset), params.synth, params.data_seed)
    for name, info in summary["sets"].items():
        if info.get("skipped"):
            print(f"synth@{dataset}: {name}: skipped ({info['skipped']})")
        else:
            print(f"synth@{dataset}: {name}: {info['samples']} samples, grid {info['grid']}, "
                  f"{info['tiles']} tiles, {info['objects']} objects ({info['sounding_objects']} sounding)")


if __name__ == "__main__":
    run_stage("synth", body)
