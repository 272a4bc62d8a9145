"""The weight-free critic: a think-with-images loop over classical cues.

(a) A global look at reduced size measures what is resolution-independent (exposure, contrast,
colour, banding) and maps local cues tile by tile. (b) Tiles whose cues deviate from the rest of
the image become candidate regions. (c) Each candidate, and each global suspicion that needs
native pixels (blur, noise, JPEG blocks), is re-examined with ``crop_zoom`` at native resolution
*with its surroundings*: a region is confirmed only if it is worse than its own context, then
typed and graded there. (d) The score follows from what was confirmed.

Comparing a region with its context is what tells a defect from content: a soft background next
to a sharp subject is depth of field, a flat sky has no edges to be blurred, a night scene keeps
its lights bright.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import cv2
import numpy as np

from ..backends import AssessorBackend
from ..imageio import as_rgb8, check_image_size
from ..schema import Diagnosis, Region, ToolCall, TraceStep
from ..zoom import Zoom, box_iou, crop_zoom, share_inside
from . import cues
from .severity import area_weight, score_from, severity

MIN_CLUSTER = 4  # noisy zoom tiles side by side that confirm noise in part of a suspected region
JPEG_PLATEAUS = 0.2  # 8x8 blockiness from which flat plateaus are read as compression, not banding
REDUCED_LOOK = 0.9  # a look reduced below this scale correlates grain: whiteness no longer tells it
WARM_TOLERANCE = 2.0  # a warm light counts as a cast this many times weaker (whole-image grade)
GREY = 0.05  # log-chroma below which a surface reads as grey (a black-and-white photo's, nearly all)
TINT_AREA = 0.35  # largest share of a black-and-white photo a tint is looked for in
# a rectangle found on the look and one found on the larger second look (``seam_look``) are the
# same only where they nearly coincide: a look's side a few pixels off reads nothing (the rocket's
# tinted corner, 0.6 of the box found natively)
SAME_SEAM = 0.8
CAST_SEAM = 0.85  # border coverage a tinted rectangle needs (coloured boxes are common content)
# whole-image suspicions measured again at native pixels where they measure best, from this grade
CONFIRMED_AT_NATIVE = ("blur", "noise", "jpeg")
CONFIRM_FROM = 0.08
SEAM_WHY = {  # why a rectangle confirmed by its border was zoomed on
    "underexposure": "its border steps down in brightness all around",
    "overexposure": "its border steps up in brightness all around",
    "color_cast": "its border steps in colour the same way all around",
    "low_contrast": "its border steps down in local contrast all around",
}


@dataclass
class ClassicalConfig:
    look_size: int = 512  # long side of the global look
    tile: int = 32  # tile side at look resolution
    zoom_tile: int = 32  # tile side of native measurements in a zoom
    zoom_size: int = 512  # a zoomed crop larger than this is reduced to it (blur/noise stay in native units)
    max_zooms: int = 6  # at most this many local candidates are re-examined
    max_seams: int = 2  # of which at most this many rectangles confirmed by their borders
    seam_reads: int = 8  # rectangles with stepped borders read at native resolution
    # where the look is reduced, a look of up to this long side (native pixels where smaller) is
    # searched for such rectangles too (0: not): a cluttered photo's darkened patch steps along
    # 0.84 of its border at 741 px, 0.62 on the look; the search costs 0.11 s at 768 px, 0.22 s at
    # 1024 px on one core
    seam_look: int = 768
    min_severity: float = 0.15  # confirmed findings below this are not reported as regions
    context: float = 0.5  # context kept around a candidate when zooming (fraction of its size)
    dof_area: float = 0.3  # a soft area larger than this next to sharp content reads as depth of field
    # ... and a smaller one in the mapped soft background only where it comes within this share of
    # the image's sides of the frame: a background runs out of the frame, while a blurred patch
    # joined to it through a flat area sits inside (the astronaut's blurred chest)
    dof_frame: float = 0.1


@dataclass
class Candidate:
    box: tuple[int, int, int, int]  # native pixels
    distortion: str
    estimate: float  # severity suspected from the global look
    why: str
    priority: float = 0.0
    finding: Finding | None = None  # already read off the region's border (a seam)


@dataclass
class Look:
    """What the global look measured."""

    scale: float  # look pixels per native pixel
    stats: cues.TileStats  # at look resolution
    block: np.ndarray  # native blockiness map, tiles of native_tile pixels
    occupancy: np.ndarray  # native grey-level occupancy map, same tiles
    native_tile: int
    block_global: float
    phase: tuple[int, int]  # JPEG grid phase (x, y)
    jpeg_quality: float  # the JPEG quality the whole image was saved at; nan: no quantization seen
    jpeg_lattice: float  # share of its coefficients still on the quantization lattice (1: as decoded)
    exposure: cues.ExposureStats
    cast: float
    light: np.ndarray
    neutral: np.ndarray  # log-chroma of the image's greyest pixels
    occupancy_global: float
    sharp_ref: float  # native edge sigma of the sharpest fifth of the image
    noise_floor: float  # native luma noise sigma of the quietest quarter
    whiteness: float
    soft_fraction: float  # share of edge tiles that are soft (depth of field when large)
    dof: np.ndarray  # look tiles of a large soft area next to sharp content: intended depth of field
    image: np.ndarray  # the reduced image looked at


@dataclass
class TileGrid:
    """One cue on a grid of native-resolution tiles, with the region's and the context's tiles."""

    values: np.ndarray
    inside: np.ndarray
    ring: np.ndarray
    to_box: Callable[[np.ndarray], tuple[int, int, int, int]]  # selected tiles -> source box


@dataclass
class ZoomLook:
    """What a zoom on a candidate measured."""

    zoom: Zoom
    stats: cues.TileStats  # on the zoomed crop; blur and noise in native units
    inside: np.ndarray  # tiles of the suspected region
    ring: np.ndarray  # tiles of its context (empty when the region is nearly the whole image)
    blocks: TileGrid  # JPEG blockiness on native tiles
    levels: TileGrid  # grey-level occupancy on native tiles
    inside_stats: dict[str, float]
    ring_stats: dict[str, float]
    zoom_box: Callable[[np.ndarray], tuple[int, int, int, int]]  # selected zoom tiles -> source box
    source: np.ndarray  # the native image (for measurements on exact pixels: JPEG quantization)


@dataclass
class Finding:
    distortion: str  # "" when nothing was confirmed
    severity: float
    reason: str
    box: tuple[int, int, int, int]
    value: float = float("nan")
    reading: cues.SeamReading | None = None  # the tone map read across its border (a seam)


def _pct(a: np.ndarray, q: float, default: float = float("nan")) -> float:
    f = np.asarray(a, np.float64).ravel()
    f = f[np.isfinite(f)]
    return float(np.percentile(f, q)) if f.size else default


def _tile_for(h: int, w: int, preferred: int) -> int:
    """A tile side (multiple of 8) that gives at least a 4 x 4 grid on small images."""
    t = min(preferred, max(8, min(h, w) // 4))
    return max(8, t - t % 8)


def _runs_out_of_frame(tiles: np.ndarray, size: tuple[int, int], tile: int, min_run: int = 3) -> bool:
    """Whether at least ``min_run`` of the ``tiles`` line one edge of the image (the grid drops a
    ragged remainder at the bottom and right: those edges count only when it is under half a tile)."""
    h, w = size
    edges = [tiles[0], tiles[:, 0]]
    if h - tiles.shape[0] * tile < tile / 2:
        edges.append(tiles[-1])
    if w - tiles.shape[1] * tile < tile / 2:
        edges.append(tiles[:, -1])
    return max(int(e.sum()) for e in edges) >= min_run


def _warm(light: np.ndarray) -> bool:
    """A light redder than green, greener than blue: tungsten, candles, golden hour."""
    return bool(light[0] > light[1] > light[2])


def _quantization_severity(quality: float, lattice: float) -> float:
    """JPEG severity from the quality read off the quantization steps, as far as the coefficients
    are still on their lattice (about 1 as decoded; filtering moves them off, a box reaching past
    the compressed area adds some that never were)."""
    return severity("jpeg_quality", quality) * float(np.clip((lattice - 0.5) / 0.35, 0.0, 1.0))


def _explained_by(f: Finding, seam: Finding) -> bool:
    kinds = cues.TONE_KINDS + (("blur",) if seam.distortion == "low_contrast" else ())
    return f.distortion in kinds and share_inside(f.box, seam.box) >= 0.7


def _select(centres: tuple[np.ndarray, np.ndarray], box) -> np.ndarray:
    """Tiles (by their centres (cy, cx)) that lie inside ``box`` (x0, y0, x1, y1)."""
    cy, cx = centres
    x0, y0, x1, y1 = box
    return (cy[:, None] >= y0) & (cy[:, None] < y1) & (cx[None, :] >= x0) & (cx[None, :] < x1)


def seam_severity(kind: str, value: float) -> float:
    """Severity of a tone map read across a patch's border (``cues.seam_defect``'s cue value)."""
    if kind in ("underexposure", "overexposure"):  # brighter graded as darker by the same gain
        sev = severity("underexposure", value)
    elif kind == "color_cast":
        sev = severity("color_cast", float(np.expm1(value)))
    else:
        sev = severity("low_contrast", 0.9 * value)
    return float(np.clip(sev, 0.0, 1.0))


class ClassicalAssessor(AssessorBackend):
    """The embedded default critic: no weights, no torch, a fraction of a second per image."""

    name = "classical"

    def __init__(self, config: ClassicalConfig | None = None, **overrides):
        config = config or ClassicalConfig()
        for key, value in overrides.items():
            if not hasattr(config, key):
                raise TypeError(f"unknown classical option {key!r}")
            setattr(config, key, value)
        self.config = config

    # ------------------------------------------------------------------ (a) global look
    def _global_look(self, rgb: np.ndarray) -> Look:
        cfg = self.config
        h, w = rgb.shape[:2]
        scale = min(1.0, cfg.look_size / float(max(h, w)))
        look = cues.reduce_to(rgb, cfg.look_size, min_side=1)
        tile = _tile_for(look.shape[0], look.shape[1], cfg.tile)
        y_native = cues.luminance(rgb)
        native_tile = _tile_for(h, w, 64 if scale < 1.0 else 32)
        block, block_global, phase = cues.blockiness(y_native, native_tile)
        stats = cues.tile_stats(look, tile, native=scale >= 1.0, phase=phase)
        jpeg_quality, jpeg_lattice = cues.jpeg_quality(rgb, y_native, phase)
        exposure = cues.exposure_stats(look)
        cast, light, neutral = cues.cast_estimate(look)
        # Downscaling by s shrinks blur sigma and white-noise sigma by about s: report native units.
        # Below ~0.5 px the reblur test cannot tell sharp from sharper (noise, aliasing).
        sharp_ref = max(_pct(stats.sigma, 20, 0.5) / scale, 0.5)
        sig = stats.sigma / scale
        edges = np.isfinite(sig)
        soft = sig[edges] > max(2.0 * sharp_ref, sharp_ref + 1.0, 1.5)
        # Depth of field: soft tiles joined through featureless ones (a defocused background is both)
        # into one large area, while something else in the image is sharp
        soft_map = np.nan_to_num(sig) > max(2.0 * sharp_ref, sharp_ref + 1.0, 1.5)
        joined = cv2.dilate(soft_map.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & (
            soft_map | ~edges
        )
        n, labels, comp, _ = cv2.connectedComponentsWithStats(joined.astype(np.uint8), connectivity=8)
        dof = np.zeros_like(soft_map)
        if sharp_ref < 1.0:
            at_border_soft = []
            for k in range(1, n):
                member = labels == k
                soft_here = soft_map & member
                soft_sig = sig[soft_here]
                if soft_sig.size < 3:
                    continue
                share = comp[k][cv2.CC_STAT_AREA] / soft_map.size
                # the soft tiles themselves run out of the frame (a background does), not only the
                # featureless ones joining them (a blurred patch next to a plain wall)
                at_border = bool(
                    soft_here[0].any()
                    or soft_here[-1].any()
                    or soft_here[:, 0].any()
                    or soft_here[:, -1].any()
                )
                # defocus grows with distance from the focal plane: graded softness, often running
                # out of the frame; a damaged patch is soft evenly and sits inside it
                graded = np.percentile(soft_sig, 80) >= 1.8 * np.percentile(soft_sig, 20)
                if share >= cfg.dof_area or (at_border and (share >= 0.15 or graded)):
                    dof |= member
                elif share >= 0.04 and _runs_out_of_frame(soft_here, look.shape[:2], tile):
                    at_border_soft.append(member)
            # once the photo shows depth of field, smaller soft areas running out of the frame are
            # more of it (an ear or a shoulder nearer the lens than the focal plane)
            if dof.any():
                for member in at_border_soft:
                    dof |= member
        return Look(
            scale=scale,
            stats=stats,
            block=block,
            occupancy=self._levels(rgb, native_tile, block_global),
            native_tile=native_tile,
            block_global=block_global,
            phase=phase,
            jpeg_quality=jpeg_quality,
            jpeg_lattice=jpeg_lattice,
            exposure=exposure,
            cast=cast,
            light=light,
            neutral=neutral,
            occupancy_global=cues.level_occupancy(rgb[..., 1]),
            sharp_ref=sharp_ref,
            noise_floor=_pct(stats.noise, 25, 0.0) / scale,
            whiteness=_pct(stats.whiteness, 50, 0.0),
            soft_fraction=float(soft.mean()) if edges.sum() >= 4 else 0.0,
            dof=dof,
            image=look,
        )

    @staticmethod
    def _levels(rgb: np.ndarray, tile: int, block_global: float) -> np.ndarray:
        """Grey-level occupancy per tile; flat bands and combs count too (flat bands unless the
        image is blocky: heavy JPEG flattens blocks into plateaus of its own)."""
        if block_global < JPEG_PLATEAUS:
            occ = cues.banding_tiles(rgb, tile)
        else:
            occ = cues.occupancy_tiles(rgb[..., 1], tile)
        # a tile posterized in part uses many levels, but its histogram is still a comb
        return np.fmin(occ, cues.comb_tiles(rgb[..., 1], tile))

    def _global_suspicions(self, look: Look) -> dict[str, float]:
        e = look.exposure
        return {
            "blur": severity("blur", look.sharp_ref),
            # a reduced look correlates the grain (no longer white): the native zoom checks it
            "noise": severity("noise", look.noise_floor)
            if look.whiteness > 1.25 or look.scale < REDUCED_LOOK
            else 0.0,
            # the quantization steps say how hard the whole image was compressed whatever it shows,
            # as far as its coefficients still sit on their lattice (deblocking moves them off);
            # blockiness, how much shows, is left where they cannot be read (resampled since)
            "jpeg": (
                _quantization_severity(look.jpeg_quality, look.jpeg_lattice)
                if np.isfinite(look.jpeg_quality)
                else severity("jpeg", look.block_global)
            ),
            "overexposure": max(severity("overexposure", e.clipped_hi), severity("lightness", e.lightness)),
            # dimmed lights with lifted deepest shadows are a dark photo washed out (a night scene
            # pulled toward its dark mean), not underexposed: a gain below 1 deepens the shadows
            "underexposure": severity("underexposure", e.p999)
            * float(np.clip((0.42 - e.mean) / 0.12, 0, 1))
            * float(np.clip((0.08 - e.p001) / 0.04, 0, 1)),
            # lifted blacks separate a washed-out image from a dark one (whose blacks stay black)
            "low_contrast": severity("low_contrast", e.tone_range)
            * float(np.clip((e.p01 - 0.03) / 0.08, 0, 1)),
            # warm light is often the scene's own (a lamp-lit room, a sunset) and viewers accept it
            # far more than a green, magenta or blue tint of the same strength
            "color_cast": severity("color_cast", look.cast / (WARM_TOLERANCE if _warm(look.light) else 1.0)),
            "artifact": severity("artifact", look.occupancy_global),
        }

    # ------------------------------------------------------------------ (b) candidates
    @staticmethod
    def _components(mask: np.ndarray, tile_native: float, shape: tuple[int, int]):
        h, w = shape
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        for i in range(1, n):
            x, y, bw, bh, _area = stats[i]
            box = (
                int(x * tile_native),
                int(y * tile_native),
                int(min(w, round((x + bw) * tile_native))),
                int(min(h, round((y + bh) * tile_native))),
            )
            yield box, labels == i

    def _candidates(
        self, look: Look, shape: tuple[int, int], seam_findings: list[Finding]
    ) -> list[Candidate]:
        h, w = shape
        st = look.stats
        t_look = st.tile / look.scale
        t_nat = float(look.native_tile)
        ref, floor = look.sharp_ref, look.noise_floor
        sigma = np.nan_to_num(st.sigma / look.scale)
        noise = st.noise / look.scale
        tone_range = st.p95 - st.p05
        med = {
            k: float(np.nanmedian(v))
            for k, v in (("p95", st.p95), ("p05", st.p05), ("mean", st.mean), ("range", tone_range))
        }
        chroma_dev = np.nan_to_num(np.linalg.norm(st.neutral - np.nan_to_num(look.neutral), axis=-1), nan=0.0)
        with np.errstate(invalid="ignore"):
            maps = {
                "blur": (
                    sigma > max(2.0 * ref, ref + 1.0, 1.5),
                    sigma,
                    t_look,
                    "edges wider than in the sharpest parts",
                ),
                "noise": (
                    (noise > max(2.0 * floor, floor + 2.5))
                    & ((st.whiteness > 1.35) | (look.scale < REDUCED_LOOK)),
                    noise,
                    t_look,
                    "fine grain well above the image's own noise floor",
                ),
                "jpeg": (
                    look.block > max(0.3, 3.0 * float(np.median(look.block))),
                    look.block,
                    t_nat,
                    "8x8 block borders stand out",
                ),
                "overexposure": (
                    (st.clip_hi > 0.35) & (st.clip_hi > look.exposure.clipped_hi + 0.15),
                    st.clip_hi,
                    t_look,
                    "blown-out highlights",
                ),
                "underexposure": (
                    (st.p95 < 0.45 * med["p95"])
                    & (st.mean < 0.5 * med["mean"])
                    & (st.p95 < 0.43)
                    & (st.edge > 2.0),
                    st.p95 / max(med["p95"], 1e-3),
                    t_look,
                    "much darker than the rest, with no light left",
                ),
                "low_contrast": (
                    (tone_range < 0.45 * med["range"]) & (st.p05 > med["p05"] + 0.08) & (st.edge > 3.0),
                    tone_range / max(med["range"], 1e-3),
                    t_look,
                    "greyed-out: blacks lifted and whites dimmed",
                ),
                "color_cast": (
                    chroma_dev > 0.3,
                    chroma_dev,
                    t_look,
                    "even its greyest pixels lean away from the rest's",
                ),
                "artifact": (
                    (np.nan_to_num(look.occupancy, nan=1.0) < 0.35) & (look.occupancy_global > 0.6),
                    look.occupancy,
                    t_nat,
                    "few grey levels: banding",
                ),
            }
        found: list[Candidate] = []
        for kind, (mask, values, tile_native, why) in maps.items():
            if not mask.any():
                continue
            for box, comp in self._components(mask, tile_native, (h, w)):
                area = (box[2] - box[0]) * (box[3] - box[1]) / float(w * h)
                if comp.sum() < 2 or area < 0.01:
                    continue  # a single tile is as likely odd content as a defect
                v = values[comp]
                v = float(np.nanmedian(v)) if np.isfinite(v).any() else float("nan")
                est = self._estimate(kind, v)
                found.append(Candidate(box, kind, est, why, priority=est * np.sqrt(area)))
        # the best candidate of every kind first, then the rest by priority: one cue's many false
        # leads must not use up the zooms another cue's single true lead needs
        found.sort(key=lambda c: -c.priority)
        best_of_kind: dict[str, Candidate] = {}
        for cand in found:
            best_of_kind.setdefault(cand.distortion, cand)
        # a border stepping the same way all around, with a tone map that explains it, is the most
        # specific lead there is: such rectangles first
        ordered = [
            Candidate(f.box, f.distortion, f.severity, SEAM_WHY[f.distortion], finding=f)
            for f in seam_findings[: self.config.max_seams]
        ]
        ordered += sorted(best_of_kind.values(), key=lambda c: -c.priority)
        ordered += [c for c in found if c not in ordered]
        chosen: list[Candidate] = []
        for cand in ordered:
            if all(box_iou(cand.box, c.box) < 0.5 for c in chosen):
                chosen.append(cand)
            if len(chosen) >= self.config.max_zooms:
                break
        return chosen

    @staticmethod
    def _estimate(kind: str, value: float) -> float:
        if kind == "underexposure":
            return severity("underexposure", value * 0.95)
        if kind == "low_contrast":
            return severity("low_contrast", value * 0.9)
        if kind == "color_cast":
            return severity("color_cast", float(np.expm1(value)))
        return severity(kind, value)

    # ------------------------------------------------------------------ (c) zoom and judge
    def _measure(self, rgb: np.ndarray, box: tuple[int, int, int, int], look: Look) -> ZoomLook:
        """Zoom on ``box`` with context and measure every cue tile by tile, inside and around it.

        The zoom is at native resolution unless the crop is larger than ``zoom_size``; then it is
        reduced to that size (already much closer than the global look), blur and noise are
        converted back to native pixels, and JPEG blocks and grey levels, which resampling
        destroys, are read from the native maps of the global look."""
        cfg = self.config
        zoom = crop_zoom(
            rgb,
            box,
            normalized=False,
            context=cfg.context,
            min_side=64,
            target_size=cfg.zoom_size,
            max_upscale=1.0,
        )
        patch = zoom.image
        native = zoom.scale_x > 0.999 and zoom.scale_y > 0.999
        tile = _tile_for(patch.shape[0], patch.shape[1], cfg.zoom_tile)
        ts = cues.tile_stats(patch, tile, native=False)
        if not native:  # back to native units
            ts.sigma = ts.sigma / zoom.scale_x
            ts.noise = ts.noise / zoom.scale_x
        inside = _select(ts.centres(), zoom.requested_in_zoom())
        if not inside.any():
            inside = np.ones_like(inside)
        ring = ~inside
        if ring.sum() < max(2, 0.2 * inside.sum()):
            ring = np.zeros_like(ring)  # nearly the whole image: compare with the global look

        def grid_box(sel: np.ndarray, t: int, to_source) -> tuple[int, int, int, int]:
            rr, cc = np.nonzero(sel)
            x0, y0, x1, y1 = to_source((cc.min() * t, rr.min() * t, (cc.max() + 1) * t, (rr.max() + 1) * t))
            return (int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1)))

        def native_grid(values: np.ndarray, t: int, origin: tuple[int, int], to_source) -> TileGrid:
            """A grid of ``t``-pixel tiles starting at ``origin`` (source pixels) over the zoom."""
            centres = (
                origin[1] + (np.arange(values.shape[0]) + 0.5) * t,
                origin[0] + (np.arange(values.shape[1]) + 0.5) * t,
            )
            g_in = _select(centres, zoom.requested)
            g_ring = _select(centres, zoom.box) & ~g_in
            if g_ring.sum() < max(2, 0.2 * g_in.sum()):
                g_ring = np.zeros_like(g_ring)
            return TileGrid(values, g_in, g_ring, lambda sel: grid_box(sel, t, to_source))

        if native:
            y = cues.luminance(patch)
            bt = _tile_for(patch.shape[0], patch.shape[1], 64)
            phase = ((look.phase[0] - zoom.box[0]) % 8, (look.phase[1] - zoom.box[1]) % 8)
            origin = ((7 - zoom.box[0]) % 8, (7 - zoom.box[1]) % 8)
            block = cues.blockiness(y, bt, phase, origin)[0]
            occ = self._levels(patch, tile, look.block_global)
            blocks = native_grid(block, bt, zoom.box[:2], zoom.to_source)
            levels = native_grid(occ, tile, zoom.box[:2], zoom.to_source)
        else:
            nt = look.native_tile

            def identity(b):
                return b

            blocks = native_grid(look.block, nt, (0, 0), identity)
            levels = native_grid(look.occupancy, nt, (0, 0), identity)

        def zoom_tiles_box(sel: np.ndarray) -> tuple[int, int, int, int]:
            return grid_box(sel, tile, zoom.to_source)

        # the region's own numbers come from the tiles wholly inside it where there are enough: a
        # tile across its border mixes in the context (a few bright pixels give a darkened region light)
        rx0, ry0, rx1, ry1 = zoom.requested_in_zoom()
        top, left = np.arange(inside.shape[0]) * tile, np.arange(inside.shape[1]) * tile
        rows_in, cols_in = (top >= ry0) & (top + tile <= ry1), (left >= rx0) & (left + tile <= rx1)
        whole = np.outer(rows_in, cols_in) & inside
        m_in = cues.summarize(ts, whole if whole.sum() >= max(2, 0.3 * inside.sum()) else inside)
        m_ring = cues.summarize(ts, ring) if ring.any() else self._whole_image_ring(look)
        for m, sel_b, sel_o in ((m_in, blocks.inside, levels.inside), (m_ring, blocks.ring, levels.ring)):
            m["blockiness"] = (
                _pct(blocks.values[sel_b], 50) if sel_b.any() else m.get("blockiness", float("nan"))
            )
            m["occupancy"] = (
                _pct(levels.values[sel_o], 50) if sel_o.any() else m.get("occupancy", float("nan"))
            )
        return ZoomLook(zoom, ts, inside, ring, blocks, levels, m_in, m_ring, zoom_tiles_box, rgb)

    def _whole_image_ring(self, look: Look) -> dict[str, float]:
        """Stand-in for the context ring when a region is nearly the whole image."""
        e = look.exposure
        return {
            "blur_sigma": look.sharp_ref,
            "noise_sigma": look.noise_floor,
            "blockiness": float(np.median(look.block)),
            "clipped": e.clipped_hi,
            "mean": e.mean,
            "p05": e.p01,
            "p95": e.p99,
            "top": e.p999,
            "edge": _pct(look.stats.edge, 50, 0.0),
            "chroma_a": float("nan"),
            "chroma_b": float("nan"),
            "chroma_spread": float("nan"),
            "occupancy": look.occupancy_global,
        }

    @staticmethod
    def _dof_share(look: Look, box: tuple[int, int, int, int]) -> float:
        """Share of a box's look tiles that belong to a depth-of-field area."""
        if not look.dof.any():
            return 0.0
        t = look.stats.tile / look.scale
        cy, cx = look.stats.centres()
        sel = _select((cy / look.scale, cx / look.scale), box)
        if not sel.any():  # a box smaller than a tile: the tile under its centre
            r = min(int((box[1] + box[3]) / 2 / t), look.dof.shape[0] - 1)
            c = min(int((box[0] + box[2]) / 2 / t), look.dof.shape[1] - 1)
            return float(look.dof[r, c])
        return float(look.dof[sel].mean())

    def _depth_of_field(self, look: Look, box: tuple[int, int, int, int], area: float) -> bool:
        """Whether a soft region is intended depth of field: the photo has sharp detail, and the
        region (``area``: its share of the image) is large or lies in the mapped soft background."""
        if look.sharp_ref >= 1.0:
            return False
        if max(area, look.soft_fraction) >= self.config.dof_area:
            return True
        h, w = look.image.shape[:2]
        h, w = h / look.scale, w / look.scale
        m = self.config.dof_frame
        x0, y0, x1, y1 = box
        inner = x0 > m * w and y0 > m * h and x1 < (1 - m) * w and y1 < (1 - m) * h
        return not inner and self._dof_share(look, box) >= 0.5

    @staticmethod
    def _grade_by_quantization(rgb: np.ndarray, look: Look, f: Finding) -> None:
        """Grade a blocky region by the JPEG quality its coefficients were quantized at, where they
        show it, as the whole image is: how much the blocks show depends on what they cover."""
        x0, y0, x1, y1 = f.box
        crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        y = cues.luminance(crop)
        # the photo's grid, or the image origin's (a region pasted from a compressed copy)
        for px, py in dict.fromkeys([look.phase, (7, 7)]):
            # a region has fewer blocks: fewer nonzero values suffice, the finding is there already
            quality, lattice = cues.jpeg_quality(crop, y, ((px - x0) % 8, (py - y0) % 8), min_count=10)
            if np.isfinite(quality):
                sev = _quantization_severity(quality, lattice)
                if sev > f.severity:
                    f.severity = sev
                    f.reason = f"{f.reason}, quantized as by JPEG quality {quality:.0f}"
                return

    @staticmethod
    def _colourless_elsewhere(look: Look, box: tuple[int, int, int, int]) -> bool:
        """Whether the image outside ``box`` (a zoom's view: the defect may reach past the suspected
        region) and the coloured area it touches is black and white, greys or nearly."""
        cy, cx = look.stats.centres()
        view = _select((cy / look.scale, cx / look.scale), box)
        # a tint larger than the zoom's view: the coloured tiles it touches are the tint's too, if
        # together they stay a part of the photo (a colour photo's colours join into most of it)
        tint = np.hypot(look.stats.chroma[..., 0], look.stats.chroma[..., 1])  # nan: no valid pixels
        coloured = (np.nan_to_num(tint, nan=0.0) >= GREY).astype(np.uint8)
        _, labels = cv2.connectedComponents(coloured, connectivity=8)
        touched = np.unique(labels[view & (coloured > 0)])
        grown = view | np.isin(labels, touched[touched > 0])
        if grown.mean() <= TINT_AREA:
            view = grown
        rest = tint[~view]
        rest = rest[np.isfinite(rest)]
        return len(rest) >= 8 and float(np.percentile(rest, 95)) < GREY

    def _judge(
        self, z: ZoomLook, look: Look, box: tuple[int, int, int, int], area: float, exclude: set[str]
    ) -> Finding:
        """Type, severity and tightened box of a zoomed region, from inside-vs-context measurements.

        Tile cues (blur, noise, blown highlights, JPEG blocks, banding) are confirmed tile by tile:
        the region is the bounding box of the tiles that are worse than the context, and it must be
        a good part of the suspected region. Tone and colour cues are judged on the whole region."""
        i, r = z.inside_stats, z.ring_stats
        ts = z.stats
        e = look.exposure
        found: dict[str, Finding] = {}
        not_a_defect = "nothing stands out against the surroundings"

        def tile_finding(
            kind: str,
            bad: np.ndarray,
            inside: np.ndarray,
            values: np.ndarray,
            to_box,
            reason,
            relative_to=None,
            cluster: bool = False,
        ) -> None:
            """A finding when enough of the region's tiles are bad; graded by their median value,
            less half the severity the context already has (``relative_to``) where given."""
            sel = bad & inside
            n_bad = int(sel.sum())
            n_in = int((np.isfinite(values) & inside).sum())
            if n_bad < 2:
                return
            # a suspected region larger than the defect: a compact group of clearly bad tiles
            # (severity >= 0.5 on its own) is enough
            partial = n_bad < 0.4 * max(n_in, 1)
            if partial:
                if not cluster:
                    return
                n, labels, stats, _ = cv2.connectedComponentsWithStats(sel.astype(np.uint8), connectivity=8)
                big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
                if stats[big, cv2.CC_STAT_AREA] < MIN_CLUSTER:
                    return
                sel = labels == big
            v = float(np.nanmedian(values[sel]))
            if partial and severity(kind, v) < 0.5:
                return
            sev = severity(kind, v) - (0.5 * severity(kind, relative_to) if relative_to is not None else 0.0)
            found[kind] = Finding(kind, sev, reason(v), to_box(sel), v)

        # blur: tiles whose edges are much wider than the context's sharpest
        ref = max(r["blur_sigma"] if np.isfinite(r["blur_sigma"]) else look.sharp_ref, 0.5)
        # in a dark scene, the halo around a bright light is soft by nature (bloom, glare), not out of focus
        glare = cv2.dilate((ts.clip_hi > 0.01).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        glare &= look.exposure.mean < 0.3
        with np.errstate(invalid="ignore"):
            soft = (ts.sigma >= max(ref + 1.0, 2.0 * ref, 1.5)) & ~glare
        tile_finding(
            "blur",
            soft,
            z.inside,
            ts.sigma,
            z.zoom_box,
            lambda v: f"edges {v:.1f} px wide (Gaussian sigma) against {ref:.1f} px around it",
            relative_to=ref,
        )
        if "blur" in found:
            f = found["blur"]
            if self._depth_of_field(look, f.box, area):
                not_a_defect = (
                    f"{f.reason}, but a large soft area next to sharp detail is intended depth of field"
                )
                del found["blur"]

        # noise: white at pixel scale, and in colour as much as in luma (or very white): not texture
        nref = r["noise_sigma"] if np.isfinite(r["noise_sigma"]) else look.noise_floor
        with np.errstate(invalid="ignore"):
            if z.zoom.scale_x > 0.999:
                grain = (ts.whiteness >= 1.35) & ((ts.chroma_noise >= 1.3) | (ts.whiteness >= 1.75))
            else:  # resampling correlates the grain, so whiteness is gone; colour noise remains
                grain = ts.chroma_noise >= 1.4
            noisy = (ts.noise >= 1.6 * nref + 1.0) & grain
        tile_finding(
            "noise",
            noisy,
            z.inside,
            ts.noise,
            z.zoom_box,
            lambda v: f"grain of sigma {v:.1f} (of 255) against {nref:.1f} around it",
            relative_to=nref,
            cluster=True,  # white, coloured grain is rarely content: a compact patch of it will do
        )

        # blown highlights; too much light lifts a tile's shadows too, while a white object (a badge,
        # a sign, a lamp) blown out next to dark surroundings keeps its blacks
        clip_ref = r["clipped"]
        tile_finding(
            "overexposure",
            (ts.clip_hi >= 0.25) & (ts.clip_hi >= clip_ref + 0.15) & (ts.p05 >= 0.15),
            z.inside,
            ts.clip_hi,
            z.zoom_box,
            lambda v: f"{100 * v:.0f}% of pixels blown out against {100 * clip_ref:.0f}% around",
        )

        # JPEG blocks and banding, on native tiles
        g = z.blocks
        b_ring = _pct(g.values[g.ring], 50, 0.0) if g.ring.any() else float(np.median(look.block))
        with np.errstate(invalid="ignore"):
            blocky = (g.values >= 0.25) & (g.values >= b_ring + 0.2)
        tile_finding(
            "jpeg",
            blocky,
            g.inside,
            g.values,
            g.to_box,
            lambda v: f"8x8 block borders {v:.2f}x stronger than block interiors",
        )
        g = z.levels
        o_ring = _pct(g.values[g.ring], 50) if g.ring.any() else look.occupancy_global
        # banded context: the defect reaches past the zoom, unless the whole image is banded (a
        # graphic, or a global finding)
        if not np.isfinite(o_ring) or o_ring > 0.5 or look.occupancy_global > 0.6:
            with np.errstate(invalid="ignore"):
                banded = g.values < 0.35
            tile_finding(
                "artifact",
                banded,
                g.inside,
                g.values,
                g.to_box,
                lambda v: f"only {100 * v:.0f}% of grey levels used: banding / posterization",
            )
        if "jpeg" in found:
            self._grade_by_quantization(z.source, look, found["jpeg"])
            found.pop("blur", None)  # compression explains the lost detail
            found.pop("artifact", None)  # and the plateaus of the blocks it flattened

        # a darkened region keeps its structure (edges scale with brightness), and it sits in a lit
        # neighbourhood: dark content is often flat, and in a dark scene everything is dark on purpose
        weber = (i["edge"] / max(i["mean"], 0.02)) / max(r["edge"] / max(r["mean"], 0.02), 1e-3)
        structured = 0.5 <= weber <= 2.0 and i["edge"] > 4.0
        if structured and r["mean"] >= 0.2 and i["mean"] < 0.55 * r["mean"] and i["top"] < 0.6 * r["top"]:
            found["underexposure"] = Finding(
                "underexposure",
                severity("underexposure", i["top"] / max(r["top"], 0.3)),
                f"brightest tones reach {100 * i['top']:.0f}% against {100 * r['top']:.0f}% around",
                box,
            )

        rng_in, rng_ring = i["p95"] - i["p05"], r["p95"] - r["p05"]
        # defocus also flattens tones: a washed-out region keeps edges as sharp as around it; and its
        # tones are pulled toward the image's mean from both ends (not a uniformly coloured object)
        s_in, s_ring = i["blur_sigma"], r["blur_sigma"]
        sharp_inside = not np.isfinite(s_in) or s_in < max(np.nan_to_num(s_ring, nan=0.5), 0.5) + 1.0
        hazed = abs(i["mean"] - e.mean) < 0.15 and i["p05"] > r["p05"] + 0.1 and i["p95"] < r["p95"] - 0.1
        # its edges fade with its tones (a narrow-toned but busy texture, a wooden table, is content)
        faded = i["edge"] < 1.5 * rng_in / max(rng_ring, 1e-3) * r["edge"]
        if sharp_inside and hazed and faded and rng_in < 0.55 * rng_ring:
            found["low_contrast"] = Finding(
                "low_contrast",
                severity("low_contrast", 0.9 * rng_in / max(rng_ring, 1e-3)),
                f"tones span {100 * rng_in:.0f}% against {100 * rng_ring:.0f}% around, blacks lifted",
                box,
            )

        # A cast adds one vector to every pixel's log-chroma: the region's greyest pixels move away
        # from the image's greyest by as much as its mean moves from the surroundings' mean, and its
        # variety of colours stays. A uniformly coloured object moves the mean and loses the variety.
        if np.isfinite(i["neutral_a"]) and np.isfinite(i["chroma_a"]) and np.isfinite(r["chroma_a"]):
            shift_n = np.array([i["neutral_a"], i["neutral_b"]]) - np.nan_to_num(look.neutral)
            shift_m = np.array([i["chroma_a"] - r["chroma_a"], i["chroma_b"] - r["chroma_b"]])
            d, dm = float(np.linalg.norm(shift_n)), float(np.linalg.norm(shift_m))
            agree = d > 0 and dm > 0 and float(shift_n @ shift_m) / (d * dm) > 0.9 and 0.7 < dm / d < 1.4
            if d > 0.3 and agree and i["chroma_spread"] >= 0.75 * r["chroma_spread"]:
                found["color_cast"] = Finding(
                    "color_cast",
                    severity("color_cast", float(np.expm1(d))),
                    f"the whole region is tinted: its greyest pixels and its mean shifted by {d:.2f}",
                    box,
                )

        # in a black-and-white photo any colour is a tint: the rest of the image says what its
        # surfaces look like, whatever the region's context ring (a tinted zoom context) says
        tint = float(np.hypot(i["chroma_a"], i["chroma_b"])) if np.isfinite(i["chroma_a"]) else 0.0
        # (asked only where a tint or blown highlights need the answer)
        needed = ("color_cast" not in found and tint > 0.15) or "overexposure" in found
        black_and_white = needed and self._colourless_elsewhere(look, z.zoom.box)
        if "color_cast" not in found and tint > 0.15 and black_and_white:
            found["color_cast"] = Finding(
                "color_cast",
                severity("color_cast", float(np.expm1(tint))),
                f"a tint of {tint:.2f} in a black-and-white image",
                box,
            )

        # a tint pushes one or two channels over the top: pixels blown in colour, not to white, where
        # the region is tinted (or the photo is black and white) are the cast's doing
        if "overexposure" in found and ("color_cast" in found or black_and_white):
            x0, y0, x1, y1 = z.zoom.requested_in_zoom()
            px = z.zoom.image[y0:y1, x0:x1].reshape(-1, 3)
            blown = px.max(axis=1) >= 250
            if blown.any() and float((px[blown].min(axis=1) < 200).mean()) > 0.5:
                found["color_cast"] = found.get("color_cast") or Finding(
                    "color_cast",
                    found["overexposure"].severity,
                    "pixels blown out in colour in a black-and-white image: a tint",
                    box,
                )
                del found["overexposure"]

        for kind in exclude:  # already reported for the whole image
            found.pop(kind, None)
        if not found:
            return Finding("", 0.0, not_a_defect, box)
        best = max(found.values(), key=lambda f: f.severity)
        best.severity = float(np.clip(best.severity, 0.0, 1.0))
        return best

    def _read_seams(self, rgb: np.ndarray, look: Look) -> list[Finding]:
        """Rectangles whose border steps one way all around, read at native pixels: those found on
        the look and, where the look is reduced, those found on a larger one too (``seam_look``)."""
        h, w = rgb.shape[:2]

        def found_on(img: np.ndarray) -> list[tuple[cues.Seam, int]]:
            """The rectangles found on ``img`` (a reduced copy of rgb), in native pixels, each with
            the radius its sides are snapped within."""
            ih, iw = img.shape[:2]
            scale = iw / float(w)
            radius = int(np.ceil(2.0 / scale)) + 2
            out = []
            for sm in cues.seams(img):
                x0, y0, x1, y1 = sm.box
                native = (
                    round(x0 / scale),
                    round(y0 / scale),
                    w if x1 >= iw else min(w, round(x1 / scale)),
                    h if y1 >= ih else min(h, round(y1 / scale)),
                )
                out.append((replace(sm, box=native), radius))
            return out

        cands = found_on(look.image)
        if self.config.seam_look > max(look.image.shape[:2]):
            cands += found_on(cues.reduce_to(rgb, self.config.seam_look))
            cands.sort(key=lambda c: -c[0].coverage)
            kept = []
            for c in cands:
                if all(box_iou(c[0].box, k[0].box) < SAME_SEAM for k in kept):
                    kept.append(c)
            cands = kept
        found: list[Finding] = []
        for sm, r in cands[: self.config.seam_reads]:
            f = self._judge_seam(rgb, sm, r)
            if f is not None and all(box_iou(f.box, g.box) < 0.5 for g in found):
                found.append(f)
        return found

    @staticmethod
    def _without_seams(look: Look, seam_findings: list[Finding]) -> Look:
        if not seam_findings:
            return look
        img = look.image.copy()
        s = look.scale
        for f in seam_findings:
            x0, y0, x1, y1 = (int(round(v * s)) for v in f.box)
            img[y0:y1, x0:x1] = cues.undo_tone(img[y0:y1, x0:x1], f.distortion, f.reading)
        cast, light, neutral = cues.cast_estimate(img)
        return replace(look, exposure=cues.exposure_stats(img), cast=cast, light=light, neutral=neutral)

    @staticmethod
    def _judge_seam(rgb: np.ndarray, seam: cues.Seam, radius: int) -> Finding | None:
        """A rectangle found by its border: snap the border onto native pixels (within ``radius``)
        and read the tone map between the pixels just inside it and their mirror images just
        outside."""
        box = cues.refine_border(rgb, cues.snap_seam(rgb, seam, radius))
        reading = cues.seam_reading(rgb, box)
        defect = cues.seam_defect(reading) if reading is not None else None
        if defect is None:
            return None
        kind, value, why = defect
        if kind == "color_cast" and seam.coverage < CAST_SEAM:
            return None
        return Finding(kind, seam_severity(kind, value), why, box, value, reading)

    def _confirm_global(
        self, rgb: np.ndarray, look: Look, kind: str, suspicion: float
    ) -> tuple[float, str, TraceStep]:
        """Zoom at native resolution where ``kind`` is best measured, to confirm a global suspicion."""
        h, w = rgb.shape[:2]
        st = look.stats
        t_native = st.tile / look.scale
        if kind == "blur":
            edge = np.where(np.isfinite(st.sigma), st.edge, -1.0)
            r, c = np.unravel_index(int(np.argmax(edge)), edge.shape)
            why = "the whole image looks soft even where it has the most detail"
        elif kind == "noise":
            quiet = np.where(st.p95 > 0.08, st.edge, np.inf)
            r, c = np.unravel_index(int(np.argmin(quiet)), quiet.shape)
            why = "fine grain everywhere, even in the flattest areas"
        else:  # jpeg
            t_native = float(look.native_tile)
            r, c = np.unravel_index(int(np.argmax(look.block)), look.block.shape)
            why = "8x8 block borders show across the image"
        side = max(128.0, 3 * t_native)
        cx, cy = (c + 0.5) * t_native, (r + 0.5) * t_native
        box = (
            int(max(0, cx - side / 2)),
            int(max(0, cy - side / 2)),
            int(min(w, cx + side / 2)),
            int(min(h, cy + side / 2)),
        )
        zoom = crop_zoom(rgb, box, normalized=False, context=0.0, min_side=64, target_size=None)
        tile = _tile_for(zoom.image.shape[0], zoom.image.shape[1], 32)
        phase = ((look.phase[0] - zoom.box[0]) % 8, (look.phase[1] - zoom.box[1]) % 8)
        ts = cues.tile_stats(zoom.image, tile, native=True, phase=phase)
        m = cues.summarize(ts, np.ones(ts.shape, bool))
        if kind == "blur":
            value = m["blur_sigma"]
            sev = 0.5 * (severity("blur", value) + suspicion)
            obs = f"edges are {value:.1f} px wide (Gaussian sigma) at native resolution"
        elif kind == "noise":
            value = m["noise_sigma"]
            sev = 0.5 * (severity("noise", value) + suspicion) if m["whiteness"] > 1.25 else 0.0
            obs = f"grain of sigma {value:.1f} (of 255), whiteness {m['whiteness']:.2f}"
        else:
            value = m["blockiness"]
            obs = f"block borders {value:.2f}x stronger than block interiors"
            if np.isfinite(look.jpeg_quality):  # every block of the image is quantized: that is the evidence
                sev = suspicion
                obs = f"8x8 blocks quantized as by JPEG quality {look.jpeg_quality:.0f}; {obs}"
            else:
                sev = max(severity("jpeg", value), suspicion) if value > 0.1 else 0.5 * suspicion
        step = TraceStep(
            thought=f"Suspect {kind} over the whole image: {why}. Zoom in at native resolution to check.",
            tool_call=ToolCall("crop_zoom", {"bbox_2d": list(box), "context": 0.0, "target_size": None}),
            observation=f"{'Confirmed' if sev >= self.config.min_severity else 'Not confirmed'}: {obs}.",
            view=list(zoom.box),
            data={"value": round(float(value), 4), "severity": round(float(sev), 4)},
        )
        return float(sev), obs, step

    # ------------------------------------------------------------------ (d) verdict
    def assess(self, image: np.ndarray) -> Diagnosis:
        t0 = time.perf_counter()
        rgb = as_rgb8(image)
        check_image_size(rgb)
        h, w = rgb.shape[:2]
        look = self._global_look(rgb)
        t_look = time.perf_counter()
        seam_findings = self._read_seams(rgb, look)
        # a patch with its own exposure or tint must not pass for the whole image's: tones and
        # light colour are read as they would be with the patch's tone map undone
        sus = self._global_suspicions(self._without_seams(look, seam_findings))
        e = look.exposure
        lh, lw = round(h * look.scale), round(w * look.scale)
        trace = [
            TraceStep(
                thought=f"First a look at the whole image ({w}x{h}, seen at {lw}x{lh}): exposure, contrast, "
                "colour, and where local cues deviate.",
                observation=(
                    f"mean brightness {100 * e.mean:.0f}%, tones {100 * e.p01:.0f}-{100 * e.p99:.0f}%, "
                    f"{100 * e.clipped_hi:.1f}% blown out; light colour off neutral by {look.cast:.2f}; "
                    f"sharpest edges {look.sharp_ref:.1f} px; noise floor {look.noise_floor:.1f}; "
                    f"8x8 blockiness {look.block_global:.2f}; grey-level use {100 * look.occupancy_global:.0f}%."
                ),
                view=[0, 0, w, h],
                data={"suspicions": {k: round(v, 4) for k, v in sus.items()}},
            )
        ]
        findings: list[tuple[float, float]] = []
        regions: list[Region] = []
        full = [0, 0, w, h]
        global_reason = {
            "overexposure": f"{100 * e.clipped_hi:.0f}% of the image is blown out, mean brightness "
            f"{100 * e.mean:.0f}% with its shadows at {100 * e.p05:.0f}%",
            "underexposure": f"the brightest tones reach only {100 * e.p999:.0f}%",
            "low_contrast": f"tones span only {100 * e.tone_range:.0f}% with blacks lifted to {100 * e.p01:.0f}%",
            "color_cast": f"the light colour is off neutral by {look.cast:.2f} (RGB {np.round(look.light, 2).tolist()})",
            "artifact": f"only {100 * look.occupancy_global:.0f}% of grey levels are used: banding",
        }
        for kind, s in sus.items():
            reason = global_reason.get(kind, "")
            if kind in CONFIRMED_AT_NATIVE and s >= CONFIRM_FROM:
                s, reason, step = self._confirm_global(rgb, look, kind, s)
                trace.append(step)
            findings.append((s, 1.0))
            if s >= self.config.min_severity:
                regions.append(Region(full, kind, round(s, 3), f"whole image: {reason}"))

        global_kinds = {r.distortion for r in regions}
        counted: list[tuple[Finding, float]] = []  # local findings and their area weights
        for cand in self._candidates(look, (h, w), seam_findings):
            # already everywhere, a local look adds nothing; but a patch with a border of its own
            # is a defect of its own (flatter than an already flat photo)
            if cand.distortion in global_kinds and cand.finding is None:
                continue
            z = self._measure(rgb, cand.box, look)
            area = (cand.box[2] - cand.box[0]) * (cand.box[3] - cand.box[1]) / float(w * h)
            f = cand.finding or self._judge(z, look, cand.box, area, global_kinds)
            confirmed = bool(f.distortion) and f.severity >= self.config.min_severity
            numbers = {f"in_{k}": round(v, 4) for k, v in z.inside_stats.items() if np.isfinite(v)}
            numbers.update({f"ring_{k}": round(v, 4) for k, v in z.ring_stats.items() if np.isfinite(v)})
            if cand.finding is not None and cand.finding.reading is not None:
                # what confirmed it: pixels just inside the border against their mirror images
                r = cand.finding.reading
                numbers["border_gains"] = [round(float(g), 3) for g in r.gains]
                numbers["border_spread"] = [round(float(v), 3) for v in r.spread]
                numbers["border_pairs"] = r.pairs
            trace.append(
                TraceStep(
                    thought=f"Region {list(cand.box)} looks suspicious for {cand.distortion}: {cand.why} "
                    f"(estimated severity {cand.estimate:.2f}). Zoom in with its surroundings to compare.",
                    tool_call=ToolCall(
                        "crop_zoom",
                        {
                            "bbox_2d": list(cand.box),
                            "context": self.config.context,
                            "target_size": self.config.zoom_size,
                        },
                    ),
                    observation=(
                        f"Confirmed {f.distortion} (severity {f.severity:.2f}) in {list(f.box)}: {f.reason}."
                        if confirmed
                        else f"Rejected: {f.reason or 'too mild'}."
                    ),
                    view=list(z.zoom.box),
                    data=numbers,
                )
            )
            if not f.distortion:
                continue
            # two zooms may confirm the same defect (a large suspect re-localized onto part of a
            # smaller one's area): it counts once, as the finding that explains more damage
            weight = area_weight((f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) / float(w * h))
            same = next(
                (
                    i
                    for i, (g, _) in enumerate(counted)
                    if g.distortion == f.distortion and box_iou(f.box, g.box) >= 0.5
                ),
                None,
            )
            if same is None:
                counted.append((f, weight))
            elif f.severity * weight > counted[same][0].severity * counted[same][1]:
                counted[same] = (f, weight)
        # a tone map read off a region's border explains the tone cues measured inside it (blown
        # tiles of a tinted patch, the faded edges of a flattened one)
        counted = [
            (f, weight)
            for f, weight in counted
            if any(f is g for g in seam_findings) or not any(_explained_by(f, g) for g in seam_findings)
        ]
        findings += [(f.severity, weight) for f, weight in counted]
        regions += [
            Region(list(f.box), f.distortion, round(f.severity, 3), f.reason)
            for f, _ in counted
            if f.severity >= self.config.min_severity
        ]

        return self.conclude(
            score_from(findings), regions, trace, (w, h), "Verdict from what was confirmed.", t0, t_look
        )
