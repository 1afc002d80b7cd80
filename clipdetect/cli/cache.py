"""``clipdetect cache info`` and ``clipdetect cache verify``."""
from __future__ import annotations

from clipdetect.cli.main import emit
from clipdetect.cli.options import add_command

CACHE_EXAMPLES = """examples:
  clipdetect cache info features/my-cache          # backbone, rows, splits, generators, errors
  clipdetect cache verify features/my-cache        # every shard: shapes, dtype, NaN/inf, norms, keys
  clipdetect cache verify features/my-cache --quick   # counts, shapes and file sizes only
verify exits 0 when the cache is sound and 1 when it is damaged, listing shard, file and rows."""


def add_parser(sub) -> None:
    c = add_command(sub, "cache", epilog=CACHE_EXAMPLES)
    c.set_defaults(help_parser=c)
    csub = c.add_subparsers(dest="cache_command", metavar="ACTION")
    for name, text, func in (
            ("info", "backbone, rows, splits, generators, error counts", run_cache_info),
            ("verify", "check every shard against the manifest; exit 1 if damaged", run_cache_verify)):
        q = add_command(csub, name, text, epilog=CACHE_EXAMPLES)
        q.add_argument("cache", help="feature cache directory")
        q.set_defaults(func=func)
    q.add_argument("--quick", action="store_true",  # verify's
                   help="counts, shapes, dtypes and file sizes only (what train/evaluate check on open)")


def run_cache_info(args) -> int:
    from clipdetect.features.cache import FeatureCache

    emit(args, FeatureCache(args.cache).summary())
    return 0


def run_cache_verify(args) -> int:
    from clipdetect.features.verify import verify_cache

    report = verify_cache(args.cache, full=not args.quick)
    state = "sound" if report.ok else f"DAMAGED ({len(report.problems)} problem(s))"
    lines = [f"DAMAGED {problem}" for problem in report.problems]
    lines.append(f"cache {args.cache}: {report.shards} shards, {report.rows} rows, "
                 f"{'full' if report.full else 'quick'} check: {state}")
    emit(args, {"cache": args.cache, "ok": report.ok, "shards": report.shards, "rows": report.rows,
                "full": report.full, "problems": [str(p) for p in report.problems]}, "\n".join(lines))
    return 0 if report.ok else 1
