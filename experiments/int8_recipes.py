"""int8 recipes for the CLIP ViT-B/16 image tower tried before choosing one: per-row cosine to torch fp32.

Exports the tower to ONNX (as ``--runtime onnx`` does), then for each recipe builds the int8
model and embeds ``--images`` CIFAKE rows (rows 0..N-1; calibration rows follow them):

* ``ort-dynamic``, ``ort-dynamic-pc``: ONNX Runtime dynamic int8 (per tensor / per channel weights);
* ``ov-weights``: OpenVINO with int8 weights, fp32 activations (NNCF ``compress_weights`` INT8_ASYM),
  the recipe ``--precision int8`` uses;
* ``ov-static``: OpenVINO static int8 (NNCF ``quantize``, transformer preset: SmoothQuant + mixed
  preset, ``--calibration`` images); ``ov-static-keep-fc2``: the MLP output layers kept in fp32;
  ``ov-static-keep-attn``: the attention score / value matmuls kept in fp32; ``ov-static-ofix``:
  7-bit weights against int16 overflow on CPUs without VNNI.

Speed is measured by ``bench_runtime.py`` (interleaved); this script only checks fidelity.
Each static recipe takes minutes (3–20 on a loaded 2-core machine) to calibrate.

    nice -n 10 python experiments/int8_recipes.py --recipes ov-weights,ov-static
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import b16_backbone, cifake_parquet, save_json

HERE = Path(__file__).resolve().parent


def static_kwargs(name: str):
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    return {"ov-static": {},
            "ov-static-keep-fc2": {"ignored_scope": nncf.IgnoredScope(patterns=[".*mlp/c_proj.*"])},
            "ov-static-keep-attn": {"ignored_scope": nncf.IgnoredScope(patterns=[".*attn/MatMul_1", ".*attn/MatMul_2"])},
            "ov-static-ofix": {"advanced_parameters": AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE)},
            }[name]


def build(name: str, onnx_path: Path, work: Path, cal: np.ndarray, threads: int):
    """A function pixels → embeddings for recipe ``name``."""
    if name.startswith("ort"):
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out = work / f"{name}.onnx"
        quantize_dynamic(str(onnx_path), str(out), weight_type=QuantType.QInt8, per_channel=name.endswith("-pc"))
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
        return lambda x: sess.run(None, {"pixels": x})[0]
    import nncf
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(onnx_path))
    if name == "ov-weights":
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    else:
        data = nncf.Dataset([cal[i:i + 1] for i in range(len(cal))])
        model = nncf.quantize(model, data, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(cal),
                              **static_kwargs(name))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
    return lambda x: compiled(x)[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", help="default: the ViT-B/16 weights in $CLIPDETECT_DATA/weights")
    ap.add_argument("--data", help="CIFAKE parquet (default $CLIPDETECT_DATA/cifake_dev.parquet)")
    ap.add_argument("--recipes", default="ort-dynamic,ov-weights,ov-static")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--calibration", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "int8_recipes.json"))
    args = ap.parse_args(argv)
    args.backbone, args.data = args.backbone or b16_backbone(), args.data or cifake_parquet()

    import torch

    torch.set_num_threads(args.threads)
    from bench_runtime import cifake
    from clipdetect.data.imaging import SplitPreprocess
    from clipdetect.features.backbones import create_backbone
    from clipdetect.features.runtime import export_onnx

    bb = create_backbone(args.backbone)
    pre = SplitPreprocess(bb.preprocess)
    arrays, _ = cifake(pre, args.data, 0, args.images + args.calibration)
    x = pre.finish(arrays[:args.images]).float().numpy()
    cal = pre.finish(arrays[args.images:]).float().numpy()
    ref = np.concatenate([bb.encode_images(torch.from_numpy(x[i:i + 16])) for i in range(0, len(x), 16)])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "tower.onnx"
        export_onnx(bb, onnx_path)
        for name in [r.strip() for r in args.recipes.split(",") if r.strip()]:
            t0 = time.perf_counter()
            run = build(name, onnx_path, Path(tmp), cal, args.threads)
            e = np.concatenate([run(x[i:i + 16]) for i in range(0, len(x), 16)])
            cos = (e * ref).sum(1) / np.linalg.norm(e, axis=1)
            results[name] = {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
                             "build_seconds": round(time.perf_counter() - t0, 1)}
            print(name, results[name], flush=True)
    save_json(args.out, {"config": vars(args), "recipes": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
