"""Where IEr's listening is lost: its ears or its eyes, against the oracle's (docs/decisions.md, "The oracle: the
same networks trained with the true labels").

    python -m pipeline.diagnose_listening <dataset> [--params params.yaml]

The audio-grounded map of a method is its candidate maps gated by its heard scores (pipeline.grounded). This swaps
the two halves between IEr (the stage-2 model) and the oracle (the same networks trained with the true classes)
and scores all four pairs on the val sets, each with its own thresholds chosen there (val numbers only: this is
a tool for choosing what to fix, and nothing of it touches test):

- IEr: IEr's maps L^av_k gated by IEr's p^a_k, as evaluate scores it;
- IEr maps, oracle ears: IEr's maps, each gated by the oracle's heard score of its cluster's class;
- oracle maps, IEr ears: the oracle's class maps gated by IEr's heard score of the class (the max over its
  clusters, as evaluate's per-class scores);
- oracle: both halves the oracle's.

What moving from IEr's ears to the oracle's gains is lost in IEr's audio side (the AII, the prototypes); what
moving to the oracle's maps gains is lost in its visual side (the maps, the silent filter). Prints a Markdown
table; writes nothing. Needs the models of `dvc repro evaluate@<dataset>`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.config import load_params
from pipeline.diagnose import command_line
from pipeline.evaluate import (SETS, audible_matrix, box_sources, read_set, run_set, same_normalisation, set_folder,
                               set_objects, silence_log_mel)
from pipeline.grounded import CONDITIONS, Outputs, Truth, choose_thresholds, set_metrics
from pipeline.models.files import load_trained
from pipeline.models.oracle import load_oracle
from pipeline import paths as stage_paths
from pipeline.runtime import pick_device

PAIRS = ("IEr", "IEr maps, oracle ears", "oracle maps, IEr ears", "oracle")
SHOWN = ("iou30", "heard_map", "sounding_recall", "silent_false_alarm", "reliance", "silence_empty")


def class_columns(names: list[str], classes: list[str]) -> np.ndarray:
    """For each entry of `names` (a cluster's or an output's class), its column in `classes` (-1 for none)."""
    return np.array([classes.index(name) if name in classes else -1 for name in names])


def gates_from(per_class: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """(N, C) per-class scores -> (N, M) gates of M candidate maps whose classes are `columns` (0 for no class)."""
    gates = per_class[:, np.maximum(columns, 0)]
    return np.where(columns[None] >= 0, gates, 0.0).astype(np.float32)


def swapped(maps: Outputs, maps_columns: np.ndarray, ears: Outputs) -> Outputs:
    """`maps`' candidate maps gated by `ears`' per-class heard scores; the heard scores are the ears'."""
    return Outputs(maps.maps, gates_from(ears.heard, maps_columns), ears.heard)


def diagnose(root: Path, dataset: str, params_path: Path) -> dict:
    params = load_params(params_path)
    evaluate_paths = stage_paths.evaluate(dataset)
    features_dir, synth_dir = root / stage_paths.features(dataset), root / stage_paths.synth(dataset)
    device = pick_device(params.evaluate.device, "evaluate.device")
    models = {"ier": load_trained(root / evaluate_paths.stage2_model, params.model),
              "oracle": load_oracle(root / evaluate_paths.oracle_model, params.model)}
    normalisation = same_normalisation({Path(method): trained for method, trained in models.items()})
    for trained in models.values():
        trained.model.to(device).eval()
    classes = sorted({label for label in models["ier"].cluster_to_class if label} | set(models["oracle"].classes))
    sources = box_sources(params.evaluate.boxes, params.datasets[dataset].source, evaluate_paths, features_dir, [])
    loaded = {name: read_set(set_folder(features_dir, synth_dir, name, "val"), name, params.evaluate.batch_size)
              for name in SETS}
    loaded = {name: eval_set for name, eval_set in loaded.items() if eval_set is not None}
    silence = silence_log_mel(features_dir, tuple(next(iter(loaded.values())).log_mels.shape[1:]))
    ier_columns = class_columns(models["ier"].cluster_to_class, classes)
    oracle_columns = class_columns(models["oracle"].classes, classes)

    outputs, truths = {pair: {} for pair in PAIRS}, {}
    for name, eval_set in loaded.items():
        run = run_set(eval_set, models, classes, params.model, silence, params.seed, params.evaluate.batch_size,
                      device, with_dsol=False, normalisation=normalisation)
        ier, oracle = run.outputs["ier"], run.outputs["oracle"]
        outputs["IEr"][name], outputs["oracle"][name] = ier, oracle
        outputs["IEr maps, oracle ears"][name] = {c: swapped(ier[c], ier_columns, oracle[c]) for c in CONDITIONS}
        outputs["oracle maps, IEr ears"][name] = {c: swapped(oracle[c], oracle_columns, ier[c]) for c in CONDITIONS}
        truths[name] = Truth(set_objects(eval_set, sources.main, sources), audible_matrix(eval_set, classes))

    evaluate = params.evaluate
    results = {}
    for pair in PAIRS:
        thresholds = choose_thresholds([outputs[pair][name]["true"] for name in loaded],
                                       [truths[name] for name in loaded], evaluate.map_size, evaluate.threshold_steps)
        results[pair] = {name: set_metrics(outputs[pair][name], truths[name], thresholds, evaluate.map_size,
                                           evaluate.lit_share, evaluate.grounded_success)[0] for name in loaded}
    return results


def markdown(dataset: str, results: dict) -> str:
    sets = list(next(iter(results.values())))
    lines = [f"{dataset}, val sets, each pair with its own thresholds chosen on val", "",
             "| pair | " + " | ".join(f"{name} {key}" for name in sets for key in SHOWN) + " |",
             "| --- |" + " --- |" * (len(sets) * len(SHOWN))]
    for pair, by_set in results.items():
        cells = [by_set[name].get(key) for name in sets for key in SHOWN]
        lines.append(f"| {pair} | " + " | ".join("–" if cell is None else f"{cell:.3f}" for cell in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    command_line(__doc__, diagnose, markdown)


if __name__ == "__main__":
    main()
