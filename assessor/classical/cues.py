"""Local cue maps of the classical critic, each in physical units where one exists.

Every cue answers one question on a grid of square tiles: how wide are the edges here (blur, in
pixels of Gaussian sigma), how strong is the white noise (sigma on the 0..255 scale), how much do
8x8 block borders stand out (JPEG), how much is clipped, how much contrast is left, which way
the colours lean, how many grey levels are used (banding). Physical units let one severity scale
serve every image size and let the zoom step re-measure the same quantity at native resolution.
No torch here: this path must start fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

REBLUR_SIGMA = 1.5  # the reference blur of the reblur test
SOBEL_SIGMA = 0.75  # effective blur of the 3x3 Sobel derivative itself (calibrated on step edges)
EDGE_MIN = 6.0  # peak gradient (0..255 per pixel, after reblur) that counts as an edge worth measuring
IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec.601 luma as float32 0..255."""
    rgb = rgb.astype(np.float32)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def tiles(arr: np.ndarray, tile: int) -> np.ndarray:
    """View an H x W [x C] array as (rows, cols, tile*tile [, C]); the ragged border is dropped."""
    rows, cols = arr.shape[0] // tile, arr.shape[1] // tile
    a = arr[: rows * tile, : cols * tile]
    if a.ndim == 2:
        return a.reshape(rows, tile, cols, tile).transpose(0, 2, 1, 3).reshape(rows, cols, tile * tile)
    c = a.shape[2]
    return a.reshape(rows, tile, cols, tile, c).transpose(0, 2, 1, 3, 4).reshape(rows, cols, tile * tile, c)


def grid_shape(shape: tuple[int, ...], tile: int) -> tuple[int, int]:
    return shape[0] // tile, shape[1] // tile


def gradient_magnitude(y: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3, scale=0.125, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3, scale=0.125, borderType=cv2.BORDER_REFLECT)
    return cv2.magnitude(gx, gy)


@dataclass
class BlurMap:
    sigma: np.ndarray  # (rows, cols) estimated edge blur (Gaussian sigma, pixels); nan = no edges
    edge: np.ndarray  # (rows, cols) peak gradient after reblur: how much structure there is


def edge_sigma(g_fine: np.ndarray, g_coarse: np.ndarray) -> np.ndarray:
    """Invert the peak-gradient ratio of a Gaussian edge: g ~ 1/sqrt(s^2 + s0^2 [+ reblur^2])."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.square(g_fine / np.maximum(g_coarse, 1e-6))
        total = REBLUR_SIGMA**2 / np.maximum(r2 - 1.0, 1e-3)
        return np.sqrt(np.clip(total - SOBEL_SIGMA**2, 0.0, 400.0))


def blur_map(y: np.ndarray, tile: int) -> BlurMap:
    """Edge width per tile by the reblur test: sharp edges lose much of their peak gradient when
    blurred again, soft ones little. Scale-free in contrast, so dark or hazy content still reads."""
    g1 = gradient_magnitude(y)
    g2 = gradient_magnitude(cv2.GaussianBlur(y, (0, 0), REBLUR_SIGMA, borderType=cv2.BORDER_REFLECT))
    t1, t2 = tiles(g1, tile), tiles(g2, tile)
    k = t1.shape[2] - max(1, t1.shape[2] // 64)  # ~98.5th percentile: the edge pixels of the tile
    p1 = np.partition(t1, k, axis=2)[:, :, k]
    p2 = np.partition(t2, k, axis=2)[:, :, k]
    sigma = edge_sigma(p1, p2)
    sigma[p2 < EDGE_MIN] = np.nan
    return BlurMap(sigma=sigma, edge=p2)


def noise_sigma_map(y: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """White-noise sigma per tile (Immerkaer's operator over the flatter half of each tile) and how
    white the residual is: the sigma ratio between full and half resolution, 2 for white noise,
    about 1 for texture and edges. Texture like grass or hair fails the whiteness test."""
    conv = np.abs(cv2.filter2D(y, cv2.CV_32F, IMMERKAER, borderType=cv2.BORDER_REFLECT))
    g2 = gradient_magnitude(cv2.GaussianBlur(y, (0, 0), 1.0, borderType=cv2.BORDER_REFLECT))
    tc, tg = tiles(conv, tile), tiles(g2, tile)
    n = tc.shape[2]
    order = np.argsort(tg, axis=2)[:, :, : n // 2]
    flat = np.take_along_axis(tc, order, axis=2)
    # median |N(0, 36 s^2)| = 0.6745 * 6 s; the median resists the few edge pixels left
    sigma = np.median(flat, axis=2) / (0.6745 * 6.0)
    half = cv2.resize(y, (y.shape[1] // 2, y.shape[0] // 2), interpolation=cv2.INTER_AREA)
    conv_h = np.abs(cv2.filter2D(half, cv2.CV_32F, IMMERKAER, borderType=cv2.BORDER_REFLECT))
    th = tiles(conv_h, tile // 2)[: sigma.shape[0], : sigma.shape[1]]
    sigma_h = np.median(th, axis=2) / (0.6745 * 6.0)
    if sigma_h.shape != sigma.shape:  # odd sizes: pad the half-resolution grid
        pad = np.full(sigma.shape, np.nan, np.float32)
        pad[: sigma_h.shape[0], : sigma_h.shape[1]] = sigma_h
        sigma_h = pad
    whiteness = sigma / np.maximum(sigma_h, 0.25)
    return sigma.astype(np.float32), whiteness.astype(np.float32)


def blockiness_map(y: np.ndarray, tile: int = 64) -> tuple[np.ndarray, float, int]:
    """JPEG 8x8 blockiness per tile at native resolution: how much brighter the differences across
    block borders are than those inside blocks (0 = none). Also the global value and grid phase."""
    tile = max(8, tile - tile % 8)
    dh = np.abs(np.diff(y, axis=1))  # dh[:, j] = |y[:, j+1] - y[:, j]|
    dv = np.abs(np.diff(y, axis=0))
    h, w = y.shape
    rows, cols = h // tile, w // tile
    dh = np.pad(dh, ((0, 0), (0, 1)), mode="edge")[: rows * tile, : cols * tile]
    dv = np.pad(dv, ((0, 1), (0, 0)), mode="edge")[: rows * tile, : cols * tile]
    # mean difference per (tile, phase within the 8-pixel period)
    ph = dh.reshape(rows, tile, cols, tile // 8, 8).mean(axis=(1, 3))  # (rows, cols, 8)
    pv = dv.reshape(rows, tile // 8, 8, cols, tile).mean(axis=(1, 4))  # (rows, 8, cols)
    pv = pv.transpose(0, 2, 1)
    glob_h = ph.reshape(-1, 8).mean(axis=0)
    glob_v = pv.reshape(-1, 8).mean(axis=0)

    def ratio(per_phase: np.ndarray, phase: int) -> np.ndarray:
        # the border phase must stand out against the phases 2, 4 and 6 away too: an image
        # upscaled 2x or 4x has a period of 2 or 4 that is not JPEG
        same_period = [(phase + k) % 8 for k in (2, 4, 6)]
        others = np.median(np.delete(per_phase, phase, axis=-1), axis=-1)
        inside = np.maximum(others, per_phase[..., same_period].max(axis=-1))
        return (per_phase[..., phase] - inside) / (inside + 1.0)

    # blocks show in both directions; one long straight edge or a brick wall's mortar lines line
    # up with a grid in one direction only
    phase_h, phase_v = int(np.argmax(glob_h)), int(np.argmax(glob_v))
    block = np.minimum(ratio(ph, phase_h), ratio(pv, phase_v))
    g_block = float(min(ratio(glob_h, phase_h), ratio(glob_v, phase_v)))
    phase = phase_h
    return np.maximum(block, 0.0).astype(np.float32), max(g_block, 0.0), phase


@dataclass
class ExposureStats:
    mean: float  # mean luma 0..1
    p01: float  # 1st percentile of luma 0..1
    p99: float  # 99th percentile
    p999: float  # 99.9th percentile: the brightest lights
    clipped_hi: float  # fraction of pixels with a channel at >= 250
    clipped_lo: float  # fraction of pixels with luma <= 4
    contrast: float  # p95 - p05 of luma, 0..1


def exposure_stats(rgb: np.ndarray, y: np.ndarray | None = None) -> ExposureStats:
    y = luminance(rgb) if y is None else y
    q = np.percentile(y, [1, 5, 95, 99, 99.9]) / 255.0
    return ExposureStats(
        mean=float(y.mean() / 255.0),
        p01=float(q[0]),
        p99=float(q[3]),
        p999=float(q[4]),
        clipped_hi=float((rgb.max(axis=2) >= 250).mean()),
        clipped_lo=float((y <= 4).mean()),
        contrast=float(q[2] - q[1]),
    )


def clipping_map(rgb: np.ndarray, y: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of blown-out (any channel >= 250) and crushed (luma <= 4) pixels per tile."""
    hi = tiles((rgb.max(axis=2) >= 250).astype(np.float32), tile).mean(axis=2)
    lo = tiles((y <= 4).astype(np.float32), tile).mean(axis=2)
    return hi, lo


def tile_luma_stats(y: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per tile: mean luma, and the 5th / 95th percentiles (what is left of black and white)."""
    t = tiles(y, tile)
    n = t.shape[2]
    k5, k95 = n // 20, n - 1 - n // 20
    part = np.partition(t, (k5, k95), axis=2)
    return t.mean(axis=2), part[:, :, k5], part[:, :, k95]


def illuminant(rgb: np.ndarray, p: float = 6.0) -> np.ndarray:
    """Shades-of-grey-edge estimate of the light colour in linear RGB, normalized to sum 3.

    Edges are where surfaces of different colour meet; their average colour is greyer than the
    surfaces themselves, so a colourful subject pulls this estimate much less than grey-world.
    """
    lin = np.power(rgb.astype(np.float32) / 255.0, 2.2)
    ok = (rgb.max(axis=2) < 250) & (rgb.min(axis=2) > 3)  # clipped pixels carry no colour
    est = np.empty(3, np.float64)
    for c in range(3):
        g = gradient_magnitude(cv2.GaussianBlur(lin[..., c], (0, 0), 1.0))
        v = g[ok] if ok.any() else g.ravel()
        est[c] = np.power(np.mean(np.power(v, p)) + 1e-12, 1.0 / p)
    return est / est.sum() * 3.0


def cast_strength(light: np.ndarray) -> float:
    """How far a light colour (sum 3) is from neutral: max/min channel ratio minus one."""
    return float(light.max() / max(light.min(), 1e-6) - 1.0)


def log_chroma(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Opponent log-chroma (a: red-green, b: yellow-blue) and a validity mask of mid-tone pixels.

    A colour cast multiplies the channels by gains, i.e. adds one constant vector to every pixel's
    log-chroma; dark and clipped pixels carry no reliable colour and are left out."""
    lin = np.power(rgb.astype(np.float32) / 255.0, 2.2)
    logs = np.log(lin + 1e-3)
    a = logs[..., 0] - logs[..., 1]
    b = 0.5 * (logs[..., 0] + logs[..., 1]) - logs[..., 2]
    lum = lin @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    ok = (lum > 0.02) & (rgb.max(axis=2) < 250)
    return a, b, ok


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


def neutral_chroma_map(rgb: np.ndarray, tile: int, q: float = 0.25) -> np.ndarray:
    """``neutral_chroma`` per tile (rows, cols, 2); nan where a tile has too few mid-tone pixels."""
    a, b, ok = log_chroma(rgb)
    ta, tb, tok = tiles(a, tile), tiles(b, tile), tiles(ok, tile)
    sat = np.where(tok, np.hypot(ta, tb), np.inf)
    n = sat.shape[2]
    k = max(1, int(q * n))
    idx = np.argpartition(sat, k - 1, axis=2)[:, :, :k]
    valid = np.take_along_axis(tok, idx, axis=2)
    wa = np.take_along_axis(ta, idx, axis=2)
    wb = np.take_along_axis(tb, idx, axis=2)
    cnt = valid.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.stack([(wa * valid).sum(axis=2) / cnt, (wb * valid).sum(axis=2) / cnt], axis=-1)
    out[cnt < k // 2] = np.nan
    return out.astype(np.float32)


def level_occupancy(channel: np.ndarray) -> tuple[float, int]:
    """Fraction of the grey levels between the 2nd and 98th percentile that occur at all, and the
    width of that range. Smooth photos use nearly every level; posterized/banded ones a few."""
    lo, hi = np.percentile(channel, [2, 98])
    lo, hi = int(lo), int(hi)
    width = hi - lo + 1
    if width < 12:
        return 1.0, width
    hist = np.bincount(channel.ravel(), minlength=256)[lo : hi + 1]
    return float(np.count_nonzero(hist) / width), width


def occupancy_map(rgb: np.ndarray, tile: int) -> np.ndarray:
    """Grey-level occupancy per tile (green channel); nan where a tile's range is too narrow."""
    g = tiles(rgb[..., 1], tile)
    rows, cols = g.shape[:2]
    out = np.full((rows, cols), np.nan, np.float32)
    for r in range(rows):
        for c in range(cols):
            occ, width = level_occupancy(g[r, c])
            if width >= 24:
                out[r, c] = occ
    return out


def chroma_noise_ratio(rgb: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Fine-grain energy in the colour-difference channels over that in luma.

    Sensor noise (and any per-channel noise) is as strong in colour differences as in luma, about
    twice the luma sigma; texture and detail of natural scenes sit almost entirely in luma. So a
    ratio near 2 says noise, near 0 says texture (or a grey image)."""
    x = rgb.astype(np.float32)
    y = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    c1 = x[..., 0] - x[..., 1]
    c2 = 0.5 * (x[..., 0] + x[..., 1]) - x[..., 2]
    sel = np.ones(y.shape, bool) if mask is None else mask
    if sel.sum() < 64:
        return float("nan")

    def resid(ch: np.ndarray) -> float:
        r = np.abs(cv2.filter2D(ch, cv2.CV_32F, IMMERKAER, borderType=cv2.BORDER_REFLECT))
        return float(np.median(r[sel]))

    ry = resid(y)
    return 0.5 * (resid(c1) + resid(c2)) / max(ry, 1e-3)
