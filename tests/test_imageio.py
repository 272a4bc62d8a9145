import os

import numpy as np
import pytest
from PIL import Image

from assessor.imageio import ImageError, as_rgb8, load_image, save_image_atomic


@pytest.fixture
def photo() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)


def test_rgb_png(tmp_path, photo):
    p = tmp_path / "a.png"
    Image.fromarray(photo).save(p)
    img = load_image(p)
    np.testing.assert_array_equal(img.rgb, photo)
    assert img.alpha is None and img.source_mode == "RGB" and img.size == (60, 40)


def test_rgba_keeps_alpha(tmp_path, photo):
    alpha = np.full(photo.shape[:2], 128, np.uint8)
    Image.fromarray(np.dstack([photo, alpha])).save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.rgb.shape == (40, 60, 3)
    np.testing.assert_array_equal(img.alpha, alpha)


def test_grey_and_grey_alpha(tmp_path, photo):
    Image.fromarray(photo[..., 0]).save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.rgb.shape == (40, 60, 3)
    np.testing.assert_array_equal(img.rgb[..., 0], img.rgb[..., 2])
    Image.fromarray(photo[..., 0]).convert("LA").save(tmp_path / "la.png")
    assert load_image(tmp_path / "la.png").alpha is not None


def test_sixteen_bit_is_scaled(tmp_path):
    arr = (np.linspace(0, 65535, 40 * 60).reshape(40, 60)).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "d.png")
    img = load_image(tmp_path / "d.png")
    assert img.rgb.dtype == np.uint8
    assert img.rgb.max() == 255 and img.rgb.min() == 0


def test_cmyk_jpeg(tmp_path, photo):
    Image.fromarray(photo).convert("CMYK").save(tmp_path / "c.jpg")
    img = load_image(tmp_path / "c.jpg")
    assert img.source_mode == "CMYK" and img.rgb.shape == (40, 60, 3)


def test_palette_with_transparency(tmp_path, photo):
    im = Image.fromarray(photo).convert("P")
    im.info["transparency"] = 0
    im.save(tmp_path / "p.png", transparency=0)
    img = load_image(tmp_path / "p.png")
    assert img.rgb.shape == (40, 60, 3) and img.alpha is not None


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_text("hello"), "not an image file"),
        (lambda p: Image.new("RGB", (1, 1)).save(p, format="PNG"), "1x1 is too small"),
        (lambda p: p.mkdir(), "is a folder"),
    ],
)
def test_bad_inputs_have_one_line_messages(tmp_path, make, message):
    p = tmp_path / "bad.png"
    make(p)
    with pytest.raises(ImageError, match=message) as info:
        load_image(p)
    assert "\n" not in str(info.value) and str(p) in str(info.value)


def test_truncated_file(tmp_path, photo):
    p = tmp_path / "t.png"
    Image.fromarray(photo).save(p)
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(ImageError, match="cannot read image"):
        load_image(p)


def test_huge_image_is_refused_before_decoding(tmp_path):
    p = tmp_path / "huge.png"
    Image.new("L", (4000, 3000)).save(p)
    with pytest.raises(ImageError, match="12 megapixels, more than the 10 MP limit; downscale it first"):
        load_image(p, max_pixels=10_000_000)


def test_as_rgb8_layouts():
    assert as_rgb8(np.zeros((5, 6))).shape == (5, 6, 3)
    assert as_rgb8(np.ones((5, 6, 1), np.float32)).max() == 255
    assert as_rgb8(np.zeros((5, 6, 4), np.uint8)).shape == (5, 6, 3)
    assert as_rgb8(np.full((2, 2, 3), 65535, np.uint16)).max() == 255
    with pytest.raises(ImageError):
        as_rgb8(np.zeros((5, 6, 2)))


def test_atomic_save_leaves_no_temp_and_normal_permissions(tmp_path, photo):
    out = tmp_path / "sub" / "x.png"
    save_image_atomic(photo, out)
    assert out.exists() and [f.name for f in out.parent.iterdir()] == ["x.png"]
    mask = os.umask(0)
    os.umask(mask)
    assert (out.stat().st_mode & 0o777) == (0o666 & ~mask)
    with pytest.raises(ImageError, match="unknown image extension"):
        save_image_atomic(photo, tmp_path / "x.unknownext")
    assert not list(tmp_path.glob(".x.unknownext*"))
