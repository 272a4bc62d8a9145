"""The learned critic: the think-with-images loop with a small trained network as its eyes.

(a) A global look: the network sees the whole image at reduced size and returns, per distortion
type, where it is (per-pixel probability), how bad (severity) and the damage to the whole image;
a second look at 320 px finds wide blur, whose edges at full size are wider than any it learned.
(b) Connected areas of the probability maps become candidate regions; when the look was reduced, a
native-resolution peek at the most detailed area checks what a reduced look cannot see (noise,
JPEG blocks, slight blur). (c) ``crop_zoom`` re-examines each candidate *with its surroundings*,
at native resolution (or at the scale it was seen): the network looks again and confirms,
retypes, grades and re-localizes it; classical cues vote where they are reliable (noise level,
JPEG quantization and blockiness, clipping, depth of field); patches read off their borders (a
rectangle whose border steps the same way all around) count on that reading, the network's zoom
on them recorded beside it (it sees a patch's tone change at best weakly, a tint never); ellipses
whose soft border steps alike all around are fitted and read the same way, and count where the
network sees their exposure change (the classical judge, their tint or flattening); last, the
classical critic's own leads, judged by its tile measurements, count where the network zoomed on
them agrees (a tint or banding on the judge's reading alone). (d) The score follows from the
whole-image damage (the network's, with the classical measurements of what they measure
well), raised where a zoom found worse.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from ..backends import AssessorBackend
from ..classical import cues
from ..classical.critic import (
    CONFIRM_FROM,
    CONFIRMED_AT_NATIVE,
    _explained_by,
    _quantization_severity,
    seam_severity,
)
from ..classical.severity import area_weight
from ..imageio import as_rgb8, check_image_size
from ..schema import Diagnosis, Region, ToolCall, TraceStep
from ..zoom import Zoom, box_intersection, box_iou, crop_zoom, share_inside
from .data import score_from_damage
from .model import MAP_STRIDE, TYPES, Prediction, WeightsError, load_weights, predict, prepare_for_inference

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "critic.safetensors"
FINE_TYPES = ("blur", "noise", "jpeg", "artifact")  # need native pixels to be seen
TONE_TYPES = ("overexposure", "underexposure", "low_contrast", "color_cast")
LOCAL_TONES = TONE_TYPES[1:]  # tones the network sees only as a change (clipping it measures)
VETO = 0.35  # severity factor when a reliable classical cue finds nothing of the kind
NOISE_VETO = 0.0  # texture is not noise: smoothing it away raises a score and loses the detail
# no 8x8 block borders and no quantization steps: what the network reads as JPEG is texture (the
# moon's craters, a crowd of small lights), and deblocking it would only soften the photo
JPEG_VETO = 0.0
SELF_LOCALIZING = ("noise", "jpeg", "artifact")  # their fixes find the defect inside a box
# what a soft patch may read as, by the feature its border steps in (``cues.soft_patches``)
SOFT_KINDS = {
    "exposure": ("underexposure", "overexposure"),
    "red-green": ("color_cast",),
    "blue-green": ("color_cast",),
    "contrast": ("low_contrast",),
}


@dataclass
class LearnedConfig:
    look_size: int = 640  # long side of the global look
    threshold: float = 0.5  # a map cell shows a type when its probability exceeds this
    min_area: float = 0.015  # connected areas smaller than this share of the image are not candidates
    max_zooms: int = 4  # at most this many candidates are re-examined
    zoom_size: int = 512  # native pixels up to this side with context; larger zooms are reduced
    context: float = 0.5  # context kept around a candidate (fraction of its size per side)
    min_severity: float = 0.15  # findings milder than this are not reported
    global_cover: float = 0.75  # a type shown over this share of the image is a whole-image defect
    confirm: float = 0.35  # share of a candidate's cells that must still show the type in the zoom
    cues: bool = True  # let classical cues vote (in zooms, overall) and lead (their own candidates)
    cue_weight: float = 0.8  # weight of the classical whole-image exposure / contrast / colour grades
    # graded by the measurement once seen (edge widths, noise sigma, quantization steps, grey levels)
    measured: tuple[str, ...] = ("blur", "noise", "jpeg", "artifact")
    measured_gate: float = 0.1  # ... where the network's whole-image damage of the kind reaches this
    # whole-image blur and noise measured again at native pixels where they measure best (the most
    # detailed tile, the quietest one), as the classical critic confirms them: a reduced look
    # understates both
    confirm_global: tuple[str, ...] = ("blur", "noise")
    coarse_look: int = 320  # a second look at this long side for the coarse types (0: none)
    coarse_types: tuple[str, ...] = ("blur",)
    # a blur lead the network does not see at native pixels, whose edges the classical judge
    # measures wider than this (Gaussian sigma, px), is zoomed on again reduced until they are this
    # wide, about the widest the network tells natively (0: not): a sigma-6 blur on the moon
    # showed 0.09 inside against 0.08 around at native pixels, 0.36 against 0.10 reduced
    wide_edges: float = 2.5
    max_seams: int = 2  # patches found by their borders (classical cue) zoomed on, besides max_zooms
    # ellipses whose border steps alike all around on a coarse look (``cues.soft_patches``: a
    # patch pasted through a soft round mask has no straight side for the border reading), read
    # at native pixels across the border (0: none). One counts where one physically consistent
    # tone map explains its border, of the kind the stepping feature measures, with the content
    # running on across it (``soft_continuity``: a flat disk on a busy ground reads as one gain
    # too), and where the network zoomed on it sees that exposure change; a tint or flattening,
    # which it never sees surely, where the classical judge reads it inside too (a cup's flat
    # crema and a cat's smooth fur read as flattened patches by their borders alone), or a tint
    # at least ``soft_tint`` strong with the content clearly running on across its border
    soft_patches: int = 12
    soft_continuity: float = 0.3
    soft_tint: float = 0.35  # a tint this strong (log-chroma shift) counts on its border reading alone
    # a candidate whose coarse border does not read is fitted on a look of this long side first
    # (0: not), and kept where at least soft_fit_coverage of the pairs across the fitted border
    # step its way: a pasted patch steps all along its border (0.91-0.96 of the pairs), an
    # object's outline along most of it (the cat's fur 0.84-0.87, the cameraman's coat 0.75-0.78)
    soft_fit_look: int = 384
    soft_fit_coverage: float = 0.9
    # a tint that also darkens or brightens its patch by more than this is an object's colour (a
    # brown drink in a white cup: 0.62, the cat's orange fur on grey: 0.69-0.74); the
    # vocabulary's strongest casts scale the light by 0.82 (magenta) to 1.24 (green)
    soft_tint_light: float = 1.3
    # a patch read off its border counts on that reading alone; False: only where the network,
    # zoomed on it, sees some tone defect more_inside times more inside than around
    seam_alone: bool = True
    # a colour cast the classical judge reads in one of its leads counts on that reading: the
    # network's presences inside a tinted patch and around it are equal (False: ask as for tones)
    tint_alone: bool = True
    # banding the classical judge reads in one of its leads counts on that reading, and the whole
    # image's banding is graded by its grey-level count: grey levels are counted (few of them, or
    # exact plateaus in a photo with grain everywhere else), and the network misses them in a soft
    # low-contrast photo (the moon's posterized patches, the moon reduced to 5 levels per channel;
    # False: ask as for the other measured kinds)
    levels_alone: bool = True
    more_inside: float = 1.2  # a change the network sees: this many times more presence inside than around
    # ... where it sees the kind at all: a classical lead's kind the network shows at under this
    # presence inside is not seen, however much it exceeds the (floored) ring; 0.07 against 0.05
    # confirmed a tint's clipped red channel as a blown-out patch, and soft fur as blur
    seen_floor: float = 0.1
    # the classical critic's leads zoomed on, besides the network's own, and the kinds they may
    # count as (the classical judge's measurements: noise level, 8x8 blockiness, clipping, grey
    # levels, edge widths; tones, which the network must see change there, except tints)
    max_cue_leads: int = 6
    # grain, blocks or banding the classical judge boxes inside the network's own area of that kind
    # at this share of its severity or more moves the area's box onto the judge's (``tighten``)
    tighten: float = 0.8
    cue_kinds: tuple[str, ...] = TYPES  # every type the network can show

    def __post_init__(self):
        wrong = sorted(set(self.confirm_global) - set(CONFIRMED_AT_NATIVE))
        if wrong:
            raise ValueError(
                f"confirm_global takes blur, noise or jpeg (what a native zoom confirms), got {wrong}"
            )


@dataclass
class Finding:
    distortion: str
    severity: float
    box: tuple[int, int, int, int]
    reason: str
    confirmed: bool = True
    judged: bool = False  # boxed by the classical judge's tiles (not a connected area of the maps)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class LearnedAssessor(AssessorBackend):
    """Embedded critic with learned eyes: small CNN, CPU in a fraction of a second, GPU when present."""

    name = "learned"

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        *,
        model: str | os.PathLike | None = None,
        device: str | None = None,
        dtype: str | None = None,
        config: LearnedConfig | None = None,
        **overrides,
    ):
        import torch

        if dtype not in (None, "float32", "fp32"):
            raise ValueError(f"the learned critic runs in float32 (got --dtype {dtype}); leave --dtype out")
        path = Path(weights or model or os.environ.get("QDEEPSIGHT_LEARNED_WEIGHTS") or DEFAULT_WEIGHTS)
        self.device = torch.device(device or _default_device())
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device cuda asked for, but torch sees no CUDA GPU; use --device cpu")
        config = config or LearnedConfig()
        for key in overrides:
            if not hasattr(config, key):
                raise TypeError(f"unknown learned-critic option {key!r}")
        self.config = replace(config, **overrides)  # checked again by __post_init__
        try:
            net = load_weights(path, self.device)
        except WeightsError as exc:
            raise RuntimeError(str(exc)) from None
        self.net = prepare_for_inference(net.eval())
        self.weights = path
        self.types = tuple(self.net.config.types)
        from ..classical import ClassicalAssessor

        self._classical = ClassicalAssessor()  # its global look: the measurements the cues vote with

    def _see(self, rgb: np.ndarray) -> Prediction:
        return predict(self.net, rgb, self.device)

    # ------------------------------------------------------------------ helpers
    def _components(self, mask: np.ndarray):
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        for i in range(1, n):
            x, y, w, h, area = stats[i]
            yield (int(x), int(y), int(x + w), int(y + h)), labels == i, int(area)

    @staticmethod
    def _cells_to_box(cells, scale: float, size: tuple[int, int]) -> tuple[int, int, int, int]:
        w, h = size
        x0, y0, x1, y1 = cells
        f = MAP_STRIDE / scale
        return (
            int(max(0, np.floor(x0 * f))),
            int(max(0, np.floor(y0 * f))),
            int(min(w, np.ceil(x1 * f))),
            int(min(h, np.ceil(y1 * f))),
        )

    def _zoom(self, rgb: np.ndarray, box, context: float, reduce: float = 1.0) -> Zoom:
        """Native pixels with context; reduced only when the crop would exceed ``zoom_size`` (or by
        ``reduce``)."""
        side = max(box[2] - box[0], box[3] - box[1]) * (1.0 + 2.0 * context)
        return crop_zoom(
            rgb,
            box,
            normalized=False,
            context=context,
            min_side=64,
            target_size=int(min(self.config.zoom_size, max(64, reduce * side))),
            max_upscale=1.0,
        )

    def _cue_vote(self, rgb: np.ndarray, box, kind: str, sev: float) -> tuple[float, str]:
        """Classical cues where they are reliable, on the region's native pixels (also where the
        network's zoom was reduced): the severity after their vote (raised a little where the cue
        agrees, cut where it finds nothing of the kind, the measurement itself where it says how
        much) and what was measured."""
        if not self.config.cues or kind not in ("noise", "jpeg", "overexposure"):
            return sev, ""
        x0, y0, x1, y1 = (int(v) for v in box)
        region = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        if min(region.shape[:2]) < 32:
            return sev, ""
        if kind == "overexposure":
            clipped = float((cues.channel_max(region) >= 250).mean())
            bright = float(cues.luminance(region).mean() / 255.0)
            if clipped >= 0.05 or bright >= 0.75:
                return (
                    1.1 * sev,
                    f"{100 * clipped:.0f}% of its pixels blown out, mean brightness {100 * bright:.0f}%",
                )
            return VETO * sev, f"only {100 * clipped:.0f}% of its pixels blown out"
        if kind == "jpeg":
            y = cues.luminance(region)
            # the grid of a region compressed with the whole image sits at the image origin
            phase = ((7 - x0) % 8, (7 - y0) % 8)
            # where the coefficients still sit on quantization steps, the steps say how hard it was
            # compressed, whatever the blocks show (a photo saved at quality 80 looks blocky in
            # places to the network, and is not)
            quality, lattice = cues.jpeg_quality(region, y, phase, min_count=10)
            if np.isfinite(quality):
                return _quantization_severity(quality, lattice), f"quantized as by JPEG quality {quality:.0f}"
            tile = max(8, min(64, (min(region.shape[:2]) // 8) * 8))
            _, whole, _ = cues.blockiness(y, tile, phase=phase, origin_phase=None)
            if whole >= 0.25:
                return 1.1 * sev, f"8x8 block borders {whole:.2f}x stronger than block interiors"
            if whole < 0.08:
                return JPEG_VETO * sev, f"hardly any 8x8 block borders ({whole:.2f})"
            return sev, f"8x8 block borders {whole:.2f}x stronger than interiors"
        # noise: white at pixel scale and in colour as much as in luma (or very white): not texture
        tile = 16 if min(region.shape[:2]) < 96 else 32
        ts = cues.tile_stats(region, tile, native=False)
        with np.errstate(invalid="ignore"):
            grain = (ts.whiteness >= 1.35) & ((ts.chroma_noise >= 1.3) | (ts.whiteness >= 1.75))
        share = float(np.mean(grain)) if grain.size else 0.0
        sigma = float(np.nanmedian(ts.noise)) if np.isfinite(ts.noise).any() else float("nan")
        if share >= 0.5:
            return 1.1 * sev, f"grain of sigma {sigma:.1f} (of 255), white and coloured like sensor noise"
        return (
            NOISE_VETO * sev,
            f"its fine detail is texture rather than grain ({100 * share:.0f}% of tiles grainy)",
        )

    def _global_cues(self, rgb: np.ndarray):
        """The classical critic's whole-image measurements, graded on its severity curves: edge width
        of the sharpest fifth, noise floor, 8x8 blockiness, exposure percentiles and clipping, the
        light's colour, grey-level use (see ``assessor.classical``); its look, which maps them; and
        the patches it reads off their borders (a rectangle whose border steps the same way all
        around, with one physically consistent tone map across it). Tones and light colour are
        measured with those patches undone, and suspected blur and noise confirmed at native
        pixels (``confirm_global``), as the classical critic does; those zooms' trace steps."""
        c = self._classical
        look = c._global_look(rgb)
        seams = c._read_seams(rgb, look)
        sus = c._global_suspicions(c._without_seams(look, seams))
        zooms = []  # the native looks that confirmed them, for the trace
        for kind in self.config.confirm_global:
            if sus[kind] >= CONFIRM_FROM:
                sus[kind], _, step = c._confirm_global(rgb, look, kind, sus[kind])
                zooms.append(step)
        return sus, look, seams, zooms

    def _examine_seam(self, rgb: np.ndarray, seam) -> tuple[Finding | None, Zoom, dict]:
        """Zoom on a patch the classical border reading found and record what the network sees.

        The reading (one tone map all along a rectangle's border, from pixel pairs mirrored across
        it) found no patch on the benchmark's 25 clean photos and hard negatives, while the network
        sees a patch's tone change weakly (a tint not at all): its agreement is asked only with
        ``seam_alone=False``."""
        zoom = self._zoom(rgb, seam.box, self.config.context)
        seen, numbers = self._tone_change(zoom)
        if seam.reading:
            numbers["border_gains"] = [round(float(g), 3) for g in seam.reading.gains]
        if not seen:
            if not self.config.seam_alone:
                return None, zoom, numbers
            seen = "the network sees no more change inside than around it"
        return (
            Finding(seam.distortion, float(seam.severity), tuple(seam.box), f"{seam.reason}; {seen}"),
            zoom,
            numbers,
        )

    def _examine_soft_patch(
        self, rgb: np.ndarray, patch, look
    ) -> tuple[Finding | None, Zoom | None, dict, str]:
        """Read a soft round patch's border at native pixels and, where one tone map explains it,
        zoom on it: the finding (None where it does not hold), the zoom, the numbers and why not."""
        cfg = self.config

        def read(box):
            reading = cues.read_ellipse(rgb, box)
            return reading, cues.seam_defect(reading) if reading is not None else None

        box = patch.box
        reading, defect = read(box)
        if (defect is None or defect[0] not in SOFT_KINDS[patch.feature]) and cfg.soft_fit_look:
            # the coarse look's border is a few native pixels off, the pairs read straddle it:
            # fitted on a reduced look first, its sides within 8 pixels there (two pixels of the
            # 96 px search look at 384; further, they reach an object's outline nearby)
            box = cues.fit_soft_patch(
                rgb, patch, long_side=cfg.soft_fit_look, radius=8, min_coverage=cfg.soft_fit_coverage
            )
            if box is None:
                return None, None, {}, "no border steps its way"
            reading, defect = read(box)
        if defect is None or defect[0] not in SOFT_KINDS[patch.feature]:
            return None, None, {}, "no one tone map of its kind explains its border"
        # fitted at native pixels, where the steps across the whole border peak exactly on it
        fitted = cues.fit_soft_patch(rgb, replace(patch, box=box))
        if fitted is not None:
            r2, d2 = read(fitted)
            if d2 is not None and d2[0] == defect[0]:
                box, reading, defect = fitted, r2, d2
        kind, value, why = defect
        sev = seam_severity(kind, value)
        numbers = {
            "reading": [kind, round(float(value), 3), round(sev, 3)],
            "border_gains": [round(float(g), 3) for g in reading.gains],
            "continuity": round(reading.continuity, 3),
        }
        if reading.continuity < cfg.soft_continuity:
            return None, None, numbers, f"the content does not run on across it ({reading.continuity:.2f})"
        if sev < cfg.min_severity:
            return None, None, numbers, f"too mild ({kind}, severity {sev:.2f})"
        if kind == "color_cast" and abs(np.log(reading.light)) > np.log(cfg.soft_tint_light):
            return (
                None,
                None,
                numbers,
                f"a tint that scales the light by {reading.light:.2f} is an object's colour",
            )
        zoom = self._zoom(rgb, box, cfg.context)
        if kind == "color_cast" and value >= cfg.soft_tint and reading.continuity >= 0.5:
            # as a tinted rectangle's border reading counts alone: a coloured object's flat inside
            # does not run on across its outline, a dead-leaves disk's tint is milder (0.23-0.29)
            seen = "a strong tint with the content running on across its border"
        elif kind in ("color_cast", "low_contrast"):  # the network never sees a tint, nor flattening surely
            judged, more = self._judge_cue_lead(rgb, look, box, set())
            numbers.update(more)
            if judged is None or judged.distortion != kind:
                return None, zoom, numbers, f"the classical judge reads no {kind.replace('_', ' ')} inside it"
            seen = f"the classical judge reads {kind.replace('_', ' ')} inside it too"
        else:
            seen, more = self._sees_change(zoom, kind)
            numbers.update(more)
            if not seen:
                return (
                    None,
                    zoom,
                    numbers,
                    f"the network sees no more {kind.replace('_', ' ')} inside than around it",
                )
        return Finding(kind, sev, tuple(box), f"{why} (a soft round border); {seen}"), zoom, numbers, ""

    def _sees_change(self, zoom: Zoom, kind: str) -> tuple[str, dict]:
        """Whether the network, zoomed on a region, shows ``kind`` ``more_inside`` times more inside
        than around (at ``seen_floor`` at least), or for a brightened patch, underexposure that many
        times less (a night sky brightened looks less dark than the sky around it; not the other
        way: a dark blob of a blurred camera looks less bright than the grey sky around it)."""
        pred = self._see(zoom.image)
        inside = self._requested_cells(zoom, pred)
        cfg = self.config
        kinds = [kind] + (["underexposure"] if kind == "overexposure" else [])
        both = {t: self._in_and_around(pred, inside, self.types.index(t)) for t in kinds}
        numbers = {"network_in_ring": {t: [round(v[0], 3), round(v[1], 3)] for t, v in both.items()}}
        p_in, p_ring, ratio = both[kind]
        if p_in >= cfg.seen_floor and ratio >= cfg.more_inside:
            return (
                f"the network sees {kind.replace('_', ' ')} {p_in:.2f} inside against {p_ring:.2f} around",
                numbers,
            )
        for t in kinds[1:]:
            q_in, q_ring, _ = both[t]
            if q_ring >= cfg.seen_floor and q_ring >= cfg.more_inside * q_in:
                return f"the network sees {t} {q_ring:.2f} around against {q_in:.2f} inside", numbers
        return "", numbers

    def _tone_change(self, zoom: Zoom) -> tuple[str, dict]:
        """Whether the network, zoomed on a region with its surroundings, sees some tone defect
        ``more_inside`` times more inside than around: it rarely sees a patch's tone surely (a tint
        not at all), but it sees a change. What it saw ("" for no change) and its presences."""
        pred = self._see(zoom.image)
        inside = self._requested_cells(zoom, pred)
        ratios = {t: self._in_and_around(pred, inside, self.types.index(t)) for t in TONE_TYPES}
        best = max(ratios, key=lambda t: ratios[t][2])
        p_in, p_ring, ratio = ratios[best]
        numbers = {"network_in_ring": {t: [round(v[0], 3), round(v[1], 3)] for t, v in ratios.items()}}
        if ratio < self.config.more_inside:
            return "", numbers
        return (
            f"the network sees {best.replace('_', ' ')} {p_in:.2f} inside against {p_ring:.2f} around",
            numbers,
        )

    @staticmethod
    def _in_and_around(pred: Prediction, inside: np.ndarray, k: int) -> tuple[float, float, float]:
        """Type k's mean presence over the region asked for and over its context, and how many
        times more inside (the context floored at 0.02; none when it has under 4 cells)."""
        p_in = float(pred.presence[k][inside].mean())
        p_ring = float(pred.presence[k][~inside].mean()) if (~inside).sum() >= 4 else 0.0
        return p_in, p_ring, p_in / max(p_ring, 0.02)

    def _judge_cue_lead(self, rgb: np.ndarray, look, box, exclude: set[str]):
        """A region the classical cues single out: the classical critic zooms on it and judges it
        tile by tile (type, severity, tightened box). None where nothing of ``cue_kinds`` holds."""
        c = self._classical
        h, w = rgb.shape[:2]
        judged = c._judge(
            c._measure(rgb, box, look),
            look,
            box,
            (box[2] - box[0]) * (box[3] - box[1]) / float(w * h),
            exclude,
        )
        numbers = {"classical": [judged.distortion, round(float(judged.severity), 3)]}
        if judged.distortion not in self.config.cue_kinds or judged.severity < self.config.min_severity:
            return None, numbers
        return judged, numbers

    def _network_agrees(self, rgb: np.ndarray, judged) -> tuple[Finding | None, Zoom, dict]:
        """The network zoomed on a classical finding: where the cues measure the kind (noise level,
        8x8 blockiness, clipping, grey levels, edge widths) it must see the same type over a good
        part of it or clearly more inside than around; a tone it cannot name surely, it must see
        change there, except a tint, which it never sees (``tint_alone``). Banding counts on the
        grey-level count alone (``levels_alone``). Its own leads miss these where its reduced look
        hides them or texture elsewhere outranks them."""
        zoom = self._zoom(rgb, judged.box, self.config.context)
        if judged.distortion in LOCAL_TONES:
            seen, numbers = self._tone_change(zoom)
            if not seen and judged.distortion == "color_cast" and self.config.tint_alone:
                seen = "the network sees no change (it never sees a tint)"
            if not seen:
                return None, zoom, numbers
        else:
            seen, numbers = self._sees_kind(zoom, judged.distortion)
            wide = self.config.wide_edges
            if not seen and judged.distortion == "blur" and wide and judged.value > wide:
                # a wide blur's edges are wider than any the network learned at native pixels: it
                # sees them reduced, as at its step back
                zoom2 = self._zoom(rgb, judged.box, self.config.context, wide / judged.value)
                seen, more = self._sees_kind(zoom2, judged.distortion, around=True)
                numbers["reduced"] = more
                if seen:
                    zoom, seen = zoom2, f"{seen} (seen at {zoom2.image.shape[1]} px)"
            if not seen and judged.distortion == "artifact" and self.config.levels_alone:
                p_in, p_ring = numbers["network_in_ring"]
                seen = f"the network does not see it ({p_in:.2f} inside against {p_ring:.2f} around)"
            if not seen:
                return None, zoom, numbers
        box = tuple(int(v) for v in judged.box)
        return (
            Finding(judged.distortion, float(judged.severity), box, f"{judged.reason}; {seen}", judged=True),
            zoom,
            numbers,
        )

    def _sees_kind(self, zoom: Zoom, kind: str, around: bool = False) -> tuple[str, dict]:
        """Whether the network, zoomed on a region, shows ``kind`` over a good part of it or clearly
        more of it inside than around (where it shows it at all): what it saw ("" for nothing)
        and its presences. With ``around``, more inside than around is asked in either case: a
        reduced zoom shows soft content as blur all over (the moon reduced to 5 grey levels)."""
        pred = self._see(zoom.image)
        k = self.types.index(kind)
        inside = self._requested_cells(zoom, pred)
        share = float((pred.presence[k][inside] > self.config.threshold).mean())
        p_in, p_ring, ratio = self._in_and_around(pred, inside, k)
        numbers = {"network_share": round(share, 3), "network_in_ring": [round(p_in, 3), round(p_ring, 3)]}
        if share >= self.config.confirm and (not around or ratio >= self.config.more_inside):
            return f"the network sees it over {100 * share:.0f}% of the region", numbers
        if ratio >= self.config.more_inside and p_in >= self.config.seen_floor:
            return f"the network sees it {p_in:.2f} inside against {p_ring:.2f} around", numbers
        return "", numbers

    # ------------------------------------------------------------------ (b') native peek
    def _peek(
        self, rgb: np.ndarray, look_img: np.ndarray, scale: float
    ) -> tuple[Prediction, Zoom, TraceStep]:
        """A reduced look hides fine defects: look at native pixels where the image has most detail."""
        h, w = rgb.shape[:2]
        side = min(self.config.zoom_size, h, w)
        grey = cv2.cvtColor(look_img, cv2.COLOR_RGB2GRAY).astype(np.float32)
        energy = np.abs(cv2.Laplacian(grey, cv2.CV_32F))
        k = max(3, int(side * scale) | 1)
        energy = cv2.blur(energy, (k, k))
        cy, cx = np.unravel_index(int(np.argmax(energy)), energy.shape)
        cx, cy = cx / scale, cy / scale
        x0 = int(np.clip(cx - side / 2, 0, w - side))
        y0 = int(np.clip(cy - side / 2, 0, h - side))
        box = (x0, y0, x0 + side, y0 + side)
        zoom = crop_zoom(rgb, box, normalized=False, context=0.0, min_side=64, target_size=None)
        pred = self._see(zoom.image)
        step = TraceStep(
            thought="The first look was reduced, which hides noise, JPEG blocks and slight blur. "
            "Look at native pixels where the image has the most detail.",
            tool_call=ToolCall("crop_zoom", {"bbox_2d": list(box), "context": 0.0, "target_size": None}),
            observation="native damage: "
            + ", ".join(f"{t} {pred.damage[i]:.2f}" for i, t in enumerate(self.types) if t in FINE_TYPES),
            view=list(zoom.box),
            data={"damage": {t: round(float(pred.damage[i]), 4) for i, t in enumerate(self.types)}},
        )
        return pred, zoom, step

    @staticmethod
    def _requested_cells(zoom: Zoom, pred: Prediction) -> np.ndarray:
        """The zoom's map cells that cover the region asked for (the rest is its context)."""
        rx0, ry0, rx1, ry1 = zoom.requested_in_zoom()
        inside = np.zeros(pred.presence.shape[1:], bool)
        c0, r0 = rx0 // MAP_STRIDE, ry0 // MAP_STRIDE
        inside[r0 : max(r0 + 1, -(-ry1 // MAP_STRIDE)), c0 : max(c0 + 1, -(-rx1 // MAP_STRIDE))] = True
        return inside

    def _leads(self, pred: Prediction, scale: float, size: tuple[int, int], kinds, zoom_scale: float):
        """Candidates from a look's maps: (priority, type, box in source pixels, severity, share of the
        image, the scale to zoom at: 1 for native pixels)."""
        cfg = self.config
        out = []
        for t in kinds:
            i = self.types.index(t)
            for cells, comp, area in self._components(pred.presence[i] > cfg.threshold):
                if area < max(4, cfg.min_area * pred.presence[i].size):
                    continue
                sev = float(
                    (pred.severity[i][comp] * pred.presence[i][comp]).sum()
                    / max(pred.presence[i][comp].sum(), 1e-6)
                )
                frac = area / float(pred.presence[i].size)
                box = self._cells_to_box(cells, scale, size)
                out.append((sev * np.sqrt(frac), t, box, sev, frac, zoom_scale))
        return out

    # ------------------------------------------------------------------ (c) zoom on a candidate
    def _examine(self, rgb: np.ndarray, box, kind: str, reduce: float = 1.0) -> tuple[Finding, Zoom, dict]:
        cfg = self.config
        zoom = self._zoom(rgb, box, cfg.context, reduce)
        pred = self._see(zoom.image)
        zh, zw = zoom.image.shape[:2]
        inside = self._requested_cells(zoom, pred)
        ring = ~inside
        p_in = pred.presence[:, inside].mean(axis=1)
        shown = pred.presence[:, inside] > cfg.threshold
        share = shown.mean(axis=1)
        sev_in = np.array(
            [
                float(
                    (pred.severity[t, inside] * pred.presence[t, inside]).sum()
                    / max(pred.presence[t, inside].sum(), 1e-6)
                )
                for t in range(len(self.types))
            ]
        )
        p_ring = pred.presence[:, ring].mean(axis=1) if ring.any() else np.zeros(len(self.types))
        best = int(np.argmax(share * np.maximum(sev_in, 0.05)))
        k = self.types.index(kind)
        chosen = (
            k
            if share[k] >= cfg.confirm and share[k] * sev_in[k] >= 0.8 * share[best] * sev_in[best]
            else best
        )
        kind2 = self.types[chosen]
        numbers = {
            "in_share": {t: round(float(share[i]), 3) for i, t in enumerate(self.types) if share[i] > 0.05},
            "in_severity": {
                t: round(float(sev_in[i]), 3) for i, t in enumerate(self.types) if share[i] > 0.05
            },
            "ring_presence": {
                t: round(float(p_ring[i]), 3) for i, t in enumerate(self.types) if p_ring[i] > 0.05
            },
            "zoom_damage": {
                t: round(float(pred.damage[i]), 3) for i, t in enumerate(self.types) if pred.damage[i] > 0.05
            },
        }
        if share[chosen] < cfg.confirm:
            return Finding(kind, 0.0, tuple(box), "", confirmed=False), zoom, numbers
        h, w = rgb.shape[:2]
        most = (box[2] - box[0]) * (box[3] - box[1]) >= cfg.global_cover * w * h
        if self.types[chosen] in LOCAL_TONES and (
            most or ring.sum() < 4 or p_in[chosen] < cfg.more_inside * p_ring[chosen]
        ):
            # as dark (flat, tinted) around as inside: the scene's own tones, not a local defect;
            # over most of the image (no surroundings to compare) they are the whole-image grade's
            return Finding(kind, 0.0, tuple(box), "", confirmed=False), zoom, numbers
        # re-localize: the zoom's connected area of this type that overlaps the region most
        mask = pred.presence[chosen] > cfg.threshold
        best_box, best_overlap = None, 0
        for cells, comp, _ in self._components(mask):
            overlap = int((comp & inside).sum())
            if overlap > best_overlap:
                best_box, best_overlap, best_comp = cells, overlap, comp
        if best_box is None:
            return Finding(kind, 0.0, tuple(box), "", confirmed=False), zoom, numbers
        x0, y0, x1, y1 = (v * MAP_STRIDE for v in best_box)
        sx0, sy0, sx1, sy1 = zoom.to_source((x0, y0, min(zw, x1), min(zh, y1)))
        new_box = (
            int(max(0, np.floor(sx0))),
            int(max(0, np.floor(sy0))),
            int(min(w, np.ceil(sx1))),
            int(min(h, np.ceil(sy1))),
        )
        sev_map = pred.severity[chosen][best_comp]
        p_map = pred.presence[chosen][best_comp]
        network_sev = float((sev_map * p_map).sum() / max(p_map.sum(), 1e-6))
        sev, measured = self._cue_vote(rgb, new_box, kind2, network_sev)
        sev = float(np.clip(sev, 0.0, 1.0))
        retyped = "" if kind2 == kind else f" (looked like {kind} at first)"
        reason = f"{kind2} over {100 * float(p_in[chosen]):.0f}% of the region{retyped}"
        if p_ring[chosen] < 0.5 * max(float(p_in[chosen]), 1e-3):
            reason += ", clearly worse than its surroundings"
        if measured:
            reason += f"; {measured}"
        numbers["network_severity"] = round(network_sev, 3)
        return Finding(kind2, sev, new_box, reason), zoom, numbers

    # ------------------------------------------------------------------ the loop
    def assess(self, image: np.ndarray) -> Diagnosis:
        t0 = time.perf_counter()
        cfg = self.config
        rgb = as_rgb8(image)
        check_image_size(rgb)
        h, w = rgb.shape[:2]
        full = (0, 0, w, h)
        look_img = cues.reduce_to(rgb, cfg.look_size)
        scale = look_img.shape[1] / float(w)
        look = self._see(look_img)
        t_look = time.perf_counter()
        net = look.damage.astype(np.float64).copy()
        cover = (look.presence > cfg.threshold).mean(axis=(1, 2))
        lh, lw = look_img.shape[:2]
        trace = [
            TraceStep(
                thought=f"First a look at the whole image ({w}x{h}, seen at {lw}x{lh}): which defects, where, how bad.",
                observation="the network sees whole-image damage: "
                + (
                    ", ".join(f"{t} {net[i]:.2f}" for i, t in enumerate(self.types) if net[i] >= 0.05)
                    or "none"
                )
                + "; shown over: "
                + (
                    ", ".join(
                        f"{t} {100 * cover[i]:.0f}%" for i, t in enumerate(self.types) if cover[i] >= 0.02
                    )
                    or "nothing"
                )
                + ".",
                view=list(full),
                data={
                    "network_damage": {t: round(float(net[i]), 4) for i, t in enumerate(self.types)},
                    "cover": {t: round(float(cover[i]), 4) for i, t in enumerate(self.types)},
                },
            )
        ]
        if scale < 0.9:
            peek, _, step = self._peek(rgb, look_img, scale)
            trace.append(step)
            for i, t in enumerate(self.types):
                if t in FINE_TYPES and peek.damage[i] > net[i]:
                    # the peek sees a crop: its damage holds for the image as far as the look agrees
                    net[i] = max(net[i], peek.damage[i] * (0.5 + 0.5 * max(cover[i], 0.5)))
                    cover[i] = max(cover[i], float((peek.presence[i] > cfg.threshold).mean()))

        # whole-image grade: fine defects count where the network sees them *and* the classical
        # measurement agrees; where the network sees blur, noise, JPEG or banding, the measurement
        # (edge widths, noise sigma, quantization steps, grey levels used) says how much: the
        # network's own grade of them levels off (noise at 0.3 from level 3 on, blur at 0.4-0.6
        # from level 2 or 3); exposure, contrast and colour follow the image's histogram measures
        cue, classical_look, seams, zooms = self._global_cues(rgb) if cfg.cues else ({}, None, [], [])
        trace += zooms
        damage = net.copy()
        for i, t in enumerate(self.types):
            if t not in cue:
                continue
            if t in cfg.measured and (net[i] >= cfg.measured_gate or (t == "artifact" and cfg.levels_alone)):
                damage[i] = cue[t]  # banding: the grey-level count alone (see ``levels_alone``)
            elif t in FINE_TYPES:
                damage[i] = float(np.sqrt(net[i] * cue[t]))
            else:
                damage[i] = cfg.cue_weight * cue[t] + (1.0 - cfg.cue_weight) * net[i]
        if cue:
            trace.append(
                TraceStep(
                    thought="Measure what the classical cues measure reliably over the whole image, and weigh both.",
                    observation="whole-image grade: "
                    + (
                        ", ".join(
                            f"{t} {damage[i]:.2f}" for i, t in enumerate(self.types) if damage[i] >= 0.05
                        )
                        or "none"
                    )
                    + ".",
                    view=list(full),
                    data={
                        "cue_damage": {t: round(float(v), 4) for t, v in cue.items()},
                        "damage": {t: round(float(damage[i]), 4) for i, t in enumerate(self.types)},
                    },
                )
            )

        findings: list[Finding] = []
        for i, t in enumerate(self.types):
            if damage[i] >= cfg.min_severity and (
                cover[i] >= cfg.global_cover or cue.get(t, 0.0) >= cfg.min_severity
            ):
                findings.append(
                    Finding(t, float(damage[i]), full, f"whole image: {t} over {100 * cover[i]:.0f}% of it")
                )
        global_kinds = {f.distortion for f in findings}

        # (b) candidates: connected areas of each type's map
        candidates = self._leads(look, scale, (w, h), [t for t in self.types if t not in global_kinds], 1.0)
        if cfg.coarse_look and max(lh, lw) > 1.5 * cfg.coarse_look:
            coarse_img = cues.reduce_to(look_img, cfg.coarse_look)
            csize = (coarse_img.shape[1], coarse_img.shape[0])
            coarse = self._see(coarse_img)
            cscale = scale * csize[0] / float(lw)
            kinds = [t for t in cfg.coarse_types if t not in global_kinds]
            trace.append(
                TraceStep(
                    thought=f"Step back: at {csize[0]}x{csize[1]} a wide blur shows as the softness the "
                    "eyes know best, where at full size its edges are wider than any they learned.",
                    observation="shown over: "
                    + ", ".join(
                        f"{t} {100 * float((coarse.presence[self.types.index(t)] > cfg.threshold).mean()):.0f}%"
                        for t in cfg.coarse_types
                    )
                    + ".",
                    view=list(full),
                    data={"size": list(csize)},
                )
            )
            candidates += self._leads(coarse, cscale, (w, h), kinds, cscale)
        candidates.sort(key=lambda c: -c[0])
        chosen = []
        for cand in candidates:
            if all(box_iou(cand[2], c[2]) < 0.5 for c in chosen):
                chosen.append(cand)
            if len(chosen) >= cfg.max_zooms:
                break

        # (c) first the patches the classical cues read off their borders (the most specific leads),
        # which count on that reading (the network's view recorded); a patch with a border of its
        # own counts even where the whole image shows its kind
        def area_of(box) -> float:
            return (box[2] - box[0]) * (box[3] - box[1]) / float(w * h)

        def weight(f: Finding) -> float:
            return f.severity * area_weight(area_of(f.box))

        def same(f: Finding) -> int | None:
            """The local finding of f's kind that is f seen again (boxes overlapping by half their
            union, or one mostly inside the other), if any."""
            for i, g in enumerate(findings):
                if g.distortion != f.distortion or tuple(g.box) == full:
                    continue
                small = min(area_of(f.box), area_of(g.box)) * w * h
                if box_iou(f.box, g.box) >= 0.5 or box_intersection(f.box, g.box) >= 0.7 * small:
                    return i
            return None

        def count(f: Finding) -> None:
            """A confirmed local finding: reported, and its damage weighed by its area; a defect seen
            twice counts once, as its more severe reading (the damage keeps the larger weight).
            Grain, blocks and banding the classical judge boxed twice keep the extent of both
            boxes: a tile-judged box often holds only the part where they measure strongest, and
            their fixes find the defect inside a box (blocks by recompression, levels on a comb,
            grain by the border where it steps). Not the network's own areas (they spread over
            texture that looks like the defect), not blur (one deconvolution over the box rings
            where the blur is milder: PiG lost 0.6-1.0 dB on two photos), nor tones (a patch's box
            is its border, which one reading puts on the pixel)."""
            i = same(f)
            if i is None:
                findings.append(f)
            else:
                g = findings[i]
                worse = f if f.severity > g.severity else g
                if f.distortion in SELF_LOCALIZING and f.judged and g.judged:
                    a, b = f.box, g.box
                    both = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    worse = replace(worse, box=both)
                findings[i] = worse
            k = self.types.index(f.distortion)
            damage[k] = max(damage[k], weight(f))

        def zoom_step(thought: str, box, zoom: Zoom, f: Finding | None, rejected: str, numbers) -> TraceStep:
            """The trace step of a zoom on a patch: what was asked, where it looked, what held."""
            return TraceStep(
                thought=thought,
                tool_call=ToolCall(
                    "crop_zoom",
                    {"bbox_2d": list(box), "context": cfg.context, "target_size": max(zoom.image.shape[:2])},
                ),
                observation=(
                    f"Confirmed {f.distortion} (severity {f.severity:.2f}) in {list(f.box)}: {f.reason}."
                    if f is not None
                    else f"Rejected: {rejected}."
                ),
                view=list(zoom.box),
                data=numbers,
            )

        seam_findings: list[Finding] = []
        for seam in seams[: cfg.max_seams]:
            f, zoom, numbers = self._examine_seam(rgb, seam)
            trace.append(
                zoom_step(
                    f"Region {list(seam.box)} has a border that steps the same way all around "
                    f"(classical reading: {seam.distortion}, severity {seam.severity:.2f}). "
                    "Zoom in with its surroundings: what does the network see there?",
                    seam.box,
                    zoom,
                    f,
                    "the network sees no more change inside than around it",
                    numbers,
                )
            )
            if f is None or any(box_iou(g.box, f.box) >= 0.5 for g in seam_findings):
                continue
            seam_findings.append(f)
            count(f)

        # (c) then the patches with soft round borders, in a sharp image (where the whole image is
        # soft, every dark object's outline is a soft round border: the cameraman's blurred head)
        if cfg.cues and cfg.soft_patches and classical_look is not None and "blur" not in global_kinds:
            for patch in cues.soft_patches(rgb, top=cfg.soft_patches):
                f, zoom, numbers, why_not = self._examine_soft_patch(rgb, patch, classical_look)
                if zoom is None:
                    continue
                trace.append(
                    zoom_step(
                        f"Ellipse {list(patch.box)}: its soft border steps in {patch.feature} "
                        "alike all around, and the pixels across it read as one tone map. Zoom in: "
                        "does the change hold up close?",
                        patch.box,
                        zoom,
                        f,
                        why_not,
                        numbers,
                    )
                )
                if f is None or any(
                    _explained_by(f, g) or box_iou(f.box, g.box) >= 0.3 for g in seam_findings
                ):
                    continue
                seam_findings.append(f)
                count(f)

        # (c) then zoom on each of the network's leads
        for _, t, box, sev, frac, reduce in chosen:  # a coarse lead is zoomed at the scale it was seen
            f, zoom, numbers = self._examine(rgb, box, t, reduce)
            ok = f.confirmed and f.severity >= cfg.min_severity
            # the classical edge widths vote on blur: a soft background next to sharp detail is intended
            depth = ok and f.distortion == "blur" and classical_look is not None
            depth = depth and self._classical._depth_of_field(classical_look, f.box, area_of(f.box))
            ok = ok and not depth
            trace.append(
                TraceStep(
                    thought=f"Region {list(box)} looks like {t} (severity {sev:.2f}, {100 * frac:.0f}% of the image). "
                    "Zoom in with its surroundings to check.",
                    tool_call=ToolCall(
                        "crop_zoom",
                        {
                            "bbox_2d": list(box),
                            "context": cfg.context,
                            "target_size": max(zoom.image.shape[:2]),
                        },
                    ),
                    observation=(
                        f"Confirmed {f.distortion} (severity {f.severity:.2f}) in {list(f.box)}: {f.reason}."
                        if ok
                        else f"Rejected: {f.reason}, but a soft area next to sharp detail is intended depth of field."
                        if depth
                        else f"Too mild to report (severity {f.severity:.2f}): {f.reason}."
                        if f.confirmed and f.severity > 0
                        else f"Rejected: {f.reason}."
                        if f.confirmed  # a classical cue vetoed it
                        else "Rejected: seen up close with its surroundings, it does not hold."
                    ),
                    view=list(zoom.box),
                    data=numbers,
                )
            )
            if not ok or f.distortion in global_kinds:
                continue
            if any(_explained_by(f, g) for g in seam_findings):
                continue  # a patch's tone map explains the tone cues inside it (blown tiles of a tint)
            count(f)

        # (c) last, the classical critic's own leads, judged by its tile measurements, counted where
        # the network agrees
        leads = []
        if cfg.cues and cfg.max_cue_leads and classical_look is not None:
            leads = [
                cand
                for cand in self._classical._candidates(classical_look, (h, w), seams)
                if cand.finding is None
                and cand.distortion in cfg.cue_kinds
                and cand.distortion not in global_kinds
            ]

        def known(g) -> bool:
            """Already counted: the whole image's kind, the same region at least as severe (unless
            grain, blocks or banding the judge boxed again reach past its box: ``count`` keeps both
            boxes' extent), or a patch's tone map."""
            i = same(g)
            if i is not None and g.distortion in SELF_LOCALIZING and findings[i].judged:
                if share_inside(g.box, findings[i].box) < 1.0:
                    i = None
            return (
                g.distortion in global_kinds
                or (i is not None and findings[i].severity >= g.severity)
                or any(_explained_by(g, s) for s in seam_findings)
            )

        def tighten(g) -> bool:
            """Grain, blocks or banding the judge boxes inside the network's own area of that kind,
            at nearly its severity, is where the defect is: the network's areas spread over texture
            that looks like it (the rocket's grain reached 110 px into the smoke below), and a fix
            measuring the defect over the whole area finds the clean part. The box is the judge's."""
            i = same(g)
            if i is None or g.distortion not in SELF_LOCALIZING or findings[i].judged:
                return False
            f = findings[i]
            if share_inside(g.box, f.box) < 0.9 or g.severity < cfg.tighten * f.severity:
                return False
            findings[i] = replace(
                f, box=tuple(int(v) for v in g.box), judged=True, reason=f"{f.reason}; {g.reason}"
            )
            return True

        for cand in leads[: cfg.max_cue_leads]:
            judged, numbers = self._judge_cue_lead(rgb, classical_look, cand.box, global_kinds)
            f, zoom = None, None
            if judged is None:
                observation = "Rejected: up close the classical measurements do not hold it."
            elif known(judged):
                observation = f"Already counted: {judged.distortion} in {list(judged.box)}."
                if tighten(judged):
                    observation += " Its box is put there: the network's area spread past it."
            else:
                f, zoom, more = self._network_agrees(rgb, judged)
                numbers.update(more)
                observation = (
                    f"Confirmed {f.distortion} (severity {f.severity:.2f}) in {list(f.box)}: {f.reason}."
                    if f is not None
                    else f"Rejected: the classical critic reads {judged.distortion} "
                    f"(severity {judged.severity:.2f}), the network does not see it there."
                )
            trace.append(
                TraceStep(
                    thought=f"Region {list(cand.box)} looks like {cand.distortion} to the classical cues: "
                    f"{cand.why}. Zoom in: do the measurements hold up close, and does the network see it?",
                    tool_call=ToolCall(
                        "crop_zoom",
                        {"bbox_2d": list(cand.box), "context": cfg.context, "target_size": cfg.zoom_size},
                    ),
                    observation=observation,
                    view=list(zoom.box) if zoom is not None else list(cand.box),
                    data=numbers,
                )
            )
            if f is not None:
                count(f)

        regions = [
            Region(list(f.box), f.distortion, round(float(np.clip(f.severity, 0, 1)), 3), f.reason)
            for f in findings
            if f.severity >= cfg.min_severity
        ]
        return self.conclude(
            score_from_damage(damage),
            regions,
            trace,
            (w, h),
            "Verdict from the whole-image damage and what the zooms confirmed.",
            t0,
            t_look,
        )
