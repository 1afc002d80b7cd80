"""Ctrl-C latency of `clipdetect extract` with decode workers.

Makes a folder of small random images, starts `python -m clipdetect extract` in its own
process group, waits until the manifest lists a shard, sends SIGINT to the group (what a
terminal's Ctrl-C does) and reports: the exit code, seconds until the one-line message
appeared on stderr, and seconds until the process had exited (which includes the Python
interpreter's own teardown of torch & co.). Run from the repository root:

    python experiments/interrupt_latency.py --images 300 --workers 2
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
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "cache"
        for label in ("real", "fake"):
            (src / label).mkdir(parents=True)
            for i in range(args.images // 2):
                arr = np.random.default_rng(i + 1000 * (label == "fake")).integers(0, 255, (40, 48, 3), np.uint8)
                Image.fromarray(arr).save(src / label / f"{i:04d}.png")
        proc = subprocess.Popen([sys.executable, "-m", "clipdetect", "extract", str(src), "--out", str(out),
                                 "--backbone", "clipdetect-tiny-vit:random", "--workers", str(args.workers),
                                 "--shard-size", "50", "--batch-size", "16", "--no-progress"],
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines = []
        reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), x) for x in proc.stderr))
        reader.start()
        while True:
            try:
                if json.loads((out / "manifest.json").read_text())["shards"]:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.02)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=600)
        t_exit = time.monotonic() - t0
        reader.join()
        msg = [t - t0 for t, x in lines if "interrupted" in x]
        print(json.dumps({"exit_code": proc.returncode, "message_after_s": round(msg[0], 2) if msg else None,
                          "exited_after_s": round(t_exit, 2),
                          "traceback": any("Traceback" in x for _, x in lines)}))


if __name__ == "__main__":
    main()
