"""The D3 path end to end on real images and real CLIP weights, both engines.

D3 itself cannot be downloaded on these machines, so this lays CIFAKE out in D3's schema:
each row's real image is a CIFAR-10 photo served at the row's ``url`` by a loopback HTTP
server (every 7th URL answers 404 and every 11th an HTML page, as dead LAION links do),
and its four ``image_gen0..3`` are four CIFAKE Stable Diffusion v1.4 images, labelled with
D3's model strings in D3's column order (IF, SD-1.4, SD-2.1, SD-XL). (All four come from
SD-1.4; the D3 model names are labels here, so no per-generator result means anything.)
The parquet is named like the hub's ``data/train-00000-of-00001.parquet``, so the ``train``
split selects it. All images come from the first 512 CIFAKE rows, for which independent
reference embeddings exist. Then, as a user would::

    clipdetect fetch --d3 PARQUET --store STORE            # reals over HTTP
    clipdetect extract d3:PARQUET --reals-store STORE --out local/   # local engine
    clipdetect extract ... --engine ray --out ray/                   # SIGKILLed after its
    clipdetect extract ... --engine ray --out ray/                   # first shard; resumed

and checks: the fetch outcome counts; ``real_missing`` equals the dead + HTML rows; the two
caches have the same keys, order, shards and ledger; their embeddings agree; every
embedded image matches the reference embedding of the same CIFAKE image.

    python experiments/d3_end_to_end.py --rows 48 --weights weights/clip_b16.pt
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd

from clipdetect.data.d3_layout import MODELS  # D3's model_gen0..3 strings, IF first
from clipdetect.features.cache import FeatureCache
from common import in_data, save_json


def route(i: int) -> str:
    return "dead" if i % 7 == 3 else "html" if i % 11 == 5 else "ok"


def build(rows: int, out: Path, base_url: str, served: dict):
    """D3-schema parquet from the first 512 CIFAKE rows; fills ``served`` (row id → real
    image bytes) and returns the parquet path and {D3 key: CIFAKE key}."""
    import datasets

    cif = pd.read_parquet(in_data("cifake_dev.parquet")).head(512)
    reals, fakes = cif[cif.label == 0].reset_index(drop=True), cif[cif.label == 1].reset_index(drop=True)
    if rows > min(len(reals), len(fakes) // 4):
        raise SystemExit(f"--rows {rows}: the first 512 CIFAKE rows give at most {len(fakes) // 4}")
    feats = {k: datasets.Value("string") for k in ("id", "original_prompt", "positive_prompt",
                                                   "negative_prompt", "url")}
    for kind, ftype in (("model", "string"), ("width", "int64"), ("height", "int64"),
                        ("num_inference_steps", "int64"), ("filepath", "string")):
        feats.update({f"{kind}_gen{g}": datasets.Value(ftype) for g in range(4)})
    feats.update({f"image_gen{g}": datasets.Image() for g in range(4)})
    data = {k: [] for k in feats}
    mapping = {}
    for i in range(rows):
        rid, real = f"{i:08d}", reals.iloc[i]
        served[rid] = real.image["bytes"]
        mapping[f"{rid}/real"] = real.key
        for k, v in (("id", rid), ("original_prompt", f"a photo of a {real.cifar_class}"),
                     ("positive_prompt", f"a photo of a {real.cifar_class}, highly detailed"),
                     ("negative_prompt", "blurry"), ("url", f"{base_url}/{route(i)}/{rid}.jpg")):
            data[k].append(v)
        for g in range(4):
            fake = fakes.iloc[4 * i + g]
            mapping[f"{rid}/gen{g}"] = fake.key
            for k, v in (("model", MODELS[g]), ("width", 32), ("height", 32), ("num_inference_steps", 50),
                         ("filepath", fake.key), ("image", {"bytes": fake.image["bytes"], "path": None})):
                data[f"{k}_gen{g}"].append(v)
    path = out / "d3" / "data" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    datasets.Dataset.from_dict(data, features=datasets.Features(feats)).to_parquet(str(path))
    return path, mapping


def serve(served):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            kind, _, name = self.path.strip("/").partition("/")
            body = served.get(name.rsplit(".", 1)[0])
            if kind == "dead" or body is None:
                self.send_response(404), self.end_headers()
                return
            html = kind == "html"
            payload = b"<html><body>gone</body></html>" if html else body
            self.send_response(200)
            self.send_header("Content-Type", "text/html" if html else "image/jpeg")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def cli(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out[out.index("{"):])


def killed_ray_run(cmd, out: Path, timeout: float = 1800) -> float:
    """Start a Ray extraction, SIGKILL its process group once the first shard is on disk."""
    proc = subprocess.Popen([sys.executable, "-m", *cmd], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not (out / "img_emb" / "part-00000.npy").exists():
        if proc.poll() is not None or time.time() - t0 > timeout:
            raise SystemExit(f"the Ray run ended (rc {proc.returncode}) before writing a shard")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run(["ray", "stop", "--force"], capture_output=True)  # the orphaned local cluster
    return time.time() - t0


def compare(a_dir: Path, b_dir: Path, mapping, reference) -> dict:
    a, b = FeatureCache(a_dir), FeatureCache(b_dir)
    shards = lambda c: [(s["start"], s["stop"], s["rows"], s["errors"]) for s in c.manifest["shards"]]  # noqa
    ea, eb = a.embeddings("image").astype(np.float64), b.embeddings("image").astype(np.float64)
    ref = np.load(reference, allow_pickle=False)
    index = {k: i for i, k in enumerate(ref["key"])}
    theirs = ref["X"][[index[mapping[k]] for k in a.meta.key]].astype(np.float64)
    cos = (ea * theirs).sum(1) / np.linalg.norm(ea, axis=1) / np.linalg.norm(theirs, axis=1)
    return {"same_keys_and_order": list(a.meta.key) == list(b.meta.key),
            "same_shards": shards(a) == shards(b), "same_ledger": a.errors().equals(b.errors()),
            "max_abs_diff_local_vs_ray": float(np.abs(ea - eb).max()),
            "min_cosine_vs_reference": float(cos.min()), "rows": len(ea),
            "rows_by_generator": a.meta.generator.value_counts().to_dict()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=48, help="D3 rows (5 images each; at most 62)")
    ap.add_argument("--weights", default="weights/clip_b16.pt", help="CLIP ViT-B/16 image tower")
    ap.add_argument("--shard-size", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--streaming", action="store_true", help="the Ray runs stream the parquet (one reader)")
    ap.add_argument("--json", help="also write the report here")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="d3e2e-"))
    served: dict = {}
    srv = serve(served)
    parquet, mapping = build(args.rows, tmp, f"http://127.0.0.1:{srv.server_address[1]}", served)
    report = {"rows": args.rows, "images": 5 * args.rows, "ray_streaming": args.streaming,
              "dead_or_html_urls": sum(route(i) != "ok" for i in range(args.rows))}
    t0 = time.time()
    report["fetch"] = cli("clipdetect", "fetch", "--d3", str(parquet), "--store", str(tmp / "store"),
                          "--workers", "8", "--timeout", "2", "5", "--retries", "1", "--backoff", "0.1")
    report["fetch"]["wall_s"] = round(time.time() - t0, 1)
    common = ["clipdetect", "extract", f"d3:{parquet}", "--reals-store", str(tmp / "store"),
              "--backbone", f"ViT-B-16-quickgelu:{args.weights}", "--batch-size", str(args.batch_size),
              "--shard-size", str(args.shard_size), "--no-progress"]
    report["local"] = cli(*common, "--out", str(tmp / "local"), "--workers", "1")
    ray_cmd = [*common, "--out", str(tmp / "ray"), "--engine", "ray"] + ["--streaming"] * args.streaming
    report["ray_killed_after_s"] = round(killed_ray_run(ray_cmd, tmp / "ray"), 1)
    report["ray_shards_before_resume"] = len(FeatureCache(tmp / "ray").manifest["shards"])
    report["ray_resumed"] = cli(*ray_cmd)
    report["compare"] = compare(tmp / "local", tmp / "ray", mapping, in_data("cifake_dev_ref_b16.npz"))
    srv.shutdown()
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.json:
        save_json(args.json, report)
    c = report["compare"]
    ok = (c["same_keys_and_order"] and c["same_shards"] and c["same_ledger"]
          and report["local"]["errors"].get("real_missing") == report["dead_or_html_urls"]
          and report["ray_resumed"]["resumed_from"] > 0 and report["ray_resumed"]["complete"])
    print("OK" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
