"""clipdetect: detect diffusion-generated images from CLIP features.

Data flows one way: sources -> extract -> cache -> train -> detector -> evaluate / plots.

The public API is importable from the top level; each name is imported on first use
(PEP 562), so ``import clipdetect`` does not import torch, scikit-learn or pandas::

    import clipdetect
    cache = clipdetect.FeatureCache(clipdetect.SAMPLE_CACHE)  # the bundled sample cache
    det = clipdetect.Detector.fit_cache(cache)
    report = clipdetect.evaluate(det, cache, split="test")
"""
import importlib
import logging

from clipdetect.core.compat import install_lazy_guard

__version__ = "0.1.0"

install_lazy_guard()  # the torchvision guard runs when torchvision/open_clip/timm is first imported

logging.getLogger(__name__).addHandler(logging.NullHandler())

#: public name -> "module:attribute" it is imported from on first access
_API = {
    "extract": "clipdetect.eval.api:extract",
    "evaluate": "clipdetect.eval.api:evaluate",
    "open_source": "clipdetect.data.registry:open_source",
    "FeatureCache": "clipdetect.features.cache:FeatureCache",
    "Detector": "clipdetect.models.detector:Detector",
    "load_detector": "clipdetect.models.detector:load_detector",
    "TrainConfig": "clipdetect.models.train:TrainConfig",
    "DetectorClassifier": "clipdetect.models.estimator:DetectorClassifier",
    "DetectorRocDisplay": "clipdetect.eval.display:DetectorRocDisplay",
    "SplitSpec": "clipdetect.features.splits:SplitSpec",
    "SAMPLE_CACHE": "clipdetect.core.resources:SAMPLE_CACHE",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    target = _API.get(name)
    if target is None:
        raise AttributeError(f"module 'clipdetect' has no attribute {name!r}")
    module, attr = target.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
