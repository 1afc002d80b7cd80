"""Bad and unusual images: every input becomes an RGB image or a BadImage with a reason."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from clipdetect.data.imaging import BadImage, SplitPreprocess, decode_image
from helpers.images import make_image


def _bytes(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("data,reason", [
    (b"", "empty"),
    (b"<html><body>not found</body></html>", "not_an_image"),
    (_bytes(make_image(0), "JPEG")[:300], "corrupt"),
    (_bytes(make_image(0), "PNG")[:200], "corrupt"),
])
def test_undecodable_bytes_raise_with_reason(data, reason):
    with pytest.raises(BadImage) as exc:
        decode_image(data)
    assert exc.value.reason == reason


def test_missing_and_unreadable_paths(tmp_path):
    with pytest.raises(BadImage, match="missing"):
        decode_image(tmp_path / "nope.jpg")
    d = tmp_path / "adir.jpg"
    d.mkdir()
    with pytest.raises(BadImage) as exc:
        decode_image(d)
    assert exc.value.reason == "unreadable"


def test_decompression_bomb_is_refused_without_decoding():
    data = _bytes(Image.new("L", (4000, 4000)), "PNG")
    with pytest.raises(BadImage) as exc:
        decode_image(data, max_pixels=1_000_000)
    assert exc.value.reason == "decompression_bomb"


def test_extreme_aspect_ratio_is_refused_only_on_request():
    with pytest.raises(BadImage, match="extreme_aspect"):
        decode_image(_bytes(Image.new("RGB", (5000, 2)), "PNG"), max_aspect=100)


def test_thin_image_is_cropped_to_the_centre_the_preprocessing_keeps(tiny_backbone):
    from clipdetect.data.imaging import SplitPreprocess

    rng = np.random.default_rng(0)
    thin = Image.fromarray(rng.integers(0, 255, (2, 2000, 3), dtype=np.uint8), "RGB")
    img, info = decode_image(_bytes(thin, "PNG"))
    assert img.size == (200, 2) and (info["width"], info["height"]) == (2000, 2)
    pre = SplitPreprocess(tiny_backbone.preprocess)
    cropped, full = pre.worker(img).astype(int), pre.worker(thin).astype(int)
    assert cropped.shape == full.shape and np.abs(cropped - full).max() <= 2


def test_huge_but_sane_dimensions_decode():
    img, info = decode_image(_bytes(Image.new("RGB", (6000, 4000), (10, 20, 30)), "JPEG"))
    assert img.size == (6000, 4000) and info["format"] == "JPEG"


def test_unusual_modes_become_rgb():
    rgb = make_image(1)
    cases = {
        "CMYK": _bytes(rgb.convert("CMYK"), "JPEG"),
        "P": _bytes(rgb.convert("P"), "PNG"),
        "RGBA": _bytes(rgb.convert("RGBA"), "PNG"),
        "L": _bytes(rgb.convert("L"), "PNG"),
    }
    for mode, data in cases.items():
        img, info = decode_image(data)
        assert img.mode == "RGB" and img.size == rgb.size and info["mode"] == mode


def test_sixteen_bit_is_scaled_not_clipped():
    arr = (np.linspace(0, 65535, 32 * 32).reshape(32, 32)).astype(np.uint16)
    img, info = decode_image(_bytes(Image.fromarray(arr), "PNG"))
    out = np.asarray(img)[..., 0]
    assert info["mode"].startswith("I")
    assert out.min() == 0 and out.max() == 255  # full range kept, not saturated at 255


def test_transparency_composited_on_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    img, _ = decode_image(_bytes(rgba, "PNG"))
    assert img.getpixel((0, 0)) == (255, 255, 255)


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    img, _ = decode_image(buf.getvalue())
    r, g, b = img.getpixel((8, 8))
    assert r > 200 and b < 50


def test_exif_rotation_applied():
    img = Image.new("RGB", (40, 20), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out, info = decode_image(_bytes(img, "JPEG", exif=exif))
    assert out.size == (20, 40) and info["width"] == 40


def test_split_preprocess_equals_open_clip_preprocess(tiny_backbone):
    pre = SplitPreprocess(tiny_backbone.preprocess)
    assert pre.pil_stage is not None
    imgs = [make_image(i, size=s) for i, s in enumerate([(48, 40), (64, 64), (200, 90)])]
    split = pre.finish([pre.worker(im) for im in imgs])
    full = torch.stack([tiny_backbone.preprocess(im) for im in imgs])
    assert torch.allclose(split, full, atol=1e-6)


def test_header_pixels_reads_the_size_or_says_none():
    import io

    from PIL import Image

    from clipdetect.data.imaging import header_pixels

    buf = io.BytesIO()
    Image.new("RGB", (40, 30)).save(buf, "PNG")
    data = buf.getvalue()
    assert header_pixels(data) == 1200
    assert header_pixels(b"") is None and header_pixels(b"GIF89a") is None
