"""Stage-1 clustering (paper section 3.1; stage 1's clustering): faiss k-means on visual object features,
audio prototypes per pseudo-class, the many-to-one cluster -> class mapping and NMI (section 7).
"""
from __future__ import annotations

from collections.abc import Hashable
from typing import NamedTuple

import faiss
import numpy as np
import torch
from sklearn.cluster import kmeans_plusplus
from sklearn.metrics import normalized_mutual_info_score

# k-means++ seeds from at most this many points per cluster (a random subset): enough to find every
# group, and it bounds the seeding cost (about 5 s for k = 300 on 2 cores).
INIT_POINTS_PER_CLUSTER = 50


def kmeans(features: np.ndarray, k: int, niter: int, seed: int, spherical: bool = True,
           init: str = "k-means++", gpu: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """faiss k-means of features (N, D) into k clusters -> (centroids (k, D) float32, assignment (N,) int64).

    spherical: the features are L2-normalised first and the centroids after every iteration, so
    points go to the centroid of highest cosine (the features are compared by cosine everywhere).
    init: "k-means++" seeds faiss with greedy k-means++ centroids (sklearn's `kmeans_plusplus`);
    "random" keeps faiss's own seeding (k random points), which on 5 well-separated blobs merges two
    and splits one in 19 runs of 30. Every point takes part in the iterations: faiss would
    otherwise silently train on a sample of 256 * k points. `gpu=True` needs faiss-gpu (faiss-cpu
    then silently runs on the CPU). Same inputs, seed and thread count give the same result.
    """
    features = np.ascontiguousarray(features, dtype=np.float32)
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {features.shape}")
    count, dim = features.shape
    if not 1 <= k <= count:
        raise ValueError(f"cannot make {k} clusters of {count} points")
    if init not in ("k-means++", "random"):
        raise ValueError(f"init must be 'k-means++' or 'random', got {init!r}")
    if spherical:
        features = features.copy()
        faiss.normalize_L2(features)
    clustering = faiss.Kmeans(dim, k, niter=niter, seed=seed, spherical=spherical, gpu=gpu, verbose=False,
                              max_points_per_centroid=-(-count // k) + 1,  # never subsample
                              min_points_per_centroid=1)  # small toy sets: no warning spam
    initial = None
    if init == "k-means++":
        rng = np.random.default_rng(seed)
        sample = features
        if count > INIT_POINTS_PER_CLUSTER * k:
            sample = features[np.sort(rng.choice(count, INIT_POINTS_PER_CLUSTER * k, replace=False))]
        initial, _ = kmeans_plusplus(sample, k, random_state=seed)
        initial = np.ascontiguousarray(initial, dtype=np.float32)
    clustering.train(features, init_centroids=initial)
    _, assignment = clustering.index.search(features, 1)
    return clustering.centroids.copy(), assignment[:, 0].astype(np.int64)


class Prototypes(NamedTuple):
    vectors: torch.Tensor  # (k, D) float32, unit norm (or the kept vector of an empty cluster)
    empty: list[int]  # clusters with no member this time


def audio_prototypes(audio_features: torch.Tensor | np.ndarray, assignment: torch.Tensor | np.ndarray, k: int,
                     previous: torch.Tensor | None = None) -> Prototypes:
    """P^a: the L2-normalised mean audio feature of each pseudo-class (recomputed every epoch).

    audio_features (N, D), assignment (N,) ids in [0, k). A cluster with no member keeps its row of
    `previous` (the last epoch's prototypes) or, without one, a zero vector (cosine 0 with anything);
    its id is listed in `empty` for the caller to report. Computed on the features' device.
    """
    audio_features = torch.as_tensor(audio_features).float()
    assignment = torch.as_tensor(assignment, device=audio_features.device).long()
    if audio_features.dim() != 2 or assignment.shape != audio_features.shape[:1]:
        raise ValueError(f"need features (N, D) and assignment (N,), got {tuple(audio_features.shape)} "
                         f"and {tuple(assignment.shape)}")
    if assignment.numel() and (assignment.min() < 0 or assignment.max() >= k):
        raise ValueError(f"assignment ids must lie in [0, {k - 1}], "
                         f"got [{int(assignment.min())}, {int(assignment.max())}]")
    sums = torch.zeros(k, audio_features.shape[1], device=audio_features.device)
    sums.index_add_(0, assignment, audio_features)
    sizes = torch.bincount(assignment, minlength=k)
    vectors = torch.nn.functional.normalize(sums, dim=1)  # the mean's direction; zero rows stay zero
    empty = torch.nonzero(sizes == 0).flatten().tolist()
    if empty and previous is not None:
        vectors[empty] = previous.to(vectors.device, torch.float32)[empty]
    return Prototypes(vectors, empty)


def cluster_to_class(assignment: np.ndarray, true_labels: np.ndarray) -> dict[int, Hashable]:
    """Many-to-one mapping of each cluster to the majority true label of its members (supplement E).

    Ties go to the label that sorts first; clusters with no member are absent from the mapping.
    """
    assignment = np.asarray(assignment)
    true_labels = np.asarray(true_labels)
    if assignment.shape != true_labels.shape or assignment.ndim != 1:
        raise ValueError(f"assignment and labels must be (N,) each, got {assignment.shape} and {true_labels.shape}")
    mapping = {}
    for cluster in np.unique(assignment):
        labels, counts = np.unique(true_labels[assignment == cluster], return_counts=True)
        mapping[int(cluster)] = labels[np.argmax(counts)].item()
    return mapping


def nmi(assignment: np.ndarray, labels: np.ndarray) -> float:
    """Normalised mutual information between cluster ids and true labels (arithmetic mean normalisation)."""
    return float(normalized_mutual_info_score(np.asarray(labels), np.asarray(assignment)))
