"""Training checkpoints: ``DIR/NAME.safetensors`` (weights, optimiser state and random-number
generator state as tensors) and ``DIR/NAME.json`` (everything else), written atomically.

Modules are saved under their name (``head.…``, ``student.…``); an optimiser's state dict,
nested or not (SAM keeps its base optimiser's under ``base_optimizer``), is split into tensors
(``optim.…``) and a JSON skeleton that names them, so nothing is ever pickled.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import torch

from clipdetect.core.io import read_json, write_json
from clipdetect.core.tensorfile import read_safetensors, save_safetensors

logger = logging.getLogger(__name__)

__all__ = ["save_checkpoint", "load_checkpoint", "check_resumable"]

_TENSOR = "__tensor__"


def _split(obj: Any, prefix: str, tensors: Dict[str, torch.Tensor]) -> Any:
    """``obj`` with every tensor replaced by ``{"__tensor__": key}`` (the tensor stored in ``tensors``)."""
    if torch.is_tensor(obj):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {_TENSOR: prefix}
    if isinstance(obj, Mapping):
        return {"keys": [_split(k, f"{prefix}.k{i}", tensors) for i, k in enumerate(obj)],
                "values": [_split(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj.values())]}
    if isinstance(obj, (list, tuple)):
        return {"list": [_split(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    return obj


def _join(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict) and _TENSOR in obj:
        return tensors[obj[_TENSOR]]
    if isinstance(obj, dict) and "keys" in obj:
        return {_join(k, tensors): _join(v, tensors) for k, v in zip(obj["keys"], obj["values"])}
    if isinstance(obj, dict) and "list" in obj:
        return [_join(v, tensors) for v in obj["list"]]
    return obj


def save_checkpoint(folder: str | Path, name: str, *, weights: Mapping[str, Mapping[str, torch.Tensor]],
                    opt: Optional[torch.optim.Optimizer] = None, info: Dict[str, Any],
                    tensors: Optional[Mapping[str, torch.Tensor]] = None,
                    device: Optional[torch.device] = None) -> None:
    """``folder/NAME.safetensors`` (+ ``NAME.json``): ``weights`` (state dicts by module name), the
    optimiser's state, extra ``tensors`` and, with ``device``, the random-number generators' state."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    flat = {f"{m}.{k}": v.detach().cpu().contiguous() for m, sd in weights.items() for k, v in sd.items()}
    flat.update({f"extra.{k}": v.detach().cpu().contiguous() for k, v in (tensors or {}).items()})
    if device is not None:
        flat["rng.cpu"] = torch.get_rng_state()
        if device.type == "cuda":
            flat["rng.cuda"] = torch.cuda.get_rng_state(device)
    skeleton = _split(opt.state_dict(), "optim", flat) if opt is not None else None
    save_safetensors(flat, folder / f"{name}.safetensors")
    write_json(folder / f"{name}.json", {**info, "optimizer": skeleton})


def load_checkpoint(folder: str | Path, name: str, *, modules: Sequence[str],
                    opt: Optional[torch.optim.Optimizer] = None,
                    device: Optional[torch.device] = None) -> Dict[str, Any]:
    """Read what :func:`save_checkpoint` wrote: the JSON record, with the state dicts of ``modules``
    under ``"weights"`` and the extra tensors under ``"tensors"``; the optimiser's state goes into
    ``opt`` and, with ``device``, the random-number generators are restored."""
    folder = Path(folder)
    flat = read_safetensors(folder / f"{name}.safetensors")
    info = read_json(folder / f"{name}.json", what="training checkpoint")
    info["weights"] = {m: {k[len(m) + 1:]: v for k, v in flat.items() if k.startswith(f"{m}.")} for m in modules}
    if opt is not None and info.get("optimizer"):
        opt.load_state_dict(_join(info["optimizer"], flat))
    if device is not None and "rng.cpu" in flat:
        torch.set_rng_state(flat["rng.cpu"])
        if device.type == "cuda" and "rng.cuda" in flat:
            torch.cuda.set_rng_state(flat["rng.cuda"], device)
    info["tensors"] = {k[6:]: v for k, v in flat.items() if k.startswith("extra.")}
    return info


def check_resumable(saved: Dict[str, Any], now: Dict[str, Any], *, where: str, free: Sequence[str] = ()) -> None:
    """Refuse to resume a run started with other settings than ``now`` (``free`` ones may change)."""
    diff = {k: (saved.get(k), now[k]) for k in now if k not in free and saved.get(k) != now[k]}
    if diff:
        raise ValueError(f"cannot resume {where!r}: the run was started with other settings "
                         f"(saved vs now: {diff}); use the same options or a new --out")
