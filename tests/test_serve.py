"""``clipdetect serve``: a real uvicorn server on a loopback port, real HTTP requests.

Scores equal ``Detector.score_images``; concurrent requests share encoder batches; the
hostile uploads of ``experiments/serve_attacks.py`` each get their 4xx naming the limit;
overload is 503 + Retry-After; errors never show a traceback; SIGTERM drains a request in flight.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from helpers.serve import get, get_json, load_experiment, png, running_server
from helpers.training import tiny_detector
from clipdetect.cli.main import main
from clipdetect.serve.batcher import Batcher
from clipdetect.serve.config import ServeConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def det(tiny_backbone):
    return tiny_detector(tiny_backbone)


@pytest.fixture(scope="module")
def server(det, tiny_backbone, one_torch_thread):
    cfg = ServeConfig(port=0, max_body_bytes=2_000_000, max_images=8, read_timeout=1.0, max_wait_ms=40)
    with running_server(det, tiny_backbone, cfg, name="tiny-det") as (url, port):
        yield url, port, cfg


def post_files(url, blobs, names=None):
    names = names or [f"{i}.png" for i in range(len(blobs))]
    return requests.post(url + "/v1/score", files=[("image", (n, b)) for n, b in zip(names, blobs)], timeout=60)


def test_scores_are_score_images_and_a_bad_image_is_reported_in_place(server, det, tiny_backbone):
    url, _, _ = server
    blobs = [png(1), png(2, fake=True), png(3, size=(300, 200))]
    r = post_files(url, blobs + [b"\x89PNG\r\n\x1a\n garbage"], ["a.png", "b.png", "c.png", "bad.png"])
    assert r.status_code == 200, r.text
    body = r.json()
    want = det.score_images(blobs, backbone=tiny_backbone)
    assert (body["n"], body["n_scored"], body["n_errors"]) == (4, 3, 1)
    assert body["threshold"] == det.threshold and body["threshold_target"] == det.threshold_target
    for res, (_, row) in zip(body["results"], want.iterrows()):
        assert res["probability"] == pytest.approx(row.probability, abs=1e-5)
        assert res["logit"] == pytest.approx(row.logit, abs=1e-5) and res["threshold"] == pytest.approx(row.threshold)
        assert res["verdict"] == ("fake" if res["probability"] > det.threshold else "real")
    bad = body["results"][3]
    assert bad["name"] == "bad.png" and bad["error"]["code"] == "corrupt" and "probability" not in bad
    raw = requests.post(url + "/v1/score", data=blobs[2], headers={"Content-Type": "image/png"}, timeout=60)
    assert raw.status_code == 200
    assert raw.json()["results"][0]["probability"] == pytest.approx(want.probability[2], abs=1e-5)


def test_concurrent_requests_share_encoder_batches(server, det, tiny_backbone):
    url, _, _ = server
    n = 12
    blobs = [png(100 + i, fake=i % 2 == 1) for i in range(n)]
    barrier = threading.Barrier(n)

    def one(data):
        barrier.wait()
        return requests.post(url + "/v1/score", data=data, headers={"Content-Type": "image/png"}, timeout=60)

    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(one, blobs))
    assert [a.status_code for a in answers] == [200] * n
    results = [a.json()["results"][0] for a in answers]
    assert max(r["timing"]["batch_size"] for r in results) > 1  # requests were scored together
    want = det.score_images(blobs, backbone=tiny_backbone).probability
    assert [r["probability"] for r in results] == pytest.approx(list(want), abs=1e-5)


def test_hostile_uploads_get_their_limit_and_the_service_keeps_serving(server):
    url, port, cfg = server
    attacks = load_experiment("serve_attacks")
    outcomes = attacks.run_attacks(port, cfg.limits())
    assert len(outcomes) == len(attacks.attacks(cfg.limits())) >= 15
    wrong = [(o.name, o.status, o.code, o.limit, o.message) for o in outcomes if not o.ok or not o.healthy_after]
    assert wrong == []
    by_name = {o.name: o for o in outcomes}
    assert "(max_pixels = 64000000)" in by_name["decompression_bomb_png"].message
    assert by_name["slow_drip_body"].seconds < cfg.read_timeout + 1.5  # cut off, not waited out
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # a client gone mid-body
        s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
                  + png(6)[:64])
    assert post_files(url, [png(5)]).status_code == 200
    assert 'status="500"' not in get(url + "/metrics")[2].decode()


def test_card_health_metrics_page_and_json_errors(server, det):
    url, _, cfg = server
    status, card = get_json(url + "/v1/model")
    assert status == 200 and card["name"] == "tiny-det" and card["threshold"] == det.threshold
    assert card["backbone"]["spec"] == "clipdetect-tiny-vit:random" and card["head"] == {"kind": "linear",
                                                                                       "in_dim": 32}
    assert card["limits"]["max_images"] == 8 and card["limits"]["max_aspect"] == 100.0
    assert get_json(url + "/healthz") == (200, {"status": "ok", "inflight": 0, "queued_images": 0})
    status, headers, page = get(url + "/")
    assert status == 200 and b'id="drop"' in page and "script-src 'self'" in headers["content-security-policy"]
    assert get(url + "/static/app.js")[0] == 200 and headers["x-content-type-options"] == "nosniff"
    for path, code in (("/nope", "not_found"), ("/report", "no_report")):
        status, body = get_json(url + path)
        assert status == 404 and body["error"]["code"] == code
    r = requests.get(url + "/v1/score", timeout=10)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    text = get(url + "/metrics")[2].decode()
    assert 'clipdetect_requests_total{path="/v1/model",status="200"}' in text
    assert 'clipdetect_requests_total{path="other",status="404"}' in text  # no client path becomes a label
    assert "clipdetect_batch_size_bucket" in text and "process_resident_memory_bytes " in text
    assert 'clipdetect_images_total{outcome="scored"}' in text


def slow_batcher(det, backbone, seconds, fail=False):
    def score(images):
        time.sleep(seconds)
        if fail:
            raise RuntimeError("secret internals /etc/passwd")
        return det.score_images(images, backbone=backbone)
    return Batcher(det, backbone, max_batch=4, max_wait_ms=1, score_fn=score)


def test_overload_is_503_with_retry_after_then_recovers(det, tiny_backbone):
    cfg = ServeConfig(port=0, max_concurrent=2, retry_after=3)
    with running_server(det, tiny_backbone, cfg, batcher=slow_batcher(det, tiny_backbone, 0.6)) as (url, _):
        barrier = threading.Barrier(8)

        def one(i):
            barrier.wait()
            return requests.post(url + "/v1/score", data=png(i), headers={"Content-Type": "image/png"}, timeout=60)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, range(8)))
        codes = sorted(a.status_code for a in answers)
        assert set(codes) == {200, 503} and codes.count(200) >= 2, codes
        for a in answers:
            if a.status_code == 503:
                assert a.headers["Retry-After"] == "3"
                assert a.json()["error"]["limit"] == "max_concurrent"
        assert requests.post(url + "/v1/score", data=png(1), headers={"Content-Type": "image/png"},
                             timeout=60).status_code == 200
        metrics = get(url + "/metrics")[2].decode()
        assert f'clipdetect_requests_total{{path="/v1/score",status="503"}} {codes.count(503)}' in metrics


def test_timeouts_and_failures_are_json_without_internals(det, tiny_backbone):
    cfg = ServeConfig(port=0, request_timeout=0.3)
    with running_server(det, tiny_backbone, cfg, batcher=slow_batcher(det, tiny_backbone, 1.0)) as (url, _):
        r = requests.post(url + "/v1/score", data=png(1), headers={"Content-Type": "image/png"}, timeout=60)
        assert r.status_code == 503 and r.json()["error"]["limit"] == "request_timeout" and r.headers["Retry-After"]
    with running_server(det, tiny_backbone, ServeConfig(port=0),
                        batcher=slow_batcher(det, tiny_backbone, 0.0, fail=True)) as (url, _):
        r = requests.post(url + "/v1/score", data=png(1), headers={"Content-Type": "image/png"}, timeout=60)
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
        assert "secret" not in r.text and "Traceback" not in r.text
        assert get(url + "/healthz")[0] == 200


def test_report_page_is_served_when_configured(det, tiny_backbone, tmp_path):
    page = tmp_path / "report.html"
    page.write_text("<!doctype html><h1>Detector report</h1>")
    with running_server(det, tiny_backbone, ServeConfig(port=0, report=str(page))) as (url, _):
        status, headers, body = get(url + "/report")
    assert status == 200 and b"Detector report" in body and "script-src" not in headers["content-security-policy"]


def test_config_and_cli_errors(det, tmp_path, monkeypatch, capsys):
    import clipdetect.serve as serve_pkg

    with pytest.raises(ValueError, match="max_images must be >= 1"):
        ServeConfig(max_images=0)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        ServeConfig(workers=0)
    from clipdetect.serve.server import worker_threads

    assert worker_threads(ServeConfig(), None) is None  # one process: torch's choice
    assert worker_threads(ServeConfig(workers=2), 3) == 3  # --threads wins
    assert worker_threads(ServeConfig(workers=2), None) == max(1, (os.cpu_count() or 1) // 2)
    det.save(tmp_path / "det")
    monkeypatch.setitem(serve_pkg.EXTRA_MODULES, "clipdetect_absent_module", "absent-dist")
    assert main(["serve", str(tmp_path / "det")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'clipdetect[serve]'" in err and "absent-dist" in err
    monkeypatch.delitem(serve_pkg.EXTRA_MODULES, "clipdetect_absent_module")
    assert main(["serve", str(tmp_path / "det"), "--report", str(tmp_path / "none.html")]) == 2
    assert "--report" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # a real server process, stopped by a signal
@pytest.mark.parametrize("workers", [1, 2])
def test_cli_server_drains_a_request_in_flight_on_sigterm(det, tmp_path, workers):
    import psutil

    det.save(tmp_path / "det")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "clipdetect", "serve", str(tmp_path / "det"), "--port", str(port),
                             "--workers", str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.time() + 90
        while get_status(port) != 200:
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()[-2000:]
            time.sleep(0.2)
        if workers > 1:  # a supervisor and its workers, all serving the same port
            kids = [" ".join(c.cmdline()) for c in psutil.Process(proc.pid).children()]
            assert sum("resource_tracker" not in k for k in kids) == workers, kids
            assert get_json(f"http://127.0.0.1:{port}/v1/model")[1]["limits"]["workers"] == workers
        data = png(9)
        head = (f"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {len(data)}\r\n"
                "Connection: close\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(head + data[:100])  # the request is in flight: half its body has come
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            s.sendall(data[100:])
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
        status_line, _, rest = raw.partition(b"\r\n")
        assert b" 200 " in status_line, raw[:500]
        assert json.loads(rest.partition(b"\r\n\r\n")[2])["results"][0]["probability"] is not None
        assert proc.wait(30) in (0, -signal.SIGTERM, 128 + signal.SIGTERM)  # drained, then SIGTERM's status
        assert get_status(port) is None  # nothing listens any more
        log = proc.stdout.read().decode()
        assert "Traceback" not in log and "Finished server process" in log
    finally:
        if proc.poll() is None:
            proc.kill()


def get_status(port):
    try:
        return get(f"http://127.0.0.1:{port}/healthz")[0]
    except OSError:
        return None
