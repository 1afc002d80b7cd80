"""How ``clipdetect serve --workers N`` spreads keep-alive connections over its worker processes.

Starts a real server on a loopback port, then ``--trials`` times: opens ``--clients`` keep-alive
connections at once (as each phase of ``serve_load.py`` does), sends ``--rounds`` images on each
(a client told ``Connection: close`` reconnects), and reads with ``ss`` which worker process owns
each open connection. A keep-alive connection stays with
the worker that accepted it, so a skewed split leaves one worker's clients queueing behind a busy
core while the other worker idles: the phase's throughput then depends on the draw. ::

    python experiments/serve_balance.py DETECTOR --workers 2 --clients 16 --trials 10
"""
from __future__ import annotations

import argparse
import collections
import io
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from serve_load import LeanConnection, free_port, start_server


def owners(port: int) -> collections.Counter:
    """Established connections on ``port``'s server side, counted per owning process id."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"], capture_output=True,
                         text=True, check=True).stdout
    return collections.Counter(line.split("pid=")[1].split(",")[0] for line in out.splitlines() if "pid=" in line)


def trial(port: int, clients: int, blob: bytes, rounds: int) -> list:
    conns = [LeanConnection(port) for _ in range(clients)]

    def client(conn):
        for _ in range(rounds):  # a client whose answer said Connection: close reconnects
            conn.post(blob)
    threads = [threading.Thread(target=client, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    split = sorted(owners(port).values(), reverse=True)
    for c in conns:
        c.close()
    return split


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("detector")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5, help="requests per client before the split is read")
    args = ap.parse_args(argv)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
    port, splits = free_port(), []
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_server(args.detector, port, ["--workers", str(args.workers)], Path(tmp) / "server.log")
        try:
            for _ in range(args.trials):
                splits.append(trial(port, args.clients, buf.getvalue(), args.rounds))
                time.sleep(0.5)  # the closed connections leave the table
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    fair = args.clients / args.workers
    worst = [s[0] / fair for s in splits]
    print(json.dumps({"workers": args.workers, "clients": args.clients, "rounds": args.rounds, "splits": splits,
                      "busiest_over_fair_share": [round(w, 2) for w in worst],
                      "mean_busiest_over_fair_share": round(float(np.mean(worst)), 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
