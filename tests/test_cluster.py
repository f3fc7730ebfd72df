"""faiss k-means, audio prototypes, the cluster -> class mapping and NMI (pipeline/train/cluster.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.train.cluster import audio_prototypes, cluster_to_class, kmeans, nmi


def planted_blobs(points_per_blob: int, blobs: int, dim: int, spread: float, seed: int):
    """Well-separated blobs around random unit directions; returns (features, true blob ids)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(blobs, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(blobs), points_per_blob)
    features = centres[truth] + spread * rng.normal(size=(len(truth), dim))
    return features.astype(np.float32), truth


def test_kmeans_recovers_planted_clusters_and_is_deterministic():
    features, truth = planted_blobs(points_per_blob=40, blobs=5, dim=16, spread=0.05, seed=0)
    centroids, assignment = kmeans(features, k=5, niter=20, seed=1)
    assert centroids.shape == (5, 16) and centroids.dtype == np.float32
    assert assignment.shape == (200,) and assignment.dtype == np.int64
    assert nmi(assignment, truth) == pytest.approx(1.0)
    assert np.allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)  # spherical
    again_centroids, again_assignment = kmeans(features, k=5, niter=20, seed=1)
    assert np.array_equal(assignment, again_assignment) and np.array_equal(centroids, again_centroids)


def test_kmeans_trains_on_every_point():
    # 1,200 points, k = 2: faiss's default would train on 2 * 256 of them; the centroids would then
    # miss the mean of all their members by about spread / sqrt(256) (~0.006 here).
    features, _ = planted_blobs(points_per_blob=600, blobs=2, dim=8, spread=0.1, seed=2)
    centroids, assignment = kmeans(features, k=2, niter=10, seed=0, spherical=False)
    for cluster in range(2):
        assert np.allclose(centroids[cluster], features[assignment == cluster].mean(axis=0), atol=1e-4)


def test_kmeans_rejects_more_clusters_than_points():
    with pytest.raises(ValueError, match="cannot make 5 clusters of 3 points"):
        kmeans(np.zeros((3, 2), np.float32), k=5, niter=5, seed=0)


def test_audio_prototypes_are_normalised_means_and_report_empty_clusters():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    prototypes = audio_prototypes(features, torch.tensor([0, 0, 1]), k=3)
    half = float(1 / np.sqrt(2))  # mean (0.5, 0.5) normalised
    assert torch.allclose(prototypes.vectors, torch.tensor([[half, half], [1.0, 0.0], [0.0, 0.0]]))
    assert prototypes.empty == [2]
    previous = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.6, 0.8]])
    kept = audio_prototypes(features.numpy(), np.array([0, 0, 1]), k=3, previous=previous)
    assert torch.allclose(kept.vectors[2], torch.tensor([0.6, 0.8]))  # the empty cluster keeps its last vector
    assert torch.allclose(kept.vectors[1], torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\]"):
        audio_prototypes(features, torch.tensor([0, 0, 3]), k=3)


def test_cluster_to_class_majority_many_to_one():
    assignment = np.array([0, 0, 0, 1, 1, 2, 3, 3])
    labels = np.array(["dog", "dog", "cat", "cat", "cat", "bird", "cat", "dog"])
    # cluster 0: dog 2 / cat 1; cluster 1: cat; cluster 2: bird; cluster 3: a tie -> "cat" sorts first.
    assert cluster_to_class(assignment, labels) == {0: "dog", 1: "cat", 2: "bird", 3: "cat"}
    assert cluster_to_class(np.array([4, 4, 9]), np.array([2, 2, 7])) == {4: 2, 9: 7}


def test_nmi():
    assert nmi(np.array([1, 1, 0, 0]), np.array(["a", "a", "b", "b"])) == pytest.approx(1.0)  # a relabelling
    assert nmi(np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])) == pytest.approx(0.0)  # independent
