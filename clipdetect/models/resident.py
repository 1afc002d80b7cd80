"""Training rows held on the device: batches gathered there, no host round trip per step.

When the selected rows fit a device-memory budget (D3's 11.5 M × 1536 fp16 rows are 35 GB,
which fit one H200), :class:`DeviceRows` holds them as one tensor in their storage dtype
(fp16 for an fp16 cache) and the labels as another. Each epoch's plan of the
:class:`~clipdetect.models.train.StratifiedBatchSampler` (the same batches, in the same
order, as the streamed path) is uploaded once as one index tensor; a step's batch is then an
``index_select`` on the device followed by a cast to float32 — exactly the values the
memory-mapped path reads, so the same seed gives the same weights on one device kind.
"""
from __future__ import annotations

import logging
from typing import Iterator, Optional, Tuple

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: share of the device's free memory the resident rows may take (the rest: model, activations)
DEFAULT_BUDGET = 0.5


def storage_dtype(source) -> torch.dtype:
    """float16 when the rows are stored in half precision (a float16 cache or array), else float32."""
    cache = getattr(source, "cache", None)
    half = (str(cache.manifest.get("dtype", "float16")) == "float16" if cache is not None
            else np.asarray(getattr(source, "X", np.zeros(0, np.float32))).dtype == np.float16)
    return torch.float16 if half else torch.float32


def fits(source, device: torch.device, budget: float = DEFAULT_BUDGET) -> bool:
    """Whether ``source``'s rows fit ``budget`` × the device's free memory (CUDA only)."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return len(source) * int(source.dim) * storage_dtype(source).itemsize <= budget * free


class DeviceRows:
    """All rows of ``source`` (an ArraySource or CacheSource) and their labels on ``device``."""

    def __init__(self, source, device: torch.device, *, chunk: int = 262_144):
        self.device, dtype = torch.device(device), storage_dtype(source)
        self.X = torch.empty((len(source), int(source.dim)), dtype=dtype, device=self.device)
        for a in range(0, len(source), chunk):
            idx = np.arange(a, min(a + chunk, len(source)))
            self.X[a:a + len(idx)].copy_(torch.from_numpy(source.batch(idx)).to(dtype))
        self.y = torch.from_numpy(np.asarray(source.y)).to(device=self.device, dtype=torch.float32)
        logger.info("holding %d training rows (%.1f MB, %s) on %s", len(source),
                    self.X.numel() * self.X.element_size() / 1e6, dtype, self.device)

    def batches(self, sampler, epoch: int, limit: Optional[int] = None) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """``(features float32, labels float32)`` of the sampler's epoch, on the device."""
        plan = list(sampler.epoch(epoch))[:None if limit is None else max(0, limit)]
        if not plan:
            return
        bounds = np.cumsum([0] + [len(b) for b in plan]).tolist()
        flat = torch.from_numpy(np.concatenate(plan)).to(self.device, non_blocking=True)
        for a, b in zip(bounds[:-1], bounds[1:]):
            idx = flat[a:b]
            yield self.X.index_select(0, idx).float(), self.y.index_select(0, idx)
