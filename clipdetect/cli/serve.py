"""``clipdetect serve DETECTOR``: the scoring service (HTTP JSON API and a web page)."""
from __future__ import annotations

from clipdetect.cli.main import CLIError
from clipdetect.cli.options import add_command, add_device_arg, add_runtime_args, add_threads_arg, config_of

EXAMPLES = """examples:
  clipdetect serve runs/det                              # http://127.0.0.1:8000/ (the page)
  clipdetect serve runs/det --port 9000 --report runs/det/report/report.html
  clipdetect serve runs/det --workers 2                  # two processes: many clients, few images each
  clipdetect serve runs/det --runtime openvino --precision bf16   # the tower on OpenVINO (CPUs with AMX)
  curl -F image=@photo.jpg -F image=@other.png http://127.0.0.1:8000/v1/score
  curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:8000/v1/score
  curl http://127.0.0.1:8000/v1/model                    # model card and limits

API: POST /v1/score (multipart file parts, or one image as the body) → per image P(fake),
verdict at the detector's threshold, or the reason it was refused; GET /v1/model, /healthz,
/metrics (Prometheus). Errors are JSON {"error": {"code", "message", "limit"}}:
413 body or image count over the limit, 415 content type, 408 body too slow, 422 no image
of the request could be decoded, 503 + Retry-After over --max-concurrent, when the queue
already needs more than --request-timeout, or when a request was not scored within it.
Concurrent requests share encoder batches (--max-batch, --max-wait-ms).
SIGTERM / Ctrl-C stop accepting and finish the requests in flight. Needs the 'serve' extra:
pip install 'clipdetect[serve]'."""


def add_parser(sub) -> None:
    from clipdetect.serve.config import ServeConfig

    d = ServeConfig()
    p = add_command(sub, "serve", epilog=EXAMPLES,
                    description="Serve a detector over HTTP on this machine: a JSON API and a page to drop images on.")
    p.add_argument("detector", help="detector bundle directory (clipdetect train --out)")
    p.add_argument("--host", default=d.host, help=f"address to bind (default {d.host}: this machine only)")
    p.add_argument("--port", type=int, default=d.port, help=f"TCP port (default {d.port}; 0 picks a free one)")
    p.add_argument("--report", metavar="FILE.html", help="a report written by `clipdetect report --format html`, "
                                                         "shown at /report")
    b = p.add_argument_group("backbone (as for predict)")
    b.add_argument("--backbone", help="backbone spec overriding the detector's (e.g. a new path to its weights)")
    b.add_argument("--weights", metavar="PATH", help="the detector's checkpoint file when it moved (sha256-checked)")
    add_device_arg(b)
    add_runtime_args(b)
    add_threads_arg(b)
    g = p.add_argument_group("limits (each refusal is a JSON error naming the limit)")
    g.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, metavar="N",
                   help=f"bytes per request body (413; default {d.max_body_bytes:,})")
    g.add_argument("--max-images", type=int, default=d.max_images, metavar="N",
                   help=f"images per request (413; default {d.max_images})")
    g.add_argument("--max-pixels", type=int, default=d.max_pixels, metavar="N",
                   help=f"pixels per image (decompression_bomb; default {d.max_pixels:,})")
    g.add_argument("--max-aspect", type=float, default=d.max_aspect, metavar="R",
                   help=f"refuse images thinner than 1:R (extreme_aspect; default {d.max_aspect:g}; 0: refuse "
                        "none, crop those thinner than 1:100 as predict does)")
    g.add_argument("--read-timeout", type=float, default=d.read_timeout, metavar="S",
                   help=f"seconds for the body to arrive (408; default {d.read_timeout:g})")
    g.add_argument("--request-timeout", type=float, default=d.request_timeout, metavar="S",
                   help=f"seconds to score a request once admitted (503; default {d.request_timeout:g}); when "
                        "the images queued already need longer, requests get 503 + Retry-After at once")
    g.add_argument("--max-concurrent", type=int, default=d.max_concurrent, metavar="N",
                   help=f"scoring requests at once; more get 503 + Retry-After (default {d.max_concurrent})")
    g.add_argument("--max-connections", type=int, metavar="N",
                   help="open connections; beyond them uvicorn answers 503 (default 8 x --max-concurrent)")
    g.add_argument("--retry-after", type=int, default=d.retry_after, metavar="S",
                   help=f"Retry-After of 503 answers (default {d.retry_after})")
    q = p.add_argument_group("dynamic batching")
    q.add_argument("--max-batch", type=int, default=d.max_batch, metavar="N",
                   help=f"images per encoder batch across requests (default {d.max_batch})")
    q.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms, metavar="MS",
                   help=f"wait for more images after the first (default {d.max_wait_ms:g})")
    q.add_argument("--inline-decode-pixels", type=int, default=d.inline_decode_pixels, metavar="N",
                   help=f"decode images of at most N pixels (by their header) on the request's thread, larger "
                        f"ones on a thread pool that overlaps encoding (default {d.inline_decode_pixels:,}: "
                        "256 x 256; 0: all on the pool)")
    q.add_argument("--workers", type=int, default=d.workers, metavar="N",
                   help=f"server processes on the port, each with its own model copy, batcher, limits and "
                        f"/metrics; --threads defaults to the CPUs shared among them; keep-alive connections are "
                        f"kept evenly split over them, and /healthz says 503 'starting' until all have loaded "
                        f"(default {d.workers})")
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    from pathlib import Path

    from clipdetect.serve import MissingExtra, require_extra

    try:
        require_extra()
    except MissingExtra as exc:
        raise CLIError(str(exc)) from None
    from clipdetect.core.device import check_device
    from clipdetect.serve.config import ServeConfig
    from clipdetect.serve.server import load_served, servable, serve, serve_workers, worker_threads

    config = config_of(ServeConfig, args, max_aspect=args.max_aspect or None)
    if config.report and not Path(config.report).is_file():
        raise CLIError(f"--report {config.report!r} is not a file (write one with clipdetect report ... "
                       "--format html)")
    from clipdetect.features.runtime import check_runtime

    device = check_device(args.device)
    check_runtime(args.runtime, args.precision, device)
    load = dict(backbone=args.backbone, weights=args.weights, device=device, precision=args.precision,
                runtime=args.runtime, threads=worker_threads(config, args.threads))
    if config.workers > 1:
        servable(args.detector)  # a bad bundle fails here, not in every worker
        serve_workers(dict(detector=args.detector, **load), config, name=args.detector, log_level="info")
        return 0
    det, backbone = load_served(args.detector, **load)
    serve(det, backbone, config, name=args.detector, log_level="info")
    return 0
