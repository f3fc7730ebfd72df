"""Stage 1's pseudo-classes and prototypes: k-means over the training clips' object features (P^v and each
clip's cluster), the mean f^a of each cluster, and the audio prototypes P^a of an AII epoch. Rank 0
computes, every rank receives."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pipeline.config import Model, Stage1
from pipeline.models.ier import Stage1Model
from pipeline.runtime import Processes, broadcast
from pipeline.train.cluster import audio_prototypes, kmeans, nmi
from pipeline.train.embed import Embeddings, embed_split


@dataclasses.dataclass
class Clusters:
    """What clustering hands the later epochs (None before the first clustering)."""

    visual_prototypes: torch.Tensor | None = None  # P^v (K, D)
    assignment: torch.Tensor | None = None  # the pseudo-class of every training clip (N,)
    prototypes: torch.Tensor | None = None  # the mean f^a per cluster; in the AII phase, P^a
    features: Embeddings | None = None  # the features of the last clustering (`stage1.cluster_pass: epoch`)


def epoch_audio_prototypes(model: Stage1Model, clusters: Clusters, train_dir: Path, model_params: Model,
                           stage1_params: Stage1, processes: Processes) -> torch.Tensor:
    """P^a for an AII epoch, on every rank: the mean f^a of each pseudo-class from rank 0's eval-mode pass."""
    prototypes = torch.zeros(stage1_params.clusters, model_params.dim)
    if processes.main:
        audio = embed_split(model, train_dir, model_params, stage1_params.object_ratio, processes.device,
                            model_params.channels_last, with_images=False).audio
        prototypes = audio_prototypes(audio, clusters.assignment, stage1_params.clusters,
                                      previous=clusters.prototypes).vectors
    return broadcast(prototypes, processes)


def cluster_clips(clusters: Clusters, features: Embeddings | None, embed_train: Callable[[], Embeddings],
                  classes: list[str],
                  stage1_params: Stage1, dim: int, seed: int, processes: Processes) -> None:
    """k-means on rank 0 over every training clip's object feature (`features`, or an eval-mode pass when
    None) -> P^v and the pseudo-classes, and the mean f^a of each cluster; broadcast into `clusters`."""
    count = stage1_params.clusters
    centroids, clip_clusters = torch.zeros(count, dim), torch.zeros(len(classes), dtype=torch.int64)
    audio_centroids = torch.zeros(count, dim)
    if processes.main:
        embeddings = features if features is not None else embed_train()
        points = embeddings.objects
        if stage1_params.cluster_features == "audiovisual":
            points = torch.cat([embeddings.objects, embeddings.audio], dim=1)
        centroids, clip_clusters = map(torch.from_numpy, kmeans(points.numpy(), count, stage1_params.kmeans_niter,
                                                                seed, init=stage1_params.kmeans_init))
        if stage1_params.cluster_features == "audiovisual":  # P^v lives in f^v's space (stage 2's L^v_k)
            centroids = audio_prototypes(embeddings.objects, clip_clusters, count).vectors
        audio_centroids = audio_prototypes(embeddings.audio, clip_clusters, count).vectors
        print(f"stage1: {count} clusters, {len(np.unique(clip_clusters))} used; train NMI "
              f"{nmi(clip_clusters.numpy(), classes):.3f}", flush=True)
    clusters.visual_prototypes = broadcast(centroids, processes)
    clusters.assignment = broadcast(clip_clusters, processes)
    clusters.prototypes = broadcast(audio_centroids, processes)
