"""Content clusters and content-balanced batches: content alone must not predict the label."""
from dataclasses import replace

import numpy as np
import pytest

from clipdetect.models.content import CONTENT_CLUSTERS, content_clusters, n_content_clusters
from clipdetect.models.samplers import ContentBalancedBatchSampler


def blobs(n_per=300, dim=16, seed=0, centres=2):
    """``centres`` well-separated blobs of ``n_per`` rows each (content), shuffled."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(centres, dim)) * 6
    truth = np.repeat(np.arange(centres), n_per)
    X = mu[truth] + rng.normal(size=(len(truth), dim))
    order = rng.permutation(len(truth))
    return X[order], truth[order]


def same_partition(a, b):
    """True when two labelings split the rows identically (up to renaming the clusters)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_clusters_recover_content_and_are_deterministic():
    X, truth = blobs(centres=4)
    ids = content_clusters(X, 4, seed=1)
    assert ids.dtype == np.int64 and ids.min() == 0 and ids.max() == 3
    assert same_partition(ids, truth)
    np.testing.assert_array_equal(ids, content_clusters(X, 4, seed=1))
    # scale does not matter: clustering is by direction (cosine), as CLIP embeddings are compared
    assert same_partition(content_clusters(X * np.linspace(0.1, 10, len(X))[:, None], 4, seed=1), truth)


def test_cluster_count_follows_the_data_size():
    assert n_content_clusters(10) == 2 and n_content_clusters(64 * 5) == 5
    assert n_content_clusters(10**7) == CONTENT_CLUSTERS
    assert len(content_clusters(np.eye(3), 8)) == 3  # fewer rows than clusters: one each
    with pytest.raises(ValueError, match="k must be >= 1"):
        content_clusters(np.eye(3), 0)


def test_content_balanced_batches_draw_both_classes_alike_from_every_cluster():
    # blob 0 is 90 % fake ("GAN faces"), blob 1 90 % real ("ImageNet"): content predicts the label
    X, truth = blobs(n_per=400)
    y = np.where(np.random.default_rng(2).random(len(truth)) < 0.9, 1 - truth, truth)
    clusters = content_clusters(X, 2)
    sampler = ContentBalancedBatchSampler(y, clusters, 64, seed=5)
    batches = list(sampler.epoch(0))
    idx = np.concatenate(batches)
    assert len(batches) == len(sampler) and (y[idx] == 1).sum() == (y == 1).sum()  # class counts kept
    assert all(0 < y[b].sum() < len(b) for b in batches)
    for c in (0, 1):  # P(cluster | fake) == P(cluster | real) in what is drawn, not in the data
        drawn_fake = (clusters[idx][y[idx] == 1] == c).mean()
        drawn_real = (clusters[idx][y[idx] == 0] == c).mean()
        data_fake, data_real = (clusters[y == 1] == c).mean(), (clusters[y == 0] == c).mean()
        assert abs(data_fake - data_real) > 0.7
        assert drawn_fake == pytest.approx(drawn_real, abs=0.06)
    np.testing.assert_array_equal(idx, np.concatenate(list(ContentBalancedBatchSampler(y, clusters, 64, seed=5).epoch(0))))


def test_the_cap_bounds_how_often_a_lone_minority_row_is_drawn():
    y = np.r_[np.ones(500, int), np.zeros(1, int), np.zeros(499, int)]
    clusters = np.r_[np.zeros(501, int), np.ones(499, int)]  # one real photo among 500 fakes
    p_real = ContentBalancedBatchSampler(y, clusters, 50, cap=4.0).p[1]
    assert p_real[0] * 500 == pytest.approx(4.0, rel=1e-3)  # 4 draws where a uniform draw gives 1
    assert p_real[1:].sum() == pytest.approx(1 - 4.0 / 500, rel=1e-6) and np.ptp(p_real[1:]) < 1e-12
    with pytest.raises(ValueError, match="cap must be >= 1"):
        ContentBalancedBatchSampler(y, clusters, 50, cap=0.5)
    with pytest.raises(ValueError, match="clusters has 3 entries"):
        ContentBalancedBatchSampler(y, clusters[:3], 50)


def test_train_balance_content_on_arrays_and_caches(tmp_path):
    from helpers.synthetic import separable_features, write_layered_cache
    from clipdetect.models.detector import Detector
    from clipdetect.models.sources import ArraySource
    from clipdetect.models.train import TrainConfig, train

    cfg = TrainConfig(epochs=2, batch_size=32, seed=0, balance="content")
    X, y = separable_features(120, 8, seed=0)
    fit = train(ArraySource(X, y), config=cfg, progress=False)
    plain = train(ArraySource(X, y), config=replace(cfg, balance="none"), progress=False)
    import torch
    a, b = fit.head.state_dict(), plain.head.state_dict()
    assert not all(torch.equal(a[k], b[k]) for k in a)  # the batches were drawn another way
    cache = write_layered_cache(tmp_path / "c", n=120, sources=3, group_size=3)
    det = Detector.fit_cache(cache, feature_set="layers", config=TrainConfig(epochs=2, batch_size=32, balance="content"))
    assert det.train_config["balance"] == "content"
