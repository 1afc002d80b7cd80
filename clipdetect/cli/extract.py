"""``clipdetect extract`` (``clipdetect cache info`` / ``verify``: :mod:`clipdetect.cli.cache`)."""
from __future__ import annotations

import argparse
import logging

from clipdetect.cli.main import CLIError, emit
from clipdetect.cli.options import (add_command, add_device_arg, add_runtime_args, add_workers_arg,
                                    config_of)
from clipdetect.core.device import check_device

logger = logging.getLogger(__name__)

EXAMPLES = """examples:
  # a folder with real/ and fake/ subfolders, tiny random-weight model (no download)
  clipdetect extract photos/ --out features/my-cache --backbone clipdetect-tiny-vit:random
  # CIFAKE parquet (Hugging Face Image column), real CLIP ViT-B/16 image tower from a file
  clipdetect extract ../shared/data/cifake_dev.parquet --out features/cifake-b16 \\
      --backbone ViT-B-16-quickgelu:weights/clip_b16.pt --limit 6400
  # the same with the image tower on OpenVINO, int8 weights (pip install 'clipdetect[openvino]';
  # exported once into ~/.cache/clipdetect/runtimes, loaded from there afterwards)
  clipdetect extract photos/ --out features/mine --backbone ViT-B-16-quickgelu:weights/clip_b16.pt \
      --runtime openvino --precision int8
  # a hub dataset, streamed, with captions from a column
  clipdetect extract hf:user/dataset --streaming --caption-column prompt --backbone ViT-L-14:openai ...
  # a CSV/parquet manifest with path,label[,caption,generator,split] columns
  clipdetect extract manifest.csv --out features/x --backbone ViT-B-32:laion2b_s34b_b79k
  # D3 from its parquet files, reals fetched earlier (clipdetect fetch --d3 ...)
  clipdetect extract d3:ELSA_D3/data --split train --reals-store d3_reals --out features/d3 \
      --backbone ViT-L-14:openai --device cuda --precision fp16
  # generalisation features: per-block CLS tokens and three views of every image (original,
  # 256 px JPEG q90 normalised, one random web degradation) -> 3 rows per image, a view column
  clipdetect extract corpus/manifest.csv --out features/corpus --backbone ViT-B-16:openai \
      --layers --views orig,norm:256:90,aug
  # the same on a Ray cluster; --streaming d3:elsaEU/ELSA_D3 also works (one sequential reader)
  clipdetect extract d3:ELSA_D3/data --split train --engine ray --address HEAD_IP:6379 ...
Re-running the same command resumes where it stopped (also after Ctrl-C, a kill or a full disk).

Limits: an image with more than 64,000,000 pixels is refused as decompression_bomb
(--max-pixels); an image thinner than 1:100 (e.g. 2000x2) is centre-cropped to 1:100 before
the backbone's resize-and-centre-crop, unless --max-aspect R refuses images thinner than 1:R
(extreme_aspect); an image path that is not a regular file (a FIFO, /dev/zero, a folder) is
refused as unreadable, one over 256 MiB as too_large (--max-bytes), one not read within 60 s
as read_timeout (--read-timeout). Refused images are listed in the cache's error ledger; a run
in which not one image could be read (every path missing or unreadable) exits 1.
Re-running with another --shard-size or --text on a cache that already holds the source is
a no-op (or a refusal, when it cannot be honoured), never a second copy of the rows.
One writer per cache: a second `extract` into the same --out refuses (naming the running
one's pid and command) unless --lock-timeout gives it time to wait."""

def _label_map(text: str):
    out = {}
    for part in filter(None, (text or "").split(",")):
        name, sep, value = part.partition("=")
        if not sep or value not in ("0", "1"):
            raise argparse.ArgumentTypeError(f"--label-map wants NAME=0|1[,NAME=0|1...], got {part!r}")
        out[name] = int(value)
    return out


def _size(text: str) -> int:
    from clipdetect.core.inputs import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):  # NaN too
        raise argparse.ArgumentTypeError(f"--read-timeout wants a number of seconds > 0, got {text!r}")
    return value


def add_limit_args(p) -> None:
    """--max-pixels / --max-aspect / --max-bytes / --read-timeout, shared by extract and predict."""
    from clipdetect.core.inputs import MAX_IMAGE_BYTES, READ_TIMEOUT, format_bytes
    from clipdetect.data.imaging import MAX_PIXELS

    g = p.add_argument_group("decoder limits")
    g.add_argument("--max-bytes", type=_size, default=MAX_IMAGE_BYTES, metavar="SIZE",
                   help=f"refuse image files larger than this (too_large), before reading them; bytes or "
                        f"K/M/G (default {format_bytes(MAX_IMAGE_BYTES)}). Paths that are not regular files "
                        "(FIFOs, devices, folders) are refused as unreadable")
    g.add_argument("--read-timeout", type=_seconds, default=READ_TIMEOUT, metavar="SECONDS",
                   help=f"refuse an image file not read within this time (read_timeout; default {READ_TIMEOUT:g})")
    g.add_argument("--max-pixels", type=int, default=MAX_PIXELS, metavar="N",
                   help=f"refuse images with more pixels (decompression_bomb; default {MAX_PIXELS:,})")
    g.add_argument("--max-aspect", type=float, default=None, metavar="R",
                   help="refuse images thinner than 1:R (extreme_aspect); default: none refused, "
                        "images thinner than 1:100 are centre-cropped to 1:100 first")


def add_parser(sub) -> None:
    from clipdetect.features.pipeline import FAST_DECODE

    p = add_command(sub, "extract", epilog=EXAMPLES,
                    description="Embed images (and their captions) with a CLIP backbone into a sharded cache.")
    p.add_argument("source", help="image folder, .csv/.parquet manifest, HF parquet, hf:NAME or d3:NAME_OR_PATH")
    p.add_argument("--out", required=True, help="cache directory (created, or resumed / appended to)")
    p.add_argument("--backbone", required=True,
                   help="ARCH:TAG (open_clip pretrained), ARCH:/path/to/ckpt, ARCH:random, or student:/path")
    f = p.add_argument_group("what to store")
    f.add_argument("--layers", action="store_true",
                   help="also store the CLS token after every transformer block and the pre-projection token "
                        "(feature set 'layers', for per-block heads; ViT-B/16: 13 x 768 fp16 = 20 KB per row)")
    f.add_argument("--views", metavar="V1,V2,...",
                   help="store several views of every image, one row each with a 'view' column: orig, jpeg:Q, "
                        "webp:Q, resize:F, blur:S, norm:SIZE:Q (square resize + JPEG), aug (a random web "
                        "degradation seeded by the key); 'default' = orig,norm:256:90,aug (default: orig)")
    g = p.add_argument_group("performance")
    g.add_argument("--batch-size", type=int, help="images per forward pass (default 256 on CUDA, 64 on CPU)")
    add_workers_arg(g)
    add_device_arg(g)
    add_runtime_args(g)
    g.add_argument("--fast-decode", default="none", choices=list(FAST_DECODE),
                   help="draft: decode large JPEGs at a reduced DCT scale (>= 2x the model input; faster, "
                        "pixels differ slightly from the exact decode; default none)")
    g.add_argument("--limit", type=int, help="only the first N source items (a later larger limit continues); "
                                             "with --shuffle-seed, N items drawn at random")
    g.add_argument("--shuffle-seed", type=int,
                   help="draw the --limit items at random with this seed instead of taking the first N")
    g.add_argument("--stratify", action="store_true",
                   help="with --shuffle-seed: N/2 reals and N/2 fakes (a balanced sample)")
    g.add_argument("--shard-size", type=int, default=4096, help="rows per shard file (default 4096)")
    g.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="stored dtype")
    g.add_argument("--lock-timeout", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for another writer of the same cache (default 0: refuse at once)")
    add_limit_args(p)
    s = p.add_argument_group("source options")
    s.add_argument("--source-split", "--split", dest="split",
                   help="hub sources (hf:, d3:): the split to read (D3: train or validation). Folders and "
                        "manifests: the split name stored for rows that name none (default train); split "
                        "subfolders (train/, val/, test/) and a manifest's split column win. Validation and "
                        "test rows for training are derived later from the 'train' rows")
    s.add_argument("--caption-template", help='caption from fields, e.g. "a photo of a {cifar_class}"')
    s.add_argument("--caption-column", help="column holding captions (HF sources)")
    s.add_argument("--text", default="auto", choices=["auto", "yes", "no"],
                   help="embed captions: auto (when present and the backbone has a text tower)")
    s.add_argument("--image-column", help="image column (HF; default 'image')")
    s.add_argument("--label-column", help="label column (HF; default 'label')")
    s.add_argument("--generator-column", help="generator column (HF)")
    s.add_argument("--label-map", type=_label_map, help="folder labels for generator folders: sd14=1,laion=0")
    s.add_argument("--root", help="base folder for relative paths in a manifest")
    s.add_argument("--streaming", action="store_true", help="stream an HF dataset instead of downloading it")
    d = p.add_argument_group("D3 (d3: sources)", "one row → its real LAION image (a URL) + four fakes")
    d.add_argument("--generators", help="comma-separated generators to keep: sd14,sd21,sdxl,if, full model "
                                        "names or gen0..gen3 (default: all four)")
    d.add_argument("--caption-policy", choices=["same", "reference"],
                   help="same (default): real and fakes of a row share original_prompt, so text cannot leak "
                        "the label; reference: fakes get positive_prompt, as the reference code (leaks)")
    d.add_argument("--no-reals", action="store_true", help="fakes only (no real sample per row)")
    d.add_argument("--reals-dir", metavar="DIR", help="folder of pre-downloaded real images named <row id>.<ext>")
    d.add_argument("--reals-store", metavar="DIR",
                   help="store of fetched reals (clipdetect fetch --store DIR); "
                        "default with --fetch-reals: $CLIPDETECT_FETCH_STORE or ~/.cache")
    d.add_argument("--fetch-reals", action="store_true",
                   help="download reals not yet in the store from their URLs while extracting")
    d.add_argument("--fetch-workers", type=int, metavar="N", help="concurrent downloads (default 16)")
    d.add_argument("--fetch-timeout", type=float, nargs=2, metavar=("CONNECT", "READ"),
                   help="seconds per request (default 5 20)")
    d.add_argument("--fetch-retries", type=int, metavar="N", help="retries after a timeout, 429 or 5xx (default 2)")
    d.add_argument("--retry-failed", action="store_true", help="try URLs in the failure ledger again")
    r = p.add_argument_group("engine")
    r.add_argument("--engine", default="local", choices=["local", "ray"], help="local processes or a Ray cluster")
    r.add_argument("--address", help="Ray cluster address, e.g. HEAD_IP:6379 (default: start a local one)")
    r.add_argument("--ray-decoders", type=int, metavar="N",
                   help="Ray decode actors, 1 CPU each (default: the cluster's CPUs minus the encoders)")
    r.add_argument("--ray-encoders", type=int, metavar="N",
                   help="Ray encode actors (default: one per GPU with --device cuda, else 1)")
    r.add_argument("--ray-encoder-cpus", type=int, default=1, metavar="N",
                   help="CPUs (= torch threads) each encode actor reserves; raise it for --device cpu (default 1)")
    p.set_defaults(func=run_extract)


def source_options(args) -> dict:
    return {"split": args.split, "caption_template": args.caption_template, "caption_column": args.caption_column,
            "image_column": args.image_column, "label_column": args.label_column,
            "generator_column": args.generator_column, "labels": args.label_map, "root": args.root,
            "streaming": args.streaming or None,
            "generators": args.generators.split(",") if args.generators else None,
            "caption_policy": args.caption_policy, "reals_dir": args.reals_dir,
            "fetch_reals": args.fetch_reals or None, "store": args.reals_store,
            "include_real": False if args.no_reals else None, "fetch_workers": args.fetch_workers,
            "fetch_timeout": tuple(args.fetch_timeout) if args.fetch_timeout else None,
            "fetch_retries": args.fetch_retries, "retry_failed": args.retry_failed or None}


_D3_ONLY = ("generators", "caption_policy", "no_reals", "reals_dir", "reals_store", "fetch_reals",
            "fetch_workers", "fetch_timeout", "fetch_retries", "retry_failed")


def _check_options(args) -> None:
    given = [n for n in _D3_ONLY if getattr(args, n) not in (None, False)]
    if given and not args.source.startswith("d3:"):
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise CLIError(f"{flags} only apply to D3 sources; "
                       f"name the source d3:{args.source} if it has the D3 columns")
    for name in ("fetch_workers", "ray_decoders", "ray_encoders", "ray_encoder_cpus"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.engine != "ray" and (args.address or args.ray_decoders or args.ray_encoders
                                 or args.ray_encoder_cpus != 1):
        raise CLIError("--address, --ray-decoders, --ray-encoders and --ray-encoder-cpus need --engine ray")


def run_extract(args) -> int:
    from clipdetect.core.inputs import none_readable
    from clipdetect.data.registry import open_source
    from clipdetect.data.sampling import SampledSource, check_limit_prefix
    from clipdetect.features.extract import extract
    from clipdetect.features.runner import ExtractConfig
    from clipdetect.features.runtime import check_runtime

    _check_options(args)
    device = check_device(args.device)
    check_runtime(args.runtime, args.precision, device)
    source = open_source(args.source, **source_options(args))
    limit = args.limit
    if args.stratify and args.shuffle_seed is None:
        raise CLIError("--stratify draws a random sample: give --shuffle-seed S too")
    if args.shuffle_seed is not None:
        source, limit = SampledSource(source, args.limit, seed=args.shuffle_seed, stratify=args.stratify), None
    else:
        check_limit_prefix(source, limit)
    config = config_of(ExtractConfig, args, device=device, limit=limit)
    if args.engine == "ray":
        from clipdetect.features.extract_ray import extract_ray

        summary = extract_ray(source, config, address=args.address, progress=not args.no_progress,
                              num_cpus=args.ray_decoders, actor_pool_size=args.ray_encoders,
                              encoder_cpus=args.ray_encoder_cpus)
    else:
        summary = extract(source, config, progress=not args.no_progress)
    keys = ("out", "run", "resumed_from", "seen", "embedded", "errors", "complete")
    payload = {**{k: getattr(summary, k) for k in keys}, "seconds": round(summary.seconds, 2),
               "images_per_second": round(summary.images_per_second, 2)}
    errors = sum(summary.errors.values()) if isinstance(summary.errors, dict) else summary.errors
    text = (f"{summary.embedded} images embedded into {summary.out} ({errors} could not be read"
            + (f": {summary.errors}" if errors else "") + f") in {summary.seconds:.1f} s "
            f"({summary.images_per_second:.1f} images/s)"
            + ("" if summary.complete else "; not complete: re-run the same command to resume")
            + f"\nnext: clipdetect cache info {summary.out}")
    emit(args, payload, text)
    if none_readable(summary.seen, summary.embedded, summary.errors) and not summary.resumed_from:
        logger.error("not one of the %d images could be read (%s); the cache's error ledger lists each one: "
                     "check the paths (a manifest's are relative to its folder or --root)", summary.seen,
                     ", ".join(f"{k}: {v}" for k, v in sorted(summary.errors.items())))
        return 1
    return 0
