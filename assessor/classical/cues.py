"""Local cues of the classical critic, measured tile by tile in physical units where one exists.

Every cue answers one question about a square tile: how wide are the edges (blur, as a Gaussian
sigma in pixels), how strong is the white noise (sigma on the 0..255 luma scale) and is it white
and coloured like sensor noise rather than texture, how much do 8x8 block borders stand out
(JPEG), how much is blown out, what is left of black and white, which way the colours lean, how
many grey levels are used (banding). Physical units let one severity scale serve every image size
and let the zoom step re-measure the same quantity at native resolution.

``tile_stats`` computes all of them at once, vectorised over tiles, for the global look (on a
reduced image) and for every zoom (on native pixels). No torch here: this path must start fast.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from ..zoom import box_iou

REBLUR_SIGMA = 1.5  # the reference blur of the reblur test
SOBEL_SIGMA = 0.75  # effective blur of the 3x3 Sobel derivative itself (calibrated on step edges)
EDGE_MIN = 2.5  # peak gradient (0..255 per pixel, after reblur) that counts as an edge worth measuring
IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
IMMERKAER_GAIN = np.sqrt(np.pi / 2.0) / 6.0  # mean |conv| of N(0, s^2) noise is 6 s sqrt(2/pi)


_LINEAR = np.power(np.arange(256, dtype=np.float64) / 255.0, 2.2).astype(np.float32)  # sRGB ~ gamma 2.2
_LOG_LINEAR = np.log(_LINEAR + 0.02).astype(
    np.float32
)  # the offset keeps near-black channels from dominating
_LUMA = np.array([[0.299, 0.587, 0.114]], np.float32)
_LUMA_LINEAR = np.array([0.2126, 0.7152, 0.0722], np.float32)  # luminance from linear-light RGB


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec.601 luma as float32 0..255."""
    y = cv2.transform(np.ascontiguousarray(rgb, dtype=np.float32), _LUMA)
    return y[..., 0] if y.ndim == 3 else y


def tiles(arr: np.ndarray, tile: int) -> np.ndarray:
    """View an H x W [x C] array as (rows, cols, tile*tile [, C]); the ragged border is dropped."""
    rows, cols = arr.shape[0] // tile, arr.shape[1] // tile
    a = arr[: rows * tile, : cols * tile]
    if a.ndim == 2:
        return a.reshape(rows, tile, cols, tile).transpose(0, 2, 1, 3).reshape(rows, cols, tile * tile)
    c = a.shape[2]
    return a.reshape(rows, tile, cols, tile, c).transpose(0, 2, 1, 3, 4).reshape(rows, cols, tile * tile, c)


def untile(t: np.ndarray, tile: int) -> np.ndarray:
    """Inverse of ``tiles`` for a (rows, cols, tile*tile) array: back to (rows*tile, cols*tile)."""
    rows, cols = t.shape[:2]
    return t.reshape(rows, cols, tile, tile).transpose(0, 2, 1, 3).reshape(rows * tile, cols * tile)


def gradient_magnitude(y: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3, scale=0.125, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3, scale=0.125, borderType=cv2.BORDER_REFLECT)
    return cv2.magnitude(gx, gy)


def edge_sigma(g_fine: np.ndarray, g_coarse: np.ndarray) -> np.ndarray:
    """Invert the peak-gradient ratio of a Gaussian edge: g ~ 1/sqrt(s^2 + s0^2 [+ reblur^2])."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.square(g_fine / np.maximum(g_coarse, 1e-6))
        total = REBLUR_SIGMA**2 / np.maximum(r2 - 1.0, 1e-3)
        return np.sqrt(np.clip(total - SOBEL_SIGMA**2, 0.0, 400.0))


def _kth(t: np.ndarray, q: float) -> np.ndarray:
    """The q-quantile (0..1) along the last axis by partial sort (nearest rank)."""
    k = int(round(q * (t.shape[-1] - 1)))
    return np.partition(t, k, axis=-1)[..., k]


def tile_mean(arr: np.ndarray, tile: int) -> np.ndarray:
    """Mean of an H x W map over each tile, (rows, cols); area resampling computes it exactly."""
    rows, cols = arr.shape[0] // tile, arr.shape[1] // tile
    a = np.ascontiguousarray(arr[: rows * tile, : cols * tile], dtype=np.float32)
    return cv2.resize(a, (cols, rows), interpolation=cv2.INTER_AREA).reshape(rows, cols)


def tile_masked_mean(arr: np.ndarray, mask: np.ndarray, tile: int) -> np.ndarray:
    m = tile_mean(mask.astype(np.float32), tile)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m > 0, tile_mean(arr * mask, tile) / np.maximum(m, 1e-9), np.nan)


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    n = mask.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (values * mask).sum(axis=-1) / np.maximum(n, 1), np.nan)


def log_chroma(rgb: np.ndarray, y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Opponent log-chroma (a: red-green, b: yellow-blue) and a validity mask of mid-tone pixels.

    A colour cast multiplies the channels by gains, i.e. adds one constant vector to every pixel's
    log-chroma; dark and clipped pixels carry no reliable colour and are left out."""
    r, g, bl = (np.ascontiguousarray(rgb[..., c]) for c in range(3))
    lr, lg, lb = (cv2.LUT(ch, _LOG_LINEAR) for ch in (r, g, bl))
    a = lr - lg
    b = 0.5 * (lr + lg) - lb
    y = luminance(rgb) if y is None else y
    ok = (y > 43.0) & (channel_max(rgb) < 250)  # 43/255 in sRGB ~ 2% of white in linear light
    return a, b, ok


def channel_max(rgb: np.ndarray) -> np.ndarray:
    """Per-pixel max over R, G, B (numpy's reduction over a last axis of 3 is slow)."""
    return np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def neutral_chroma(a: np.ndarray, b: np.ndarray, ok: np.ndarray, q: float = 0.1) -> np.ndarray:
    """Mean log-chroma of the least saturated ``q`` of valid pixels: near (0, 0) in a balanced image
    that has any grey, white or black-ish surface at all; a cast moves it along with everything."""
    a, b = a[ok], b[ok]
    if a.size < 16:
        return np.array([np.nan, np.nan])
    sat = np.hypot(a, b)
    k = max(1, int(q * sat.size))
    idx = np.argpartition(sat, k - 1)[:k]
    return np.array([a[idx].mean(), b[idx].mean()])


def white_patch_chroma(
    a: np.ndarray, b: np.ndarray, ok: np.ndarray, y: np.ndarray, q: float = 0.02
) -> np.ndarray:
    """Mean log-chroma of the brightest ``q`` of valid (unclipped) pixels: highlights take the
    colour of the light."""
    if ok.sum() < 16:
        return np.array([np.nan, np.nan])
    yv = y[ok]
    sel = yv >= np.percentile(yv, 100.0 * (1.0 - q))
    return np.array([a[ok][sel].mean(), b[ok][sel].mean()])


BLOWN_WHITES = 0.05  # share of blown-out pixels from which only the grey edges tell the light's colour


def cast_estimate(rgb: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """How far the light's colour is from neutral (max/min channel ratio - 1), as the median of
    three estimates that fail on different scenes: grey edges (fooled by a colourful subject's
    outline), the greyest pixels (fooled when nothing in the scene is grey) and the brightest
    pixels (fooled by coloured lights; both gone when the whites are blown out). Also returns the
    grey-edge light and the neutral chroma."""
    y = luminance(rgb)
    a, b, ok = log_chroma(rgb, y)
    light = illuminant(rgb)
    neutral = neutral_chroma(a, b, ok)
    white = white_patch_chroma(a, b, ok, y)
    votes = [cast_strength(light)]
    # blown-out whites were the greyest and brightest surfaces: what is left of either is coloured
    blown = float((channel_max(rgb) >= 250).mean()) >= BLOWN_WHITES
    for c in (neutral, white):
        votes.append(float(np.expm1(np.hypot(*c))) if np.isfinite(c).all() and not blown else votes[0])
    # with few mid-tones (a night scene: darkness and a few lamps) the light's colour cannot be
    # judged, and a warm lamp is not a cast
    trust = float(np.clip(ok.mean() / 0.25, 0.0, 1.0))
    return float(np.median(votes)) * trust, light, neutral


@dataclass
class TileStats:
    """Every cue, one value per tile: arrays of shape (rows, cols)."""

    tile: int
    edge: np.ndarray  # peak gradient after reblur: how much structure there is
    sigma: np.ndarray  # edge blur (Gaussian sigma, pixels); nan = no edges to measure
    noise: np.ndarray  # white-noise sigma of luma (0..255) over the flatter half of the tile
    whiteness: np.ndarray  # noise sigma ratio full / half resolution: ~2 white noise, ~1 texture
    chroma_noise: np.ndarray  # fine-grain energy in colour differences / in luma: ~2 noise, ~0 texture
    block: np.ndarray  # 8x8 blockiness (0 = none); nan when not measured
    clip_hi: np.ndarray  # fraction of pixels with a channel >= 250
    mean: np.ndarray  # mean luma 0..1
    p05: np.ndarray  # 5th / 95th luma percentiles 0..1: what is left of black and white
    p95: np.ndarray
    chroma: np.ndarray  # (rows, cols, 2) mean log-chroma of valid pixels
    neutral: np.ndarray  # (rows, cols, 2) log-chroma of the tile's least saturated quarter
    chroma_var: np.ndarray  # within-tile variance of log-chroma (a + b)
    occupancy: np.ndarray  # share of grey levels used (green channel); nan when the range is narrow

    @property
    def shape(self) -> tuple[int, int]:
        return self.edge.shape

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = self.shape
        return (np.arange(rows) + 0.5) * self.tile, (np.arange(cols) + 0.5) * self.tile


def _blockiness_ratio(per_phase: np.ndarray, phase: int) -> np.ndarray:
    """How much the block-border phase stands out among the 8 phases of the differences.

    It must stand out against the phases 2, 4 and 6 away too: an image upscaled 2x or 4x has a
    period of 2 or 4 that is not JPEG."""
    same_period = [(phase + k) % 8 for k in (2, 4, 6)]
    others = np.median(np.delete(per_phase, phase, axis=-1), axis=-1)
    inside = np.maximum(others, per_phase[..., same_period].max(axis=-1))
    return (per_phase[..., phase] - inside) / (inside + 1.0)


def block_phases(y: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean absolute horizontal / vertical luma difference per tile and per phase within the
    8-pixel period: arrays (rows, cols, 8). ``tile`` must be a multiple of 8."""
    h, w = y.shape
    rows, cols = h // tile, w // tile
    # dh[:, j] = |y[j+1] - y[j]|, capped: block steps are small, and a few strong content edges
    # must not outweigh them (a dark scene with lit windows would otherwise look blocky)
    dh = np.minimum(np.abs(np.diff(y, axis=1, append=y[:, -1:])), 16.0)[: rows * tile, : cols * tile]
    dv = np.minimum(np.abs(np.diff(y, axis=0, append=y[-1:, :])), 16.0)[: rows * tile, : cols * tile]
    ph = dh.reshape(rows, tile, cols, tile // 8, 8).mean(axis=(1, 3))
    pv = dv.reshape(rows, tile // 8, 8, cols, tile).mean(axis=(1, 4)).transpose(0, 2, 1)
    return ph, pv


def blockiness(
    y: np.ndarray,
    tile: int,
    phase: tuple[int, int] | None = None,
    origin_phase: tuple[int, int] | None = (7, 7),
) -> tuple[np.ndarray, float, tuple[int, int]]:
    """JPEG blockiness per tile, for the whole input, and the grid phase (horizontal, vertical).

    Blocks show in both directions; one long straight edge or a brick wall's mortar lines line up
    with a grid in one direction only, so the weaker direction counts."""
    ph, pv = block_phases(y, tile)
    gh, gv = ph.reshape(-1, 8).mean(axis=0), pv.reshape(-1, 8).mean(axis=0)
    if phase is None:
        phase = (int(np.argmax(gh)), int(np.argmax(gv)))
    per_tile = np.minimum(_blockiness_ratio(ph, phase[0]), _blockiness_ratio(pv, phase[1]))
    whole = float(min(_blockiness_ratio(gh, phase[0]), _blockiness_ratio(gv, phase[1])))
    if origin_phase is not None and tuple(origin_phase) != tuple(phase):
        # a region compressed as part of the whole image has its grid at the image origin (phase 7),
        # whatever the grid of the photo it came from
        at_origin = np.minimum(_blockiness_ratio(ph, origin_phase[0]), _blockiness_ratio(pv, origin_phase[1]))
        per_tile = np.maximum(per_tile, at_origin)
    return np.maximum(per_tile, 0.0).astype(np.float32), max(whole, 0.0), phase


# 8x8 DCT basis (orthonormal: JPEG's own coefficient scale) and the low frequencies whose
# quantization steps tell the quality: (row, col) -> step of the standard luminance table at
# quality 50 (ITU-T T.81, Annex K), which libjpeg scales by 50 / quality below 50.
_DCT8 = np.array(
    [
        [np.sqrt((1.0 if u else 0.5) / 4.0) * np.cos((2 * x + 1) * u * np.pi / 16) for x in range(8)]
        for u in range(8)
    ],
    np.float32,
)
JPEG_STEPS_Q50 = {(0, 1): 11, (1, 0): 12, (1, 1): 12, (0, 2): 10, (2, 0): 14}
_STEP_CANDIDATES = np.arange(3, 161)
_STEP_BINS = np.arange(0.125, 400.0, 0.25, dtype=np.float32)  # |coefficient| histogram, bin centres
_STEP_COS = np.cos(2 * np.pi * _STEP_BINS[None, :] / _STEP_CANDIDATES[:, None]).astype(np.float32)
_STEP_NONZERO = (_STEP_BINS[None, :] > 0.5 * _STEP_CANDIDATES[:, None]).astype(np.float32)


def quantization_step(coefficients: np.ndarray, min_count: int = 40, lattice: float = 0.7) -> float:
    """The largest step on whose multiples the nonzero values sit (0 when none does).

    Decoding a JPEG leaves each DCT coefficient of its 8x8 blocks at a multiple of that
    frequency's quantization step, up to the rounding of the pixels; a photo's coefficients are
    spread evenly. Any divisor of the step fits too, hence the largest."""
    hist, _ = np.histogram(np.abs(coefficients), bins=len(_STEP_BINS), range=(0.0, 400.0))
    hist = hist.astype(np.float32)
    n = _STEP_NONZERO @ hist
    with np.errstate(invalid="ignore", divide="ignore"):
        fit = (_STEP_COS * _STEP_NONZERO) @ hist / n
    ok = (n >= min_count) & (fit >= lattice)
    if not ok.any():
        return 0.0
    k = int(np.flatnonzero(ok)[-1])
    # a step a little larger than the true one still fits the few multiples a coarse step leaves:
    # take the best fit just below the largest
    idx = np.arange(len(ok))
    k = int(np.argmax(np.where(ok & (idx >= k - max(1, k // 8)) & (idx <= k), fit, -1.0)))
    return float(_STEP_CANDIDATES[k])


def lattice_share(coefficients: np.ndarray, step: float) -> float:
    """Share of the nonzero values within a tenth of a step (at least 1) of a multiple of it: about
    1 as decoded, 0.2 for values spread evenly. Filtering a JPEG (deblocking) moves them off."""
    a = np.abs(coefficients)
    a = a[a > 0.5 * step]
    if a.size == 0:
        return 0.0
    off = np.abs(a / step - np.rint(a / step)) * step
    return float((off <= max(1.0, 0.1 * step)).mean())


def jpeg_quality(
    rgb: np.ndarray,
    y: np.ndarray,
    phase: tuple[int, int] = (7, 7),
    max_blocks: int = 4000,
    min_count: int = 40,
) -> tuple[float, float]:
    """The JPEG quality (1..100, libjpeg's scale) a photo was last saved at, from the quantization
    steps of its low-frequency luma coefficients on the 8x8 grid after ``phase`` (as returned by
    ``blockiness``; each step from at least ``min_count`` nonzero values), and the share of those
    coefficients still on the steps' lattice (1 as decoded, less once filtered). Quality nan
    (share 0) when the coefficients show no quantization at all: never compressed, resampled
    since, or only part of the image compressed.

    Unlike how much block borders stand out, which depends on what the blocks show, the steps are
    the same for every photo saved at one quality."""
    none = (float("nan"), 0.0)
    ox, oy = (phase[0] + 1) % 8, (phase[1] + 1) % 8
    h, w = (y.shape[0] - oy) // 8 * 8, (y.shape[1] - ox) // 8 * 8
    if h < 8 or w < 8:
        return none
    # an even subsample of the blocks (every s-th block row and column, about max_blocks or up to
    # four times as many): enough for the histograms, and fast on large images
    s = max(1, int(np.sqrt((h // 8) * (w // 8) / max_blocks)))
    grid = np.s_[::s, :, ::s]
    blocks = (y[oy : oy + h, ox : ox + w].reshape(h // 8, 8, w // 8, 8)[grid] - 128.0).transpose(0, 2, 1, 3)
    c = rgb[oy : oy + h, ox : ox + w].reshape(h // 8, 8, w // 8, 8, 3)[grid].transpose(0, 2, 1, 3, 4)
    # a channel clipped at 0 or 255 breaks the lattice: skip those blocks
    keep = ~((channel_max(c) == 255) | (np.minimum(np.minimum(c[..., 0], c[..., 1]), c[..., 2]) == 0)).any(
        axis=(2, 3)
    )
    # a block of two or three flat levels (posterized, line art) has a few discrete coefficients
    # that can pass for a lattice; a decoded JPEG block is a sum of cosines: many levels
    levels = np.sort(np.rint(blocks.reshape(*blocks.shape[:2], 64)), axis=-1)
    keep &= (np.diff(levels, axis=-1) > 0).sum(axis=-1) >= 4
    blocks = blocks[keep]
    scales, shares = [], []
    for (u, v), base in JPEG_STEPS_Q50.items():
        coef = np.einsum("i,nij,j->n", _DCT8[u], blocks, _DCT8[v], optimize=True)
        step = quantization_step(coef, min_count)
        if step > 0:
            scales.append(step / base)
            shares.append(lattice_share(coef, step))
    scale = float(np.median(scales)) if scales else 0.0
    agree = [abs(x / scale - 1.0) <= 0.15 for x in scales] if scale > 0 else []
    if sum(agree) < 3:  # most low frequencies must agree on one table
        return none
    shares = [sh for sh, ok in zip(shares, agree) if ok]
    quality = float(np.clip(50.0 / scale if scale >= 1.0 else 100.0 - 50.0 * scale, 1.0, 100.0))
    return quality, float(np.median(shares))


def occupancy_tiles(channel: np.ndarray, tile: int, min_width: int = 12) -> np.ndarray:
    """Share of the grey levels between a tile's 2nd and 98th percentile that occur at all.

    Smooth photos use nearly every level; posterized or banded ones only a few."""
    t = np.sort(tiles(channel, tile), axis=-1, kind="stable")  # radix sort for uint8
    n = t.shape[-1]
    k2, k98 = int(0.02 * (n - 1)), int(0.98 * (n - 1))
    part = t[..., k2 : k98 + 1].astype(np.int16)
    width = part[..., -1] - part[..., 0] + 1
    levels = 1 + np.count_nonzero(np.diff(part, axis=-1), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        occ = levels / width.astype(np.float32)
    return np.where(width >= min_width, occ, np.nan).astype(np.float32)


def banding_tiles(
    rgb: np.ndarray, tile: int, min_width: int = 12, min_step: int = 3, grainy: float = 0.05
) -> np.ndarray:
    """``occupancy_tiles`` of the green channel, extended to tiles whose tonal range is too narrow
    to count levels in: a smooth area posterized into flat bands.

    Photographs carry grain, so exact plateaus (a pixel equal to its 8 neighbours in every
    channel, not clipped) are rare in them; banding is mostly plateaus, at two or more levels at
    least ``min_step`` apart within half a tile around (one flat colour is a fill, not banding).
    Such a tile reads as an occupancy of 0.01 + 0.1 x (share of pixels not on a plateau); so does
    any tile mostly on plateaus where the median tile has less than ``grainy`` of its pixels on
    them (a photo, not a graphic)."""
    occ = occupancy_tiles(rgb[..., 1], tile, min_width)
    kernel = np.ones((3, 3), np.uint8)
    r, g, b = cv2.split(np.ascontiguousarray(rgb))
    flat = (cv2.max(cv2.max(r, g), b) < 250) & (cv2.min(cv2.min(r, g), b) > 5)
    for c in (r, g, b):
        flat &= cv2.dilate(c, kernel) == cv2.erode(c, kernel)
    share = tiles(flat, tile).mean(axis=-1)
    if float(np.median(share)) < grainy:
        # in a photo with grain nearly everywhere, a tile mostly on one exact plateau was
        # posterized to a single level (a smooth area flattened), whatever the levels around it;
        # not a plateau at the image's top level in some channel: blown out (and darkened since)
        top = (r == r.max()) | (g == g.max()) | (b == b.max())
        fill = tiles(flat & ~top, tile).mean(axis=-1)
        occ = np.where(fill >= 0.5, np.fmin(occ, 0.01 + 0.1 * (1.0 - fill)), occ).astype(np.float32)
    half = tile // 2
    for row, col in zip(*np.nonzero(~np.isfinite(occ) & (share >= 0.5))):
        ys = slice(max(0, row * tile - half), (row + 1) * tile + half)
        xs = slice(max(0, col * tile - half), (col + 1) * tile + half)
        win = flat[ys, xs]
        counts = np.bincount(g[ys, xs][win], minlength=256)
        levels = np.nonzero(counts >= 0.05 * win.sum())[0]
        if levels.size >= 2 and np.diff(levels).max() >= min_step:
            occ[row, col] = 0.01 + 0.1 * (1.0 - share[row, col])
    return occ


def comb_tiles(channel: np.ndarray, tile: int, min_share: float = 0.5, min_step: int = 3) -> np.ndarray:
    """Grey-level occupancy of the posterized part of each tile: 1 / the step between its levels,
    where at least ``min_share`` of the tile's pixels sit on isolated spikes of the histogram
    (levels at least ``min_step`` apart, each far above its neighbours); nan elsewhere.

    ``occupancy_tiles`` counts every level between the 2nd and 98th percentile, so a tile that
    is posterized only in part (the border of a banded sky, of a retouched patch) uses as many
    levels as a smooth one; its histogram still shows the comb."""
    t = tiles(channel, tile)
    rows, cols, n = t.shape
    idx = (np.arange(rows * cols, dtype=np.int64)[:, None] * 256 + t.reshape(rows * cols, n)).ravel()
    counts = np.bincount(idx, minlength=rows * cols * 256).reshape(rows * cols, 256).astype(np.float32)
    padded = np.pad(counts, ((0, 0), (2, 2)))
    near = np.max(np.stack([padded[:, k : k + 256] for k in (0, 1, 3, 4)]), axis=0)
    spike = (counts >= 0.03 * n) & (counts >= 8.0 * near + 2.0)
    # clipped shadows and highlights are spikes of their own, of no use and left out
    spike[:, :6] = spike[:, 250:] = False
    unclipped = counts[:, 6:250].sum(axis=1)
    on_spikes = (counts * spike).sum(axis=1)
    out = np.full(rows * cols, np.nan, np.float32)
    for k in np.nonzero((spike.sum(axis=1) >= 2) & (on_spikes >= min_share * np.maximum(unclipped, 1)))[0]:
        step = float(np.median(np.diff(np.nonzero(spike[k])[0])))
        if step >= min_step:
            out[k] = 1.0 / step
    return out.reshape(rows, cols)


def level_occupancy(channel: np.ndarray) -> float:
    """``occupancy_tiles`` for a whole channel (1.0 when its range is too narrow to tell)."""
    lo, hi = np.percentile(channel, [2, 98])
    lo, hi = int(lo), int(hi)
    if hi - lo + 1 < 12:
        return 1.0
    hist = np.bincount(channel.ravel(), minlength=256)[lo : hi + 1]
    return float(np.count_nonzero(hist) / (hi - lo + 1))


def tile_stats(
    rgb: np.ndarray,
    tile: int,
    *,
    native: bool = True,
    phase: tuple[int, int] | None = None,
    origin_phase: tuple[int, int] | None = (7, 7),
) -> TileStats:
    """All cues on a grid of ``tile`` x ``tile`` pixels of ``rgb`` (uint8). With ``native=False``
    (a downscaled look), JPEG blocks and grey levels are not measured: resampling destroys both."""
    y = luminance(rgb)
    rows, cols = y.shape[0] // tile, y.shape[1] // tile
    nan_map = np.full((rows, cols), np.nan, np.float32)

    # blur: the reblur test on each tile's strongest edges (~98.5th percentile of gradients)
    g1 = tiles(gradient_magnitude(y), tile)
    g2 = tiles(
        gradient_magnitude(cv2.GaussianBlur(y, (0, 0), REBLUR_SIGMA, borderType=cv2.BORDER_REFLECT)), tile
    )
    edge = _kth(g2, 0.985)
    sigma = edge_sigma(_kth(g1, 0.985), edge)
    sigma[edge < EDGE_MIN] = np.nan

    # noise: Immerkaer's operator over the flatter half of each tile, in luma and colour differences
    smooth_grad = tiles(
        gradient_magnitude(cv2.GaussianBlur(y, (0, 0), 1.0, borderType=cv2.BORDER_REFLECT)), tile
    )
    flat = untile(smooth_grad <= _kth(smooth_grad, 0.5)[..., None], tile)
    f32 = rgb.astype(np.float32)

    def resid(ch: np.ndarray) -> np.ndarray:
        return np.abs(cv2.filter2D(ch, cv2.CV_32F, IMMERKAER, borderType=cv2.BORDER_REFLECT))

    noise_y = tile_masked_mean(resid(y)[: flat.shape[0], : flat.shape[1]], flat, tile)
    c1 = f32[..., 0] - f32[..., 1]
    c2 = 0.5 * (f32[..., 0] + f32[..., 1]) - f32[..., 2]
    rc = resid(c1) + resid(c2)
    noise_c = 0.5 * tile_masked_mean(rc[: flat.shape[0], : flat.shape[1]], flat, tile)
    half = cv2.resize(y, (y.shape[1] // 2, y.shape[0] // 2), interpolation=cv2.INTER_AREA)
    half_t = tile // 2
    sg_half = tiles(gradient_magnitude(cv2.GaussianBlur(half, (0, 0), 1.0)), half_t)
    flat_half = untile(sg_half <= _kth(sg_half, 0.5)[..., None], half_t)
    nh = tile_masked_mean(resid(half)[: flat_half.shape[0], : flat_half.shape[1]], flat_half, half_t)
    noise_half = nan_map.copy()
    noise_half[: min(rows, nh.shape[0]), : min(cols, nh.shape[1])] = nh[:rows, :cols]
    with np.errstate(invalid="ignore", divide="ignore"):
        whiteness = noise_y / np.maximum(noise_half, 0.25 / IMMERKAER_GAIN)
        chroma_noise = noise_c / np.maximum(noise_y, 1e-3)

    # exposure and tones
    clip_hi = tile_mean((channel_max(rgb) >= 250).astype(np.float32), tile)
    ty = tiles(y, tile)
    n = ty.shape[-1]
    k5, k95 = int(0.05 * (n - 1)), int(0.95 * (n - 1))
    part = np.partition(ty, (k5, k95), axis=-1)

    # colour
    a, b, ok = log_chroma(rgb, y)
    okf = ok.astype(np.float32)
    chroma = np.stack([tile_masked_mean(a, okf, tile), tile_masked_mean(b, okf, tile)], axis=-1)
    second = tile_masked_mean(np.square(a) + np.square(b), okf, tile)
    var = np.maximum(second - np.square(chroma).sum(axis=-1), 0.0)
    ta, tb, tok = tiles(a, tile), tiles(b, tile), tiles(ok, tile)
    sat = np.where(tok, np.abs(ta) + np.abs(tb), np.inf)
    k = max(1, n // 4)
    idx = np.argpartition(sat, k - 1, axis=-1)[..., :k]
    sel = np.take_along_axis(tok, idx, axis=-1)
    neutral = np.stack(
        [
            _masked_mean(np.take_along_axis(ta, idx, axis=-1), sel),
            _masked_mean(np.take_along_axis(tb, idx, axis=-1), sel),
        ],
        axis=-1,
    )
    neutral[sel.sum(axis=-1) < k // 2] = np.nan

    block = nan_map.copy()
    occupancy = nan_map.copy()
    if native:
        if tile % 8 == 0:
            block = blockiness(y, tile, phase, origin_phase)[0]
        occupancy = occupancy_tiles(rgb[..., 1], tile)
    return TileStats(
        tile=tile,
        edge=edge.astype(np.float32),
        sigma=sigma.astype(np.float32),
        noise=(noise_y * IMMERKAER_GAIN).astype(np.float32),
        whiteness=whiteness.astype(np.float32),
        chroma_noise=chroma_noise.astype(np.float32),
        block=block,
        clip_hi=clip_hi.astype(np.float32),
        mean=(tile_mean(y, tile) / 255.0).astype(np.float32),
        p05=(part[..., k5] / 255.0).astype(np.float32),
        p95=(part[..., k95] / 255.0).astype(np.float32),
        chroma=chroma.astype(np.float32),
        neutral=neutral.astype(np.float32),
        chroma_var=var.astype(np.float32),
        occupancy=occupancy,
    )


def summarize(ts: TileStats, sel: np.ndarray) -> dict[str, float]:
    """Region-level cue values from the tiles selected by ``sel`` (a (rows, cols) bool array)."""
    if not sel.any():
        return {}

    def pct(a: np.ndarray, q: float) -> float:
        v = a[sel]
        v = v[np.isfinite(v)]
        return float(np.percentile(v, q)) if v.size else float("nan")

    edges = np.isfinite(ts.sigma) & sel
    chroma = ts.chroma[sel]
    chroma = chroma[np.isfinite(chroma).all(axis=1)]
    neutral = ts.neutral[sel]
    neutral = neutral[np.isfinite(neutral).all(axis=1)]
    if len(neutral):  # the greyest quarter of the region's tiles
        order = np.argsort(np.hypot(neutral[:, 0], neutral[:, 1]))
        neutral = neutral[order[: max(1, len(order) // 4)]].mean(axis=0)
    else:
        neutral = np.array([np.nan, np.nan])
    if len(chroma):
        cm = chroma.mean(axis=0)
        spread = float(np.sqrt(chroma.var(axis=0).sum() + np.nanmean(ts.chroma_var[sel])))
    else:
        cm, spread = np.array([np.nan, np.nan]), float("nan")
    return {
        "tiles": float(sel.sum()),
        "edge_tiles": float(edges.sum()),
        "edge": pct(ts.edge, 50),
        "blur_sigma": pct(np.where(edges, ts.sigma, np.nan), 30),
        "blur_sigma_median": pct(np.where(edges, ts.sigma, np.nan), 50),
        "noise_sigma": pct(ts.noise, 50),
        "whiteness": pct(ts.whiteness, 50),
        "chroma_noise": pct(ts.chroma_noise, 50),
        "blockiness": pct(ts.block, 50),
        "clipped": float(np.mean(ts.clip_hi[sel])),
        "mean": float(np.mean(ts.mean[sel])),
        "p05": pct(ts.p05, 10),
        "p95": pct(ts.p95, 90),
        "top": pct(ts.p95, 100),  # the brightest tile's 95th percentile: any light left at all
        "chroma_a": float(cm[0]),
        "chroma_b": float(cm[1]),
        "neutral_a": float(neutral[0]),
        "neutral_b": float(neutral[1]),
        "chroma_spread": spread,
        "occupancy": pct(ts.occupancy, 50),
    }


# A washed-out photo's p99.9 - p0.1 span is at most ~1.4x its p99 - p1 span (the shipped photos
# measure 1.0-1.45); a share of 0.7 of the wider span only ever lifts content whose tails reach far
# beyond its body, as low-key content's do (the moon: 0.33 against 0.87).
TAIL_SHARE = 0.7


@dataclass
class ExposureStats:
    mean: float  # mean luma 0..1
    p01: float  # 1st percentile of luma 0..1
    p99: float  # 99th percentile
    p999: float  # 99.9th percentile: the brightest lights
    p001: float  # 0.1th percentile: the deepest shadows
    p05: float  # 5th percentile: where the shadows sit
    clipped_hi: float  # fraction of pixels with a channel at >= 250
    clipped_lo: float  # fraction of pixels with luma <= 4

    @property
    def tone_range(self) -> float:
        """The tonal range an image uses: p99 - p1, or a share of p99.9 - p0.1 where that is wider.

        Washing an image out compresses its extremes with its body, so both spans shrink alike.
        Low-key content (the moon, fog, stone) keeps its deepest shadows and brightest lights in a
        few craters and glints while its body sits in a narrow band: it uses the range."""
        return max(self.p99 - self.p01, TAIL_SHARE * (self.p999 - self.p001))

    @property
    def lightness(self) -> float:
        """How light an image is, its shadows included: the mean of its mean luma and its 5th
        percentile. Pushing a photo bright lifts both, also where nothing clips (the moon brightened
        3.4x in linear light clips nothing); a dark subject on a white background keeps its shadows."""
        return 0.5 * (self.mean + self.p05)


def exposure_stats(rgb: np.ndarray, y: np.ndarray | None = None) -> ExposureStats:
    y = luminance(rgb) if y is None else y
    q = np.percentile(y, [1, 99, 99.9, 0.1, 5]) / 255.0
    return ExposureStats(
        mean=float(y.mean() / 255.0),
        p01=float(q[0]),
        p99=float(q[1]),
        p999=float(q[2]),
        p001=float(q[3]),
        p05=float(q[4]),
        clipped_hi=float((channel_max(rgb) >= 250).mean()),
        clipped_lo=float((y <= 4).mean()),
    )


def illuminant(rgb: np.ndarray, p: float = 6.0) -> np.ndarray:
    """Shades-of-grey-edge estimate of the light colour in linear RGB, normalized to sum 3.

    Edges are where surfaces of different colour meet; their average colour is greyer than the
    surfaces themselves, so a colourful subject pulls this estimate much less than grey-world.
    """
    lin = np.power(rgb.astype(np.float32) / 255.0, 2.2)
    ok = (channel_max(rgb) < 250) & (
        np.minimum(np.minimum(rgb[..., 0], rgb[..., 1]), rgb[..., 2]) > 3
    )  # clipped: no colour
    est = np.empty(3, np.float64)
    for c in range(3):
        g = gradient_magnitude(cv2.GaussianBlur(lin[..., c], (0, 0), 1.0))
        v = g[ok] if ok.any() else g.ravel()
        est[c] = np.power(np.mean(np.power(v, p)) + 1e-12, 1.0 / p)
    return est / est.sum() * 3.0


def cast_strength(light: np.ndarray) -> float:
    """How far a light colour (sum 3) is from neutral: max/min channel ratio minus one."""
    return float(light.max() / max(light.min(), 1e-6) - 1.0)


def reduce_to(rgb: np.ndarray, long_side: int, min_side: int = 16) -> np.ndarray:
    """``rgb`` area-averaged down to ``long_side`` pixels on its long side (each side at least
    ``min_side``), or as it is where it is no larger: the reduced looks the critics measure on."""
    h, w = rgb.shape[:2]
    s = long_side / float(max(h, w))
    if s >= 1.0:
        return rgb
    size = (max(min_side, round(w * s)), max(min_side, round(h * s)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


# ----------------------------------------------------------------------------- seams
SEAM_FEATURES = ("exposure", "red-green", "blue-green", "contrast")
TONE_KINDS = ("underexposure", "overexposure", "low_contrast", "color_cast")  # what a seam can be


@dataclass
class Seam:
    """A rectangle whose border steps the same way nearly all around: a patch exposed, tinted or
    flattened differently from its surroundings (a paste, an inpainted or re-rendered tile)."""

    box: tuple[int, int, int, int]  # pixels of the image measured, x1/y1 exclusive
    feature: str  # one of SEAM_FEATURES: what steps at the border
    sign: float  # +1: higher inside
    coverage: float  # share of the weakest side's length that steps


def _seam_feature(rgb: np.ndarray, name: str, lin: np.ndarray | None = None) -> tuple[np.ndarray, float, int]:
    """A feature map a tone defect shifts by one constant inside its area, with the step that
    counts and the gap left at the border (a windowed feature straddles it)."""
    if name == "contrast":  # lost contrast scales the local spread of tones
        y = luminance(rgb) / 255.0
        mu = cv2.blur(y, (5, 5))
        spread = np.sqrt(np.maximum(cv2.blur(y * y, (5, 5)) - mu * mu, 0.0))
        return np.log(spread + 0.01), 0.35, 3
    lin = _LINEAR[rgb] if lin is None else lin
    if name == "exposure":  # a gain in linear light adds log(gain) to log luminance
        return np.log(lin @ _LUMA_LINEAR + 0.01), 0.2, 0
    # a cast adds log(gain ratio) to log channel ratios
    c = 0 if name == "red-green" else 2
    return np.log((lin[..., c] + 0.01) / (lin[..., 1] + 0.01)), 0.1, 0


def step_maps(
    f: np.ndarray, width: int = 3, gap: int = 0, border: int = cv2.BORDER_REPLICATE
) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal and vertical step maps. At x: mean of f over [x + gap, x + gap + width) minus
    mean over [x - gap - width, x - gap): a border where the inside starts at column x (row y)
    peaks exactly there. ``border``: how f is extended past the image's edge (OpenCV's flag)."""
    c = width + gap
    k = np.zeros(2 * c + 1, np.float32)
    k[c + gap : c + gap + width] = 1.0 / width
    k[c - gap - width : c - gap] = -1.0 / width
    sx = cv2.filter2D(f, -1, k.reshape(1, -1), borderType=border)
    sy = cv2.filter2D(f, -1, k.reshape(-1, 1), borderType=border)
    return sx, sy


def _line_candidates(evidence: np.ndarray, k: int, min_len: int) -> np.ndarray:
    """Columns of ``evidence`` holding the longest runs of steps (short gaps bridged), strongest
    ``k`` after suppressing neighbours within 2 columns."""
    on = np.ascontiguousarray((cv2.boxFilter(evidence, -1, (1, 7), normalize=False) >= 4).T)
    idx = np.arange(on.shape[1], dtype=np.int32)
    last_off = np.maximum.accumulate(np.where(on, np.int32(-1), idx), axis=1)  # rows are lines here
    runs = (idx - last_off).max(axis=1)
    peak = cv2.dilate(runs.astype(np.float32).reshape(1, -1), np.ones((1, 5), np.uint8)).ravel()
    cand = np.nonzero((runs >= min_len) & (runs >= peak))[0]
    return np.sort(cand[np.argsort(-runs[cand], kind="stable")][:k])


def seams(
    rgb: np.ndarray,
    min_coverage: float = 0.75,
    min_area: float = 0.02,
    max_area: float = 0.6,
    lines: int = 16,
) -> list[Seam]:
    """Rectangles whose four sides (three where one is the frame's edge) step the same way in a
    tone feature over at least ``min_coverage`` of their length, strongest first.

    Content rarely does this: an object's outline steps one way here and the other way there, and
    is seldom a rectangle. Candidate sides are the lines holding the longest runs of steps; every
    combination of them is scored at once from integral images of the step evidence."""
    h, w = rgb.shape[:2]
    found: list[Seam] = []
    if min(h, w) < 32:
        return found
    lin = _LINEAR[rgb]
    min_len = max(12, min(h, w) // 10)
    for name in SEAM_FEATURES:
        f, step, gap = _seam_feature(rgb, name, lin)
        sx, sy = step_maps(f, gap=gap)
        for sign in (1.0, -1.0) if name != "contrast" else (-1.0,):  # more contrast is no defect
            # a side is allowed one pixel of slack either way
            left = cv2.dilate((sign * sx > step).astype(np.uint8), np.ones((1, 3), np.uint8))
            right = cv2.dilate((-sign * sx > step).astype(np.uint8), np.ones((1, 3), np.uint8))
            top = cv2.dilate((sign * sy > step).astype(np.uint8), np.ones((3, 1), np.uint8))
            bottom = cv2.dilate((-sign * sy > step).astype(np.uint8), np.ones((3, 1), np.uint8))
            xl = np.concatenate([[0], _line_candidates(left, lines, min_len)])
            xr = np.concatenate([_line_candidates(right, lines, min_len), [w]])
            yt = np.concatenate([[0], _line_candidates(top.T, lines, min_len)])
            yb = np.concatenate([_line_candidates(bottom.T, lines, min_len), [h]])
            x0, x1, y0, y1 = (a.ravel() for a in np.meshgrid(xl, xr, yt, yb, indexing="ij"))
            bw, bh = x1 - x0, y1 - y0
            area = bw * bh / float(h * w)
            real = (x0 > 0).astype(int) + (x1 < w) + (y0 > 0) + (y1 < h)
            ok = (bw >= 12) & (bh >= 12) & (area >= min_area) & (area <= max_area) & (real >= 3)
            ok &= (bw <= 4 * bh) & (bh <= 4 * bw)
            x0, x1, y0, y1, bw, bh = x0[ok], x1[ok], y0[ok], y1[ok], bw[ok], bh[ok]
            if x0.size == 0:
                continue
            xr_ = np.minimum(x1, w - 1)
            yb_ = np.minimum(y1, h - 1)
            cov = np.stack(
                [
                    np.where(x0 == 0, 1.0, _segment_sum(left, x0, y0, x0 + 1, y1) / bh),
                    np.where(x1 == w, 1.0, _segment_sum(right, xr_, y0, xr_ + 1, y1) / bh),
                    np.where(y0 == 0, 1.0, _segment_sum(top, x0, y0, x1, y0 + 1) / bw),
                    np.where(y1 == h, 1.0, _segment_sum(bottom, x0, yb_, x1, yb_ + 1) / bw),
                ]
            ).min(axis=0)
            for i in np.nonzero(cov >= min_coverage)[0]:
                box = (int(x0[i]), int(y0[i]), int(x1[i]), int(y1[i]))
                found.append(Seam(box, name, sign, float(cov[i])))
    found.sort(key=lambda s: (-s.coverage, -(s.box[2] - s.box[0]) * (s.box[3] - s.box[1])))
    kept: list[Seam] = []
    for s in found:
        if all(box_iou(s.box, k.box) < 0.5 for k in kept):
            kept.append(s)
    return kept


@dataclass
class SoftPatch:
    """An ellipse whose border a tone feature steps across alike all around: a patch exposed,
    tinted or flattened through a soft round mask (an inpainting pass pasted with a feather)."""

    box: tuple[int, int, int, int]  # the ellipse's bounding box in the image's pixels
    feature: str  # one of SEAM_FEATURES
    sign: float  # +1: higher inside
    consistency: float  # mean step across the border over its spread along it


def soft_patches(
    rgb: np.ndarray,
    long_side: int = 96,
    axes: tuple[float, float, int] = (0.07, 0.24, 5),
    angles: int = 16,
    min_coverage: float = 0.75,
    top: int = 24,
) -> list[SoftPatch]:
    """Ellipses (semi-axes ``axes``: smallest and largest share of the image's width / height, how
    many between) whose border steps one way in a tone feature nearly all around, searched at
    every centre of a ``long_side`` look, most consistent step first.

    A soft round border has no straight side for ``seams`` to find. Round content (a disk, a
    face) steps across its outline too, more here and less there: the steps' mean over their
    spread ranks a patch's constant step first, and ``seam_reading`` judges each at native pixels."""
    h, w = rgb.shape[:2]
    s = min(1.0, long_side / float(max(h, w)))
    small = reduce_to(rgb, long_side)
    sw, sh = small.shape[1], small.shape[0]
    lin = _LINEAR[small]
    theta = np.arange(angles) * 2.0 * np.pi / angles
    fracs = np.geomspace(axes[0], axes[1], int(axes[2]))
    pad = int(np.ceil(axes[1] * max(sw, sh))) + 6
    n_dir = 16
    found: list[SoftPatch] = []
    yy, xx = np.mgrid[0:sh, 0:sw]
    for name in SEAM_FEATURES:
        f, step, gap = _seam_feature(small, name, lin)
        fp = cv2.copyMakeBorder(f, pad, pad, pad, pad, cv2.BORDER_REFLECT)
        d = 2 + gap
        # the step across a border whose outward normal points along each of n_dir directions
        diffs = []
        for k in range(n_dir):
            phi = 2.0 * np.pi * k / n_dir
            dx, dy = int(round(d * np.cos(phi))), int(round(d * np.sin(phi)))
            inner = fp[pad - dy : pad - dy + sh, pad - dx : pad - dx + sw]
            outer = fp[pad + dy : pad + dy + sh, pad + dx : pad + dx + sw]
            diff = inner - outer
            diffs.append(cv2.copyMakeBorder(diff, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0.0))
        for sign in (1.0, -1.0) if name != "contrast" else (-1.0,):  # more contrast is no defect
            for fa in fracs:
                a = fa * sw
                for fb in fracs:
                    b = fb * sh
                    if max(a / b, b / a) > 3.0:
                        continue
                    s1 = np.zeros((sh, sw), np.float32)
                    s2 = np.zeros((sh, sw), np.float32)
                    cnt = np.zeros((sh, sw), np.float32)
                    for t in theta:
                        px, py = int(round(a * np.cos(t))), int(round(b * np.sin(t)))
                        k = (
                            int(round(np.arctan2(np.sin(t) / b, np.cos(t) / a) / (2.0 * np.pi) * n_dir))
                            % n_dir
                        )
                        v = sign * diffs[k][pad + py : pad + py + sh, pad + px : pad + px + sw]
                        s1 += v
                        s2 += v * v
                        cnt += v > step
                    mu = s1 / angles
                    sd = np.sqrt(np.maximum(s2 / angles - mu * mu, 0.0)) + 0.02
                    # most of the ellipse inside the frame
                    inside = (
                        (xx >= 0.8 * a)
                        & (xx <= sw - 1 - 0.8 * a)
                        & (yy >= 0.8 * b)
                        & (yy <= sh - 1 - 0.8 * b)
                    )
                    ok = inside & (cnt >= min_coverage * angles) & (mu > step)
                    score = np.where(ok, mu / sd, 0.0)
                    # the best centre of each neighbourhood only
                    peak = cv2.dilate(score, np.ones((5, 5), np.uint8))
                    for y, x in zip(*np.nonzero(ok & (score >= peak))):
                        box = (
                            int(max(0, round((x - a) / s))),
                            int(max(0, round((y - b) / s))),
                            int(min(w, round((x + a + 1) / s))),
                            int(min(h, round((y + b + 1) / s))),
                        )
                        found.append(SoftPatch(box, name, sign, float(score[y, x])))
    found.sort(key=lambda p: -p.consistency)
    kept: list[SoftPatch] = []
    for p in found:
        if all(box_iou(p.box, k.box) < 0.3 for k in kept):
            kept.append(p)
        if len(kept) >= top:
            break
    return kept


ELLIPSE_PAIRS = (3.0, 10.0)  # read a soft border's pairs past its feather, inside and out


def fit_ellipse(
    f: np.ndarray, starts: list, sign: float, radius: int
) -> tuple[tuple[int, int, int, int] | None, float, float]:
    """The ellipse (as its bounding box) whose border the feature steps across the most in the
    defect's direction, by coordinate descent from each start box (sides move within ``radius``).

    A soft-edged patch (an inpainting pass pasted through a feathered mask) has no straight
    sides to snap to; the steps across its whole border still peak exactly on it. Returns the
    box, the lower quartile of its steps and the share of border pairs that step its way."""
    h, w = f.shape
    scored: dict[tuple, tuple[float, float]] = {}  # the descent comes back to boxes it has seen

    def score(b) -> tuple[float, float]:
        key = tuple(b)
        if key not in scored:
            scored[key] = _score(*key)
        return scored[key]

    def _score(x0, y0, x1, y1) -> tuple[float, float]:
        if x1 - x0 < 16 or y1 - y0 < 16:
            return -np.inf, 0.0
        (cx0, cy0, cx1, cy1), _, (pin, pout) = _ellipse_pairs_near(
            f.shape, (x0, y0, x1, y1), int(ELLIPSE_PAIRS[1]) + 2
        )
        if pin[0].size < 50:
            return -np.inf, 0.0
        fc = f[cy0:cy1, cx0:cx1]
        steps = sign * (fc[pin] - fc[pout])
        # a patch steps all along its border, an object's outline only along part of it: the
        # lower quartile of the steps, not their median, peaks on the patch
        low, med = np.percentile(steps, [25, 50])
        return float(low), float((steps > 0.3 * med).mean()) if med > 0 else 0.0

    best_box, best, best_cov = None, -np.inf, 0.0
    for start in starts:
        start = [int(v) for v in start]
        cur = list(start)
        cur_s, cur_cov = score(cur)
        for step in (8, 4, 2, 1):
            moved = True
            while moved:
                moved = False
                for i in range(4):
                    for d in (-step, step):
                        cand = list(cur)
                        cand[i] += d
                        lim = w if i % 2 == 0 else h
                        if abs(cand[i] - start[i]) > radius or not 0 <= cand[i] <= lim:
                            continue
                        s, cov = score(cand)
                        if s > cur_s:
                            cur, cur_s, cur_cov, moved = cand, s, cov, True
        if cur_s > best:
            best_box, best, best_cov = tuple(cur), cur_s, cur_cov
    return best_box, best, best_cov


def fit_soft_patch(
    rgb: np.ndarray,
    patch: SoftPatch,
    long_side: int | None = None,
    radius: int | None = None,
    min_coverage: float = 0.0,
) -> tuple[int, int, int, int] | None:
    """A soft patch's ellipse put where the steps across its whole border peak (``fit_ellipse`` on
    its own feature; the sides move within ``radius``, default 30% of its size): the coarse look
    places the border within a few pixels, the pairs across it must not straddle it. With
    ``long_side``, fitted on the image reduced to it (cheaper, and a look pixel there is a pixel
    of the fit); in the image's pixels either way. None where no border steps its way, or where
    fewer than ``min_coverage`` of the pairs across the fitted border step its way (a patch steps
    all along its border, an object's outline along most of it)."""
    h, w = rgb.shape[:2]
    if long_side is not None and long_side < max(h, w):
        small = reduce_to(rgb, long_side)
        s = small.shape[1] / float(w)
        box = tuple(int(round(v * s)) for v in patch.box)
        fitted = fit_soft_patch(small, replace(patch, box=box), radius=radius, min_coverage=min_coverage)
        return None if fitted is None else tuple(int(round(v / s)) for v in fitted)
    x0, y0, x1, y1 = patch.box
    if radius is None:
        radius = int(max(8, 0.3 * min(x1 - x0, y1 - y0)))
    m = radius + int(ELLIPSE_PAIRS[1]) + 4
    cx0, cy0, cx1, cy1 = max(0, x0 - m), max(0, y0 - m), min(w, x1 + m), min(h, y1 + m)
    f, _, _ = _seam_feature(np.ascontiguousarray(rgb[cy0:cy1, cx0:cx1]), patch.feature)
    fitted, low, coverage = fit_ellipse(f, [(x0 - cx0, y0 - cy0, x1 - cx0, y1 - cy0)], patch.sign, radius)
    if fitted is None or low <= 0 or coverage < min_coverage:
        return None
    return (fitted[0] + cx0, fitted[1] + cy0, fitted[2] + cx0, fitted[3] + cy0)


def _ellipse_pairs_near(size: tuple[int, int], box, margin: int):
    """The crop ``margin`` pixels around an ellipse's box (x0, y0, x1, y1, clipped to the image's
    ``size``), the box in the crop's pixels, and the pairs ``ELLIPSE_PAIRS`` off its border there:
    the pairs lie within a few pixels of the border, so the crop keeps the work to them."""
    h, w = size
    x0, y0, x1, y1 = (int(v) for v in box)
    crop = (max(0, x0 - margin), max(0, y0 - margin), min(w, x1 + margin), min(h, y1 + margin))
    local = (x0 - crop[0], y0 - crop[1], x1 - crop[0], y1 - crop[1])
    hard = shape_mask((crop[3] - crop[1], crop[2] - crop[0]), local, "ellipse")
    return crop, local, mirror_pairs(hard, local, "ellipse", *ELLIPSE_PAIRS)


def read_ellipse(rgb: np.ndarray, box: tuple[int, int, int, int]) -> SeamReading | None:
    """``seam_reading`` of the ellipse inscribed in ``box``, from pairs ``ELLIPSE_PAIRS`` off its
    border."""
    (cx0, cy0, cx1, cy1), local, pairs = _ellipse_pairs_near(
        rgb.shape[:2], box, int(np.ceil(ELLIPSE_PAIRS[1])) + 3
    )
    return seam_reading(rgb[cy0:cy1, cx0:cx1], local, "ellipse", pairs=pairs)


def _segment_sum(evidence: np.ndarray, x0, y0, x1, y1) -> np.ndarray:
    """Sums of ``evidence`` over boxes [x0, x1) x [y0, y1) (arrays of boxes), from its integral."""
    ii = cv2.integral(evidence)
    return ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]


def mirror_pairs(hard: np.ndarray, box, shape: str, near: float = 2.0, far: float = 8.0):
    """Pixels just inside a rectangle / ellipse border and their mirror images just outside it.

    In the shape's normalised coordinates (the border at radius 1; L-infinity for a rectangle, L2
    for an ellipse) a point at radius r maps to 2 - r along the same ray: adjacent pixels across
    the border, which see the same content, so their ratio measures the defect alone."""
    h, w = hard.shape
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1 - 1) / 2.0, (y0 + y1 - 1) / 2.0
    hx, hy = max((x1 - x0) / 2.0, 1.0), max((y1 - y0) / 2.0, 1.0)
    # a pixel at normalised radius r lies at least (1 - r) min(hx, hy) from the border: the shape
    # scaled by r0 holds none within ``far`` of it (3 px spare for rasterizing), so only the band
    # around the border is searched
    r0 = 1.0 - (far + 3.0) / min(hx, hy)
    if r0 > 0.25:
        inner = shape_mask(
            hard.shape,
            (
                round(cx + 0.5 - r0 * hx),
                round(cy + 0.5 - r0 * hy),
                round(cx + 0.5 + r0 * hx),
                round(cy + 0.5 + r0 * hy),
            ),
            shape,
        )
        ys, xs = np.nonzero(hard & ~inner)
    else:
        ys, xs = np.nonzero(hard)
    u, v = (xs - cx) / hx, (ys - cy) / hy
    r = np.maximum(np.abs(u), np.abs(v)) if shape == "rect" else np.hypot(u, v)
    # distance to the border in pixels, approximately
    scale = (
        np.where(np.abs(u) * hx >= np.abs(v) * hy, hx, hy)
        if shape == "rect"
        else np.hypot(hx * u, hy * v) / np.maximum(r, 1e-6)
    )
    dist = (1.0 - r) * scale
    sel = (dist >= near) & (dist <= far) & (r > 0.05)
    xs, ys, u, v, r = xs[sel], ys[sel], u[sel], v[sel], r[sel]
    k = (2.0 - r) / r
    mx = np.round(cx + u * k * hx).astype(int)
    my = np.round(cy + v * k * hy).astype(int)
    ok = (mx >= 0) & (mx < w) & (my >= 0) & (my < h)
    xs, ys, mx, my = xs[ok], ys[ok], mx[ok], my[ok]
    ok = ~hard[my, mx]
    return (ys[ok], xs[ok]), (my[ok], mx[ok])


def snap_seam(rgb: np.ndarray, seam: Seam, radius: int) -> tuple[int, int, int, int]:
    """Move each side of a seam found on a reduced look onto the native line where its feature
    steps the most (within ``radius`` pixels): the border must be exact for the pairs across it."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = seam.box
    cx0, cy0 = max(0, x0 - radius - 8), max(0, y0 - radius - 8)
    cx1, cy1 = min(w, x1 + radius + 9), min(h, y1 + radius + 9)
    f, _, gap = _seam_feature(rgb[cy0:cy1, cx0:cx1], seam.feature)
    sx, sy = step_maps(f, gap=gap)
    box = [x0, y0, x1, y1]
    for side, cand, prof in _side_profiles(seam.box, (h, w), radius, sx, sy, (cx0, cy0)):
        s = seam.sign if side < 2 else -seam.sign  # left / top: the inside starts at the line
        box[side] = int(cand[int(np.argmax(s * prof))])
    return (box[0], box[1], box[2], box[3])


def _side_profiles(box, size: tuple[int, int], radius: int, map_x, map_y, origin: tuple[int, int]):
    """For each side of ``box`` off the frame's edge: the lines within ``radius`` of it and the mean
    of ``map_x`` (vertical sides) or ``map_y`` (horizontal ones) on each, along the middle 80% of
    the side. The maps cover the image from ``origin`` (x, y) on."""
    h, w = size
    x0, y0, x1, y1 = box
    ox, oy = origin
    for side in range(4):
        pos = box[side]
        vertical = side in (0, 2)
        limit = w if vertical else h
        if pos <= 0 or pos >= limit:
            continue
        lo, hi = (y0, y1) if vertical else (x0, x1)
        m = max(1, (hi - lo) // 10)
        lo, hi = lo + m, hi - m
        cand = np.arange(max(1, pos - radius), min(limit - 1, pos + radius) + 1)
        if vertical:
            yield side, cand, map_x[lo - oy : hi - oy, cand - ox].mean(axis=0)
        else:
            yield side, cand, map_y[cand - oy, lo - ox : hi - ox].mean(axis=1)


def refine_border(
    rgb: np.ndarray, box: tuple[int, int, int, int], radius: int = 6, min_ratio: float = 1.3
) -> tuple[int, int, int, int]:
    """Put each side of a rectangle on the exact pixel line where colour jumps the most (within
    ``radius``): windowed features (local contrast) blur a border by a few pixels, and pairs
    across it must not mix the two sides. A side moves only onto a clear peak."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    out = [x0, y0, x1, y1]
    cx0, cy0 = max(0, x0 - radius - 1), max(0, y0 - radius - 1)
    cx1, cy1 = min(w, x1 + radius + 1), min(h, y1 + radius + 1)
    crop = rgb[cy0:cy1, cx0:cx1].astype(np.int16)
    jump_x = np.zeros(crop.shape[:2], np.float32)  # at x: |I[x] - I[x - 1]|, summed over channels
    jump_x[:, 1:] = np.abs(np.diff(crop, axis=1)).sum(axis=2)
    jump_y = np.zeros(crop.shape[:2], np.float32)
    jump_y[1:] = np.abs(np.diff(crop, axis=0)).sum(axis=2)
    for side, cand, prof in _side_profiles((x0, y0, x1, y1), (h, w), radius, jump_x, jump_y, (cx0, cy0)):
        k = int(np.argmax(prof))
        if prof[k] >= min_ratio * float(np.median(prof)):
            out[side] = int(cand[k])
    return (out[0], out[1], out[2], out[3])


@dataclass
class SeamReading:
    """How a rectangle's pixels just inside its border compare with their mirror images just
    outside: the tone map a defect applied, measured where content is the same on both sides."""

    gains: np.ndarray  # per-channel gain in linear light (median ratio inside / outside)
    spread: np.ndarray  # per-channel ratio of tonal spread (10-90% range, sRGB) inside / outside
    exposure_coverage: float  # share of pairs whose log luminance steps the median's way
    chroma_coverage: float  # share of pairs whose log-chroma moves the median's way
    # on the border's worst side (grain next to one side must not pass for contrast lost inside),
    # the share of pairs whose tones, away from the band's median, sit nearer to it inside
    contrast_coverage: float
    continuity: float  # correlation of luminance inside and outside: content running across
    pairs: int

    @property
    def light(self) -> float:
        """The gain in luminance (linear light) the channel gains make."""
        return float(self.gains @ _LUMA_LINEAR)


def _worst_side(ok: np.ndarray, side: np.ndarray, min_pairs: int = 20) -> float:
    """The lowest share of ``ok`` pairs over the four sides of a border (sides with enough pairs):
    a border steps "all around" only if every side does."""
    shares = [float(ok[side == k].mean()) for k in range(4) if (side == k).sum() >= min_pairs]
    return min(shares) if shares else 0.0


def _agree(step: np.ndarray) -> float:
    """Share of per-pair steps (N x k) pointing the median step's way with at least 30% of it."""
    med = np.median(step, axis=0)
    n = float(np.linalg.norm(med))
    if n == 0:
        return 0.0
    return float(((step @ med) / n > 0.3 * n).mean())


def shape_mask(size: tuple[int, int], box, shape: str = "rect") -> np.ndarray:
    """Boolean H x W mask of a rectangle or the ellipse inscribed in it (x1/y1 exclusive)."""
    h, w = size
    x0, y0, x1, y1 = (int(v) for v in box)
    if shape == "rect":
        m = np.zeros((h, w), bool)
        m[y0:y1, x0:x1] = True
        return m
    m = np.zeros((h, w), np.uint8)
    centre = ((x0 + x1) / 2.0 - 0.5, (y0 + y1) / 2.0 - 0.5)
    cv2.ellipse(m, (centre, (float(x1 - x0), float(y1 - y0)), 0.0), 1, -1)
    return m > 0


def pair_gains(lin_in: np.ndarray, lin_out: np.ndarray, min_pairs: int = 30) -> np.ndarray:
    """Per-channel gain in linear light between pixels inside a border and their mirror images
    outside (N x 3 each): the median ratio over pairs neither clipped nor near black on either
    side; nan for a channel with fewer than ``min_pairs`` such pairs."""
    ok = (lin_in < 0.95) & (lin_out < 0.95) & (lin_in > 2e-3) & (lin_out > 2e-3)
    gains = np.full(3, np.nan)
    for c in range(3):
        if ok[:, c].sum() >= min_pairs:
            gains[c] = float(np.exp(np.median(np.log(lin_in[ok[:, c], c] / lin_out[ok[:, c], c]))))
    return gains


def seam_reading(
    rgb: np.ndarray,
    box: tuple[int, int, int, int],
    shape: str = "rect",
    band: float = 8.0,
    pairs: tuple | None = None,
) -> SeamReading | None:
    """Read a border from ``pairs`` (``mirror_pairs`` of the shape, 2..``band`` pixels off it; made
    here when not given)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    if pairs is None:
        pairs = mirror_pairs(shape_mask(rgb.shape[:2], box, shape), (x0, y0, x1, y1), shape, 2.0, band)
    pin, pout = pairs
    if pin[0].size < 50:
        return None
    s_in, s_out = rgb[pin], rgb[pout]
    xin, xout = _LINEAR[s_in], _LINEAR[s_out]  # N x 3, linear light
    gains = pair_gains(xin, xout)
    s_in, s_out = s_in.astype(np.float32), s_out.astype(np.float32)
    qi, qo = np.percentile(s_in, [10, 90], axis=0), np.percentile(s_out, [10, 90], axis=0)
    spread = (qi[1] - qi[0]) / np.maximum(qo[1] - qo[0], 1.0)
    e_step = np.log(xin @ _LUMA_LINEAR + 0.002) - np.log(xout @ _LUMA_LINEAR + 0.002)
    lin, lout = np.log(xin + 0.01), np.log(xout + 0.01)
    c_step = np.stack([lin[:, 0] - lin[:, 1], lin[:, 2] - lin[:, 1]], 1) - np.stack(
        [lout[:, 0] - lout[:, 1], lout[:, 2] - lout[:, 1]], 1
    )
    y_in, y_out = s_in @ _LUMA[0], s_out @ _LUMA[0]
    d_in, d_out = np.abs(y_in - np.median(y_in)), np.abs(y_out - np.median(y_out))
    off = d_out > 12.0
    # which side of the border each pair sits on (left, right, top, bottom of the box's centre)
    du = (pin[1] - (x0 + x1 - 1) / 2.0) / max(x1 - x0, 1)
    dv = (pin[0] - (y0 + y1 - 1) / 2.0) / max(y1 - y0, 1)
    side = np.where(np.abs(du) >= np.abs(dv), np.where(du < 0, 0, 1), np.where(dv < 0, 2, 3))
    contrast = _worst_side(d_in[off] < 0.8 * d_out[off], side[off]) if off.sum() >= 30 else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):  # a flat side has no correlation: 0
        continuity = float(np.nan_to_num(np.corrcoef(y_in, y_out)[0, 1]))
    return SeamReading(
        gains, spread, _agree(e_step[:, None]), _agree(c_step), contrast, continuity, int(pin[0].size)
    )


# a gain of under 0.5 puts a channel's shadows on the lowest sRGB codes, whose rounding scatters
# the per-channel gains read across a border (the coffee's darkened rectangle: 1.26 between them)
DARK_SPREAD = 1.5


def seam_defect(r: SeamReading) -> tuple[str, float, str] | None:
    """What tone map explains a seam, if a physically consistent one does: (kind, cue value,
    description). The cue value is the sRGB gain (exposure), the log-chroma shift (cast) or the
    contrast kept (low contrast). A real gain dims texture as much as tones and leaves the step the
    same all around; an object's outline does neither."""
    g = r.gains
    if not np.isfinite(g).all():
        return None
    srgb = np.power(g, 1 / 2.2)
    ge = float(np.exp(np.mean(np.log(g))))
    texture = r.spread / srgb  # ~1 when a gain dims texture as much as tones (clipping flattens)
    if (
        abs(np.log(ge)) >= np.log(1.25)
        and g.max() / g.min() <= (DARK_SPREAD if ge < 0.5 else 1.25)
        and r.exposure_coverage >= 0.7
        and r.continuity >= 0.1  # the content runs on across the border
    ):
        if ge < 1.0 and np.all((texture > 0.6) & (texture < 1.6)):
            return (
                "underexposure",
                ge ** (1 / 2.2),
                f"darker by a gain of {ge:.2f} in linear light all along its border",
            )
        if ge > 1.0 and np.all(texture < 1.6):
            return (
                "overexposure",
                ge ** (-1 / 2.2),
                f"brighter by a gain of {ge:.2f} in linear light all along its border",
            )
    lg = np.log(g)
    shift = float(np.hypot(lg[0] - lg[1], 0.5 * (lg[0] + lg[1]) - lg[2]))
    if (
        shift >= 0.15
        and g.max() / g.min() <= 3.0
        and r.chroma_coverage >= 0.8
        and np.all((texture > 0.6) & (texture < 1.6))
    ):
        return "color_cast", shift, f"tinted by channel gains {np.round(g, 2).tolist()} all along its border"
    # washing out pulls tones toward the photo's mean, so a dark patch also brightens: what is
    # left once no gain explains the border is the texture shrinking in every channel alike
    p = float(np.mean(r.spread))
    if (
        0.1 <= p <= 0.45  # texture dimmed, not gone (a flat area framed by lines)
        and r.spread.max() <= 1.5 * r.spread.min()
        and r.contrast_coverage >= 0.7
        and r.continuity >= 0.3  # flattened, not a flat area framed by texture or grain
    ):
        return "low_contrast", p, f"its tones span {100 * p:.0f}% of those just outside its border"
    return None


def undo_tone(rgb: np.ndarray, kind: str, reading: SeamReading) -> np.ndarray:
    """The pixels of a seam's area with the tone map read across its border undone (approximately:
    clipped pixels stay clipped)."""
    if kind == "low_contrast":
        y = rgb.astype(np.float32)
        mean = y.reshape(-1, 3).mean(axis=0)
        y = mean + (y - mean) / np.clip(reading.spread, 0.1, 1.0)
        return np.clip(y + 0.5, 0, 255).astype(np.uint8)
    g = np.nan_to_num(reading.gains, nan=1.0)
    if kind != "color_cast":
        g = np.full(3, float(np.exp(np.mean(np.log(g)))))
    y = np.power(np.clip(_LINEAR[rgb] / g.astype(np.float32), 0.0, 1.0), 1.0 / 2.2) * 255.0
    return np.clip(y + 0.5, 0, 255).astype(np.uint8)
