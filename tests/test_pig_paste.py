"""Crop/paste geometry: crops hold the mask, respect multiples and bounds; paste-back is exact."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pig.paste import crop_box_for_mask, mask_bbox, paste_masked, resize, working_size
from pig.plan import soft_mask


@st.composite
def image_and_box(draw):
    w = draw(st.integers(16, 160))
    h = draw(st.integers(16, 160))
    x0 = draw(st.integers(0, w - 1))
    y0 = draw(st.integers(0, h - 1))
    x1 = draw(st.integers(x0 + 1, w))
    y1 = draw(st.integers(y0 + 1, h))
    return w, h, (x0, y0, x1, y1)


@settings(max_examples=150, deadline=None)
@given(image_and_box(), st.integers(0, 40), st.sampled_from([1, 8]), st.sampled_from([1, 8]))
def test_crop_box_holds_the_mask_within_the_image(wh_box, padding, multiple, align):
    w, h, (x0, y0, x1, y1) = wh_box
    mask = np.zeros((h, w), np.float32)
    mask[y0:y1, x0:x1] = 1.0
    cx0, cy0, cx1, cy1 = crop_box_for_mask(mask, padding=padding, multiple=multiple, min_size=16, align=align)
    assert 0 <= cx0 <= x0 and 0 <= cy0 <= y0 and x1 <= cx1 <= w and y1 <= cy1 <= h
    # padding is kept where the image allows it
    assert cx0 <= max(0, x0 - padding) and cy0 <= max(0, y0 - padding)
    assert cx1 >= min(w, x1 + padding) and cy1 >= min(h, y1 + padding)
    for side, full in ((cx1 - cx0, w), (cy1 - cy0, h)):
        assert side >= min(16, full)
        if multiple > 1 and full >= side + multiple:
            assert side % multiple == 0 or side == full
    if align > 1 and cx0 % align:
        # an unaligned origin only happens when the crop had to move left to fit
        assert cx1 == w


def test_crop_box_rejects_an_empty_mask():
    with pytest.raises(ValueError, match="empty"):
        crop_box_for_mask(np.zeros((32, 32), np.float32))


@settings(max_examples=120, deadline=None)
@given(image_and_box(), st.integers(0, 2**31 - 1), st.integers(0, 12))
def test_paste_is_bit_exact_where_the_mask_is_zero(wh_box, seed, feather):
    w, h, box = wh_box
    rng = np.random.default_rng(seed)
    original = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = soft_mask((w, h), box, dilation=2, feather=feather)
    crop = crop_box_for_mask(mask, padding=5, multiple=8, min_size=8)
    x0, y0, x1, y1 = crop
    patch = rng.integers(0, 256, (y1 - y0, x1 - x0, 3), dtype=np.uint8)
    out = paste_masked(original, patch, mask, crop)
    assert out.dtype == np.uint8 and out.shape == original.shape
    assert np.array_equal(out[mask == 0], original[mask == 0])
    full = np.zeros_like(mask, bool)
    full[y0:y1, x0:x1] = mask[y0:y1, x0:x1] >= 1.0
    assert np.array_equal(out[full], patch[(mask[y0:y1, x0:x1] >= 1.0)])
    # in between: a convex blend, never outside the two values
    mid = (mask > 0) & (mask < 1)
    if mid.any():
        ys, xs = np.nonzero(mid)
        p = patch[ys - y0, xs - x0].astype(int)
        o = original[ys, xs].astype(int)
        v = out[ys, xs].astype(int)
        assert np.all(v >= np.minimum(o, p) - 1) and np.all(v <= np.maximum(o, p) + 1)


def test_paste_accepts_a_crop_sized_mask_and_checks_shapes():
    original = np.full((40, 50, 3), 10, np.uint8)
    patch = np.full((20, 30, 3), 200, np.uint8)
    mask = np.zeros((20, 30), np.float32)
    mask[5:15, 5:25] = 1
    out = paste_masked(original, patch, mask, (10, 10, 40, 30))
    assert out[20, 20].tolist() == [200, 200, 200] and out[10, 10].tolist() == [10, 10, 10]
    assert (out != original).sum() == 10 * 20 * 3
    with pytest.raises(ValueError, match="patch"):
        paste_masked(original, patch[:10], mask, (10, 10, 40, 30))
    with pytest.raises(ValueError, match="inside"):
        paste_masked(original, patch, mask, (30, 30, 60, 50))


def test_mask_bbox_and_working_size():
    m = np.zeros((30, 40), np.float32)
    assert mask_bbox(m) is None
    m[3:7, 10:21] = 0.5
    assert mask_bbox(m) == (10, 3, 21, 7)
    # small crops are enlarged to the guide size, big ones capped, always multiples of 8
    assert working_size(100, 200, guide_size=768, max_size=1024) == (512, 1024)
    assert working_size(300, 300, guide_size=768, max_size=1024) == (768, 768)
    assert working_size(2048, 1024, guide_size=768, max_size=1024) == (1024, 512)
    w, h = working_size(123, 77, guide_size=512, max_size=1024)
    assert w % 8 == 0 and h % 8 == 0 and min(w, h) >= 504
    img = np.zeros((20, 30, 3), np.uint8)
    assert resize(img, (60, 40)).shape == (40, 60, 3) and resize(img, (30, 20)) is not img
