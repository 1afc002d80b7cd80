"""Bounded loopback load test of ``clipdetect serve``: throughput vs ``clipdetect predict``, latency,
overload, recovery, hostile uploads, memory and SIGTERM — against a real server process.

Phases, all on 127.0.0.1, each bounded in requests or seconds:

1. ``predict``: ``clipdetect predict DETECTOR FOLDER`` on the same N images (its own timing,
   model load excluded), the reference throughput; run again after phase 6, and the faster
   of the two runs is the reference (the CPU is shared).
2. ``load``: ``--clients`` concurrent clients (keep-alive connections, one image per request,
   raw body) send the N images once between them; a 503 is retried after its Retry-After;
   p50/p99 latency of the 200 answers, throughput (images scored / wall time).
3. ``overload``: 4 × ``--max-concurrent`` clients for ``--overload-seconds``: every answer must
   be 200 or 503 with Retry-After (a 503 is retried after 50 ms).
4. ``recovery``: once the backlog of phase 3 has drained (its time is recorded), phase 2
   again; throughput relative to phase 2.
5. ``hostile``: :mod:`serve_attacks` (bombs, truncated, polyglots, 1×100000, empty bodies, wrong
   content types, 10,000 parts, oversized and slow-drip bodies); each must get its 4xx naming
   the limit and the service must stay healthy.
6. ``sigterm``: SIGTERM while clients are sending; the exit code and the time to drain.

Before phase 2, ``http_ceiling``: the same clients send ``GET /healthz`` on keep-alive
connections (no body, no image, no encoder) for ``--ceiling-seconds``: the requests per second
this server and these clients manage at all on this machine, an upper bound on the images per
second of one-image requests whatever the model.

The server's resident memory is sampled every 0.5 s throughout. Prints one JSON document and
writes it to experiments/results/serve_load_TAG.json.

    PYTHONPATH=. python experiments/serve_load.py DETECTOR --n 256 --tag tiny
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import psutil

import serve_attacks
from common import cifake_parquet, save_json

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def write_images(parquet: str, n: int, folder: Path) -> List[bytes]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(parquet).read_row_group(0, columns=["image"]).slice(0, n).to_pylist()
    folder.mkdir(parents=True, exist_ok=True)
    blobs = [row["image"]["bytes"] for row in table]
    for i, data in enumerate(blobs):
        (folder / f"{i:05d}.jpg").write_bytes(data)
    return blobs


def child_env() -> Dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def run_predict(detector: str, folder: Path, out: Path, batch_size: int) -> Dict[str, Any]:
    cmd = [sys.executable, "-m", "clipdetect", "predict", detector, str(folder), "--out", str(out),
           "--no-progress", "--json", "--force", "--batch-size", str(batch_size)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    if res.returncode:
        raise RuntimeError(f"predict failed: {res.stderr[-2000:]}")
    summary = json.loads(res.stdout)
    return {"command": " ".join(cmd[1:]), "images": summary["n"], "seconds": summary["seconds"],
            "images_per_second": summary["images_per_second"], "wall_seconds_with_load": time.perf_counter() - t0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(detector: str, port: int, extra: List[str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "clipdetect", "serve", detector, "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=child_env())
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
        if serve_attacks.healthy(port):
            return proc
        time.sleep(0.5)
    raise RuntimeError("the server did not start within 300 s")


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.proc, self.every, self.samples, self.stop_flag = psutil.Process(pid), every, [], threading.Event()
        self.t0 = time.perf_counter()

    def run(self):
        while not self.stop_flag.is_set():
            try:  # the server and its worker processes (serve --workers)
                procs = [self.proc, *self.proc.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in procs)
            except psutil.Error:
                return
            self.samples.append((time.perf_counter() - self.t0, rss))
            time.sleep(self.every)

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def between(self, a: float, b: float) -> Dict[str, float]:
        mb = [r / 2 ** 20 for t, r in self.samples if a <= t <= b]
        return {"rss_mb_first": round(mb[0], 1), "rss_mb_last": round(mb[-1], 1), "rss_mb_max": round(max(mb), 1),
                "samples": len(mb)} if mb else {}


def request_body(data):
    """``(body, content type)``: the raw body for one image, multipart for a tuple of images."""
    if isinstance(data, tuple):
        return (serve_attacks.multipart([(f"{i}.jpg", d) for i, d in enumerate(data)]),
                f"multipart/form-data; boundary={serve_attacks.BOUNDARY}")
    return data, "image/jpeg"


class StdlibConnection:
    """``http.client`` keep-alive connection (``--client stdlib``)."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def post(self, data):
        body, ctype = request_body(data)
        return self.send("POST", "/v1/score", body, {"Content-Type": ctype})

    def get(self, path: str):
        return self.send("GET", path, None, {})

    def send(self, method: str, path: str, body, headers):
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        return resp.status, resp.getheader("Retry-After"), resp.read()

    def close(self) -> None:
        self.conn.close()


class LeanConnection:
    """A minimal keep-alive HTTP/1.1 client (``--client lean``, the default): one ``sendall`` per
    request and the answer read by its Content-Length. The clients share the server's CPU on this
    machine, and ``http.client`` spends several times more of it per request, CPU the server would
    otherwise have (each phase records ``client_cpu_seconds``). Reconnects after ``Connection:
    close``; an answer without Content-Length (chunked) is not expected from the server and raises."""

    def __init__(self, port: int):
        self.port, self.sock, self.buf = port, None, b""

    def post(self, data):
        body, ctype = request_body(data)
        return self.send(b"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %s\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (ctype.encode(), len(body), body))

    def get(self, path: str):
        return self.send(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path.encode())

    def send(self, request: bytes):
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=120)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buf = b""
        self.sock.sendall(request)
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._recv()
        lines = self.buf[:end].decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        if "content-length" not in headers:
            raise http.client.HTTPException(f"an answer without Content-Length: {lines[0]!r}")
        n, self.buf = int(headers["content-length"]), self.buf[end + 4:]
        while len(self.buf) < n:
            self._recv()
        answer, self.buf = self.buf[:n], self.buf[n:]
        if headers.get("connection", "").lower() == "close":
            self.close()
        return int(lines[0].split(" ", 2)[1]), headers.get("retry-after"), answer

    def _recv(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buf += chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None


CLIENTS = {"lean": LeanConnection, "stdlib": StdlibConnection}


def client_loop(port: int, jobs, results: List, stop_at: float = float("inf"), retry_503: bool = False,
                stop_on_error: bool = False, honour: bool = False, client: str = "lean"):
    connect = CLIENTS[client]
    conn = connect(port)
    for data in jobs:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                status, retry_after, body = conn.post(data)
            except (OSError, http.client.HTTPException) as exc:
                results.append(("conn_error", time.perf_counter() - t0, type(exc).__name__, None))
                conn.close()
                if stop_on_error:
                    return
                conn = connect(port)
                break
            results.append((status, time.perf_counter() - t0, retry_after, body if status != 200 else None))
            if status == 503 and retry_503:  # an abusive client: again after 50 ms
                time.sleep(0.05)
                continue
            if status == 503 and honour:  # a polite client: again after Retry-After, on a fresh connection
                time.sleep(min(float(retry_after or 1), max(0.0, stop_at - time.perf_counter())))
                conn.close()  # the server closes keep-alive connections idle for 5 s
                conn = connect(port)
                continue
            break
        if time.perf_counter() >= stop_at:
            break
    conn.close()


def phase(port: int, blobs: List[bytes], clients: int, rss: RssSampler, *, seconds: float = float("inf"),
          repeat: int = 1, retry_503: bool = False, per_request: int = 1, honour: bool = False,
          cycle: bool = False, client: str = "lean") -> Dict[str, Any]:
    jobs = [[] for _ in range(clients)]
    k = per_request
    units = [blobs[i] if k == 1 else tuple(blobs[i:i + k]) for i in range(0, len(blobs), k)]
    for i, data in enumerate(units * repeat):
        jobs[i % clients].append(data)
    results: List = []
    t_rss, cpu0, t0 = rss.now(), time.process_time(), time.perf_counter()
    stop_at = t0 + seconds
    threads = [threading.Thread(target=client_loop, args=(port, _cycle(j) if cycle else iter(j), results, stop_at,
                                                          retry_503, False, honour, client)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r[0] == 200]
    images_ok = len(ok) * per_request
    lat = np.array([r[1] for r in ok]) * 1000 if ok else np.array([np.nan])
    codes: Dict[str, int] = {}
    for r in results:
        codes[str(r[0])] = codes.get(str(r[0]), 0) + 1
    bad_503 = sum(1 for r in results if r[0] == 503 and not r[2])
    error_codes: Dict[str, int] = {}
    for r in results:
        if r[0] != 200 and r[3]:
            try:
                code = f"{r[0]} {json.loads(r[3])['error']['code']}"
            except (ValueError, KeyError, TypeError):
                code = f"{r[0]} ?"
            error_codes[code] = error_codes.get(code, 0) + 1
    return {"clients": clients, "requests": len(results), "status_codes": codes, "error_codes": error_codes,
            "images_scored": images_ok, "seconds": round(wall, 3),
            "images_per_request": per_request, "client": client,
            "images_per_second": round(images_ok / wall, 3), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1), "503_without_retry_after": bad_503,
            "client_cpu_seconds": round(time.process_time() - cpu0, 2), **rss.between(t_rss, rss.now()),
            "_results": results}


def http_ceiling(port: int, clients: int, seconds: float, client: str = "lean") -> Dict[str, Any]:
    """Requests/s of ``GET /healthz`` from ``clients`` keep-alive clients for ``seconds``."""
    counts, stop_at = [0] * clients, time.perf_counter() + seconds

    def loop(i: int) -> None:
        conn = CLIENTS[client](port)
        while time.perf_counter() < stop_at:
            counts[i] += conn.get("/healthz")[0] == 200
        conn.close()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "client": client, "requests_ok": sum(counts), "seconds": round(wall, 3),
            "requests_per_second": round(sum(counts) / wall, 1)}


def wait_idle(port: int, limit: float = 600.0) -> float:
    """Seconds until the server has no request in flight and no image queued."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        health = json.loads(serve_attacks.http(port, "GET", "/healthz", {})[2])
        if health["inflight"] == 0 and health["queued_images"] == 0:
            break
        time.sleep(0.25)
    return round(time.perf_counter() - t0, 2)


def _cycle(items):
    while True:
        yield from items


def sigterm_phase(proc: subprocess.Popen, port: int, blobs: List[bytes], clients: int,
                  client: str = "lean") -> Dict[str, Any]:
    results: List = []
    threads = [threading.Thread(target=client_loop, args=(port, _cycle(blobs[i::clients]), results,
                                                          time.perf_counter() + 20, False, True, False, client))
               for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    before = len(results)
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=120)
    drain = time.perf_counter() - t0
    for t in threads:
        t.join()
    after = results[before:]
    codes: Dict[str, int] = {}
    for r in after:
        codes[str(r[0])] = codes.get(str(r[0]), 0) + 1
    return {"exit_code": rc, "seconds_to_exit": round(drain, 3), "answers_before_sigterm": before,
            "answers_after_sigterm": codes}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("detector")
    ap.add_argument("--images", help="parquet with an image column (default $CLIPDETECT_DATA/cifake_dev.parquet)")
    ap.add_argument("--n", type=int, default=256, help="images per phase")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--max-concurrent", type=int, default=16)
    ap.add_argument("--overload-seconds", type=float, default=15.0)
    ap.add_argument("--ceiling-seconds", type=float, default=5.0,
                    help="length of the GET /healthz phase (0: skip it)")
    ap.add_argument("--phase-seconds", type=float, default=900.0, help="bound of the load and recovery phases")
    ap.add_argument("--batch-size", type=int, default=32, help="predict's --batch-size and the server's --max-batch")
    ap.add_argument("--tag", default="tiny")
    ap.add_argument("--per-request", type=int, default=1,
                    help="images per request in the load and recovery phases (1: raw body; more: multipart)")
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS of both predict and the server (default: unset)")
    ap.add_argument("--workers", type=int, default=1,
                    help="the server's --workers (limits are per worker: overload sends 4 x workers x max-concurrent)")
    ap.add_argument("--client", choices=sorted(CLIENTS), default="lean",
                    help="the load clients' HTTP code: lean (default; little CPU per request) or stdlib (http.client)")
    ap.add_argument("--server-arg", action="append", default=[], help="extra clipdetect serve option (repeat)")
    args = ap.parse_args(argv)
    args.images = args.images or cifake_parquet()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)

    tmp = Path(tempfile.mkdtemp(prefix="serve_load_"))
    blobs = write_images(args.images, args.n, tmp / "images")
    out: Dict[str, Any] = {"command": "python experiments/serve_load.py " + " ".join(argv or sys.argv[1:]),
                           "images": len(blobs), "cpus": os.cpu_count(),
                           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "loadavg_start": os.getloadavg()}
    out["predict"] = run_predict(args.detector, tmp / "images", tmp / "pred.csv", args.batch_size)
    print("predict", json.dumps(out["predict"]), flush=True)
    port = free_port()
    proc = start_server(args.detector, port, ["--max-concurrent", str(args.max_concurrent), "--max-batch",
                                              str(args.batch_size), "--workers", str(args.workers), *args.server_arg], tmp / "server.log")
    rss = RssSampler(proc.pid)
    rss.start()
    try:
        phase(port, blobs[: args.clients], args.clients, rss, honour=True, client=args.client)  # warm-up
        if args.ceiling_seconds > 0:
            out["http_ceiling"] = http_ceiling(port, args.clients, args.ceiling_seconds, args.client)
            print("http_ceiling", json.dumps(out["http_ceiling"]), flush=True)
        k = {"per_request": args.per_request, "honour": True, "seconds": args.phase_seconds, "client": args.client}
        for name, kw in (("load", k), ("overload", {"seconds": args.overload_seconds, "retry_503": True,
                                                    "cycle": True, "client": args.client}), ("recovery", k)):
            clients = 4 * args.workers * args.max_concurrent if name == "overload" else args.clients
            if name == "recovery":
                out["backlog_drained_seconds"] = wait_idle(port)
            res = phase(port, blobs, clients, rss, **kw)
            if name == "overload":
                res["other_than_200_503"] = {k: v for k, v in res["status_codes"].items() if k not in ("200", "503")}
                bodies = [r[3] for r in res["_results"] if r[0] == 503][:1]
                res["example_503_body"] = json.loads(bodies[0]) if bodies else None
            res.pop("_results")
            out[name] = res
            print(name, json.dumps(res), flush=True)
        limits = json.loads(serve_attacks.http(port, "GET", "/v1/model", {})[2])["limits"]
        t_rss = rss.now()
        attacks = serve_attacks.run_attacks(port, limits)
        out["hostile"] = {"all_as_expected": all(a.ok for a in attacks), "healthy_after_each":
                          all(a.healthy_after for a in attacks), **rss.between(t_rss, rss.now()),
                          "attacks": serve_attacks.as_records(attacks)}
        after = phase(port, blobs[: args.clients], args.clients, rss, honour=True, client=args.client)
        out["after_hostile"] = {k: v for k, v in after.items() if k != "_results"}
        rss.stop_flag.set()
        out["rss_mb_over_run"] = [[round(t, 1), round(r / 2 ** 20, 1)] for t, r in rss.samples[:: max(1, len(
            rss.samples) // 60)]]
        out["sigterm"] = sigterm_phase(proc, port, blobs, 8, args.client)
    finally:
        rss.stop_flag.set()
        if proc.poll() is None:
            proc.kill()
    out["predict_again"] = run_predict(args.detector, tmp / "images", tmp / "pred.csv", args.batch_size)
    p = max(out["predict"]["images_per_second"], out["predict_again"]["images_per_second"])  # the faster one
    out["throughput_vs_predict"] = {k: round(out[k]["images_per_second"] / p, 3) for k in ("load", "recovery")}
    if "http_ceiling" in out:  # requests/s with no image work at all, over predict's images/s
        out["http_ceiling"]["vs_predict"] = round(out["http_ceiling"]["requests_per_second"] / p, 3)
    out["loadavg_end"] = os.getloadavg()
    out["recovery_vs_load"] = round(out["recovery"]["images_per_second"] / out["load"]["images_per_second"], 3)
    text = json.dumps(out, indent=2)
    print(text)
    save_json(HERE / "results" / f"serve_load_{args.tag}.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
