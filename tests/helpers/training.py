"""The one fast training config of the tests, and detectors trained with it in a second.

``FAST`` is small and quick but still separates the synthetic caches; a test that needs another
value for what it asserts derives it: ``dataclasses.replace(FAST, epochs=12)``."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from clipdetect.models.train import TrainConfig

FAST = TrainConfig(batch_size=64, epochs=4, lr=1e-2, width=32, patience=0)

#: a linear probe trained with BCE, no SAM: the head the evaluation and report tests score
FAST_LINEAR = replace(FAST, head="linear", loss="bce", sam=False, lr=0.05, width=None)

#: ``FAST`` as :class:`clipdetect.models.estimator.DetectorClassifier` parameters (a one-block
#: head: still learns the scikit-learn checks' toy problems, accuracy > 0.83 on blobs)
FAST_ESTIMATOR = {k: getattr(replace(FAST, epochs=3, width=8, depth=1, lr=3e-2), k)
                  for k in ("epochs", "batch_size", "width", "depth", "lr")}


def tiny_detector(backbone, *, temperature: float = 2.0):
    """A linear head on the tiny backbone's 32-d embeddings, fit on random features in a second
    (class: the first axis's sign); its scores only need to exist."""
    from clipdetect.models.detector import Detector

    from helpers.images import TINY

    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, backbone.embed_dim)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    config = replace(FAST_LINEAR, epochs=2, batch_size=16, lr=None, val_fraction=0.0, test_fraction=0.0)
    det = Detector.fit(X, y, config=config, backbone={**backbone.identity, "spec": TINY})
    return det.replace(temperature=temperature)


def fit_on_synthetic(root, config: TrainConfig = FAST, *, feature_set: str = "image", **cache_options):
    """A synthetic cache written at ``root`` (:func:`helpers.synthetic.write_synthetic_cache` with
    ``cache_options``) and a detector fit on it with ``config``: (cache, detector)."""
    from clipdetect.models.detector import Detector

    from helpers.synthetic import write_synthetic_cache

    cache = write_synthetic_cache(root, **cache_options)
    return cache, Detector.fit_cache(cache, feature_set=feature_set, config=config)


def interrupt_on_call(real, n: int = 3):
    """``real`` wrapped to raise KeyboardInterrupt on its ``n``-th call (a Ctrl-C mid-run)."""
    calls = {"n": 0}

    def wrapped(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*a, **k)
    return wrapped
