"""Stage 1's report: NMI of the clips' clusters against the true classes, and Table 2's multi-label metrics
(mAP, precision, recall of the heard classes) on mixtures of 2, 3 and 4 clips."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

from pipeline.audio import LogMel, mixture_logmels
from pipeline.config import Model, Stage1
from pipeline.models.ier import Stage1Model, prototype_similarity
from pipeline.models.inputs import prepare_logmel
from pipeline.runtime import autocast
from pipeline.train.cluster import nmi
from pipeline.train.curriculum import plan_mixtures
from pipeline.train.embed import EMBED_BATCH, Split, embed_split

MIXTURE_SIZES = (2, 3, 4)  # members of the evaluation mixtures (Table 2), equal shares


THRESHOLD = 0.5  # a class is predicted when its similarity reaches this (Table 2)


def evaluate_split(model: Stage1Model, test_dir: Path, test: Split, visual_prototypes: torch.Tensor,
             prototypes: torch.Tensor, cluster_classes: dict[int, str], logmel: LogMel, model_params: Model,
             stage1_params: Stage1, seed: int, device: torch.device, channels_last: bool) -> dict:
    """NMI of the test clips' clusters, and Table 2's multi-label metrics on mixtures of test clips."""
    embeddings = embed_split(model, test_dir, model_params, stage1_params.object_ratio, device, channels_last)
    # A test clip's pseudo-class: the k whose prototypes best match its frame and its sound, cos(object, P^v_k) +
    # cos(f^a, P^a_k); and, as `nmi_visual`, the nearest P^v by the object feature alone (docs/decisions.md).
    visual_scores = embeddings.objects @ F.normalize(visual_prototypes, dim=1).T
    visual_clusters = visual_scores.argmax(dim=1).numpy()
    test_clusters = (visual_scores + embeddings.audio @ F.normalize(prototypes, dim=1).T).argmax(dim=1).numpy()
    class_names = sorted(set(test.classes))
    class_ids = np.array([class_names.index(name) for name in test.classes])

    # Mixtures of 2, 3, 4 test clips of distinct true classes, equal shares.
    rng = np.random.default_rng([seed, 7])
    sizes = [size for size in MIXTURE_SIZES if size <= len(class_names)]
    counts = [stage1_params.eval_mixtures // len(sizes) + (i < stage1_params.eval_mixtures % len(sizes))
              for i in range(len(sizes))]
    truth, scores = [], []
    model.eval()
    with torch.no_grad():
        for size, count in zip(sizes, counts):
            plan = plan_mixtures(class_ids, count, size, rng)
            for start in range(0, count, EMBED_BATCH):
                chunk = plan[start:start + EMBED_BATCH]
                log_mel = prepare_logmel(mixture_logmels(test.waveforms, chunk, logmel), device, channels_last)
                with autocast(device, model_params.cpu_precision):
                    audio = model.audio(log_mel)
                    expanded = model.aii(audio.embedding, audio.mid_level)
                similarity = prototype_similarity(prototypes.to(device), expanded, model_params.similarity_temperature,
                                                  model_params.similarity_center).cpu()
                # A class scores the best similarity of its clusters (0 for a class no cluster maps to).
                class_scores = torch.zeros(len(chunk), len(class_names))
                for cluster, name in cluster_classes.items():
                    if name in class_names:
                        column = class_names.index(name)
                        class_scores[:, column] = torch.maximum(class_scores[:, column], similarity[:, cluster])
                scores.append(class_scores.numpy())
                member_truth = np.zeros((len(chunk), len(class_names)), dtype=np.int64)
                np.put_along_axis(member_truth, class_ids[chunk], 1, axis=1)
                truth.append(member_truth)
    model.train()
    truth, scores = np.concatenate(truth), np.concatenate(scores)
    predicted = scores >= THRESHOLD
    hits = int((predicted & (truth == 1)).sum())
    present = truth.sum(axis=0) > 0  # AP is defined only for classes that occur in some mixture
    return {
        "nmi": nmi(test_clusters, class_ids),
        "nmi_visual": nmi(visual_clusters, class_ids),
        "map": float(average_precision_score(truth[:, present], scores[:, present], average="macro")),
        "precision": hits / int(predicted.sum()) if predicted.any() else 0.0,
        "recall": hits / int(truth.sum()),
        "test_clips": len(test.classes),
        "test_mixtures": int(len(truth)),
        "test_clusters_used": int(len(np.unique(test_clusters))),
    }
