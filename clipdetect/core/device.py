"""One check for every ``--device``: a clear error naming the valid choices, before any work."""
from __future__ import annotations

import re

__all__ = ["check_device", "DEVICE_HELP"]

DEVICE_HELP = "cpu, cuda, cuda:N (GPU number N) or mps"
_DEVICE_RE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def check_device(device: str) -> str:
    """``device`` if torch can use it here; otherwise ``ValueError`` saying why and what to pass."""
    spec = str(device).strip().lower()
    if not _DEVICE_RE.match(spec):
        raise ValueError(f"--device {device!r} is not a device; use {DEVICE_HELP}")
    import torch

    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "no CUDA GPU is visible (driver? CUDA_VISIBLE_DEVICES?)")
            raise ValueError(f"--device {device!r}: {why} (torch {torch.__version__}); use --device cpu")
        index = int(spec.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise ValueError(f"--device {device!r}: there are {count} CUDA GPU(s); use cuda:0 .. cuda:{count - 1}")
    if spec == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"--device {device!r}: MPS (Apple GPU) is not available here; use --device cpu")
    return spec
