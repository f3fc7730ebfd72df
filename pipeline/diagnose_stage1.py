"""Which true classes stage 1 tells apart, and whether its features could (docs/decisions.md, "Which classes
stage 1 merges").

    python -m pipeline.diagnose_stage1 <dataset> [--params params.yaml]

Loads `models/<dataset>/stage1.pt` and embeds the `train_single` and `test` clips of
`data/features/<dataset>` as the stage's evaluation does (object feature: f^v pooled where the clip's own
map is high; f^a). Each test clip gets the pseudo-class the stage gives it (the k of highest
cos(object, P^v_k) + cos(f^a, P^a_k)), so the NMI printed is the one in `reports/<dataset>/stage1.json`. Then,
per true class:

- the clusters its test clips fall in, and the class those clusters stand for (the stage's cluster -> class
  map, majority of the training clips): the share recognised, and the class it is most often taken for;
- a linear probe (scikit-learn's logistic regression fitted on the `train_single` clips' true labels,
  scored on the test clips) on the object feature and on f^a: whether the class is in the features at all.

A class that the probes recognise and the clusters do not is a clustering problem; one that the probes
cannot recognise either has been merged by training itself. Prints Markdown; writes nothing. Needs the
outputs of `dvc repro stage1@<dataset>`. Labels are used here, as in the stage's metrics, never in training.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from pipeline.config import load_params
from pipeline.diagnose import command_line
from pipeline.models.files import load_trained
from pipeline.runtime import pick_device
from pipeline.train.cluster import nmi
from pipeline.train.embed import embed_split, read_split

PROBE_ITERATIONS = 2000  # lbfgs iterations of the probes; the unit-norm features converge well before


def linear_probe(train_features: np.ndarray, train_classes: list[str], test_features: np.ndarray) -> np.ndarray:
    """Each test row's class as predicted by a logistic regression fitted on the training rows."""
    probe = LogisticRegression(max_iter=PROBE_ITERATIONS)
    return probe.fit(train_features, train_classes).predict(test_features)


def diagnose_stage1(root: Path, dataset: str, params_path: Path) -> dict:
    """{"nmi": test NMI, "classes": {class: {"clips", "clusters", "recognised", "taken_for", "probe_object",
    "probe_audio"}}} for the stage-1 model of `dataset` under `root`."""
    params = load_params(params_path)
    trained = load_trained(root / "models" / dataset / "stage1.pt", params.model)
    device = pick_device(params.stage1.device, "stage1.device")
    model = trained.model.to(device)
    features = root / "data" / "features" / dataset
    embedded = {}
    for split in ("train_single", "test"):
        embeddings = embed_split(model, features / split, params.model, params.stage1.object_ratio, device,
                                 params.model.channels_last)
        embedded[split] = (embeddings, read_split(features / split).classes)
    (train, train_classes), (test, test_classes) = embedded["train_single"], embedded["test"]
    # The stage's own test assignment (pipeline.train.stage1.evaluate).
    scores = (test.objects @ F.normalize(trained.visual_prototypes, dim=1).T
              + test.audio @ F.normalize(trained.audio_prototypes, dim=1).T)
    clusters = scores.argmax(dim=1).numpy()
    recognised_as = np.array([trained.cluster_to_class[k] for k in clusters])
    probes = {name: linear_probe(getattr(train, name).numpy(), train_classes, getattr(test, name).numpy())
              for name in ("objects", "audio")}
    truth = np.array(test_classes)
    classes = {}
    for label in sorted(set(test_classes)):
        rows = truth == label
        mistaken = Counter(recognised_as[rows & (recognised_as != label)])
        classes[label] = {
            "clips": int(rows.sum()),
            "clusters": dict(Counter(int(k) for k in clusters[rows]).most_common()),
            "recognised": float(np.mean(recognised_as[rows] == label)),
            "taken_for": mistaken.most_common(1)[0][0] if mistaken else None,
            "probe_object": float(np.mean(probes["objects"][rows] == label)),
            "probe_audio": float(np.mean(probes["audio"][rows] == label)),
        }
    return {"nmi": nmi(clusters, truth), "classes": classes}


def markdown(dataset: str, result: dict) -> str:
    lines = [f"{dataset}: test NMI {result['nmi']:.3f}", "",
             "| class | test clips | clusters (clips) | recognised via the clusters | most often taken for | "
             "linear probe on the object feature | linear probe on f^a |", "|" + " --- |" * 7]
    for label, row in result["classes"].items():
        clusters = ", ".join(f"{k} ({count})" for k, count in row["clusters"].items())
        taken_for = "–" if row["taken_for"] is None else row["taken_for"] or "a cluster of no class"
        lines.append(f"| {label} | {row['clips']} | {clusters} | {row['recognised']:.3f} | {taken_for} | "
                     f"{row['probe_object']:.3f} | {row['probe_audio']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    command_line(__doc__, diagnose_stage1, markdown)


if __name__ == "__main__":
    main()
