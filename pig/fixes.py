"""Classical fixes, one per distortion, each measuring its own parameter from the pixels.

Every fix estimates how strong the defect is before touching anything (noise sigma, the extra
blur, the JPEG quality, the tone map between a region and its surroundings, the banding step)
and does (almost) nothing when it measures nothing: that, more than the critic, is what keeps a
false alarm from damaging a clean image. All functions take and return RGB uint8 arrays; masks are
H x W float32 0..1 with 1 = the defective part.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from assessor.classical.cues import (
    ELLIPSE_PAIRS,
    IMMERKAER,
    IMMERKAER_GAIN,
    TONE_KINDS,
    channel_max,
    fit_ellipse,
    mirror_pairs,
    pair_gains,
    refine_border,
    seam_reading,
    shape_mask,
    step_maps,
)
from assessor.degrade import linear_to_srgb, srgb_to_linear
from assessor.zoom import box_intersection

LUMA = np.array([0.299, 0.587, 0.114])
SEAM_AGREEMENT = 0.85  # pairs across a given box's border stepping the defect's way: keep the box
MIN_COVERAGE = 0.7  # share of the border that must step the defect's way (a content edge rarely does)


@dataclass
class Fix:
    image: np.ndarray  # the fixed crop (RGB uint8), same shape as the input
    mask: np.ndarray | None = None  # a refined mask (crop-sized) to paste through, or None for the plan's
    info: dict = field(default_factory=dict)  # the measured parameters, for the history


# ----------------------------------------------------------------------------- helpers
def to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ LUMA


def blend(original: np.ndarray, fixed: np.ndarray, amount: float) -> np.ndarray:
    amount = float(np.clip(amount, 0.0, 1.0))
    if amount >= 1.0:
        return fixed
    return to_u8(original.astype(np.float32) * (1 - amount) + fixed.astype(np.float32) * amount)


def _split(mask: np.ndarray | None, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Inside (mask >= 0.9) and ring (mask == 0) selections; the whole crop when there is no mask."""
    if mask is None:
        full = np.ones(shape, bool)
        return full, full
    return mask >= 0.9, mask <= 0.0


def _grid_values(value: np.ndarray, sel: np.ndarray, tile: int) -> np.ndarray:
    """Tile means of ``value`` for tiles lying entirely inside ``sel``."""
    h, w = value.shape
    if h < tile or w < tile:
        return value[sel].ravel()[:1] if sel.any() else np.empty(0)
    means = cv2.blur(value.astype(np.float32), (tile, tile), borderType=cv2.BORDER_REFLECT)
    cover = cv2.blur(sel.astype(np.float32), (tile, tile), borderType=cv2.BORDER_CONSTANT)
    half = tile // 2
    ys = np.arange(half, h - half + 1, max(4, tile // 2))
    xs = np.arange(half, w - half + 1, max(4, tile // 2))
    grid = np.ix_(ys, xs)
    ok = cover[grid] >= 0.999
    return means[grid][ok].astype(np.float64)


# ----------------------------------------------------------------------------- noise
def noise_sigma(rgb: np.ndarray, sel: np.ndarray | None = None, tile: int = 24) -> float:
    """Per-channel white-noise sigma (0..255) from Immerkaer's Laplacian-difference operator, the
    quiet quarter of tiles (texture inflates the estimate, flat tiles do not)."""
    resp = np.zeros(rgb.shape[:2], np.float32)
    for c in range(3):
        resp += np.abs(
            cv2.filter2D(rgb[:, :, c].astype(np.float32), -1, IMMERKAER, borderType=cv2.BORDER_REFLECT)
        )
    resp *= IMMERKAER_GAIN / 3.0  # mean over the three channels
    sel = np.ones(rgb.shape[:2], bool) if sel is None else sel
    tile = int(min(tile, max(8, min(rgb.shape[:2]) // 3)))
    vals = _grid_values(resp, sel, tile)
    return float(np.percentile(vals, 25)) if vals.size else float("nan")


NOISE_FILTERS = (1.2, 1.0, 0.8, 0.6)  # NL-means strengths tried in a region, times the noise sigma
NOISE_DISCREPANCY = 1.05  # ... the first that removes at most this times the sigma measured there


def fix_noise(rgb: np.ndarray, mask: np.ndarray | None = None, amount: float = 1.0, box=None) -> Fix:
    """Non-local means with its strength set from the noise measured inside, above the noise of
    the surroundings (a clean region measures ~1 and is barely touched), no stronger than what
    removes about that noise."""
    area = localize(rgb, mask, box, "noise")
    s_in = noise_sigma(rgb, area.inside)
    s_ring = noise_sigma(rgb, area.ring) if area.ring is not None and area.ring.any() else 0.0
    s_ring = 0.0 if not np.isfinite(s_ring) else s_ring
    info = {"area": area.how}
    if not np.isfinite(s_in):
        return Fix(rgb.copy(), info={**info, "skipped": "region too small to measure"})
    extra = float(np.sqrt(max(s_in**2 - s_ring**2, 0.0)))
    info["sigma"] = round(extra, 2)
    if extra < 2.0:
        return Fix(rgb.copy(), info={**info, "skipped": "no noise above the surroundings"})
    if mask is None:  # nothing clean sits next to it: 0.8 sigma keeps more detail
        h = 0.8 * extra
        out = cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(rgb), None, h, h, 7, 21)
        return Fix(blend(rgb, out, amount), mask=area.soft, info={**info, "h": round(h, 2)})
    # A region must come out as clean as its surroundings, or the grain still shows against them:
    # 1.2 sigma, unless that removes more than the noise measured there (the discrepancy
    # principle): then texture went with it, and a gentler filter is taken. A motorcycle's grainy
    # engine lost 0.3 dB at 1.2 sigma and gains 1.9 at 0.8; PiG's noise patches +4.9 -> +5.5 dB.
    src, inside = np.ascontiguousarray(rgb), rgb[area.inside].astype(np.float32)
    for factor in NOISE_FILTERS:
        h = factor * extra
        out = cv2.fastNlMeansDenoisingColored(src, None, h, h, 7, 21)
        removed = float((inside - out[area.inside]).std())
        if removed <= NOISE_DISCREPANCY * s_in:
            break
    info.update(h=round(h, 2), removed=round(removed, 2))
    return Fix(blend(rgb, out, amount), mask=area.soft, info=info)


# ----------------------------------------------------------------------------- JPEG
def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(
        ".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]


def jpeg_grid_offset(y: np.ndarray, sel: np.ndarray | None = None) -> tuple[int, int]:
    """Where the 8x8 block borders are: the column/row phase with the largest jumps, within the
    bounding box of ``sel`` when given (a blocky patch in a clean photo: the whole crop's jumps
    put the motorcycle's grid at (5, 2) instead of (0, 0), and its ghost dip at 0.05)."""
    if sel is not None and sel.any():
        rows, cols = np.nonzero(sel.any(axis=1))[0], np.nonzero(sel.any(axis=0))[0]
        if rows[-1] - rows[0] >= 16 and cols[-1] - cols[0] >= 16:
            px, py = jpeg_grid_offset(y[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
            return (int(cols[0]) + px) % 8, (int(rows[0]) + py) % 8
    dx = np.abs(np.diff(y, axis=1)).mean(axis=0)
    dy = np.abs(np.diff(y, axis=0)).mean(axis=1)
    px = [dx[k::8].mean() if dx[k::8].size else 0 for k in range(8)]
    py = [dy[k::8].mean() if dy[k::8].size else 0 for k in range(8)]
    # a jump between pixel k and k+1 means a block starts at k+1
    return (int(np.argmax(px)) + 1) % 8, (int(np.argmax(py)) + 1) % 8


def estimate_jpeg_quality(rgb: np.ndarray, sel: np.ndarray | None = None) -> tuple[int | None, float]:
    """JPEG "ghost": recompressing at the quality an image was saved with changes it least
    (relative to neighbouring qualities). Returns (quality or None, depth of the dip)."""
    y = luminance(rgb)
    ox, oy = jpeg_grid_offset(y, sel)
    img = rgb[oy:, ox:]
    s = None if sel is None else sel[oy:, ox:]
    if img.shape[0] < 16 or img.shape[1] < 16:
        return None, 0.0
    qs = np.arange(3, 96)
    err = np.empty(len(qs))
    base = img.astype(np.float32)
    for k, q in enumerate(qs):
        d = np.abs(_jpeg(img, int(q)).astype(np.float32) - base).mean(axis=2)
        err[k] = d[s].mean() if s is not None and s.any() else d.mean()
    trend = cv2.GaussianBlur(err.reshape(1, -1).astype(np.float64), (0, 0), 3.0).ravel()
    rel = err / np.maximum(trend, 1e-6)
    k = int(np.argmin(rel[:-8]))
    return int(qs[k]), float(1.0 - rel[k])


def deblock(rgb: np.ndarray, quality: int, step: int = 2) -> np.ndarray:
    """Re-application of JPEG on shifted copies, averaged (Nosratinia): each shift's quantisation
    removes the previous blocks' edges; the average keeps what all agree on."""
    h, w = rgb.shape[:2]
    acc = np.zeros(rgb.shape, np.float64)
    n = 0
    for dy in range(0, 8, step):
        for dx in range(0, 8, step):
            padded = np.pad(rgb, ((dy, 8), (dx, 8), (0, 0)), mode="reflect")
            acc += _jpeg(padded, quality)[dy : dy + h, dx : dx + w]
            n += 1
    return to_u8(acc / n)


def jpeg_blocks(
    rgb: np.ndarray, quality: int, sel: np.ndarray | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Per 8x8 block, how much recompressing at ``quality`` changes it (luma, mean absolute):
    blocks saved at that quality barely change, never-compressed ones do. Pixel-sized map."""
    h, w = rgb.shape[:2]
    y = luminance(rgb)
    ox, oy = jpeg_grid_offset(y, sel)
    diff = np.abs(luminance(_jpeg(rgb, quality)) - y)
    # recompress on the detected grid so blocks line up with the original ones
    if ox or oy:
        shifted = rgb[oy:, ox:]
        d = np.abs(luminance(_jpeg(shifted, quality)) - luminance(shifted))
        diff = np.full((h, w), np.nan)
        diff[oy:, ox:] = d
    out = np.full((h, w), np.nan)
    for by in range(oy, h - 7, 8):
        for bx in range(ox, w - 7, 8):
            out[by : by + 8, bx : bx + 8] = np.nanmean(diff[by : by + 8, bx : bx + 8])
    return out, (ox, oy)


def fix_jpeg(rgb: np.ndarray, mask: np.ndarray | None = None, amount: float = 1.0, box=None) -> Fix:
    area = localize(rgb, mask, box, "jpeg")
    if "quality" in area.data:  # localize measured it on the same pixels (its box)
        quality, depth = area.data["quality"], area.data["depth"]
    else:
        quality, depth = estimate_jpeg_quality(rgb, area.inside)
    stands_out = quality is not None and depth >= 0.15
    info = {"area": area.how, "quality": quality}
    if "quality" not in area.data or not stands_out:
        info["dip"] = round(depth, 3)
    if not stands_out:
        return Fix(rgb.copy(), info={**info, "skipped": "no JPEG quality stands out"})
    out = blend(rgb, deblock(rgb, quality), amount)
    return Fix(out, mask=area.soft, info=info)


# ----------------------------------------------------------------------------- blur
def edge_sigma(y: np.ndarray, sel: np.ndarray | None = None, r: float = 1.0) -> float:
    """Gaussian sigma of the edges (Zhuo & Sim): reblurring by r shrinks the gradient at a step
    edge of width s by s / sqrt(s^2 + r^2)."""
    y = y.astype(np.float64)

    def grad(z: np.ndarray) -> np.ndarray:
        return np.hypot(cv2.Sobel(z, cv2.CV_64F, 1, 0, ksize=3), cv2.Sobel(z, cv2.CV_64F, 0, 1, ksize=3))

    g1 = grad(y)
    g2 = grad(cv2.GaussianBlur(y, (0, 0), r))
    edges = cv2.Canny(np.clip(y, 0, 255).astype(np.uint8), 20, 50, L2gradient=True) > 0
    if sel is not None:
        edges &= sel
    if edges.sum() < 30:
        return float("nan")
    strong = edges & (g1 >= max(8.0, np.percentile(g1[edges], 50)))
    ratio = g1[strong] / np.maximum(g2[strong], 1e-6)
    ratio = ratio[ratio > 1.0005]
    if ratio.size < 20:
        return float("nan")
    return float(np.median(r / np.sqrt(ratio**2 - 1.0)))


RL_ITERS = 20  # Richardson-Lucy iterations on a clean patch; 40 gained no more


def richardson_lucy(rgb: np.ndarray, sigma: float, iters: int) -> np.ndarray:
    """Richardson-Lucy deconvolution of a Gaussian blur, reflect-padded so the borders do not ring.
    Against a strong blur (sigma 2.5-6 px) it restores more than Wiener filtering: given the true
    masks and sigmas of the benchmark's 16 blurred patches, +1.8 dB mean and all 16 gaining,
    against +1.0 dB and 14. It keeps values positive and leaves a flat region exact."""
    if sigma <= 0 or iters <= 0:
        return rgb.copy()
    h, w = rgb.shape[:2]
    pad = int(3 * sigma) + 8
    # +1: the ratio must not divide by a black pixel
    x = cv2.copyMakeBorder(rgb.astype(np.float32) + 1.0, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    est = x.copy()
    for _ in range(int(iters)):
        reblurred = cv2.GaussianBlur(est, (0, 0), sigma)
        est *= cv2.GaussianBlur(x / np.maximum(reblurred, 1e-3), (0, 0), sigma)
    return to_u8(est[pad : pad + h, pad : pad + w] - 1.0)


def blur_map(y: np.ndarray, r: float = 2.0, window: float = 9.0, min_gradient: float = 4.0) -> np.ndarray:
    """Gaussian sigma of the blur at each pixel, NaN where it is too flat to tell. A further blur
    by r keeps sigma^2 / (sigma^2 + r^2) of a blurred area's gradient energy under natural images'
    1/f^2 spectrum. Unlike edge widths, it weighs every textured pixel, so a blurred area's weak
    edges are not outvoted by a few sharp ones inside the same box (on the benchmark's blurred
    patches: 2.2-5.4 inside, 0.6-1.5 around)."""
    y = y.astype(np.float32)

    def energy(z: np.ndarray) -> np.ndarray:
        gx = cv2.Sobel(z, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(z, cv2.CV_32F, 0, 1, ksize=3)
        return cv2.GaussianBlur(gx * gx + gy * gy, (0, 0), window)

    e1 = energy(y)
    kept = np.clip(energy(cv2.GaussianBlur(y, (0, 0), r)) / np.maximum(e1, 1e-6), 0.0, 0.999)
    sigma = r * np.sqrt(kept / (1.0 - kept))
    sigma[e1 < min_gradient**2] = np.nan
    return sigma


SHARP_EDGES = 0.6  # edge_sigma of a sharp photo, px: the reference where nothing sharp is around
SHARP_SIGMA = 1.2  # blur_map of sharp photos' textures: 0.6-1.5
SHARP_GROUP = 1.3  # a box's lower group of blur_map values within this of the ring's is sharp content


def _blurred_part(y: np.ndarray, area: Area) -> tuple[np.ndarray, np.ndarray, float, float] | None:
    """The area's blur map, which of its pixels are blurred (more than halfway from the ring's
    sharpness to the box's median, or the upper group where the box also holds sharp content),
    and the blur_map sigmas of those and of the ring (the measurement where there are too few
    edges). None where the area has too little texture."""
    sig = blur_map(y)
    ring = area.ring & np.isfinite(sig)
    # a ring inside the blur too (a box on part of a larger blurred area) is no reference
    s_ref = min(float(np.median(sig[ring])), SHARP_SIGMA) if ring.sum() >= 64 else SHARP_SIGMA
    inside = area.inside & np.isfinite(sig)
    if inside.sum() < 64:
        return None
    s_box = float(np.median(sig[inside]))
    cut = 0.5 * (s_box + s_ref)
    # a box across a blurred area's border holds sharp content too: the values fall in two groups
    # (Otsu's split of their logs), the lower one about as sharp as the ring; the blur is the upper
    values = sig[inside]
    logs = np.log(values)
    lo, hi = float(logs.min()), float(logs.max())
    if hi - lo > 1e-3:
        scaled = np.round(255.0 * (logs - lo) / (hi - lo)).astype(np.uint8).reshape(-1, 1)
        t, _ = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        split = float(np.exp(lo + (hi - lo) * t / 255.0))
        lower = values[values < split]
        if lower.size and float(np.median(lower)) <= SHARP_GROUP * s_ref:
            cut = max(cut, split)
    blurred = inside & (sig >= cut)
    s_in = float(np.median(sig[blurred])) if blurred.any() else s_box
    return sig, blurred, s_in, s_ref


def fix_blur(rgb: np.ndarray, mask: np.ndarray | None = None, amount: float = 1.0, box=None) -> Fix:
    """Deconvolve the blur the region has on top of its surroundings' (or, for the whole image,
    on top of a sharp photo's ~0.6 px), only where it is blurred; fewer iterations where there is
    grain, so it is not sharpened too.

    A region's blur is measured by edge widths (reblurred by 2 px, the benchmark's 6 px blurs read
    4.4-6.3; by 1 px, 3.3-5.2) on its blurred pixels only: sharp content the box also holds had outvoted them (a
    blurred ellipse's box read 0.7 px); by blur_map where there are too few edges (the moon)."""
    area = localize(rgb, mask, box, "blur")
    y = luminance(rgb)
    info = {"area": area.how}
    paste = area.soft
    if area.ring is None:  # the whole image: its sharpest edges say how blurred it is
        s_in, s_ref = edge_sigma(y, area.inside), SHARP_EDGES
        if not np.isfinite(s_in):
            return Fix(rgb.copy(), info={**info, "skipped": "too few edges to measure"})
    else:
        part = _blurred_part(y, area)
        if part is None:
            return Fix(rgb.copy(), info={**info, "skipped": "too little texture to measure"})
        sig, blurred, s_in, s_ref = part
        near = cv2.dilate(blurred.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0  # edges straddle
        e_in = edge_sigma(y, near & area.inside, r=2.0)
        if np.isfinite(e_in):
            e_ref = edge_sigma(y, area.ring, r=2.0) if area.ring.any() else float("nan")
            s_in, s_ref = e_in, (e_ref if np.isfinite(e_ref) else SHARP_EDGES)
        else:
            info["measured"] = "texture"
        # deconvolved: pixels blurred halfway from the ring's sharpness to the blur's, and flat ones
        # (they do not care); sharp ones would ring (halfway between blur_map's own medians takes
        # more of them: 8 of 16 blurred patches improved in PiG, against 10)
        where = (np.isnan(sig) | (sig >= 0.5 * (s_in + s_ref))).astype(np.float32)
        where = cv2.morphologyEx(where, cv2.MORPH_CLOSE, np.ones((9, 9), np.uint8))
        where = cv2.GaussianBlur(where, (0, 0), 4.0)
        paste = np.minimum(area.soft if area.soft is not None else (mask > 0).astype(np.float32), where)
    extra = float(np.sqrt(max(s_in**2 - s_ref**2, 0.0)))
    info["sigma"] = round(extra, 2)
    if extra < 1.2:  # mild softness is often the subject's own (fur, skin, haze): not worth ringing
        return Fix(rgb.copy(), info={**info, "skipped": "no blur above the surroundings"})
    noise = noise_sigma(rgb, area.inside)
    noise = noise if np.isfinite(noise) else 1.0
    iters = max(2, int(round(RL_ITERS / (1.0 + (max(noise - 1.0, 0.0) / 2.0) ** 2))))
    # undershoot a little: too small a sigma leaves softness, too large a one rings
    out = richardson_lucy(rgb, 0.85 * extra * float(np.clip(amount, 0.0, 1.0)), iters)
    return Fix(out, mask=paste, info={**info, "iterations": iters})


# ----------------------------------------------------------------------------- banding
def posterize_step(values: np.ndarray) -> tuple[float, np.ndarray | None]:
    """The quantisation step of posterized values: the comb of levels (round(k * q), as when an
    image is reduced to n levels, or k * 2^b, as when bits are dropped) that far more values sit
    on than chance would put there. Returns (q, the comb's levels) or (1, None)."""
    v = values.ravel().astype(np.int64)
    if v.size < 64:
        return 1.0, None
    hist = np.bincount(v, minlength=256)[:256] / v.size
    best, best_q, best_levels = 0.25, 1.0, None
    combs = [255.0 / (n - 1) for n in range(3, 65)] + [float(2**b) for b in range(2, 7)]
    for q in combs:
        if q == int(q) and q in (4.0, 8.0, 16.0, 32.0, 64.0):
            levels = np.arange(0, 256, int(q))
        else:
            levels = np.unique(np.clip(np.round(np.arange(0, 256 / q + 1) * q), 0, 255).astype(int))
        excess = hist[levels].sum() - len(levels) / 256.0
        if excess > best + 0.02:
            best, best_q, best_levels = excess, q, levels
    return best_q, best_levels


def fix_banding(rgb: np.ndarray, mask: np.ndarray | None = None, amount: float = 1.0, box=None) -> Fix:
    """Posterized gradients: smooth, then keep every pixel within half a quantisation step of
    its level, so edges come back and flat bands turn into ramps."""
    area = localize(rgb, mask, box, "artifact")
    q = float(area.data.get("step", 1.0))
    if "step" not in area.data:
        q, _ = posterize_step(rgb[area.inside])
    info = {"area": area.how, "step": round(q, 2)}
    if q < 3.0:
        return Fix(rgb.copy(), info={**info, "skipped": "no posterized levels"})
    x = rgb.astype(np.float32)
    # one edge-aware pass over about a band's width (more passes wash out real edges)
    smooth = cv2.bilateralFilter(x, 0, sigmaColor=1.5 * q, sigmaSpace=max(2.0, q / 4.0))
    out = np.clip(smooth, x - q / 2.0, x + q / 2.0)
    return Fix(blend(rgb, to_u8(out), amount), mask=area.soft, info=info)


# ----------------------------------------------------------------------------- tones (local)
def _feature(rgb: np.ndarray, kind: str) -> np.ndarray:
    x = rgb.astype(np.float32) / 255.0
    if kind in ("overexposure", "underexposure"):
        return np.log(srgb_to_linear(x) @ LUMA.astype(np.float32) + 1e-3)
    # low_contrast: local tonal spread
    y = x @ LUMA.astype(np.float32)
    mu = cv2.blur(y, (7, 7))
    var = np.maximum(cv2.blur(y * y, (7, 7)) - mu * mu, 0.0)
    return np.log(np.sqrt(var) + 0.01)


def snap_box(
    f: np.ndarray, box: tuple[int, int, int, int], sign: float, radius: int
) -> tuple[tuple[int, int, int, int], int]:
    """Move each side of ``box`` (within ``radius``) onto the line where the feature steps the
    most in the defect's direction (``sign`` > 0: higher inside). A side moves only when its step
    clearly stands out. Returns the box and how many sides snapped."""
    h, w = f.shape
    sx, sy = step_maps(f, width=4, border=cv2.BORDER_REFLECT)
    x0, y0, x1, y1 = box
    snapped = 0
    for _ in range(2):
        snapped = 0
        new = [x0, y0, x1, y1]
        for side in range(4):
            vertical = side in (0, 2)
            lo_t, hi_t = (y0, y1) if vertical else (x0, x1)
            m = max(2, (hi_t - lo_t) // 6)
            lo_t, hi_t = lo_t + m, hi_t - m
            if hi_t - lo_t < 4:
                continue
            pos = (x0, y0, x1, y1)[side]
            limit = w if vertical else h
            cand = np.arange(max(1, pos - radius), min(limit - 1, pos + radius) + 1)
            if cand.size < 3:
                continue
            if vertical:
                prof = sx[lo_t:hi_t, cand].mean(axis=0)
            else:
                prof = sy[cand, lo_t:hi_t].mean(axis=1)
            s = sign if side in (0, 1) else -sign  # left/top: inside after the line
            prof = prof * s
            k = int(np.argmax(prof))
            spread = float(np.median(np.abs(prof))) + 1e-6
            if prof[k] > 0.08 and prof[k] > 2.5 * spread:
                new[side] = int(cand[k])
                snapped += 1
        x0, y0, x1, y1 = new
        if x1 - x0 < 8 or y1 - y0 < 8:
            return box, 0
    return (x0, y0, x1, y1), snapped


EXPOSURE_CHANNEL_SPREAD = 1.6  # most / least per-channel gain of an exposure change across a border
MAX_STEP_SPREAD = 1.5  # interquartile range of the steps across a fitted border, over their median


def _shape_mask(shape: tuple[int, int], box, kind: str, feather: float) -> np.ndarray:
    m = shape_mask(shape, box, kind).astype(np.float32)
    if feather > 0:
        m = cv2.GaussianBlur(m, (0, 0), feather)
        m[m < 1.0 / 512] = 0.0
    return m


def _boundary_step(f: np.ndarray, hard: np.ndarray, sign: float) -> float:
    """Mean signed feature step across the boundary of a hard mask (inside band minus outside)."""
    u8 = (hard > 0.5).astype(np.uint8)
    d_in = cv2.distanceTransform(u8, cv2.DIST_L2, 3)
    d_out = cv2.distanceTransform(1 - u8, cv2.DIST_L2, 3)
    band_in = (d_in >= 2) & (d_in <= 6)
    band_out = (d_out >= 2) & (d_out <= 6)
    if band_in.sum() < 20 or band_out.sum() < 20:
        return 0.0
    return float(sign * (np.median(f[band_in]) - np.median(f[band_out])))


@dataclass
class Area:
    """Where a defect really is inside a crop: the paste mask, and pixels to measure it on."""

    soft: np.ndarray | None  # paste mask (crop-sized), None = the plan's
    inside: np.ndarray  # bool, the defect
    ring: np.ndarray | None  # bool, its surroundings (None for a whole image)
    how: str  # "seam-rect", "snapped-rect", "snapped-ellipse", "fitted-ellipse", "blocks", "levels", "box", "whole"
    hard: np.ndarray | None = None
    data: dict = field(default_factory=dict)
    pairs: tuple | None = None  # mirror_pairs(hard, data["box"], data["shape"]) for a snapped area


def _ring_of(hard: np.ndarray, mask: np.ndarray, gap: int = 4) -> np.ndarray:
    grown = cv2.dilate(hard.astype(np.uint8), np.ones((2 * gap + 1, 2 * gap + 1), np.uint8)) > 0
    ring = ~grown
    return ring if ring.sum() >= 64 else (mask <= 0.0)


def _snap_feature(rgb: np.ndarray, kind: str, box, ring0: np.ndarray) -> tuple[np.ndarray, float, dict]:
    """The map a defect's border shows up in, and its sign (+1: higher inside)."""
    if kind == "noise":
        r = sum(np.abs(cv2.filter2D(rgb[:, :, c].astype(np.float32), -1, IMMERKAER)) for c in range(3))
        return np.log(cv2.blur(r, (7, 7)) + 1.0), 1.0, {}
    if kind == "blur":
        y = luminance(rgb).astype(np.float32)
        lap = np.abs(cv2.Laplacian(y, cv2.CV_32F, ksize=3))
        return np.log(cv2.blur(lap, (7, 7)) + 1.0), -1.0, {}
    if kind == "color_cast":
        lin = srgb_to_linear(rgb.astype(np.float32) / 255.0) + 1e-3
        a = np.log(lin[:, :, 0] / lin[:, :, 1])
        b = np.log(lin[:, :, 2] / lin[:, :, 1])
        core = np.zeros(rgb.shape[:2], bool)
        core[box[1] : box[3], box[0] : box[2]] = True
        if not ring0.any():
            return np.zeros(rgb.shape[:2], np.float32), 1.0, {}
        d = np.array([np.median(a[core]) - np.median(a[ring0]), np.median(b[core]) - np.median(b[ring0])])
        d = d / max(float(np.linalg.norm(d)), 1e-6)
        return (a * d[0] + b * d[1]).astype(np.float32), 1.0, {}
    sign = {"underexposure": -1.0, "overexposure": 1.0, "low_contrast": -1.0}[kind]
    return _feature(rgb, kind), sign, {}


def _soft_ellipse_area(f: np.ndarray, sign: float, box, snapped_box, mask: np.ndarray) -> Area | None:
    """A soft-edged ellipse around the critic's box whose whole border steps the defect's way, or
    None. The fitted ellipse must keep most of the critic's box: one that wanders off it has
    found an object's outline nearby (a cat's face next to a tinted patch), not the patch."""
    h, w = f.shape
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    gx, gy = bw // 5, bh // 5  # the critic's tiles may sit inside a patch with soft edges: also start wider
    starts = [box, (x0 - gx, y0 - gy, x1 + gx, y1 + gy)] + ([snapped_box] if snapped_box is not None else [])
    ebox, low, cov = fit_ellipse(f, starts, sign, int(max(16, 0.4 * min(bw, bh))))
    if ebox is None or low <= 0 or cov < MIN_COVERAGE or box_intersection(ebox, box) < 0.6 * bw * bh:
        return None
    hard = _shape_mask((h, w), ebox, "ellipse", 0.0) > 0.5
    pairs = mirror_pairs(hard, ebox, "ellipse", *ELLIPSE_PAIRS)
    # one tone map steps alike all along the border; a round object's outline (a cup, a face)
    # steps a lot in places and little in others
    q1, q2, q3 = np.percentile(sign * (f[pairs[0]] - f[pairs[1]]), [25, 50, 75])
    if q3 - q1 > MAX_STEP_SPREAD * q2:
        return None
    soft = np.minimum(_shape_mask((h, w), ebox, "ellipse", 2.5), (mask > 0).astype(np.float32))
    data = {"box": [int(v) for v in ebox], "shape": "ellipse", "coverage": round(cov, 3), "consistent": True}
    return Area(soft, hard, _ring_of(hard, mask), "fitted-ellipse", hard, data, pairs)


def localize(rgb: np.ndarray, mask: np.ndarray | None, box, kind: str) -> Area:
    """Find the defect inside the plan's mask, so a fix measures it on the right pixels and
    changes no clean pixel the critic's (tile-sized) box happened to include.

    JPEG blocks are found by recompression (blocks saved at the estimated quality barely
    change); posterized pixels by sitting on a comb of levels; other defects by snapping the
    box's sides onto the line where a feature of the defect steps (brightness, colour, grain,
    sharpness); a tone defect with no such sides, by fitting a soft-edged ellipse. Nothing
    found: the box itself, softened, within the plan's mask."""
    h, w = rgb.shape[:2]
    if mask is None:
        full = np.ones((h, w), bool)
        return Area(None, full, None, "whole")
    plan_inside, ring0 = _split(mask, (h, w))
    if box is None:
        return Area(None, plan_inside, ring0, "plan")
    x0, y0, x1, y1 = (int(v) for v in box)
    core = np.zeros((h, w), bool)
    core[y0:y1, x0:x1] = True
    allowed = (mask > 0).astype(np.float32)
    if kind == "jpeg":
        quality, depth = estimate_jpeg_quality(rgb, core)
        if quality is not None and depth >= 0.15:
            err, _ = jpeg_blocks(rgb, quality, core)
            e_core = np.nanmedian(err[core]) if np.isfinite(err[core]).any() else np.nan
            e_ring = np.nanmedian(err[ring0]) if ring0.any() and np.isfinite(err[ring0]).any() else np.nan
            data = {"quality": quality, "dip": round(depth, 3), "depth": depth}
            if np.isfinite(e_core) and np.isfinite(e_ring) and e_ring > 1.5 * e_core:
                thr = float(np.sqrt(max(e_core, 0.05) * e_ring))
                blocks = (np.nan_to_num(err, nan=np.inf) <= thr).astype(np.uint8)
                k = np.ones((17, 17), np.uint8)  # about two blocks: close holes, drop strays
                blocks = cv2.morphologyEx(blocks, cv2.MORPH_CLOSE, k)
                blocks = cv2.morphologyEx(blocks, cv2.MORPH_OPEN, k)
                hard = (blocks > 0) & (mask > 0)
                if hard.sum() >= 64:
                    soft = np.minimum(cv2.GaussianBlur(hard.astype(np.float32), (0, 0), 1.0), allowed)
                    soft[soft < 1.0 / 512] = 0.0
                    return Area(soft, hard, _ring_of(hard, mask), "blocks", hard, data)
            return Area(_box_soft((h, w), box, allowed), core, ring0, "box", core, data)
        # nothing stands out: hand the measurement on (area.inside is this same box) for fix_jpeg
        data = {"quality": quality, "depth": depth}
        return Area(_box_soft((h, w), box, allowed), core, ring0, "box", core, data)
    if kind == "artifact":
        q, levels = posterize_step(rgb[core])
        if levels is not None:
            on = np.isin(rgb, levels).all(axis=2).astype(np.float32)
            hard = (cv2.blur(on, (9, 9)) > 0.6) & (mask > 0)
            if hard.sum() >= 64:
                hard = cv2.morphologyEx(hard.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((9, 9), np.uint8)) > 0
                soft = np.minimum(cv2.GaussianBlur(hard.astype(np.float32), (0, 0), 1.0), allowed)
                soft[soft < 1.0 / 512] = 0.0
                return Area(soft, hard, _ring_of(hard, mask), "levels", hard, {"step": q})
        return Area(_box_soft((h, w), box, allowed), core, ring0, "box", core, {"step": q})
    if kind in TONE_KINDS:
        # a box the critic already put on a border that steps all around (a seam) is kept as is
        pairs = mirror_pairs(core, (x0, y0, x1, y1), "rect")
        agree = _tone_agreement(seam_reading(rgb, (x0, y0, x1, y1), pairs=pairs), kind)
        if agree >= SEAM_AGREEMENT:
            hard = core
            data = {"box": [x0, y0, x1, y1], "shape": "rect", "coverage": round(agree, 3), "consistent": True}
            soft = np.minimum(hard.astype(np.float32), allowed)
            return Area(soft, hard, _ring_of(hard, mask), "seam-rect", hard, data, pairs)
    f, sign, data = _snap_feature(rgb, kind, box, ring0)
    bw, bh = x1 - x0, y1 - y0
    radius = int(max(12, 0.25 * min(bw, bh)))
    snapped_box, snapped = snap_box(f, (x0, y0, x1, y1), sign, radius)
    if snapped >= 3 and kind in TONE_KINDS:
        snapped_box = refine_border(rgb, snapped_box)  # windowed features blur the border
    if snapped >= 3:
        rect = _shape_mask((h, w), snapped_box, "rect", 0.0)
        ell = _shape_mask((h, w), snapped_box, "ellipse", 0.0)
        agree = None
        if kind == "low_contrast":
            # local spread straddles the border: judge the shape on pixels, as the critic does
            agree = {
                sh: _tone_agreement(seam_reading(rgb, snapped_box, sh), kind) for sh in ("rect", "ellipse")
            }
            shape = "ellipse" if agree["ellipse"] > agree["rect"] + 0.05 else "rect"
        else:
            shape = (
                "ellipse" if _boundary_step(f, ell, sign) > 1.15 * _boundary_step(f, rect, sign) else "rect"
            )
        hard = (ell if shape == "ellipse" else rect) > 0.5
        # a tone map corrected across a hard border would tint a line of clean pixels outside it:
        # a rectangle whose border was put on the exact pixel line is pasted with a hard edge
        feather = 2.5 if shape == "ellipse" else (0.0 if kind in TONE_KINDS else 0.7)
        soft = np.minimum(_shape_mask((h, w), snapped_box, shape, feather), allowed)
        data["box"] = [int(v) for v in snapped_box]
        data["shape"] = shape
        pin, pout = mirror_pairs(hard, snapped_box, shape)
        steps = sign * (f[pin] - f[pout])
        med = float(np.median(steps)) if steps.size else 0.0
        data["coverage"] = round(float((steps > 0.3 * med).mean()), 3) if steps.size and med > 0 else 0.0
        if agree is not None:
            data["coverage"] = round(agree[shape], 3)
        data["consistent"] = data["coverage"] >= MIN_COVERAGE
        area = Area(soft, hard, _ring_of(hard, mask), f"snapped-{shape}", hard, data, (pin, pout))
        # a tone patch's ellipse is fitted to its whole border below (four snapped sides only
        # touch it at their middles)
        if kind not in TONE_KINDS or (data["consistent"] and shape == "rect"):
            return area
    if kind in TONE_KINDS:
        soft_patch = _soft_ellipse_area(
            f, sign, (x0, y0, x1, y1), snapped_box if snapped >= 3 else None, mask
        )
        if soft_patch is not None:
            return soft_patch
    if snapped >= 3:
        return area
    return Area(_box_soft((h, w), box, allowed), core, ring0, "box", core, data)


def _tone_agreement(reading, kind: str) -> float:
    """Share of pairs across a border that step the way ``kind`` steps (see cues.SeamReading)."""
    if reading is None:
        return 0.0
    if kind == "low_contrast":
        return reading.contrast_coverage
    if kind == "color_cast":
        return reading.chroma_coverage
    return reading.exposure_coverage


def _box_soft(shape: tuple[int, int], box, allowed: np.ndarray) -> np.ndarray:
    m = _shape_mask(shape, box, "rect", 3.0)
    m = np.maximum(m, _shape_mask(shape, box, "rect", 0.0))
    return np.minimum(m, allowed)


def fix_tones(
    rgb: np.ndarray,
    mask: np.ndarray | None,
    kind: str,
    amount: float = 1.0,
    box: tuple[int, int, int, int] | None = None,
) -> Fix:
    """Match a region's tones to its surroundings: a per-channel gain in linear light (exposure,
    colour cast) or a per-channel affine map (contrast), estimated from two thin bands hugging
    the defect's border from inside and outside (adjacent pixels see the same content, so their
    statistics differ by the defect alone)."""
    if mask is None or box is None:
        return fix_tones_global(rgb, kind, amount)
    area = localize(rgb, mask, box, kind)
    if not area.how.startswith(("snapped", "seam", "fitted")) or not area.data.get("consistent", False):
        return Fix(
            rgb.copy(), info={"area": area.how, "skipped": "no border that steps the same way all around"}
        )
    hard = area.hard if area.hard is not None else area.inside
    if area.pairs is not None:
        pin, pout = area.pairs
    else:
        pin, pout = mirror_pairs(hard, area.data["box"], area.data["shape"])
    if pin[0].size < 50:
        return Fix(
            rgb.copy(), info={"area": area.how, "skipped": "too small to compare with its surroundings"}
        )
    x = rgb.astype(np.float32) / 255.0
    info: dict = {"area": area.how, "box": area.data["box"], "coverage": area.data.get("coverage")}
    xin, xout = x[pin], x[pout]  # N x 3: each inside pixel and its mirror just outside the border
    if kind == "low_contrast":
        out = np.empty_like(x)
        slopes = []
        for c in range(3):
            # the spread ratio, not a regression (content differences across the border would
            # flatten a fitted slope and over-stretch the region)
            qi, qo = np.percentile(xin[:, c], [10, 50, 90]), np.percentile(xout[:, c], [10, 50, 90])
            slope = float(np.clip((qi[2] - qi[0]) / max(qo[2] - qo[0], 1e-3), 0.1, 1.0))
            icpt = float(qi[1] - slope * qo[1])
            slopes.append(slope)
            out[:, :, c] = (x[:, :, c] - icpt) / slope
        info["contrast"] = [round(s, 3) for s in slopes]
        if min(slopes) > 0.93:
            return Fix(rgb.copy(), info={**info, "skipped": "contrast matches the surroundings"})
    else:
        lin = srgb_to_linear(x)
        lin_in, lin_out = srgb_to_linear(xin), srgb_to_linear(xout)
        g = pair_gains(lin_in, lin_out)
        if not np.isfinite(g).all():
            return Fix(rgb.copy(), info={**info, "skipped": "no usable tones"})
        if kind != "color_cast":  # exposure: one gain for all channels
            if g.max() > EXPOSURE_CHANNEL_SPREAD * g.min():
                # an exposure change scales every channel alike; channels stepping by very
                # different gains were read across the wrong pixels or a tint (a red-clipped orange
                # suit next to a white badge: 1.3 / 5.3 / 10.5, whose mean darkened it by 4.2 and
                # cost 3.3 dB): correct only by what every channel agrees on, the gain nearest 1
                info["channel_gains"] = [round(float(v), 3) for v in g]
                common = float(g.min() if kind == "overexposure" else g.max())
                if (common > 1.0) != (kind == "overexposure"):
                    return Fix(rgb.copy(), info={**info, "skipped": "the channels step different ways"})
                g[:] = common
            else:
                g[:] = float(np.exp(np.mean(np.log(g))))
        info["gains"] = [round(float(v), 4) for v in g]
        # a coloured light tints a patch by less than 3x between channels; a red object next to
        # a grey one differs by more (exposure gains are one number by now)
        if np.any(g < 1.0 / 16.0) or np.any(g > 16.0) or g.max() > 3.0 * g.min():
            return Fix(rgb.copy(), info={**info, "skipped": "implausible gain"})
        if np.all(np.abs(np.log(g)) < 0.05):
            return Fix(rgb.copy(), info={**info, "skipped": "tones match the surroundings"})
        out = linear_to_srgb(lin / g[None, None, :])
    # a real defect comes back looking like its surroundings; content that only looked like one
    # (a dark object, a coloured wall) blows out or clips instead
    inner = hard > 0.5
    if kind == "low_contrast":
        # a stretch overshoots where it is wrong; a right one only brings back blacks and whites
        # the region had (an astronaut's white suit), a little past them with estimation error
        over = out[inner]
        clip_in = float(((over >= 1.15) | (over <= -0.15)).all(axis=1).mean())
    else:
        fixed = np.clip(out, 0.0, 1.0)
        clip_in = float(((fixed[inner] >= 0.995) | (fixed[inner] <= 0.005)).all(axis=1).mean())
    clip_out = float(((x[pout] >= 0.995) | (x[pout] <= 0.005)).all(axis=1).mean())
    info["clipped"] = round(clip_in, 3)
    if clip_in > clip_out + 0.1:
        return Fix(rgb.copy(), info={**info, "skipped": "the correction would clip the region"})
    if kind == "overexposure":
        out = _regrain_blown(rgb, out, inner, area.ring, info)
    return Fix(blend(rgb, to_u8(out * 255.0), amount), mask=area.soft, info=info)


def _regrain_blown(rgb: np.ndarray, out: np.ndarray, inner: np.ndarray, ring, info: dict) -> np.ndarray:
    """Blown-out pixels lost their detail: darkened, they become one flat level that no photo
    has (it reads as a posterized fill). Give them the grain of the surroundings, as a retoucher
    does; seeded by the region, so a fix is repeatable."""
    blown = inner & (channel_max(rgb) >= 250)  # as the critics count blown-out pixels
    n = int(blown.sum())
    if n < 16:
        return out
    sigma = noise_sigma(rgb, ring) if ring is not None and ring.any() else float("nan")
    sigma = float(np.clip(sigma if np.isfinite(sigma) else 1.0, 0.8, 4.0))
    rng = np.random.default_rng([n, *rgb.shape[:2]])
    out = out.copy()
    out[blown] += rng.normal(0.0, sigma / 255.0, size=(n, 3)).astype(out.dtype)
    info["grain"] = round(sigma, 2)
    return out


# ----------------------------------------------------------------------------- tones (global)
def fix_tones_global(rgb: np.ndarray, kind: str, amount: float = 1.0) -> Fix:
    """Whole-image corrections: auto exposure on the brightest tones or the median, levels for
    contrast, grey-edge white balance for a cast."""
    x = rgb.astype(np.float32) / 255.0
    y = x @ LUMA.astype(np.float32)
    lin = srgb_to_linear(x)
    info: dict = {}
    if kind == "underexposure":
        top = float(np.percentile(y, 99.5))
        gain = float(np.clip((0.93 / max(top, 1e-3)) ** 2.2, 1.0, 30.0))
        info["gain"] = round(gain, 3)
        if gain < 1.05:
            return Fix(rgb.copy(), info={**info, "skipped": "the brightest tones are already bright"})
        out = linear_to_srgb(lin * gain)
    elif kind == "overexposure":
        unclipped = y[x.max(axis=2) < 0.98]
        med = float(np.median(unclipped)) if unclipped.size > 100 else float(np.median(y))
        gain = float(np.clip((0.45 / max(med, 1e-3)) ** 2.2, 0.2, 1.0))
        info["gain"] = round(gain, 3)
        if gain > 0.95:
            return Fix(rgb.copy(), info={**info, "skipped": "mid-tones are not too bright"})
        out = linear_to_srgb(lin * gain)
    elif kind == "low_contrast":
        # stretch until the extreme tones (not the 1% tails) reach black and white: a photo that
        # already spans the range is left alone whatever its mid-tones do
        lo, hi = np.percentile(y, [0.1, 99.9])
        span = float(hi - lo)
        info["span"] = round(span, 3)
        # washed-out means blacks lifted *and* whites dimmed; a photo whose tones reach either end
        # (a low-key night, a bright overcast day) is what it is
        if lo < 0.04 or hi > 0.96:
            return Fix(rgb.copy(), info={**info, "skipped": "tones already reach black or white"})
        k = float(np.clip(0.96 / max(span, 0.05), 1.0, 6.0))
        if k < 1.05:
            return Fix(rgb.copy(), info={**info, "skipped": "tones already span the range"})
        out = (x - lo) * k + 0.02
    elif kind == "color_cast":
        gx = np.abs(cv2.Sobel(lin, cv2.CV_32F, 1, 0, ksize=3))
        gy = np.abs(cv2.Sobel(lin, cv2.CV_32F, 0, 1, ksize=3))
        ok = x.max(axis=2) < 0.98
        e = np.power(np.power(np.hypot(gx, gy)[ok], 2).mean(axis=0), 0.5)  # grey-edge, p = 2
        e = e / max(float(e @ LUMA), 1e-6)
        gain = 1.0 / np.maximum(e, 1e-3)
        info["gains"] = [round(float(v), 4) for v in gain]
        if np.all(np.abs(np.log(gain)) < 0.04):
            return Fix(rgb.copy(), info={**info, "skipped": "edges are already grey"})
        out = linear_to_srgb(lin * gain[None, None, :].astype(np.float32))
    else:
        raise ValueError(f"no tone fix for {kind!r}")
    return Fix(blend(rgb, to_u8(out * 255.0), amount), info=info)


LOCAL_FIXES = {
    "noise": fix_noise,
    "jpeg": fix_jpeg,
    "blur": fix_blur,
    "artifact": fix_banding,
}
