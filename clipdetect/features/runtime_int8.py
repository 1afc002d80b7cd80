"""int8 image towers on OpenVINO: int8 weights, fp32 activations (NNCF weight compression).

Every linear layer's and the patch embedding's weights are stored as int8 with an asymmetric
scale and zero point per output channel, and widened to fp32 inside the matmul; activations
stay fp32. Nothing depends on data, so no calibration images are needed and the export is a
function of the weights alone.

Why not int8 activations: ViT activations have outlier channels (a few channels of the residual
stream hundreds of times larger than the rest), so one scale per tensor loses the small ones.
Measured on real CLIP ViT-B/16 weights on an AVX2 CPU (``experiments/results/int8_recipes.md``): dynamic int8
in ONNX Runtime gives cosine ~0.9 to fp32; OpenVINO static int8 (NNCF post-training
quantisation, transformer preset with SmoothQuant, 64 calibration images) was the fastest
(1.7–1.9× torch fp32) but reached cosine 0.988 mean / 0.963 min, and keeping the MLP output
layers or the attention matmuls in fp32, or 7-bit weights (overflow fix), did not lift it
above 0.989 mean. Weight-only int8: cosine 0.999 mean.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

logger = logging.getLogger(__name__)

__all__ = ["compress_openvino"]


def compress_openvino(model):
    """The OpenVINO model ``model`` with int8 weights (asymmetric, per output channel)."""
    import nncf

    logger.info("compressing the image tower's weights to int8 (once)")
    with nncf_output_on_stderr():
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)


@contextlib.contextmanager
def nncf_output_on_stderr() -> Iterator[None]:
    """nncf writes to stdout (its log through its own handler, its progress bar to
    ``sys.stdout``), which would corrupt what a command writes there (``extract --json``,
    ``predict --out -``); while this runs, its records go through the toolkit's logging and its
    bar to stderr."""
    log = logging.getLogger("nncf")
    handlers, propagate = log.handlers[:], log.propagate
    log.handlers, log.propagate = [], True
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        log.handlers, log.propagate = handlers, propagate
