"""clipdetect: detect diffusion-generated images from CLIP features.

Data flows one way: sources -> extract -> cache -> train -> detector -> evaluate / plots.
"""
import logging

from clipdetect.core.compat import install_lazy_guard

__version__ = "0.1.0"

install_lazy_guard()  # the torchvision guard runs when torchvision/open_clip/timm is first imported
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__"]
