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
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..backends import AssessorBackend
from ..imageio import as_rgb8, check_image_size
from ..schema import Diagnosis, Region, ToolCall, TraceStep
from ..zoom import Zoom, crop_zoom
from . import cues
from .severity import area_weight, score_from, severity

LOCAL_TYPES = (
    "blur",
    "noise",
    "jpeg",
    "overexposure",
    "underexposure",
    "low_contrast",
    "color_cast",
    "artifact",
)


@dataclass
class ClassicalConfig:
    look_size: int = 512  # long side of the global look
    tile: int = 32  # tile side at look resolution
    max_zooms: int = 8  # at most this many local candidates are re-examined
    min_severity: float = 0.15  # confirmed findings below this are not reported as regions
    context: float = 0.5  # context kept around a candidate when zooming (fraction of its size)
    dof_area: float = 0.3  # a soft area larger than this next to sharp content reads as depth of field


@dataclass
class Candidate:
    box: tuple[int, int, int, int]  # native pixels
    distortion: str
    estimate: float  # severity suspected from the global look
    why: str
    priority: float = 0.0


@dataclass
class Look:
    """What the global look measured (look resolution unless noted)."""

    scale: float  # look pixels per native pixel
    tile: int  # look tile side
    blur: cues.BlurMap
    noise: np.ndarray
    whiteness: np.ndarray
    block: np.ndarray  # native tiles of block_tile pixels
    block_tile: int
    block_global: float
    exposure: cues.ExposureStats
    clip_hi: np.ndarray
    tile_mean: np.ndarray
    tile_p5: np.ndarray
    tile_p95: np.ndarray
    chroma: np.ndarray
    cast: float
    light: np.ndarray
    occupancy: float  # native green-channel grey-level occupancy
    occupancy_map: np.ndarray  # native tiles of occ_tile pixels
    occ_tile: int
    neutral: np.ndarray  # log-chroma of the image's greyest pixels
    sharp_ref: float  # native edge sigma of the sharpest fifth of the image
    noise_floor: float  # native luma noise sigma of the quietest quarter
    soft_fraction: float = 0.0  # share of edge tiles that are soft (see _soft_fraction)
    data: dict = field(default_factory=dict)


def _finite(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64).ravel()
    return a[np.isfinite(a)]


def _pct(a: np.ndarray, q: float, default: float = float("nan")) -> float:
    f = _finite(a)
    return float(np.percentile(f, q)) if f.size else default


def _tile_for(h: int, w: int, preferred: int) -> int:
    t = min(preferred, max(8, min(h, w) // 4))
    return max(8, t - t % 2)


class ClassicalAssessor(AssessorBackend):
    """The embedded default critic: no weights, no torch, about 0.1 s per megapixel."""

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
        look = (
            rgb
            if scale >= 1.0
            else cv2.resize(
                rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
            )
        )
        lh, lw = look.shape[:2]
        tile = _tile_for(lh, lw, cfg.tile)
        y = cues.luminance(look)
        blur = cues.blur_map(y, tile)
        noise, white = cues.noise_sigma_map(y, tile)
        y_native = cues.luminance(rgb) if scale < 1.0 else y
        block_tile = max(8, min(64, (min(h, w) // 2) // 8 * 8))
        block, block_global, _ = cues.blockiness_map(y_native, block_tile)
        exposure = cues.exposure_stats(look, y)
        clip_hi, _ = cues.clipping_map(look, y, tile)
        t_mean, t_p5, t_p95 = cues.tile_luma_stats(y, tile)
        light = cues.illuminant(look)
        # two estimates that fail on different scenes must agree: grey edges (pulled by a colourful
        # subject's outline) and the greyest pixels (pulled when nothing in the scene is grey)
        neutral = cues.neutral_chroma(*cues.log_chroma(look))
        cast = min(cues.cast_strength(light), float(np.expm1(np.nan_to_num(np.hypot(*neutral), nan=0.0))))
        occupancy, _ = cues.level_occupancy(rgb[..., 1])
        occ_tile = max(8, min(32, block_tile))
        occ_map = cues.occupancy_map(rgb, occ_tile)
        # Downscaling by s shrinks blur sigma and white-noise sigma by about s: report native units.
        # below ~0.5 px the reblur test cannot tell sharp from sharper (noise, aliasing)
        sharp_ref = max(_pct(blur.sigma, 20, 0.5) / scale, 0.5)
        noise_floor = _pct(noise, 25, 0.0) / scale
        return Look(
            scale=scale,
            tile=tile,
            blur=blur,
            noise=noise,
            whiteness=white,
            block=block,
            block_tile=block_tile,
            block_global=block_global,
            exposure=exposure,
            clip_hi=clip_hi,
            tile_mean=t_mean,
            tile_p5=t_p5,
            tile_p95=t_p95,
            chroma=cues.neutral_chroma_map(look, tile),
            cast=cast,
            light=light,
            occupancy=occupancy,
            occupancy_map=occ_map,
            occ_tile=occ_tile,
            neutral=neutral,
            sharp_ref=sharp_ref,
            noise_floor=noise_floor,
        )

    # ------------------------------------------------------------------ global findings
    def _global_suspicions(self, look: Look) -> dict[str, float]:
        e = look.exposure
        sus = {
            "blur": severity("blur", look.sharp_ref),
            "noise": severity("noise", look.noise_floor) if _pct(look.whiteness, 50, 0) > 1.25 else 0.0,
            "jpeg": severity("jpeg", look.block_global),
            "overexposure": severity("overexposure", e.clipped_hi),
            "underexposure": severity("underexposure", e.p999) * float(np.clip((0.42 - e.mean) / 0.12, 0, 1)),
            # lifted blacks separate a washed-out image from a dark one (whose blacks stay black)
            "low_contrast": severity("low_contrast", e.p99 - e.p01)
            * float(np.clip((e.p01 - 0.03) / 0.08, 0, 1)),
            "color_cast": severity("color_cast", look.cast),
            "artifact": severity("artifact", look.occupancy),
        }
        return sus

    # ------------------------------------------------------------------ (b) candidates
    def _components(
        self, mask: np.ndarray, tile_native: float, shape: tuple[int, int]
    ) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
        h, w = shape
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        out = []
        for i in range(1, n):
            x, y, bw, bh, _area = stats[i]
            box = (
                int(x * tile_native),
                int(y * tile_native),
                int(min(w, round((x + bw) * tile_native))),
                int(min(h, round((y + bh) * tile_native))),
            )
            out.append((box, labels == i))
        return out

    def _candidates(self, look: Look, shape: tuple[int, int]) -> list[Candidate]:
        h, w = shape
        t_native = look.tile / look.scale
        med_p95 = float(np.median(look.tile_p95))
        med_p5 = float(np.median(look.tile_p5))
        med_mean = float(np.median(look.tile_mean))
        rng = look.tile_p95 - look.tile_p5
        med_rng = float(np.median(rng))
        chroma_ref = np.nan_to_num(look.neutral)
        chroma_dev = np.nan_to_num(np.linalg.norm(look.chroma - chroma_ref, axis=-1), nan=0.0)
        sigma_native = look.blur.sigma / look.scale
        noise_native = look.noise / look.scale
        ref = look.sharp_ref if np.isfinite(look.sharp_ref) else 1.0
        floor = look.noise_floor
        with np.errstate(invalid="ignore"):
            maps: dict[str, tuple[np.ndarray, np.ndarray, float, str]] = {
                "blur": (
                    np.nan_to_num(sigma_native) > max(2.0 * ref, ref + 1.0, 1.5),
                    sigma_native,
                    t_native,
                    "edges wider than in the sharpest parts",
                ),
                "noise": (
                    (noise_native > max(2.0 * floor, floor + 2.5)) & (look.whiteness > 1.35),
                    noise_native,
                    t_native,
                    "fine grain well above the image's own noise floor",
                ),
                "jpeg": (
                    look.block > max(0.3, 3.0 * float(np.median(look.block))),
                    look.block,
                    float(look.block_tile),
                    "8x8 block borders stand out",
                ),
                "overexposure": (
                    (look.clip_hi > 0.35) & (look.clip_hi > look.exposure.clipped_hi + 0.15),
                    look.clip_hi,
                    t_native,
                    "blown-out highlights",
                ),
                "underexposure": (
                    (look.tile_p95 < 0.45 * med_p95)
                    & (look.tile_mean < 0.5 * med_mean)
                    & (look.tile_p95 < 110)
                    & (look.blur.edge > 2.0),
                    look.tile_p95 / max(med_p95, 1.0),
                    t_native,
                    "much darker than the rest, with no light left",
                ),
                "low_contrast": (
                    (rng < 0.45 * med_rng) & (look.tile_p5 > med_p5 + 20) & (look.blur.edge > 3.0),
                    rng / max(med_rng, 1.0),
                    t_native,
                    "greyed-out: blacks lifted and whites dimmed",
                ),
                "color_cast": (
                    chroma_dev > 0.3,
                    chroma_dev,
                    t_native,
                    "even its greyest pixels lean away from the rest's",
                ),
                "artifact": (
                    (np.nan_to_num(look.occupancy_map, nan=1.0) < 0.35) & (look.occupancy > 0.6),
                    look.occupancy_map,
                    float(look.occ_tile),
                    "few grey levels: banding",
                ),
            }
        found: list[Candidate] = []
        for kind, (mask, values, t_nat, why) in maps.items():
            if not mask.any():
                continue
            for box, comp in self._components(mask, t_nat, (h, w)):
                v = float(np.nanmedian(values[comp])) if np.isfinite(values[comp]).any() else float("nan")
                est = self._estimate(kind, v, look)
                area = (box[2] - box[0]) * (box[3] - box[1]) / float(w * h)
                found.append(Candidate(box, kind, est, why, priority=est * np.sqrt(area) + 0.01 * comp.sum()))
        # the best candidate of every kind first, then the rest by priority: one cue's many false
        # leads must not use up the zooms another cue's single true lead needs
        found.sort(key=lambda c: -c.priority)
        best_of_kind: dict[str, Candidate] = {}
        for cand in found:
            best_of_kind.setdefault(cand.distortion, cand)
        ordered = sorted(best_of_kind.values(), key=lambda c: -c.priority)
        ordered += [c for c in found if c not in ordered]
        chosen: list[Candidate] = []
        for cand in ordered:
            if all(_iou(cand.box, c.box) < 0.5 for c in chosen):
                chosen.append(cand)
            if len(chosen) >= self.config.max_zooms:
                break
        return chosen

    @staticmethod
    def _soft_fraction(look: Look) -> float:
        """Share of the image's edge tiles that are soft: large when a sharp subject stands on a
        defocused background (depth of field), small when one region was blurred."""
        sig = look.blur.sigma / look.scale
        edges = np.isfinite(sig)
        if edges.sum() < 4:
            return 0.0
        soft = sig[edges] > max(2.0 * look.sharp_ref, look.sharp_ref + 1.0, 1.5)
        return float(soft.mean())

    @staticmethod
    def _estimate(kind: str, value: float, look: Look) -> float:
        if kind in ("blur", "noise", "jpeg", "overexposure", "artifact"):
            return severity(kind, value)
        if kind == "underexposure":
            return severity("underexposure", value * 0.95)
        if kind == "low_contrast":
            return severity("low_contrast", value * 0.9)
        return severity("color_cast", float(np.exp(value) - 1.0))

    # ------------------------------------------------------------------ (c) zoom and confirm
    def _zoom(self, rgb: np.ndarray, box: tuple[int, int, int, int], context: float) -> Zoom:
        return crop_zoom(rgb, box, normalized=False, context=context, min_side=48, target_size=None)

    def _measure(self, patch: np.ndarray, inner: tuple[int, int, int, int]) -> dict[str, dict[str, float]]:
        """Cue values inside ``inner`` (zoom pixels) and in the context ring around it."""
        h, w = patch.shape[:2]
        tile = _tile_for(h, w, 32 if min(h, w) >= 128 else 16)
        y = cues.luminance(patch)
        bm = cues.blur_map(y, tile)
        ns, wh = cues.noise_sigma_map(y, tile)
        rows, cols = bm.sigma.shape
        cy = (np.arange(rows) + 0.5) * tile
        cx = (np.arange(cols) + 0.5) * tile
        x0, y0, x1, y1 = inner
        in_t = (cy[:, None] >= y0) & (cy[:, None] < y1) & (cx[None, :] >= x0) & (cx[None, :] < x1)
        in_px = np.zeros((h, w), bool)
        in_px[y0:y1, x0:x1] = True
        has_ring = (~in_px).mean() > 0.15 and (~in_t).any()
        btile = max(8, min(32, min(h, w) // 2 // 8 * 8))
        block, _, _ = cues.blockiness_map(y, btile)
        bcy = (np.arange(block.shape[0]) + 0.5) * btile
        bcx = (np.arange(block.shape[1]) + 0.5) * btile
        b_in = (bcy[:, None] >= y0) & (bcy[:, None] < y1) & (bcx[None, :] >= x0) & (bcx[None, :] < x1)

        ca, cb, cok = cues.log_chroma(patch)
        clipped = patch.max(axis=2) >= 250

        def part(sel_t: np.ndarray, sel_px: np.ndarray, sel_b: np.ndarray) -> dict[str, float]:
            if not sel_px.any():
                return {}
            yy = y[sel_px] / 255.0
            p1, p5, p95, p99 = np.percentile(yy, [1, 5, 95, 99])
            edges = np.isfinite(bm.sigma) & sel_t
            occ, width = cues.level_occupancy(patch[..., 1][sel_px])
            neutral = cues.neutral_chroma(ca, cb, cok & sel_px, q=0.25)
            return {
                "blur_sigma": _pct(bm.sigma[edges], 30) if edges.any() else float("nan"),
                "edge_tiles": float(edges.sum()),
                "noise_sigma": float(np.median(ns[sel_t])) if sel_t.any() else float("nan"),
                "whiteness": float(np.median(wh[sel_t])) if sel_t.any() else float("nan"),
                "blockiness": float(np.median(block[sel_b])) if sel_b.any() else float("nan"),
                "clipped": float(clipped[sel_px].mean()),
                "mean": float(yy.mean()),
                "p01": float(p1),
                "p05": float(p5),
                "p95": float(p95),
                "p99": float(p99),
                "neutral_a": float(neutral[0]),
                "neutral_b": float(neutral[1]),
                "edge": float(np.median(bm.edge[sel_t])) if sel_t.any() else 0.0,
                "chroma_noise": cues.chroma_noise_ratio(patch, sel_px),
                "chroma_spread": float(np.hypot(ca[cok & sel_px].std(), cb[cok & sel_px].std()))
                if (cok & sel_px).sum() > 16
                else float("nan"),
                "chroma_mean_a": float(ca[cok & sel_px].mean())
                if (cok & sel_px).sum() > 16
                else float("nan"),
                "chroma_mean_b": float(cb[cok & sel_px].mean())
                if (cok & sel_px).sum() > 16
                else float("nan"),
                "occupancy": occ if width >= 24 else float("nan"),
            }

        inside = part(
            in_t if in_t.any() else np.ones_like(in_t), in_px, b_in if b_in.any() else np.ones_like(b_in)
        )
        ring = part(~in_t, ~in_px, ~b_in) if has_ring else {}
        return {"inside": inside, "ring": ring}

    def _judge(
        self, m: dict[str, dict[str, float]], look: Look, area: float
    ) -> tuple[str, float, str, dict[str, float]]:
        """Type and severity of a zoomed region from inside-vs-context measurements (0 = rejected)."""
        i, r = m["inside"], m["ring"]
        e = look.exposure
        if not r:  # the region is nearly the whole image: compare with the whole-image look
            r = {
                "blur_sigma": look.sharp_ref,
                "noise_sigma": look.noise_floor,
                "blockiness": float(np.median(look.block)),
                "clipped": e.clipped_hi,
                "mean": e.mean,
                "p01": e.p01,
                "p05": e.p01,
                "p95": e.p99,
                "p99": e.p99,
                "neutral_a": float("nan"),
                "neutral_b": float("nan"),
                "occupancy": look.occupancy,
                "whiteness": 1.0,
                "edge": float(np.median(look.blur.edge)),
                "chroma_noise": float("nan"),
                "chroma_spread": float("nan"),
                "chroma_mean_a": float("nan"),
                "chroma_mean_b": float("nan"),
            }
        scores: dict[str, float] = {}
        reasons: dict[str, str] = {}

        s_in, s_ring = i["blur_sigma"], r["blur_sigma"]
        if np.isfinite(s_in) and i["edge_tiles"] >= 1:
            ref = s_ring if np.isfinite(s_ring) else look.sharp_ref
            ref = ref if np.isfinite(ref) else 0.5
            ref = max(ref, 0.5)
            if s_in >= max(ref + 1.0, 2.0 * ref, 1.5):
                sev = severity("blur", s_in) - 0.5 * severity("blur", ref)
                reason = f"edges {s_in:.1f} px wide (Gaussian sigma) against {ref:.1f} px around it"
                if look.sharp_ref < 1.0 and (
                    area >= self.config.dof_area or look.soft_fraction >= self.config.dof_area
                ):
                    sev = min(sev, 0.25)
                    reason += "; a large soft area next to sharp detail reads as intended depth of field"
                scores["blur"], reasons["blur"] = sev, reason

        n_in, n_ring = i["noise_sigma"], r["noise_sigma"]
        # white at pixel scale, and in colour as much as in luma (or very white): noise, not texture
        noisy = i["whiteness"] >= 1.35 and (i["chroma_noise"] >= 1.3 or i["whiteness"] >= 1.75)
        if np.isfinite(n_in) and noisy:
            ref = n_ring if np.isfinite(n_ring) else look.noise_floor
            if n_in >= 1.6 * ref + 1.0:
                scores["noise"] = severity("noise", n_in) - 0.5 * severity("noise", ref)
                reasons["noise"] = f"grain of sigma {n_in:.1f} (of 255) against {ref:.1f} around it"

        b_in, b_ring = i["blockiness"], r["blockiness"]
        if np.isfinite(b_in) and b_in >= 0.25 and b_in >= (b_ring if np.isfinite(b_ring) else 0) + 0.2:
            scores["jpeg"] = severity("jpeg", b_in)
            reasons["jpeg"] = f"8x8 block borders {b_in:.2f}x stronger than block interiors"

        if i["clipped"] >= 0.25 and i["clipped"] >= r["clipped"] + 0.15:
            scores["overexposure"] = severity("overexposure", i["clipped"])
            reasons["overexposure"] = (
                f"{100 * i['clipped']:.0f}% of pixels blown out against {100 * r['clipped']:.0f}% around"
            )

        # a darkened region keeps its structure (edges scale with brightness); dark content is often flat
        structured = i["edge"] >= 0.3 * r["edge"] * i["mean"] / max(r["mean"], 1e-3) and i["edge"] > 2.0
        if (
            structured
            and i["mean"] < 0.55 * r["mean"]
            and i["p99"] < 0.6 * max(r["p99"], 1e-3)
            and i["p99"] < 0.5
        ):
            rel = i["p99"] / max(r["p99"], 0.3)
            scores["underexposure"] = severity("underexposure", rel)
            reasons["underexposure"] = (
                f"brightest tones reach {100 * i['p99']:.0f}% against {100 * r['p99']:.0f}% around"
            )

        rng_in, rng_ring = i["p95"] - i["p05"], r["p95"] - r["p05"]
        if rng_in < 0.55 * rng_ring and i["p05"] > r["p05"] + 0.06 and i["p95"] < r["p95"] - 0.04:
            scores["low_contrast"] = severity("low_contrast", 0.9 * rng_in / max(rng_ring, 1e-3))
            reasons["low_contrast"] = (
                f"tones span {100 * rng_in:.0f}% against {100 * rng_ring:.0f}% around, blacks lifted"
            )

        # A cast adds one vector to every pixel's log-chroma: the region's greyest pixels move away
        # from the image's greyest by as much as its mean moves from the surroundings' mean, and its
        # variety of colours stays. A uniformly coloured object moves the mean and loses the variety.
        if (
            np.isfinite(i["neutral_a"])
            and np.isfinite(i["chroma_mean_a"])
            and np.isfinite(r["chroma_mean_a"])
        ):
            shift_n = np.array([i["neutral_a"], i["neutral_b"]]) - np.nan_to_num(look.neutral)
            shift_m = np.array(
                [i["chroma_mean_a"] - r["chroma_mean_a"], i["chroma_mean_b"] - r["chroma_mean_b"]]
            )
            d = float(np.linalg.norm(shift_n))
            dm = float(np.linalg.norm(shift_m))
            agree = d > 0 and dm > 0 and float(shift_n @ shift_m) / (d * dm) > 0.8 and 0.5 < dm / d < 2.0
            varied = i["chroma_spread"] >= 0.6 * r["chroma_spread"]
            if d > 0.3 and agree and varied:
                scores["color_cast"] = severity("color_cast", float(np.expm1(d)))
                reasons["color_cast"] = (
                    f"the whole region is tinted: its greyest pixels and its mean shifted by {d:.2f} (log-chroma)"
                )

        o_in, o_ring = i["occupancy"], r["occupancy"]
        if np.isfinite(o_in) and o_in < 0.35 and (not np.isfinite(o_ring) or o_ring > 0.5):
            scores["artifact"] = severity("artifact", o_in)
            reasons["artifact"] = f"only {100 * o_in:.0f}% of grey levels used: banding / posterization"

        numbers = {f"in_{k}": round(v, 4) for k, v in i.items() if np.isfinite(v)}
        numbers.update({f"ring_{k}": round(v, 4) for k, v in r.items() if np.isfinite(v)})
        if not scores:
            return "", 0.0, "nothing stands out against the surroundings", numbers
        kind = max(scores, key=scores.get)
        return kind, float(np.clip(scores[kind], 0.0, 1.0)), reasons[kind], numbers

    def _confirm_global(
        self, rgb: np.ndarray, look: Look, kind: str, sus: float
    ) -> tuple[float, str, TraceStep]:
        """Zoom at native resolution where ``kind`` is best measured, to confirm a global suspicion."""
        h, w = rgb.shape[:2]
        t_native = look.tile / look.scale
        if kind == "blur":
            edge = np.where(np.isfinite(look.blur.sigma), look.blur.edge, -1.0)
            r, c = np.unravel_index(int(np.argmax(edge)), edge.shape)
            why = "the whole image looks soft even where it has the most detail"
        elif kind == "noise":
            quiet = np.where(look.tile_p95 > 20, look.blur.edge, np.inf)
            r, c = np.unravel_index(int(np.argmin(quiet)), quiet.shape)
            why = "fine grain everywhere, even in the flattest areas"
        else:  # jpeg
            t_native = float(look.block_tile)
            r, c = np.unravel_index(int(np.argmax(look.block)), look.block.shape)
            why = "8x8 block borders show across the image"
        side = max(96.0, 3 * t_native)
        cx, cy = (c + 0.5) * t_native, (r + 0.5) * t_native
        box = (
            int(max(0, cx - side / 2)),
            int(max(0, cy - side / 2)),
            int(min(w, cx + side / 2)),
            int(min(h, cy + side / 2)),
        )
        zoom = crop_zoom(rgb, box, normalized=False, context=0.0, min_side=64, target_size=None)
        patch = zoom.image
        y = cues.luminance(patch)
        tile = _tile_for(*patch.shape[:2], 32)
        if kind == "blur":
            value = _pct(cues.blur_map(y, tile).sigma, 30)
            sev = severity("blur", value)
            obs = f"edges are {value:.1f} px wide (Gaussian sigma) at native resolution"
        elif kind == "noise":
            ns, wh = cues.noise_sigma_map(y, tile)
            value = float(np.median(ns))
            sev = severity("noise", value) if float(np.median(wh)) > 1.25 else 0.0
            obs = f"grain of sigma {value:.1f} (of 255), whiteness {float(np.median(wh)):.2f}"
        else:
            value = cues.blockiness_map(y, max(8, min(32, min(patch.shape[:2]) // 2 // 8 * 8)))[1]
            sev = max(severity("jpeg", value), sus) if value > 0.1 else 0.5 * sus
            obs = f"block borders {value:.2f}x stronger than block interiors"
        # the look and the zoom measure the same quantity; keep the better-supported middle ground
        sev = float(0.5 * (sev + sus)) if kind != "jpeg" else sev
        step = TraceStep(
            thought=f"Suspect {kind} over the whole image: {why}. Zoom in at native resolution to check.",
            tool_call=ToolCall("crop_zoom", {"bbox_2d": list(box), "context": 0.0, "target_size": None}),
            observation=f"{'Confirmed' if sev >= self.config.min_severity else 'Not confirmed'}: {obs}.",
            view=list(zoom.box),
            data={"value": round(float(value), 4), "severity": round(sev, 4)},
        )
        return sev, obs, step

    # ------------------------------------------------------------------ (d) verdict
    def assess(self, image: np.ndarray) -> Diagnosis:
        t0 = time.perf_counter()
        rgb = as_rgb8(image)
        check_image_size(rgb)
        h, w = rgb.shape[:2]
        look = self._global_look(rgb)
        look.soft_fraction = self._soft_fraction(look)
        t_look = time.perf_counter()
        sus = self._global_suspicions(look)
        e = look.exposure
        lh, lw = round(h * look.scale), round(w * look.scale)
        trace = [
            TraceStep(
                thought=f"First a look at the whole image ({w}x{h}, seen at {lw}x{lh}): exposure, contrast, colour, "
                "and where local cues deviate.",
                observation=(
                    f"mean brightness {100 * e.mean:.0f}%, tones {100 * e.p01:.0f}-{100 * e.p99:.0f}%, "
                    f"{100 * e.clipped_hi:.1f}% blown out; light colour off neutral by {look.cast:.2f}; "
                    f"sharpest edges {look.sharp_ref:.1f} px; noise floor {look.noise_floor:.1f}; "
                    f"8x8 blockiness {look.block_global:.2f}; grey-level use {100 * look.occupancy:.0f}%."
                ),
                view=[0, 0, w, h],
                data={"suspicions": {k: round(v, 4) for k, v in sus.items()}},
            )
        ]
        findings: list[tuple[float, float]] = []
        regions: list[Region] = []
        full = [0, 0, w, h]
        global_reason = {
            "overexposure": f"{100 * e.clipped_hi:.0f}% of the image is blown out",
            "underexposure": f"the brightest tones reach only {100 * e.p999:.0f}%",
            "low_contrast": f"tones span only {100 * (e.p99 - e.p01):.0f}% with blacks lifted to {100 * e.p01:.0f}%",
            "color_cast": f"the light colour is off neutral by {look.cast:.2f} (RGB {np.round(look.light, 2).tolist()})",
            "artifact": f"only {100 * look.occupancy:.0f}% of grey levels are used: banding",
        }
        for kind, s in sus.items():
            reason = global_reason.get(kind, "")
            if kind in ("blur", "noise", "jpeg") and s >= 0.08:
                s, reason, step = self._confirm_global(rgb, look, kind, s)
                trace.append(step)
            findings.append((s, 1.0))
            if s >= self.config.min_severity:
                regions.append(Region(full, kind, round(s, 3), f"whole image: {reason}"))

        global_kinds = {r.distortion for r in regions}
        for cand in self._candidates(look, (h, w)):
            if cand.distortion in global_kinds:
                continue  # already everywhere; a local look adds nothing
            zoom = self._zoom(rgb, cand.box, self.config.context)
            area = (cand.box[2] - cand.box[0]) * (cand.box[3] - cand.box[1]) / float(w * h)
            kind, sev, reason, numbers = self._judge(
                self._measure(zoom.image, zoom.requested_in_zoom()), look, area
            )
            confirmed = bool(kind) and sev >= self.config.min_severity
            trace.append(
                TraceStep(
                    thought=f"Region {list(cand.box)} looks suspicious for {cand.distortion}: {cand.why} "
                    f"(estimated severity {cand.estimate:.2f}). Zoom in with its surroundings to compare.",
                    tool_call=ToolCall(
                        "crop_zoom",
                        {"bbox_2d": list(cand.box), "context": self.config.context, "target_size": None},
                    ),
                    observation=(
                        f"Confirmed {kind} (severity {sev:.2f}): {reason}."
                        if confirmed
                        else f"Rejected: {reason or 'too mild'}."
                    ),
                    view=list(zoom.box),
                    data=numbers,
                )
            )
            if kind:
                findings.append((sev, area_weight(area)))
            if confirmed:
                regions.append(Region(list(cand.box), kind, round(sev, 3), reason))

        score = score_from(findings)
        regions.sort(key=lambda r: -r.severity)
        worst = ", ".join(f"{r.distortion} {r.severity:.2f}" for r in regions[:3]) or "nothing significant"
        trace.append(
            TraceStep(
                thought="Verdict from what was confirmed.",
                observation=f"score {score:.2f}; {worst}.",
                view=full,
            )
        )
        t_end = time.perf_counter()
        return Diagnosis(
            score=round(score, 4),
            regions=regions,
            trace=trace,
            backend=self.name,
            image_size=(w, h),
            timings={
                "look_s": round(t_look - t0, 4),
                "zoom_s": round(t_end - t_look, 4),
                "total_s": round(t_end - t0, 4),
            },
        )


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
