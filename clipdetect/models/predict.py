"""End-to-end scoring: images → decode (worker processes) → backbone → detector head → file.

Runs on the extraction engine (:mod:`clipdetect.features.pipeline`: the same reader and the
same mapper, decoder then encoder), so images are decoded and preprocessed exactly as they were
when the detector's training cache was built. Output rows keep the source order; an image that
cannot be decoded gets a row with its ``error`` reason and no score, and never stops the run.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from clipdetect.core.progress import progress_bar
from clipdetect.features.backbones import Backbone, BackboneError, create_backbone
from clipdetect.features.identity import alternative_specs, identities_match, locate_checkpoint
from clipdetect.features import pipeline
from clipdetect.features.encoder import encoder_for
from clipdetect.features.manifest import feature_parts
from clipdetect.features.pipeline import Decoder, Task, default_workers, encode_captions, plan_tasks, view_refs
from clipdetect.core.inputs import MAX_IMAGE_BYTES, READ_TIMEOUT, count_reasons
from clipdetect.core.io import not_an_input
from clipdetect.data.imaging import IMAGE_REF_TYPES, MAX_ASPECT, MAX_PIXELS, SplitPreprocess
from clipdetect.data.sources import Sample, Source
from clipdetect.data.views import ORIG, ViewRef, input_view
from clipdetect.models.predictions import PredictionWriter, PredictSummary, SCORE_COLUMNS, output_format

logger = logging.getLogger(__name__)


def resolve_backbone(detector, spec: Optional[str] = None, *, force: bool = False, device: str = "cpu",
                     precision: str = "fp32", weights: Optional[str] = None, runtime: str = "torch") -> Backbone:
    """The backbone that made the detector's training features (or ``spec``), checked.

    A backbone whose identity (architecture, weights hash, preprocessing ...) differs from
    the detector's is refused unless ``force``: its embeddings mean nothing to the head.
    Without ``spec``, a checkpoint backbone is found again by its sha256
    (:func:`~clipdetect.features.identity.locate_checkpoint`: ``weights`` or
    ``$CLIPDETECT_WEIGHTS``, the recorded absolute path, the path as written), so a bundle
    trained on ``ARCH:relative/path`` works from any directory. ``runtime`` (``onnx``,
    ``openvino``) runs the image tower there at ``precision`` (:mod:`clipdetect.features.runtime`).
    """
    want = dict(detector.backbone or {})
    if not spec and want.get("weights") == "checkpoint":
        try:
            spec = f"{want.get('arch')}:{locate_checkpoint(want, override=weights)}"
        except BackboneError as missing:
            return _alternative_backbone(want, missing, device=device, precision=precision)
    spec = spec or want.get("spec")
    if not spec:
        raise BackboneError("the detector records no backbone spec; pass one with --backbone ARCH:WEIGHTS")
    try:
        seed = int(want.get("seed", 0) or 0)
        backbone = create_backbone(spec, device=device, precision=precision, seed=seed, runtime=runtime)
    except BackboneError as exc:
        raise BackboneError(f"{exc} (the detector was trained on features of {want.get('spec')!r}; "
                            "pass --backbone ARCH:/absolute/path to point at the same weights)") from exc
    if not identities_match(backbone.identity, want):
        diff = {k: (want.get(k), backbone.identity.get(k)) for k in
                ("arch", "weights", "tag", "sha256", "seed", "embed_dim", "preprocess")
                if want.get(k) != backbone.identity.get(k)}
        msg = f"backbone {spec!r} differs from the detector's (detector vs given: {diff})"
        if not force:
            raise BackboneError(msg + "; scores would be meaningless. Use the detector's backbone, "
                                "or --force")
        logger.warning("%s; continuing because of --force", msg)
    return backbone


def _alternative_backbone(want: dict, missing: BackboneError, *, device: str, precision: str) -> Backbone:
    """The first of the detector's alternative backbones (:func:`alternative_specs`) that loads,
    when its own checkpoint file is not found; else one error naming every way to fix it."""
    tried = []
    for alt in alternative_specs(want):
        try:
            backbone = create_backbone(alt, device=device, precision=precision)
        except BackboneError as exc:
            tried.append(f"{alt}: {exc}")
            continue
        logger.info("the detector's checkpoint %s is not here; using the same model as %s",
                    want.get("checkpoint"), alt)
        return backbone
    if not tried:
        raise missing
    raise BackboneError(f"{missing}. Its alternatives did not load either: " + "; ".join(tried))


def reads_text(detector) -> bool:
    """Whether the detector's input includes caption embeddings."""
    return "text" in feature_parts(detector.feature_set)


def detector_encoder(detector, backbone: Backbone, pre: SplitPreprocess):
    """The encoder stage for ``detector``: with per-block tokens when its input has them."""
    return encoder_for(backbone, pre, layers="layers" in feature_parts(detector.feature_set))


def check_captions(detector, source: Source) -> None:
    """A detector on caption features needs captions: refuse a source whose first item has none."""
    if not reads_text(detector):
        return
    first = next(iter(source.iterate(0)), None)
    if first is not None and not first.caption:
        raise ValueError(f"the detector uses {detector.feature_set!r} features, which need a caption per image, "
                         f"but source {source.describe().get('root') or source.describe()} gives none; pass "
                         "--caption-template (e.g. 'a photo of a {label_name}') or a manifest with a caption column")


def check_text_tower(detector, backbone: Backbone) -> None:
    """Raise :class:`BackboneError` when the detector needs caption features the backbone cannot make."""
    if reads_text(detector) and not backbone.has_text:
        raise BackboneError(f"the detector uses {detector.feature_set!r} features but backbone {backbone.spec!r} "
                            "has no text tower")


def scorable(detector, decoded: Sequence[tuple], captions: Sequence[Optional[str]]) -> List[int]:
    """Indices of the items that can be scored: decoded, and captioned when the detector reads text."""
    text = reads_text(detector)
    return [i for i, d in enumerate(decoded) if d[0] == "ok" and (not text or captions[i])]


def detector_input_view(detector) -> str:
    """The view every image is turned into before the detector scores it: ``extra["input_view"]``
    of its bundle (e.g. ``norm:256:90`` for a detector trained on format-normalised images only),
    else ``orig`` (the image as decoded)."""
    return input_view(detector.extra.get("input_view"))


def score_batch(detector, backbone: Backbone, decoded: Sequence[tuple], captions: Sequence[Optional[str]],
                x: np.ndarray) -> List[Dict[str, Any]]:
    """One dict per item of a decoded batch, given the encoder's rows ``x`` of its
    :func:`scorable` items (image embeddings, then per-block tokens when the encoder taps them):
    ``logit``, ``probability`` (calibrated P(fake)), ``threshold`` and ``label`` (1 = fake:
    ``probability > threshold``), or only ``error`` ("reason: detail")."""
    ok = scorable(detector, decoded, captions)
    out: List[Dict[str, Any]] = [{} for _ in decoded]
    for i, d in enumerate(decoded):
        if d[0] != "ok":
            out[i]["error"] = f"{d[1]}: {d[2]}" if d[2] else d[1]
        elif reads_text(detector) and not captions[i]:
            out[i]["error"] = "no_caption: the detector needs a caption for text features"
    if ok:
        d = backbone.embed_dim
        parts = {"image": x[:, :d], "layers": x[:, d:]}
        if reads_text(detector):
            parts["text"] = encode_captions(backbone, [captions[i] for i in ok])
        x = np.concatenate([parts[p] for p in feature_parts(detector.feature_set)], axis=1)
        finite = np.isfinite(np.asarray(x, dtype=np.float32)).all(axis=1)
        for j in np.flatnonzero(~finite):  # the backbone overflowed: no score, not a NaN one
            out[ok[j]]["error"] = "non_finite_embedding: the backbone gave NaN/inf features"
        ok, x = [i for i, f in zip(ok, finite) if f], np.asarray(x)[finite]
    if ok:
        raw = detector.logits(x)  # the head runs once: logits and probabilities from it
        logits = np.asarray(raw, dtype=np.float64).ravel()
        probs = np.asarray(detector.calibration.probability(raw), dtype=np.float64).ravel()
        threshold = float(detector.threshold)
        for j, i in enumerate(ok):
            out[i] = {"logit": float(logits[j]), "probability": float(probs[j]), "threshold": threshold,
                      "label": int(probs[j] > threshold)}
    return out


def score_tasks(detector, backbone: Backbone, tasks: Iterable[Task], *, workers: int = 0,
                **limits) -> Iterator[Tuple[Task, List[Dict[str, Any]]]]:
    """Each task with one :func:`score_batch` dict per sample: the samples decoded (on ``workers``
    processes, with the :class:`Decoder` ``limits``) and encoded by the extraction mapper
    (:func:`clipdetect.features.pipeline.run`), then scored."""
    decoder = Decoder(SplitPreprocess(backbone.preprocess), workers=workers, **limits)
    encoder = detector_encoder(detector, backbone, decoder.pre)

    def select(task, decoded):  # text features need a caption
        return scorable(detector, decoded, [s.caption for s in task.samples])
    views = [detector_input_view(detector)]
    stream = pipeline.run(((t, view_refs(t.samples, views)) for t in tasks), decoder, encoder, select)
    with contextlib.closing(stream):  # stops the decode workers when the caller stops
        for task, decoded, x in stream:
            yield task, score_batch(detector, backbone, decoded, [s.caption for s in task.samples], x)


def score_images(detector, images: Sequence[Any], *, backbone: Backbone, batch_size: int = 64,
                 captions: Optional[Sequence[Optional[str]]] = None, max_pixels: int = MAX_PIXELS,
                 max_aspect: Optional[float] = MAX_ASPECT, max_bytes: int = MAX_IMAGE_BYTES,
                 read_timeout: Optional[float] = READ_TIMEOUT):
    """Score images held in memory (PIL images, paths or bytes) in this process, writing no file.

    Decoding, preprocessing, encoding and scoring run on the engine :func:`predict_source` uses
    (:func:`score_tasks`), so the scores equal ``clipdetect predict``'s. Returns a DataFrame with
    one row per image, in order, with the columns :data:`SCORE_COLUMNS`: ``logit``,
    ``probability``, ``threshold``, ``label`` (nullable) and ``error``.
    """
    import pandas as pd

    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    images = [images] if isinstance(images, IMAGE_REF_TYPES) else list(images)
    bad = [(i, type(im).__name__) for i, im in enumerate(images) if not isinstance(im, IMAGE_REF_TYPES)]
    if bad:
        raise TypeError(f"image {bad[0][0]} is a {bad[0][1]}; each image must be a PIL image, a path or encoded "
                        "bytes (bytes, bytearray, memoryview); pass one image alone or a list of them")
    captions = list(captions) if captions is not None else [None] * len(images)
    if len(captions) != len(images):
        raise ValueError(f"got {len(captions)} captions for {len(images)} images")
    check_text_tower(detector, backbone)
    samples = (Sample(key=str(i), image=im, label=-1, caption=c) for i, (im, c) in enumerate(zip(images, captions)))
    scored = score_tasks(detector, backbone, plan_tasks(samples, 0, None, batch_size, batch_size),
                         max_pixels=max_pixels, max_aspect=max_aspect, max_bytes=max_bytes, read_timeout=read_timeout)
    rows = [res for _, results in scored for res in results]
    df = pd.DataFrame(rows, columns=SCORE_COLUMNS)
    df[["logit", "probability", "threshold"]] = df[["logit", "probability", "threshold"]].astype(np.float64)
    df["label"] = df["label"].astype("Int64")
    df["error"] = df["error"].astype(object).where(df["error"].notna(), None)
    return df


class ImageScorer:
    """:func:`score_images` in two steps that a service runs on different threads: ``decode`` one
    encoded image (thread-safe) and ``score`` a batch of decoded ones, with one decoder and one
    encoder built once; ``predict``'s steps, so the same scores. Images only (no captions)."""

    def __init__(self, detector, backbone: Backbone, *, max_pixels: int = MAX_PIXELS,
                 max_aspect: Optional[float] = MAX_ASPECT, max_bytes: int = MAX_IMAGE_BYTES,
                 read_timeout: Optional[float] = READ_TIMEOUT):
        if reads_text(detector):
            raise ValueError(f"the detector uses {detector.feature_set!r} features, which need captions")
        self.detector, self.backbone = detector, backbone
        self.decoder = Decoder(SplitPreprocess(backbone.preprocess), max_pixels=max_pixels, max_aspect=max_aspect,
                               max_bytes=max_bytes, read_timeout=read_timeout)
        self.encoder = detector_encoder(detector, backbone, self.decoder.pre)
        self.view = detector_input_view(detector)

    def decode(self, image: Any) -> tuple:
        """("ok", array, info) or ("err", reason, detail), as the decode workers of predict give it."""
        return self.decoder.decode([image if self.view == ORIG else ViewRef(image, self.view, "input")])[0]

    def score(self, decoded: Sequence[tuple]) -> List[Dict[str, Any]]:
        """One :func:`score_batch` dict per decoded image, in order."""
        none = [None] * len(decoded)
        ok = scorable(self.detector, decoded, none)
        x = self.encoder.encode([decoded[i][1] for i in ok]) if ok else None
        return score_batch(self.detector, self.backbone, decoded, none, x)


def predict_source(detector, source: Source, out, *, fmt: Optional[str] = None,
                   backbone: Optional[Backbone] = None, batch_size: int = 64, workers: Optional[int] = None,
                   limit: Optional[int] = None, max_pixels: int = MAX_PIXELS,
                   max_aspect: Optional[float] = MAX_ASPECT, max_bytes: int = MAX_IMAGE_BYTES,
                   read_timeout: Optional[float] = READ_TIMEOUT, progress: bool = True) -> PredictSummary:
    """Score every image of ``source`` and write one row each to ``out``: a .csv or .jsonl path
    (written whole or not at all), or an open text stream such as ``sys.stdout`` (rows as they
    come; ``fmt`` "csv", the default, or "jsonl").

    Columns (:data:`COLUMNS`): ``key, path, logit`` (the head's raw output), ``probability``
    (calibrated P(fake)), ``threshold`` (the detector's, on P(fake)), ``label`` (1 = fake, i.e.
    ``probability > threshold``; 0 = real), ``true_label`` (when the source has labels) and
    ``error`` (the reason an image could not be scored).
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    fmt = output_format(out, fmt)
    if isinstance(out, (str, os.PathLike)):
        desc = source.describe()
        not_an_input(out, [desc.get(k) for k in ("path", "root")], what="--out")
    check_captions(detector, source)
    workers = default_workers() if workers is None else workers
    backbone = backbone or resolve_backbone(detector)
    check_text_tower(detector, backbone)
    summary = PredictSummary(out=str(out) if isinstance(out, (str, os.PathLike)) else "-")
    hits = labelled = 0
    tasks = plan_tasks(source.iterate(0), 0, limit, batch_size, batch_size)
    limits = {"max_pixels": max_pixels, "max_aspect": max_aspect, "max_bytes": max_bytes, "read_timeout": read_timeout}
    total = source.size() if limit is None else min(limit, source.size() or limit)
    writer, t0 = None, time.perf_counter()
    try:  # any exit but success removes the partial file
        writer = PredictionWriter(out, fmt)
        with progress_bar(total=total, unit="img", desc="predict", enabled=progress, dynamic_ncols=True) as bar, \
                contextlib.closing(score_tasks(detector, backbone, tasks, workers=workers, **limits)) as scored:
            for task, results in scored:
                rows = [{"key": s.key, "path": s.path or (s.image if isinstance(s.image, str) else ""),
                         "true_label": s.label if s.label in (0, 1) else None, **res}
                        for s, res in zip(task.samples, results)]
                for row in rows:
                    writer.write(row)
                    if "label" not in row:
                        continue
                    summary.scored += 1
                    summary.predicted_fake += row["label"]
                    if row["true_label"] is not None:
                        labelled += 1
                        hits += int(row["label"] == row["true_label"])
                count_reasons(summary.errors, [r["error"].split(":", 1)[0] for r in rows if r.get("error")])
                summary.n += len(rows)
                bar.update(len(rows))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    writer.close()
    summary.seconds = time.perf_counter() - t0
    summary.accuracy = hits / labelled if labelled else None
    logger.debug("scored %d of %d images (%d errors) at %.1f img/s -> %s", summary.scored, summary.n,
                 sum(summary.errors.values()), summary.images_per_second, summary.out)
    if summary.accuracy is not None and not math.isnan(summary.accuracy):
        logger.debug("accuracy against the source labels: %.4f (%d labelled)", summary.accuracy, labelled)
    return summary
