"""clipdetect: detect diffusion-generated images from CLIP features.

Data flows one way: sources -> extract -> cache -> train -> detector -> evaluate / plots.
"""
import logging

from clipdetect.core.compat import install_torchvision_guard

__version__ = "0.1.0"

install_torchvision_guard()
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__"]
