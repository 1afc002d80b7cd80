"""The encoder stage: uint8 image batches → L2-normalised embeddings, overlapped on a GPU.

Per batch, on CUDA: the workers' uint8 HWC arrays are stacked straight into a pinned host
buffer, copied to the device with ``non_blocking=True`` on a side stream, converted to
float and normalised there (4× less host→device traffic than float pixels, no host
float work), run through the model on the compute stream once the copy's event fires,
and the embeddings are copied back asynchronously into a pinned buffer whose event the
loop waits on only when it hands the batch on. :meth:`ImageEncoder.stream` keeps
``depth`` batches in flight, so batch *i+1* is stacked and copied while batch *i* runs
and the loop never waits on ``.cpu()`` before submitting the next one. Captions that come
with a batch (:meth:`ImageEncoder.submit`'s ``texts``) are tokenised on the host while the
image tower runs, then encoded on the same compute stream right behind it and copied back
with the image embeddings, so the text tower overlaps decoding and the next batch's copy
instead of running in one block when a shard is written.

On a CPU the same class runs the same steps synchronously (no pinning, streams or
events), and gives exactly the embeddings of :meth:`Backbone.encode_images` on
``SplitPreprocess.finish`` (the same operations in the same order). A backbone with an
attached ``tower`` (``--runtime onnx|openvino``, :mod:`clipdetect.features.runtime`) runs its
image tower there instead of in torch; captions still go through torch.

With ``layers=True`` each image's row also carries the per-block tokens of the image tower
(:mod:`clipdetect.features.layers`), flattened after the embedding: ``[N, D + T*W]`` in one
buffer (one copy back per batch); :meth:`ImageEncoder.split` cuts a batch into the two. The
per-block tokens come from the torch model only (a compiled tower has no taps).
"""
from __future__ import annotations

from collections import deque
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from clipdetect.data.imaging import SplitPreprocess
from clipdetect.features.layers import LayerTaps, layer_layout


class _Pending:
    """A batch in flight: its host output buffers and the event that marks them filled."""

    __slots__ = ("payload", "out", "text_out", "done", "keep")

    def __init__(self, payload: Any, out: torch.Tensor, done: Optional[Any], keep: Tuple = (),
                 text_out: Optional[torch.Tensor] = None):
        self.payload, self.out, self.done, self.keep, self.text_out = payload, out, done, keep, text_out

    def result(self) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """(image embeddings, caption embeddings or None), waiting for the device if needed."""
        if self.done is not None:
            self.done.synchronize()
        return self.out.numpy(), None if self.text_out is None else self.text_out.numpy()


class ImageEncoder:
    """Encode stage of the pipeline for ``backbone`` with the preprocessing ``pre``.

    ``depth``: batches in flight in :meth:`stream` (2 = double buffering). On CPU the
    queue logic is the same, every step just completes before the next starts.
    """

    def __init__(self, backbone, pre: Optional[SplitPreprocess] = None, *, depth: int = 2, layers: bool = False):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.backbone, self.depth = backbone, depth
        if layers and getattr(backbone, "tower", None) is not None:
            from clipdetect.features.backbones import BackboneError

            raise BackboneError("per-block features (--layers, or a per-block detector) need the torch runtime: "
                                "the compiled image tower has no taps; use --runtime torch")
        self.taps = LayerTaps(backbone) if layers else None
        #: (token names, width) of the per-block features, or None
        self.layer_layout = layer_layout(backbone) if layers else None
        self.pre = pre or SplitPreprocess(backbone.preprocess)
        self.device = torch.device(backbone.device)
        self.cuda = self.device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.raw = self.pre.pil_stage is None  # the workers ran the whole transform: float CHW arrays
        if not self.raw:
            self.mean = torch.tensor(self.pre.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
            self.std = torch.tensor(self.pre.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    # ------------------------------------------------------------ one batch
    def _host(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        first = np.asarray(arrays[0])
        host = torch.empty((len(arrays), *first.shape), dtype=torch.from_numpy(np.empty(0, first.dtype)).dtype,
                           pin_memory=self.cuda)
        np.stack(arrays, out=host.numpy())
        return host

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        if not self.cuda:
            return host
        with torch.cuda.stream(self.copy_stream):
            dev = host.to(self.device, non_blocking=True)
        compute = torch.cuda.current_stream(self.device)
        compute.wait_stream(self.copy_stream)
        dev.record_stream(compute)  # the copy stream's allocation is used on the compute stream
        return dev

    def pixels(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 [N,H,W,3] on the device → normalised [N,3,H,W] in the model's dtype."""
        if self.raw:
            return batch.to(self.backbone.dtype)
        x = batch.permute(0, 3, 1, 2).float().div_(255.0)
        return x.sub_(self.mean).div_(self.std).to(self.backbone.dtype)

    @property
    def row_dim(self) -> int:
        """Columns of one image's output row: the embedding, then the flattened tokens."""
        extra = len(self.layer_layout[0]) * self.layer_layout[1] if self.layer_layout else 0
        return self.backbone.embed_dim + extra

    def _empty(self, dim: Optional[int] = None) -> torch.Tensor:
        return torch.zeros((0, dim or self.backbone.embed_dim), dtype=torch.float32, device=self.device)

    def _images(self, arrays: Sequence[np.ndarray]) -> Tuple[torch.Tensor, Tuple]:
        if len(arrays) == 0:
            return self._empty(self.row_dim), ()
        host = self._host(arrays)
        pixels = self.pixels(self._to_device(host))
        tower = self.backbone.tower  # a compiled CPU runtime (onnx, openvino), else the torch model
        emb = torch.from_numpy(tower(pixels.numpy())) if tower is not None else self.backbone.model.encode_image(pixels)
        emb = torch.nn.functional.normalize(emb.float(), dim=-1)
        if self.taps is not None:
            emb = torch.cat([emb, self.taps.collect().flatten(1)], dim=1)
        return emb, (host,)

    def split(self, rows: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """A batch of output rows → (embeddings [N, D], tokens [N, T, W] or None)."""
        d = self.backbone.embed_dim
        if self.layer_layout is None:
            return rows, None
        names, width = self.layer_layout
        return rows[:, :d], rows[:, d:].reshape(len(rows), len(names), width)

    def _texts(self, texts: Sequence[str]) -> Tuple[torch.Tensor, Tuple]:
        if not len(texts):
            return self._empty(), ()
        tokens = self.backbone.tokenize(texts)  # host work, while the image tower runs
        if self.cuda:
            tokens = tokens.pin_memory()
        emb = self.backbone.model.encode_text(self._to_device(tokens)).float()
        return torch.nn.functional.normalize(emb, dim=-1), (tokens,)

    def _back(self, emb: torch.Tensor) -> torch.Tensor:
        out = torch.empty(emb.shape, dtype=torch.float32, pin_memory=True)
        out.copy_(emb, non_blocking=True)
        return out

    @torch.inference_mode()
    def submit(self, payload: Any, arrays: Sequence[np.ndarray], texts: Optional[Sequence[str]] = None) -> _Pending:
        """Start encoding one batch of images, and ``texts`` (captions) with it; returns at
        once on CUDA (the work is queued on the device)."""
        emb, keep = self._images(arrays)
        txt, keep_t = self._texts(texts) if texts is not None else (None, ())
        if not self.cuda:
            return _Pending(payload, emb, None, text_out=txt)
        out, text_out = self._back(emb), None if txt is None else self._back(txt)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        return _Pending(payload, out, done, keep=keep + keep_t, text_out=text_out)

    def encode(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Output rows [N, D] (float32; [N, D + T*W] with layers) of one batch of worker arrays,
        synchronously."""
        return self.submit(None, arrays).result()[0]

    # ------------------------------------------------------------ a stream of batches
    def stream(self, batches: Iterable[Tuple]) -> Iterator[Tuple]:
        """``(payload, arrays)`` → ``(payload, embeddings)``, or ``(payload, arrays, texts)`` →
        ``(payload, embeddings, text embeddings)``, in order, ``depth`` batches in flight."""
        inflight: deque = deque()

        def done(p: _Pending) -> Tuple:
            img, txt = p.result()
            return (p.payload, img) if p.text_out is None else (p.payload, img, txt)

        for item in batches:
            inflight.append(self.submit(*item))
            if len(inflight) >= self.depth:
                yield done(inflight.popleft())
        while inflight:
            yield done(inflight.popleft())


def encoder_for(backbone, pre: Optional[SplitPreprocess] = None, **kw) -> ImageEncoder:
    """The encode stage for ``backbone`` (a hook for backbones that need their own)."""
    return ImageEncoder(backbone, pre, **kw)


__all__: List[str] = ["ImageEncoder", "encoder_for"]
