"""Inference runtimes for the image tower: torch (default), ONNX Runtime and OpenVINO on the CPU.

``--runtime onnx|openvino`` exports the backbone's image tower once to ONNX (a dynamic batch
axis, the preprocessed ``[N,3,H,W]`` pixels in, the unnormalised embedding out), converts or
quantises it for the runtime, and keeps the result in a cache folder keyed by the backbone's
identity (its weights' sha256, tag or seed, the preprocessing), the runtime, the precision and
the library versions; later runs load it in a second. The folder is
``$CLIPDETECT_RUNTIME_CACHE`` when set, else ``$XDG_CACHE_HOME/clipdetect/runtimes`` (default
``~/.cache/clipdetect/runtimes``); deleting it only costs a new export.

Precisions: ``fp32`` on every runtime (the same embeddings as torch to ~1e-6); ``bf16`` on torch
and OpenVINO (fast only on CPUs with native bf16: AVX-512 BF16 or AMX; elsewhere OpenVINO runs fp32); ``int8``
on OpenVINO: int8 weights, fp32 activations (:mod:`clipdetect.features.runtime_int8` says why).
The runtimes are optional extras: ``pip install 'clipdetect[onnx]'`` or ``'clipdetect[openvino]'``.

The encoder stage (:func:`clipdetect.features.encoder.encoder_for`) runs a backbone's attached
tower instead of its torch model, so extraction, prediction and ``Detector.score_images`` all
get the runtime from the one place that attaches it: :func:`attach_runtime` (called by
``create_backbone(..., runtime=...)``). The text tower always runs in torch.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["RUNTIMES", "RUNTIME_PRECISIONS", "CACHE_ENV", "RuntimeUnavailable", "check_runtime",
           "runtime_cache_dir", "export_dir", "compile_tower", "attach_runtime", "ImageTower"]

RUNTIMES = ("torch", "onnx", "openvino")
#: the precisions each runtime offers (torch's are those of ``Backbone.to``)
RUNTIME_PRECISIONS = {"torch": ("fp32", "fp16", "bf16"), "onnx": ("fp32",), "openvino": ("fp32", "bf16", "int8")}
#: the extra that installs a runtime, and the modules it needs
EXTRAS = {"onnx": ("onnx", ("onnx", "onnxruntime")), "openvino": ("openvino", ("onnx", "openvino"))}
CACHE_ENV = "CLIPDETECT_RUNTIME_CACHE"
#: bumped when the export changes, so an old cache entry is never loaded by new code
FORMAT_VERSION = 1


class RuntimeUnavailable(ImportError):
    """A runtime whose optional packages are not installed."""


def check_runtime(runtime: str, precision: str = "fp32", device: str = "cpu") -> None:
    """``ValueError`` naming the bad value and the choices, before any work."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r} is not one of {list(RUNTIMES)}")
    allowed = RUNTIME_PRECISIONS[runtime]
    if precision not in allowed:
        hint = ("; int8 runs on --runtime openvino" if precision == "int8" else "")
        raise ValueError(f"--precision {precision!r} is not available on --runtime {runtime} "
                         f"(choose from {list(allowed)}){hint}")
    if runtime != "torch" and not str(device).startswith("cpu"):
        raise ValueError(f"--runtime {runtime} runs on the CPU; use --device cpu (or --runtime torch on {device})")


def require(runtime: str) -> Dict[str, Any]:
    """The runtime's modules, or :class:`RuntimeUnavailable` naming the extra to install."""
    extra, names = EXTRAS[runtime]
    mods = {}
    for name in names:
        try:
            mods[name] = importlib.import_module(name)
        except ImportError as exc:
            raise RuntimeUnavailable(
                f"--runtime {runtime} needs the package {name!r}, which is not installed: "
                f"pip install 'clipdetect[{extra}]' (or use --runtime torch)") from exc
    return mods


def runtime_cache_dir() -> Path:
    """Where exported towers live: ``$CLIPDETECT_RUNTIME_CACHE``, else the user cache folder."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clipdetect" / "runtimes"


def _versions(runtime: str) -> Dict[str, str]:
    import torch

    out = {"torch": torch.__version__}
    for name in EXTRAS[runtime][1] + (("nncf",) if runtime == "openvino" else ()):
        with contextlib.suppress(ImportError):
            out[name] = getattr(importlib.import_module(name), "__version__", "?")
    return out


def export_dir(identity: Dict[str, Any], runtime: str, precision: str, *,
               cache_dir: Optional[Path] = None) -> Tuple[Path, Dict[str, Any]]:
    """The cache folder of one export and the key it is filed under: what an export depends on, the
    backbone identity (not where its file lies), the runtime, the precision, the library versions
    and the export format."""
    ident = {k: v for k, v in identity.items() if k not in ("checkpoint_path", "spec")}
    key = {"identity": ident, "runtime": runtime, "precision": precision, "format": FORMAT_VERSION,
           "versions": _versions(runtime)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    arch = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(identity.get("arch", "model")))
    return Path(cache_dir or runtime_cache_dir()) / f"{arch}-{runtime}-{precision}-{digest}", key


def export_onnx(backbone, path: Path) -> None:
    """The image tower of ``backbone`` (fp32, CPU) as ONNX at ``path``, batch axis dynamic."""
    import torch
    from PIL import Image

    if backbone.dtype != torch.float32 or backbone.device.type != "cpu":
        raise ValueError("export the tower from an fp32 CPU backbone (create_backbone(..., precision='fp32'))")

    class Tower(torch.nn.Module):  # ``encode_image`` as the plain ``forward`` the exporter traces
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.encode_image(x)

    one_image = backbone.preprocess(Image.new("RGB", (256, 256), (127, 127, 127)))[None].float()
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused inference kernel has no ONNX form
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(Tower(backbone.model).eval(), (one_image,), str(path),
                              input_names=["pixels"], output_names=["embedding"], opset_version=17,
                              dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}}, dynamo=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


class ImageTower:
    """A compiled image tower: float32 pixels [N,3,H,W] → embeddings [N,D] (not normalised)."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], runtime: str, precision: str, path: Path):
        self.run, self.runtime, self.precision, self.path = run, runtime, precision, Path(path)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(self.run(np.ascontiguousarray(pixels, np.float32)), np.float32)

    def __repr__(self) -> str:
        return f"ImageTower({self.runtime}, {self.precision}, {str(self.path)!r})"


def _threads() -> int:
    import torch

    return max(1, torch.get_num_threads())


def _load_onnx(folder: Path, precision: str) -> Callable:
    ort = require("onnx")["onnxruntime"]
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = _threads(), 1
    sess = ort.InferenceSession(str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"pixels": x})[0]


def _load_openvino(folder: Path, precision: str) -> Callable:
    ov = require("openvino")["openvino"]
    hint = "bf16" if precision == "bf16" else "f32"  # int8 models keep f32 for what is not quantised
    compiled = ov.Core().compile_model(str(folder / "model.xml"), "CPU", {
        "INFERENCE_NUM_THREADS": _threads(), "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint})
    return lambda x: compiled(x)[0]


def _build(backbone, runtime: str, precision: str, folder: Path) -> None:
    """Write the export into ``folder`` (a fresh temporary folder)."""
    export_onnx(backbone, folder / "model.onnx")
    if runtime == "openvino":
        ov = require("openvino")["openvino"]
        model = ov.Core().read_model(str(folder / "model.onnx"))
        if precision == "int8":
            from clipdetect.features.runtime_int8 import compress_openvino

            model = compress_openvino(model)
        ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)
        (folder / "model.onnx").unlink()


def compile_tower(backbone, runtime: str, precision: str = "fp32", *,
                  cache_dir: Optional[Path] = None) -> ImageTower:
    """The backbone's image tower on ``runtime`` at ``precision``: loaded from the cache, or
    exported (and quantised) once and filed there first."""
    check_runtime(runtime, precision)
    if runtime == "torch":
        raise ValueError("the torch runtime runs the backbone itself; attach no tower")
    require(runtime)
    folder, key = export_dir(backbone.identity, runtime, precision, cache_dir=cache_dir)
    if not (folder / "export.json").is_file():
        _export_into(backbone, runtime, precision, folder, key)
    load = _load_onnx if runtime == "onnx" else _load_openvino
    logger.info("image tower on %s %s from %s", runtime, precision, folder)
    return ImageTower(load(folder, precision), runtime, precision, folder)


def _export_into(backbone, runtime: str, precision: str, folder: Path, key: Dict) -> None:
    from clipdetect.core.io import tmp_name, write_json

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(folder)
    tmp.mkdir()
    t0 = time.perf_counter()
    logger.info("exporting the image tower of %s to %s %s (once; cached in %s)", backbone.spec, runtime,
                precision, folder.parent)
    try:
        _build(backbone, runtime, precision, tmp)
        write_json(tmp / "export.json", {**key, "seconds": round(time.perf_counter() - t0, 1)})
        try:
            os.rename(tmp, folder)
        except OSError:  # another process filed the same export first: keep theirs
            if not (folder / "export.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def attach_runtime(backbone, runtime: str = "torch", precision: str = "fp32", **kw):
    """Make the encoder stage run ``backbone``'s image tower on ``runtime`` (returns ``backbone``).
    ``torch`` detaches any tower; ``kw`` go to :func:`compile_tower`."""
    check_runtime(runtime, precision, str(backbone.device))
    backbone.tower = None if runtime == "torch" else compile_tower(backbone, runtime, precision, **kw)
    return backbone
