import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from assessor.zoom import ZoomError, crop_zoom, share_inside, to_pixel_box


def gradient(h: int = 120, w: int = 200) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=2).astype(np.uint8)


def test_native_crop_keeps_pixels_and_context():
    img = gradient()
    z = crop_zoom(img, [50, 40, 90, 80], context=0.25, min_side=8, target_size=None)
    assert z.box == (40, 30, 100, 90)  # 10 px of context on each side (25% of 40)
    assert z.requested == (50, 40, 90, 80)
    assert (z.scale_x, z.scale_y) == (1.0, 1.0)
    np.testing.assert_array_equal(z.image, img[30:90, 40:100])
    assert z.requested_in_zoom() == (10, 10, 50, 50)


def test_zoom_to_target_size_and_map_back():
    img = gradient()
    z = crop_zoom(img, [20, 20, 60, 40], context=0.0, min_side=8, target_size=160)
    assert z.image.shape[:2] == (80, 160)  # 40x20 crop zoomed 4x (the max_upscale default)
    assert z.scale_x == pytest.approx(4.0)
    assert z.to_source((0, 0, 160, 80)) == pytest.approx((20, 20, 60, 40))
    assert z.to_zoom((30, 25, 40, 30)) == pytest.approx((40, 20, 80, 40))


def test_max_upscale_caps_the_zoom():
    z = crop_zoom(gradient(), [0, 0, 10, 10], context=0.0, min_side=10, target_size=448, max_upscale=2.0)
    assert z.image.shape[:2] == (20, 20)


def test_normalized_and_frame_coordinates():
    img = gradient(100, 200)
    assert to_pixel_box([0.1, 0.2, 0.5, 0.6], (200, 100)) == pytest.approx((20, 20, 100, 60))
    assert to_pixel_box([10, 10, 50, 30], (200, 100), frame_size=(100, 50)) == pytest.approx(
        (20, 20, 100, 60)
    )
    z = crop_zoom(img, [0.1, 0.2, 0.5, 0.6], context=0.0, target_size=None)
    assert z.box == (20, 20, 100, 60)
    # reversed corners are sorted
    assert to_pixel_box([50, 60, 10, 20], (200, 100)) == (10, 20, 50, 60)


def test_clamps_and_enlarges_small_boxes():
    img = gradient(100, 200)
    z = crop_zoom(img, [-50, -50, 5, 5], context=0.0, min_side=32, target_size=None)
    assert z.box == (0, 0, 32, 32)
    z = crop_zoom(img, [198, 98, 199, 99], context=0.0, min_side=32, target_size=None)
    assert z.box == (168, 68, 200, 100)


def test_errors():
    img = gradient(100, 200)
    with pytest.raises(ZoomError, match="outside"):
        crop_zoom(img, [300, 300, 400, 400])
    with pytest.raises(ZoomError, match="4 numbers"):
        crop_zoom(img, [1, 2, 3])
    with pytest.raises(ZoomError, match="non-finite"):
        crop_zoom(img, [0, 0, float("nan"), 10])


@given(
    w=st.integers(16, 300),
    h=st.integers(16, 300),
    box=st.tuples(st.floats(-50, 350), st.floats(-50, 350), st.floats(-50, 350), st.floats(-50, 350)),
    context=st.floats(0.0, 1.0),
    min_side=st.integers(1, 64),
    target=st.one_of(st.none(), st.integers(16, 512)),
)
def test_geometry_properties(w, h, box, context, min_side, target):
    img = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = box
    if max(x0, x1) <= 0 or max(y0, y1) <= 0 or min(x0, x1) >= w or min(y0, y1) >= h:
        with pytest.raises(ZoomError):
            crop_zoom(img, box, normalized=False, context=context, min_side=min_side, target_size=target)
        return
    z = crop_zoom(img, box, normalized=False, context=context, min_side=min_side, target_size=target)
    bx0, by0, bx1, by1 = z.box
    rx0, ry0, rx1, ry1 = z.requested
    # inside the image, containing the requested box, at least min_side where the image allows
    assert 0 <= bx0 <= rx0 < rx1 <= bx1 <= w and 0 <= by0 <= ry0 < ry1 <= by1 <= h
    assert rx1 - rx0 >= min(min_side, w) - 1 and ry1 - ry0 >= min(min_side, h) - 1
    # the zoomed image covers the crop exactly: mapping its corners back gives the crop box
    zh, zw = z.image.shape[:2]
    assert z.to_source((0, 0, zw, zh)) == pytest.approx((bx0, by0, bx1, by1), abs=1e-6)
    if target is not None:
        assert max(zw, zh) <= max(target, 4 * max(bx1 - bx0, by1 - by0))
    # round trip
    probe = (rx0, ry0, rx1, ry1)
    assert z.to_source(z.to_zoom(probe)) == pytest.approx(probe, abs=1e-6)


def test_share_inside_is_the_part_of_the_first_box_within_the_second():
    assert share_inside((10, 10, 20, 20), (0, 0, 100, 100)) == 1.0
    assert share_inside((0, 0, 100, 100), (10, 10, 20, 20)) == 0.01
    assert share_inside((0, 0, 10, 10), (5, 0, 20, 10)) == 0.5
    assert share_inside((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert share_inside((5, 5, 5, 9), (0, 0, 10, 10)) == 0.0  # an empty box
