import io

import numpy as np
import pytest
from PIL import Image

from clipdetect.data.perturb import (DEFAULT_SEVERITIES, PERTURBATIONS, ListSource, NormalizedSource,
                                PerturbedSource,
                                apply_perturbation, blur, center_crop, gaussian_noise, jpeg, key_seed,
                                normalize_format, perturbed_bytes, resize, subset_source)
from clipdetect.data.sources import Sample


def _img(seed=0, size=(40, 30)):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    arr = np.stack([xx * 6, yy * 8, (xx + yy) * 3], -1) + rng.normal(0, 20, (size[1], size[0], 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _arr(img):
    return np.asarray(img, dtype=np.float64)


def _png(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_identity_severities_leave_pixels_unchanged():
    img = _img()
    for name, (_, ident, _) in PERTURBATIONS.items():
        if ident is not None:
            np.testing.assert_array_equal(_arr(apply_perturbation(img, name, ident)), _arr(img), err_msg=name)


def test_severity_is_monotone_and_deterministic():
    img = _img()
    err = lambda out: np.abs(_arr(out) - _arr(img)).mean()  # noqa: E731
    assert err(jpeg(img, 30)) > err(jpeg(img, 90)) > 0
    assert err(blur(img, 2.0)) > err(blur(img, 0.5)) > 0
    assert err(gaussian_noise(img, 10, seed=1)) > err(gaussian_noise(img, 2, seed=1)) > 0
    for name, sevs in DEFAULT_SEVERITIES.items():
        a = perturbed_bytes(img, name, sevs[-1], seed=3)
        assert a == perturbed_bytes(img, name, sevs[-1], seed=3), name  # pure: same input, same bytes


def test_geometry_of_resize_and_crop():
    img = _img(size=(40, 30))
    assert resize(img, 0.5).size == (20, 15) and resize(img, 2).size == (80, 60)
    assert resize(img, 0.001).size == (1, 1)
    c = center_crop(img, 0.5)
    assert c.size == (20, 15)
    np.testing.assert_array_equal(_arr(c), _arr(img)[7:22, 10:30])


def test_noise_seed_and_range():
    img = _img()
    a, b = gaussian_noise(img, 5, seed=1), gaussian_noise(img, 5, seed=2)
    assert not np.array_equal(_arr(a), _arr(b))
    np.testing.assert_array_equal(_arr(a), _arr(gaussian_noise(img, 5, seed=1)))
    assert 3.5 < np.std(_arr(gaussian_noise(Image.new("RGB", (64, 64), (128,) * 3), 5, seed=0))) < 6.5


@pytest.mark.parametrize("bad", [("resize", 0), ("blur", -1), ("crop", 1.5), ("jpeg", 0), ("noise", -2)])
def test_invalid_severities_raise(bad):
    with pytest.raises(ValueError):
        apply_perturbation(_img(), *bad)
    with pytest.raises(ValueError, match="unknown perturbation"):
        apply_perturbation(_img(), "rotate", 1)


def test_perturbed_source_keeps_identity_and_encodes():
    samples = [Sample(key=f"k{i}", image=_png(_img(i)), label=i % 2, caption=f"c{i}", generator="g")
               for i in range(4)] + [Sample(key="bad", image=b"not an image", label=0)]
    src = ListSource(samples)
    for name, fmt in (("jpeg", "JPEG"), ("blur", "PNG"), ("noise", "PNG")):
        out = list(PerturbedSource(src, name, 50 if name == "jpeg" else 1.0))
        assert [s.key for s in out] == [s.key for s in samples]
        assert [(s.label, s.caption) for s in out] == [(s.label, s.caption) for s in samples]
        assert all(Image.open(io.BytesIO(s.image)).format == fmt for s in out[:4])
        assert out[4].image == b"not an image"  # passed through for the extractor's error ledger
    # noise depends on the key, not on the position
    a = list(PerturbedSource(src, "noise", 5))[1].image
    b = list(PerturbedSource(ListSource(samples[1:]), "noise", 5))[0].image
    assert a == b and key_seed("k1") == key_seed("k1") != key_seed("k2")
    assert PerturbedSource(src, "blur", 1).describe() != PerturbedSource(src, "blur", 2).describe()


def test_normalize_format_is_identical_for_all_inputs():
    small, big = _img(0, (32, 32)), _img(1, (64, 48))
    for img in (small, big):
        out = Image.open(io.BytesIO(normalize_format(img, size=24, fmt="JPEG", quality=90)))
        assert out.format == "JPEG" and out.size == (24, 24)
    lossless = Image.open(io.BytesIO(normalize_format(small, fmt="PNG")))
    np.testing.assert_array_equal(_arr(lossless), _arr(small))
    src = NormalizedSource(ListSource([Sample(key="a", image=_png(big), label=1)]), size=16, fmt="PNG")
    assert Image.open(io.BytesIO(next(iter(src)).image)).size == (16, 16)


def test_subset_source_orders_and_reports_missing():
    src = ListSource([Sample(key=f"k{i}", image=b"", label=0) for i in range(10)])
    sub = subset_source(src, ["k7", "k2", "k7"])
    assert [s.key for s in sub] == ["k7", "k2"] and sub.size() == 2
    with pytest.raises(KeyError, match="1 key"):
        subset_source(src, ["k1", "zz"])
