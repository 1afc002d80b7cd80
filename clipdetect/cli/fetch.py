"""``clipdetect fetch``: download a URL list, or the real images of a D3 split, into a store."""
from __future__ import annotations

import argparse
import itertools
from typing import Tuple

from clipdetect.cli.main import emit
from clipdetect.cli.options import add_command

EXAMPLES = """examples:
  # the LAION reals of D3's train split, 64 downloads at a time, into a shared store
  clipdetect fetch --d3 "ELSA_D3/data/train-*.parquet" --store d3_reals --workers 64
  # the same split over four machines (one process each, one shared store)
  clipdetect fetch --d3 "ELSA_D3/data/train-*.parquet" --store /shared/d3_reals --part 0/4
  # a plain URL list; failures go to STORE/failures.jsonl and are skipped next time
  clipdetect fetch --urls urls.txt --store images/ --retries 3
then: clipdetect extract d3:... --reals-store d3_reals ..."""


def _part(text: str) -> Tuple[int, int]:
    k, sep, n = text.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 0 <= int(k) < int(n)):
        raise argparse.ArgumentTypeError(f"--part wants K/N with 0 <= K < N (e.g. 0/4), got {text!r}")
    return int(k), int(n)


def add_parser(sub) -> None:
    from clipdetect.data.fetch import DEFAULT_MAX_BYTES, default_store_root

    p = add_command(sub, "fetch", epilog=EXAMPLES,
                    description="Download images into a content-addressed store, with retries and a "
                                "failure ledger; re-running skips what is stored or known to fail.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--urls", help="text file with one URL per line")
    src.add_argument("--d3", help="D3 dataset name or local parquet file/glob/folder (reads its url column)")
    p.add_argument("--source-split", "--split", dest="split", default="train",
                   help="the D3 split whose reals are fetched: train or validation (default train)")
    p.add_argument("--streaming", action="store_true", help="stream the D3 dataset instead of downloading it")
    p.add_argument("--store", default=default_store_root(), help="store folder (default %(default)s)")
    p.add_argument("--part", type=_part, help="K/N: only every N-th URL from the K-th (one process per part, "
                   "e.g. one per machine, all writing to one shared store)")
    p.add_argument("--workers", type=int, default=32, help="concurrent downloads (default 32)")
    p.add_argument("--timeout", type=float, nargs=2, default=(5.0, 20.0), metavar=("CONNECT", "READ"),
                   help="seconds (default 5 20)")
    p.add_argument("--retries", type=int, default=2, help="retries of transient failures (default 2)")
    p.add_argument("--backoff", type=float, default=1.0, help="first retry delay in s, doubling (default 1)")
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                   help="largest accepted response in bytes (default %(default)s)")
    p.add_argument("--retry-failed", action="store_true", help="also retry URLs in the failure ledger")
    p.add_argument("--limit", type=int, help="only the first N URLs")
    p.set_defaults(func=run)


def run(args) -> int:
    from clipdetect.data.fetch import FetchStore, fetch_many

    if args.urls:
        with open(args.urls, encoding="utf-8") as f:
            urls = [u.strip() for u in f if u.strip()]
        total = len(urls)
    else:
        from clipdetect.data.d3 import D3Source

        d3 = D3Source(args.d3, split=args.split, streaming=args.streaming)
        urls, total = d3.urls(), d3.rows()
    if args.limit is not None:
        urls, total = itertools.islice(urls, args.limit), min(args.limit, total or args.limit)
    ledger = "failures.jsonl"
    if args.part:
        k, n = args.part
        urls = itertools.islice(urls, k, None, n)
        total, ledger = (None if total is None else len(range(k, total, n))), f"failures-{k}-of-{n}.jsonl"
    stats = fetch_many(urls, store=FetchStore(args.store, ledger=ledger), workers=args.workers,
                       timeout=tuple(args.timeout), retries=args.retries, backoff=args.backoff,
                       max_bytes=args.max_bytes, retry_failed=args.retry_failed, total=total,
                       progress=not args.no_progress)
    emit(args, {"store": str(args.store), **stats.as_dict()})
    return 0
