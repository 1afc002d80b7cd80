"""Degraded views: parsing, determinism per key, and what each view does to an image."""
import io

import numpy as np
import pytest
from PIL import Image

from clipdetect.data.views import DEFAULT_VIEWS, ViewError, apply_view, parse_views
from helpers.images import make_image


def test_parse_views_canonical_default_and_errors():
    assert parse_views(None) == ["orig"]
    assert parse_views("default") == list(DEFAULT_VIEWS)
    assert parse_views("orig, JPEG:75 ,norm:256:90,aug:2") == ["orig", "jpeg:75", "norm:256:90", "aug:2"]
    for bad, msg in (("jpg:75", "unknown view"), ("jpeg", "argument"), ("jpeg:x", "numbers"),
                     ("jpeg:0", "out of range"), ("orig,orig", "twice"), ("", "no views")):
        with pytest.raises(ViewError, match=msg):
            parse_views(bad)


def test_views_change_the_image_as_named():
    img = make_image(3, size=(300, 200))
    assert apply_view(img, "orig", "k") is img
    assert apply_view(img, "norm:256:90", "k").size == (256, 256)
    assert apply_view(img, "resize:0.5", "k").size == (150, 100)
    jpeg = np.asarray(apply_view(img, "jpeg:30", "k"), dtype=np.float32)
    assert jpeg.shape == (200, 300, 3) and 1.0 < np.abs(jpeg - np.asarray(img, np.float32)).mean()
    webp = apply_view(img, "webp:50", "k")
    assert webp.mode == "RGB" and webp.size == img.size


def test_aug_is_a_pure_function_of_key_and_spec():
    img = make_image(5, size=(320, 240))
    a1, a2 = apply_view(img, "aug", "key-1"), apply_view(img, "aug", "key-1")
    assert np.array_equal(np.asarray(a1), np.asarray(a2))
    outs = {np.asarray(apply_view(img, "aug", f"key-{i}")).tobytes() for i in range(12)}
    assert len(outs) > 6  # different keys draw different degradations
    # a numbered aug is another draw for the same key
    same = [np.array_equal(np.asarray(apply_view(img, "aug:1", f"key-{i}")), np.asarray(apply_view(img, "aug", f"key-{i}")))
            for i in range(6)]
    assert not all(same)
    for i in range(20):  # downscaling never goes below 128 px a side
        small = apply_view(Image.open(io.BytesIO(_png(make_image(1, size=(130, 140))))), "aug", f"s{i}")
        assert min(small.size) >= 128


def _png(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
