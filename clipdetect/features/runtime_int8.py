"""int8 image towers: OpenVINO post-training quantisation (NNCF) with calibration images.

Naive int8 breaks ViT embeddings: a few channels of the residual stream carry activations
hundreds of times larger than the rest, so one per-tensor scale for the inputs of every
linear layer loses the small ones (dynamic int8 in ONNX Runtime: cosine ~0.9 to fp32). The
recipe here is NNCF's transformer preset, which migrates activation outliers into the
weights (SmoothQuant) and calibrates static activation ranges on real images, and keeps in
fp32 the layers measured to be sensitive (:data:`KEEP_FP32`; the numbers are in
``experiments/results/bench_runtime.md``).

Calibration images must look like what will be encoded (a few hundred; the first
:data:`CALIBRATION_SIZE` are used). Their pixels' sha256 is part of the export's cache key, so
the same calibration set finds the same export again.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any, Dict, Iterable, List, Optional

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["CALIBRATION_SIZE", "KEEP_FP32", "calibration_pixels", "calibration_identity", "quantize_openvino"]

#: calibration images used (more cost minutes of export and change little)
CALIBRATION_SIZE = 128
#: node-name patterns (regular expressions) left in fp32 by the int8 export
KEEP_FP32: List[str] = []


class CalibrationError(ValueError):
    """int8 without usable calibration images."""


def calibration_pixels(backbone, images: Iterable[Any], *, limit: int = CALIBRATION_SIZE) -> np.ndarray:
    """Preprocessed float32 pixels [N,3,H,W] of up to ``limit`` images (PIL images, paths or
    bytes), decoded and preprocessed as extraction does; images that cannot be decoded are skipped."""
    from clipdetect.data.imaging import SplitPreprocess, decode_image

    pre = SplitPreprocess(backbone.preprocess)
    arrays = []
    for img in images:
        if len(arrays) >= limit:
            break
        try:
            arrays.append(pre.worker(decode_image(img)[0]))
        except Exception as exc:  # noqa: BLE001 - a bad calibration image is skipped, as in extraction
            logger.warning("calibration image skipped (%s: %s)", type(exc).__name__, exc)
    if not arrays:
        raise CalibrationError("no calibration image could be decoded")
    return np.ascontiguousarray(pre.finish(arrays).float().numpy())


def calibration_identity(pixels: Optional[np.ndarray]) -> Dict[str, Any]:
    """What the cache key records of a calibration set: its size and the sha256 of its pixels."""
    if pixels is None or len(pixels) == 0:
        raise CalibrationError(
            "--precision int8 needs calibration images: pass --calibration SOURCE (a folder, manifest or "
            "parquet of a few hundred images like those you will score; the same source is fine) or, "
            "in Python, calibration=[images]")
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    return {"n": int(len(pixels)), "sha256": hashlib.sha256(pixels.tobytes()).hexdigest(),
            "keep_fp32": list(KEEP_FP32)}


def quantize_openvino(model, backbone, pixels: np.ndarray):
    """The OpenVINO model ``model`` quantised to int8 on the calibration ``pixels``."""
    import nncf

    calibration_identity(pixels)  # refuses an empty set with the message that says what to pass
    data = nncf.Dataset([pixels[i:i + 1] for i in range(len(pixels))])
    logger.info("quantising the image tower of %s to int8 on %d calibration images (a few minutes, once)",
                backbone.spec, len(pixels))
    return nncf.quantize(model, data, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(pixels),
                         ignored_scope=nncf.IgnoredScope(patterns=list(KEEP_FP32), validate=False))
