"""What each term of IEr's class-aware maps does to the class-aware metrics (docs/decisions.md, "Why the
w/o AII row scores as high as IEr").

    python -m pipeline.diagnose <dataset> [--params params.yaml]

The evaluated class maps are a softmax over the clusters of z^av_k + z^v_k, the logits of the two factors of
L^av_k = l(f^v, F^a_k) . L^v_k (Eq. 3 with the silent object filter; pipeline.evaluate). This scores the
stage-2 model's maps on each class-aware test set of `data/synth/<dataset>` three ways, with the same
softmax and the same metrics:

- evaluated: z^av_k + z^v_k (z^av_k alone when stage 2 ran without the silent filter), what evaluate scores;
- visual: z^v_k alone, the visual class maps. A model without the AII has F^a_k = f^a for every k, so its
  z^av_k is the same for every cluster and cancels in the softmax: its evaluated maps are exactly these;
- audio: z^av_k alone, the audio-visual term.

For each: CIoU@0.3 and NSA as in metrics.json; the mean class map of a sounding class on its own
boxes, of a silent class on its own boxes, and of both off every box; and where NSA's quiet share is lost:
the share of a silent class's own boxes, and of the pixels off every box for each class that is not
sounding, above NSA's level. Also p^a = sim(P^a_k, F^a_k), the
AII's "is class k heard", averaged over the clusters of sounding, silent, off-screen and absent classes, and
the seen area GAP(m_k) that Eq. 4's off-screen filter weighs p^a with, under each `cmr.seen_mask`
(batch_mean: over each batch of `evaluate.batch_size` mosaics; class_share at `cmr.class_share`), by the
same roles: a mask that filters gives off-screen and absent classes far less than sounding and silent ones
(docs/decisions.md, "Where a class is seen").
Prints a Markdown table; writes nothing. Needs the outputs of `dvc repro evaluate@<dataset>`.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pipeline.config import ConfigError, load_params
from pipeline.evaluate import CLASS_AWARE_SETS, batches, prepared, sounding_boxes
from pipeline.metrics import (NSA_THRESHOLD, boxes_mask, class_aware_iou, class_maps, non_sounding_area, resize_map,
                              success_rate)
from pipeline.models.files import load_trained
from pipeline.models.ier import localization_map, localization_map_pairs, prototype_similarity
from pipeline.stage import StageError
from pipeline.train.referrer import ClassMaps, seen_share

TERMS = ("evaluated", "visual", "audio")
ROLES = ("sounding", "silent", "offscreen", "absent")  # how a cluster's class takes part in a mosaic
SEEN_MASKS = ("batch_mean", "class_share")  # the cmr.seen_mask choices
COLUMNS = ("ciou30", "nsa", "sounding_on_box", "silent_on_box", "off_boxes", "loud_silent_box", "loud_off_boxes")


def diagnose(root: Path, dataset: str, params_path: Path) -> dict:
    """{set: {"terms": {term: {column: value}}, "heard": {role: mean p^a}}} for each class-aware set."""
    params = load_params(params_path)
    evaluate = params.evaluate
    ier = load_trained(root / "models" / dataset / "stage2.pt", params.model)
    ier.model.eval()
    silent_filter = bool(ier.config.get("silent_filter", True))
    summary = json.loads((root / "data" / "features" / dataset / "summary.json").read_text())
    classes = sorted({label for label in ier.cluster_to_class if label} | set(summary.get("classes", [])))
    threshold = {"duet": evaluate.duet_threshold}
    size = evaluate.map_size
    results = {}
    for name in CLASS_AWARE_SETS:
        folder = root / "data" / "synth" / dataset / name
        if not list(folder.glob("shard-*.parquet")):
            continue
        values = {term: {column: [] for column in COLUMNS} for term in TERMS}
        heard_by_role = {"sounding": [], "silent": [], "offscreen": [], "absent": []}
        seen_by_role = {mask: {role: [] for role in ROLES} for mask in SEEN_MASKS}
        columns = ("image", "logmel", "objects", "sounding", "silent", "offscreen")
        for batch in batches(folder, columns, evaluate.batch_size):
            images, log_mels = prepared(batch, torch.device("cpu"), ier.normalisation)
            with torch.no_grad():
                visual, _, expanded = ier.model(images, log_mels, torch.arange(len(log_mels)))
                visual_logits = ier.model.head.logits(localization_map_pairs(visual, ier.visual_prototypes)).numpy()
                audio_logits = ier.model.head.logits(localization_map(visual, expanded)).numpy()
                heard = prototype_similarity(ier.audio_prototypes, expanded, params.model.similarity_temperature,
                                             params.model.similarity_center).numpy()
                logits = torch.from_numpy(visual_logits)
                seen_maps = ClassMaps(torch.sigmoid(logits), torch.sigmoid(logits), logits, logits)
                seen = {mask: seen_share(seen_maps, mask, params.cmr.class_share).numpy() for mask in SEEN_MASKS}
            for row in range(len(images)):
                objects, sounding = batch["objects"][row], list(batch["sounding"][row])
                silent, offscreen = list(batch["silent"][row]), list(batch["offscreen"][row])
                for cluster, owner in enumerate(ier.cluster_to_class):
                    role = ("sounding" if owner in sounding else "silent" if owner in silent
                            else "offscreen" if owner in offscreen else "absent")
                    if owner:
                        heard_by_role[role].append(heard[row, cluster])
                        for mask in SEEN_MASKS:
                            seen_by_role[mask][role].append(seen[mask][row, cluster])
                boxes = {label: sounding_boxes(objects, label) for label in sounding}
                off_boxes = ~boxes_mask(objects, size, size)
                evaluated = audio_logits[row] + visual_logits[row] if silent_filter else audio_logits[row]
                for term, logits in zip(TERMS, (evaluated, visual_logits[row], audio_logits[row])):
                    maps = dict(zip(classes, class_maps(logits, ier.cluster_to_class, classes, scale=1.0)))
                    values[term]["ciou30"].append(class_aware_iou(maps, boxes, sounding,
                                                                  threshold.get(name, evaluate.class_threshold), size))
                    values[term]["nsa"].append(non_sounding_area(maps, sounding, size=size))
                    for label in sounding + silent:
                        resized = resize_map(maps[label], size)
                        own = boxes_mask([box for box in objects if box["class"] == label], size, size)
                        role = "sounding_on_box" if label in sounding else "silent_on_box"
                        values[term][role].append(float(resized[own].mean()))
                        if off_boxes.any():
                            values[term]["off_boxes"].append(float(resized[off_boxes].mean()))
                        if label in silent:  # where NSA counts a silent class: its own object
                            values[term]["loud_silent_box"].append(float((resized[own] > NSA_THRESHOLD).mean()))
                    for label in classes:  # ... or anywhere off the objects, for every class that is not sounding
                        if label not in sounding and off_boxes.any():
                            loud = resize_map(maps[label], size)[off_boxes] > NSA_THRESHOLD
                            values[term]["loud_off_boxes"].append(float(loud.mean()))
        terms = {}
        for term, columns_values in values.items():
            terms[term] = {column: float(np.nanmean(found)) if found else None
                           for column, found in columns_values.items()}
            terms[term]["ciou30"] = success_rate(columns_values["ciou30"], evaluate.ciou_success)
        results[name] = {"terms": terms, "heard": {role: float(np.mean(found)) if found else None
                                                   for role, found in heard_by_role.items()},
                         "seen": {mask: {role: float(np.mean(found)) if found else None for role, found in by.items()}
                                  for mask, by in seen_by_role.items()}}
    return results


def markdown(dataset: str, results: dict) -> str:
    def cell(value):
        return "–" if value is None else f"{value:.3f}"
    lines = [f"| {dataset} set | class maps from | CIoU@0.3 | NSA | sounding class on its boxes | "
             "silent class on its boxes | sounding/silent class off every box | silent class above the NSA level "
             "on its boxes | non-sounding class above the NSA level off every box |", "|" + " --- |" * 9]
    for name, result in results.items():
        for term, row in result["terms"].items():
            lines.append(f"| {name} | {term} | " + " | ".join(cell(row[column]) for column in COLUMNS) + " |")
    lines += ["", f"| {dataset} set | p^a sounding | p^a silent | p^a off-screen | p^a absent |", "|" + " --- |" * 5]
    for name, result in results.items():
        heard = result["heard"]
        lines.append(f"| {name} | " + " | ".join(cell(heard[role]) for role in
                                              ("sounding", "silent", "offscreen", "absent")) + " |")
    lines += ["", f"| {dataset} set | Eq. 4 seen area from | sounding | silent | off-screen | absent |",
              "|" + " --- |" * 6]
    for name, result in results.items():
        for mask, seen in result["seen"].items():
            lines.append(f"| {name} | {mask} | " + " | ".join(cell(seen[role]) for role in ROLES) + " |")
    return "\n".join(lines)


def command_line(doc: str, measure: Callable[[Path, str, Path], dict], table: Callable[[str, dict], str]) -> None:
    """`python -m <module> <dataset> [--params params.yaml]`: measure the dataset in this directory, print the table.
    A missing or unfitting input (bad params, no model yet) prints one line and exits 2, as a stage does."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("dataset", help="a dataset role of params.yaml, e.g. music")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    try:
        result = measure(Path("."), args.dataset, Path(args.params))
    except (ConfigError, StageError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(table(args.dataset, result))


def main() -> None:
    command_line(__doc__, diagnose, markdown)


if __name__ == "__main__":
    main()
