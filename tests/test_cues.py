"""Each classical cue measures what it says, in its physical unit."""

from dataclasses import replace

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assessor import benchdata
from assessor.classical import cues
from assessor.degrade import apply_distortion, degrade_region
from assessor.zoom import box_iou


@pytest.fixture(scope="module")
def leaves() -> np.ndarray:
    return benchdata.dead_leaves((256, 256), np.random.default_rng(3))


def step_edges(n: int = 256) -> np.ndarray:
    img = np.zeros((n, n), np.float32)
    for x in range(16, n, 32):
        img[:, x : x + 16] = 200.0
    return img


def test_low_key_content_uses_its_tonal_range_and_washing_it_out_shrinks_it():
    """The moon's body sits in a narrow band while its craters and glints reach black and white:
    it uses the range. Washing it out compresses those extremes with the body."""
    moon = benchdata.load_photo("moon")
    e = cues.exposure_stats(moon)
    assert e.p99 - e.p01 < 0.4 and e.tone_range > 0.6
    washed = [cues.exposure_stats(apply_distortion(moon, "low_contrast", lv)).tone_range for lv in (1, 3, 5)]
    assert e.tone_range > washed[0] > washed[1] > washed[2], washed
    assert washed[1] < 0.5 * e.tone_range


def test_lightness_rises_with_exposure_and_counts_the_shadows():
    """The moon pushed bright clips nothing, but its mean and shadows rise together; a dark
    subject on a white background is as bright on average and not light."""
    moon = benchdata.load_photo("moon")
    light = [cues.exposure_stats(apply_distortion(moon, "overexposure", lv)).lightness for lv in range(1, 6)]
    assert all(a < b for a, b in zip(light, light[1:])), light
    assert cues.exposure_stats(moon).lightness < 0.45 < light[2]
    product = np.full((200, 200, 3), 235, np.uint8)
    product[60:140, 50:150] = 30  # a dark object on white: a fifth of the image
    e = cues.exposure_stats(product)
    assert e.mean > 0.75 and e.lightness < 0.5


@settings(max_examples=30, deadline=None)
@given(contrast=st.floats(0.2, 0.9), seed=st.integers(0, 1000))
def test_washing_out_never_widens_the_tone_range(contrast, seed):
    img = benchdata.dead_leaves((96, 96), np.random.default_rng(seed))
    y = img.astype(np.float32)
    washed = np.clip(y.mean() + contrast * (y - y.mean()) + 0.5, 0, 255).astype(np.uint8)
    before, after = cues.exposure_stats(img).tone_range, cues.exposure_stats(washed).tone_range
    assert after <= contrast * before + 2.0 / 255


@pytest.mark.parametrize("sigma", [1.0, 2.5, 4.0])
def test_blur_sigma_is_recovered_in_pixels(sigma):
    y = cv2.GaussianBlur(step_edges(), (0, 0), sigma)
    rgb = np.repeat(np.clip(y, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    ts = cues.tile_stats(rgb, 32)
    assert np.nanmedian(ts.sigma) == pytest.approx(sigma, rel=0.2)


def test_flat_tiles_have_no_blur_measure():
    ts = cues.tile_stats(np.full((128, 128, 3), 90, np.uint8), 32)
    assert np.isnan(ts.sigma).all()


@pytest.mark.parametrize("sigma", [4.0, 14.0])
def test_noise_sigma_whiteness_and_colour(sigma, leaves):
    rng = np.random.default_rng(0)
    flat = np.full((256, 256, 3), 128.0)
    noisy = np.clip(flat + rng.normal(0, sigma, flat.shape), 0, 255).astype(np.uint8)
    ts = cues.tile_stats(noisy, 32)
    # per-channel sigma s gives luma sigma ~0.67 s
    assert np.median(ts.noise) == pytest.approx(0.67 * sigma, rel=0.2)
    assert np.median(ts.whiteness) > 1.6  # white: halves at half resolution
    assert np.median(ts.chroma_noise) > 1.5  # as strong in colour differences as in luma


def test_texture_is_not_white_and_grey_texture_has_no_chroma_noise():
    grass = benchdata.load_photo("grass")
    ts = cues.tile_stats(grass, 32)
    assert np.median(ts.chroma_noise) < 0.1
    clean = cues.tile_stats(benchdata.load_photo("astronaut"), 32)
    assert np.median(clean.noise) < 2.0


def test_blockiness_sees_jpeg_not_edges_or_upscaling(leaves):
    y_clean = cues.luminance(leaves)
    assert cues.blockiness(y_clean, 64)[1] < 0.1
    y_jpeg = cues.luminance(apply_distortion(leaves, "jpeg", 5))
    block, whole, phase = cues.blockiness(y_jpeg, 64)
    assert whole > 0.5 and phase == (7, 7) and np.median(block) > 0.3
    # a 2x nearest-neighbour upscale has a period of 2, not 8
    up = cv2.resize(leaves[:128, :128], (256, 256), interpolation=cv2.INTER_NEAREST)
    assert cues.blockiness(cues.luminance(up), 64)[1] < 0.1
    # one long straight edge on the grid is not a block pattern
    edge = np.zeros((256, 256), np.float32)
    edge[:, 127:] = 200
    assert cues.blockiness(edge, 64)[1] < 0.05


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1].copy()


def test_quantization_step_is_the_largest_step_the_values_sit_on():
    rng = np.random.default_rng(0)
    k = np.round(rng.laplace(0, 3, 4000))
    assert cues.quantization_step(k * 23 + rng.normal(0, 0.3, k.shape)) == 23  # not 23/2 or 23/3
    assert cues.quantization_step(rng.laplace(0, 40, 4000)) == 0  # spread evenly: no step


@pytest.mark.parametrize("quality", [75, 50, 30, 10, 5])
def test_jpeg_quality_is_read_from_the_quantization_steps(quality):
    photo = benchdata.load_photo("astronaut")
    saved = jpeg(photo, quality)
    y = cues.luminance(saved)
    quality_read, on_lattice = cues.jpeg_quality(saved, y)
    assert quality_read == pytest.approx(quality, rel=0.1) and on_lattice > 0.95


def test_filtering_moves_coefficients_off_the_lattice():
    saved = jpeg(benchdata.load_photo("astronaut"), 30)
    noisy = np.clip(saved + np.random.default_rng(0).normal(0, 3.0, saved.shape), 0, 255).astype(np.uint8)
    quality, on_lattice = cues.jpeg_quality(noisy, cues.luminance(noisy))
    assert quality == pytest.approx(30, rel=0.1) and on_lattice < 0.75


def test_jpeg_quality_is_nan_without_a_quantization_lattice(leaves):
    photo = benchdata.load_photo("astronaut")
    assert np.isnan(cues.jpeg_quality(photo, cues.luminance(photo))[0])  # never compressed
    assert np.isnan(cues.jpeg_quality(leaves, cues.luminance(leaves))[0])
    # resampled after saving: the lattice is gone (blockiness may still show)
    resized = cv2.resize(jpeg(photo, 20), (460, 460), interpolation=cv2.INTER_AREA)
    assert np.isnan(cues.jpeg_quality(resized, cues.luminance(resized))[0])
    # only a part compressed: a local defect, not the image's quality
    part = photo.copy()
    part[128:256, 128:320] = jpeg(photo, 10)[128:256, 128:320]
    assert np.isnan(cues.jpeg_quality(part, cues.luminance(part))[0])
    # posterized: blocks of a few flat levels have a few discrete coefficients, not a lattice
    moon = apply_distortion(benchdata.load_photo("moon"), "artifact", 5)
    assert np.isnan(cues.jpeg_quality(moon, cues.luminance(moon))[0])


def test_clipping_and_tones():
    img = np.full((64, 64, 3), 100, np.uint8)
    img[:32] = 255
    ts = cues.tile_stats(img, 32)
    np.testing.assert_allclose(ts.clip_hi[:, 0], [1.0, 0.0])
    np.testing.assert_allclose(ts.mean[:, 0], [1.0, 100 / 255], atol=1e-3)
    e = cues.exposure_stats(img)
    assert e.clipped_hi == pytest.approx(0.5) and e.mean == pytest.approx((255 + 100) / 2 / 255, abs=1e-3)


def test_cast_estimate_grows_with_a_cast(leaves):
    grey = np.repeat(cues.luminance(leaves).astype(np.uint8)[..., None], 3, axis=2)
    values = [
        cues.cast_estimate(apply_distortion(grey, "color_cast", lv, cast="warm"))[0]
        if lv
        else cues.cast_estimate(grey)[0]
        for lv in range(6)
    ]
    assert values[0] < 0.02
    assert all(b > a for a, b in zip(values, values[1:]))


def test_a_tile_posterized_in_part_still_shows_its_comb(leaves):
    green = np.ascontiguousarray(leaves[..., 1])
    q = 255.0 / 7.0  # 8 levels: level 4 of assessor.degrade's posterization
    part = green.copy()
    part[:, :40] = (np.round(green[:, :40] / q) * q + 0.5).astype(np.uint8)  # 62% of each 64-px tile column
    comb = cues.comb_tiles(part, 64)
    found = comb[:, 0][np.isfinite(comb[:, 0])]
    assert found.size >= 3  # (a tile whose part is one big leaf is posterized to a single level)
    np.testing.assert_allclose(found, 1.0 / q, rtol=0.05)
    assert np.isnan(comb[:, 1:]).all() and np.isnan(cues.comb_tiles(green, 64)).all()
    assert np.nanmin(cues.occupancy_tiles(part, 64)[:, 0]) > 0.35  # every level still occurs


def test_blown_out_whites_do_not_read_as_a_cast():
    """Overexposing a white cup on a warm table blows out the cup: the greyest and brightest pixels
    left are the table's, which would read as a strong cast (1.5 to 3.5 before)."""
    coffee = benchdata.load_photo("coffee")
    clean = cues.cast_estimate(coffee)[0]
    for level in (1, 2, 3):
        over = apply_distortion(coffee, "overexposure", level)
        assert (cues.channel_max(over) >= 250).mean() >= cues.BLOWN_WHITES
        assert cues.cast_estimate(over)[0] <= clean + 0.05


def test_occupancy_drops_with_posterization(leaves):
    smooth = np.tile(np.linspace(0, 255, 256, dtype=np.float32), (64, 1)).astype(np.uint8)
    assert np.nanmin(cues.occupancy_tiles(smooth, 32)) > 0.9
    banded = apply_distortion(np.dstack([smooth] * 3), "artifact", 3)[..., 1]
    assert np.nanmax(cues.occupancy_tiles(banded, 32)) < 0.35
    assert cues.level_occupancy(banded) < 0.1 < 0.9 < cues.level_occupancy(smooth)


def test_summarize_inside_and_ring():
    img = np.full((128, 128, 3), 60, np.uint8)
    img[32:96, 32:96] = 250
    ts = cues.tile_stats(img, 32)
    inside = np.zeros(ts.shape, bool)
    inside[1:3, 1:3] = True
    i, r = cues.summarize(ts, inside), cues.summarize(ts, ~inside)
    assert i["tiles"] == 4 and r["tiles"] == 12
    assert i["clipped"] == pytest.approx(1.0) and r["clipped"] == pytest.approx(0.0)
    assert i["mean"] > r["mean"]


def test_banding_also_reads_flat_tiles_next_to_a_band_border_but_not_grain_or_one_flat_fill():
    rocket = benchdata.load_photo("rocket")  # a dusk sky: smooth, narrow tonal range, fine grain
    box = (233, 10, 367, 102)
    banded = degrade_region(rocket, "artifact", 3, box).image  # the sky in flat bands
    x0, y0, x1, y1 = (v // 32 for v in box)
    occ = cues.occupancy_tiles(banded[..., 1], 32)[y0:y1, x0:x1]
    band = cues.banding_tiles(banded, 32)[y0:y1, x0:x1]
    # a tile inside one band spans too few grey levels for occupancy to tell; banding sees the
    # band border half a tile away, and grades it as heavy banding
    added = np.isfinite(band) & np.isnan(occ)
    assert added.sum() >= 2 and band[added].max() < 0.12
    assert not np.isfinite(cues.banding_tiles(rocket, 32)[y0:y1, x0:x1]).any()  # grain: no plateaus
    fill = np.full((64, 256, 3), 180, np.uint8)  # one flat colour: a fill, not banding
    assert not np.isfinite(cues.banding_tiles(fill, 32)).any()


def test_a_patch_flattened_to_one_level_is_banding_in_a_photo_not_in_a_graphic():
    moon = benchdata.load_photo("moon")  # grain everywhere
    flattened = moon.copy()
    flattened[256:384, 320:448] = 109  # one posterization level over a smooth area
    occ = cues.banding_tiles(flattened, 32)
    assert np.nanmax(occ[8:12, 10:14]) < 0.05
    assert np.nanmin(cues.banding_tiles(moon, 32)) > 0.3
    # a plateau at the image's top level is a blown-out area (darkened since, say), not banding
    darkened = (moon * 0.75).astype(np.uint8)
    darkened[256:384, 320:448] = 200
    assert np.isnan(cues.banding_tiles(darkened, 32)[8:12, 10:14]).all()
    # a graphic is flat fills everywhere: the inside of one is not a defect
    graphic = np.zeros((256, 256, 3), np.uint8)
    graphic[:, :128] = (40, 90, 160)
    graphic[:, 128:] = (200, 180, 60)
    assert np.isnan(cues.banding_tiles(graphic, 32)[:, [0, 1, 6, 7]]).all()


# ----------------------------------------------------------------------------- seams
SEAM_BOX = (150, 190, 330, 330)  # on astronaut (512 x 512): the suit, the flag and the background
CORNER_BOX = (40, 40, 200, 200)  # the background and the top of the helmet


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return benchdata.load_photo("astronaut")


@pytest.mark.parametrize(
    "kind,level,where",
    [
        ("underexposure", 3, SEAM_BOX),
        ("overexposure", 3, CORNER_BOX),
        ("color_cast", 4, CORNER_BOX),
        ("low_contrast", 4, SEAM_BOX),
    ],
)
def test_a_patch_with_its_own_tone_map_is_found_by_its_border_and_read(astronaut, kind, level, where):
    d = degrade_region(astronaut, kind, level, where, np.random.default_rng(2))
    seams = cues.seams(d.image)
    assert seams, "no rectangle with a stepped border found"
    best = max(seams, key=lambda s: box_iou(s.box, where))
    assert box_iou(best.box, where) >= 0.8
    box = cues.refine_border(d.image, cues.snap_seam(d.image, best, 4))
    assert box == where  # on the exact pixel lines
    reading = cues.seam_reading(d.image, box)
    found, value, _ = cues.seam_defect(reading)
    assert found == kind
    if kind == "underexposure":  # the sRGB gain of level 3 (0.25 in linear light)
        assert value == pytest.approx(0.25 ** (1 / 2.2), abs=0.03)
    if kind == "low_contrast":
        assert value == pytest.approx(0.28, abs=0.05)


def test_content_rectangles_are_not_tone_defects():
    # the motorcycle scene is full of boxes, some of them brighter or more colourful than their
    # surroundings; none of them is a patch with its own exposure or tint
    img = benchdata.load_photo("motorcycle")
    for s in cues.seams(cv2.resize(img, (512, 346), interpolation=cv2.INTER_AREA)):
        box = tuple(int(round(v * img.shape[1] / 512)) for v in s.box)
        box = (box[0], box[1], min(box[2], img.shape[1]), min(box[3], img.shape[0]))
        reading = cues.seam_reading(img, cues.refine_border(img, box))
        defect = cues.seam_defect(reading) if reading is not None else None
        assert defect is None or (defect[0] == "color_cast" and s.coverage < 0.85), (s, defect)


def test_a_flat_area_framed_by_grain_is_not_lost_contrast():
    # the benchmark's rocket/local-noise/0: the smooth area below the noisy patch is flatter than
    # everything around it, but nothing continues across its border
    from assessor.classical.critic import ClassicalAssessor
    from assessor.degrade import random_box

    img = benchdata.load_photo("rocket")
    rng = np.random.default_rng([0, 1003, 1, 0])
    box = random_box((img.shape[1], img.shape[0]), rng, (0.2, 0.4))
    d = degrade_region(img, "noise", int(rng.integers(3, 6)), box, rng)
    critic = ClassicalAssessor()
    found = critic._read_seams(d.image, critic._global_look(d.image))
    assert all(f.distortion != "low_contrast" for f in found), found


def test_no_seam_on_clean_photos():
    for name in ("astronaut", "camera", "coffee"):
        img = benchdata.load_photo(name)
        for s in cues.seams(img):
            reading = cues.seam_reading(img, cues.refine_border(img, s.box))
            assert reading is None or cues.seam_defect(reading) is None, (name, s)


def test_undo_tone_restores_an_underexposed_patch(astronaut):
    d = degrade_region(astronaut, "underexposure", 3, SEAM_BOX, np.random.default_rng(2))
    reading = cues.seam_reading(d.image, SEAM_BOX)
    x0, y0, x1, y1 = SEAM_BOX
    back = cues.undo_tone(d.image[y0:y1, x0:x1], "underexposure", reading)
    err = np.abs(back.astype(int) - astronaut[y0:y1, x0:x1].astype(int))
    assert np.median(err) <= 2


@pytest.mark.parametrize(
    ("kind", "feature", "sign"), [("underexposure", "exposure", -1.0), ("color_cast", None, None)]
)
def test_a_feathered_ellipse_is_found_by_its_soft_border(kind, feature, sign):
    box = (200, 60, 420, 200)
    img = benchdata.load_photo("rocket")
    d = degrade_region(img, kind, 5, box, np.random.default_rng(0), shape="ellipse", feather=4.0)
    found = cues.soft_patches(d.image)
    best = max(found, key=lambda p: box_iou(p.box, d.box))
    assert box_iou(best.box, d.box) >= 0.5, found
    assert found.index(best) < 3  # among the most consistent borders
    if feature:
        assert (best.feature, best.sign) == (feature, sign)
    else:
        assert best.feature in ("red-green", "blue-green")
    # the fit moves a box off the border back onto it
    x0, y0, x1, y1 = best.box
    off = replace(best, box=(x0 + 12, y0 - 8, x1 + 12, y1 - 8))
    assert box_iou(cues.fit_soft_patch(d.image, off), d.box) >= 0.8
    # ... and so does the fit on a reduced look, where the border steps its way all around
    assert box_iou(cues.fit_soft_patch(d.image, off, long_side=384, min_coverage=0.9), d.box) >= 0.8


def test_no_soft_patch_on_a_smooth_gradient():
    ramp = np.tile(np.linspace(20, 235, 320, dtype=np.float32), (240, 1))
    img = np.repeat(ramp[:, :, None], 3, axis=2).astype(np.uint8)
    assert cues.soft_patches(img) == []
