"""Training data of the learned critic: synthesized scenes and a few shipped images, degraded with
``assessor.degrade`` (the benchmark's own recipe) at graded strengths, with per-pixel labels.

Held-out rule: the network never sees an image the benchmark uses. Training draws only on
scenes synthesized here (dead leaves, textured leaves, smooth skies, night scenes, depth of
field, 1/f textures; fresh seeds, never the benchmark's) and on shipped images outside
``benchdata.PHOTOS`` and ``benchdata.EXTRA_CLEAN`` and their near-duplicates (``cat`` is
``chelsea``, the right view of the stereo motorcycle is the left one's twin). ``TRAIN_SHIPPED``
and ``HELD_OUT`` are checked against each other when this module is imported.

Labels, at one cell per 8 x 8 pixels, per distortion type: where it is *visible* (the mask of the
region it was applied to, times how much it changed the cell: a blur over a flat sky changes
nothing and is not a defect one can see), its severity, and the damage it does to the whole view
(severity times an area weight). Severities come from ``severity_table``: the SSIM damage a level
does to the training scenes, mapped to 0..1 so that one score scale serves every type.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from .. import benchdata
from ..classical.severity import area_weight, score_from, target_severity
from ..degrade import SYNTHETIC_TYPES, apply_distortion, region_mask
from .model import MAP_STRIDE, TYPES

assert tuple(TYPES) == tuple(SYNTHETIC_TYPES), "the network's types must follow assessor.degrade"

# Every image the benchmark shows a critic, and their near-duplicates: never used for training.
HELD_OUT: frozenset[str] = frozenset(
    {
        *benchdata.PHOTOS,
        *benchdata.EXTRA_CLEAN,
        "cat",  # = chelsea
        "stereo_motorcycle",  # both views: the right one is the benchmark photo's twin
        "motorcycle_right",
        "grace_hopper",  # = hopper
        "clock_motion",
        "ihc",
        "lily",
        "eagle",
        "cells3d",
        "kidney",
        "skin",
        "vortex",
        "human_mitosis",
    }
)
# Shipped images the network may see (all synthetic or graphic, none a benchmark photo).
TRAIN_SHIPPED: tuple[str, ...] = (
    "colorwheel",
    "logo",
    "horse",
    "text",
    "page",
    "shepp_logan_phantom",
    "checkerboard",
    "binary_blobs",
    "mpl:logo2",
    "mpl:Minduka_Present_Blue_Pack",
    "mpl:jacksboro_fault_dem",
    "mpl:topobathy",
)
assert not HELD_OUT & {n.removeprefix("mpl:") for n in TRAIN_SHIPPED}, "a benchmark image in training"

# Order in which several distortions of one sample are applied: light and colour first (they
# happen in the scene or the camera), then optics, sensor, quantization and compression.
APPLY_ORDER: tuple[str, ...] = (
    "underexposure",
    "overexposure",
    "low_contrast",
    "color_cast",
    "blur",
    "noise",
    "artifact",
    "jpeg",
)
# Mean absolute change (0..255) over a cell at which a distortion counts as fully visible there.
VISIBLE_AT: dict[str, float] = {
    "blur": 1.5,
    "noise": 1.5,
    "jpeg": 1.0,
    "overexposure": 2.0,
    "underexposure": 2.0,
    "low_contrast": 2.0,
    "color_cast": 2.0,
    "artifact": 1.0,
}


# ----------------------------------------------------------------------------- severity and damage
def score_from_damage(damage) -> float:
    """Score 1..5 from per-type damages 0..1, on the classical critic's scale."""
    return score_from([(float(d), 1.0) for d in np.asarray(damage, np.float64).ravel()])


@dataclass
class SeverityTable:
    """Severity (0..1) of each type at levels 1..5; fractional levels interpolate, level 0 is 0."""

    values: dict[str, tuple[float, ...]]

    def __call__(self, distortion: str, level: float) -> float:
        table = (0.0, *self.values[distortion])
        return float(np.interp(float(np.clip(level, 0.0, 5.0)), np.arange(6), table))

    def to_dict(self) -> dict[str, list[float]]:
        return {k: [round(v, 4) for v in vs] for k, vs in self.values.items()}


def severity_table(images: list[np.ndarray], seed: int) -> SeverityTable:
    """Median SSIM-derived severity per type and level over ``images`` (training scenes only),
    made increasing in level and floored at 0.09 per level: viewers see a colour cast that SSIM
    nearly ignores, and a level-3 defect of any kind must stand out from a clean image's noise."""
    from ..metrics import ssim

    values = {}
    for ti, kind in enumerate(SYNTHETIC_TYPES):
        row = []
        for level in range(1, 6):
            sev = []
            for ii, img in enumerate(images):
                out = apply_distortion(img, kind, level, np.random.default_rng([seed, 77, ii, ti]))
                sev.append(target_severity(ssim(out, img)))
            row.append(max(float(np.median(sev)), 0.09 * level))
        row = np.maximum.accumulate(np.clip(row, 0.0, 0.95))
        values[kind] = tuple(float(v) for v in row)
    return SeverityTable(values)


# ----------------------------------------------------------------------------- synthesized scenes
def fractal_noise(size: tuple[int, int], rng: np.random.Generator, beta: float = 2.0) -> np.ndarray:
    """Gaussian noise with a 1/f^beta power spectrum (natural images: beta ~ 2), zero mean, unit std."""
    w, h = size
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    spec = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f ** (beta / 2.0)
    spec[0, 0] = 0.0
    out = np.fft.irfft2(spec, s=(h, w)).astype(np.float32)
    return (out - out.mean()) / (out.std() + 1e-6)


def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
    """Colours as a photo has them: mostly muted, some neutral, over the full tonal range."""
    lum = rng.uniform(0.03, 0.97, n) ** rng.uniform(0.8, 1.4)
    tint = 1.0 + rng.normal(0, 0.2, (n, 3))
    vivid = rng.random(n) < 0.08
    tint[vivid] = 1.0 + rng.normal(0, 0.6, (int(vivid.sum()), 3))
    tint[rng.random(n) < 0.2] = 1.0  # whites, greys and blacks: the reference a colour cast shifts
    return np.clip(lum[:, None] * np.clip(tint, 0.05, 3.0), 0.0, 1.0).astype(np.float32)


def _finish(
    linear01: np.ndarray,
    rng: np.random.Generator,
    grain: tuple[float, float] = (0.3, 2.0),
    levels: bool = True,
) -> np.ndarray:
    """A camera's rendering of a scene (0..1 floats): light falloff, the slight softness of a lens,
    a tone curve, exposure set the way a camera or a photographer sets it (``levels``: blacks near
    0, the brightest tones near white, so that an image without either reads as a defect, as it
    does on real photos), and a sensor's faint grain, then 8 bits."""
    h, w = linear01.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx - w * rng.uniform(0.3, 0.7)) ** 2 + (yy - h * rng.uniform(0.3, 0.7)) ** 2) / float(
        w * w + h * h
    )
    light = (1.0 - rng.uniform(0, 0.5) * r2) * (
        1.0
        + rng.uniform(0, 0.25)
        * cv2.resize(fractal_noise((8, 8), rng, 2.5), (w, h), interpolation=cv2.INTER_CUBIC)
    )
    x = linear01 * light[:, :, None]
    x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.25, 0.6))
    x = np.clip(x, 0.0, 1.0) ** rng.uniform(0.85, 1.15)
    if levels:
        y = x @ np.array([0.299, 0.587, 0.114], np.float32)
        lo, hi = np.percentile(y, [0.5, 99.5])
        new_lo, new_hi = rng.uniform(0.0, 0.05), rng.uniform(0.9, 1.0)
        x = new_lo + (x - lo) * ((new_hi - new_lo) / max(hi - lo, 0.05))
    sigma = rng.uniform(*grain) / 255.0
    x = x + rng.normal(0, 1, x.shape).astype(np.float32) * sigma * (0.5 + np.sqrt(np.clip(x, 0, 1)))
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def strokes(size: tuple[int, int], rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """Fur, grass, hair: many short thin strokes along a slowly turning direction, -1..1. Fine
    texture that is not noise: real photos are full of it."""
    w, h = size
    n = n or int(w * h / 60)
    field = cv2.resize(fractal_noise((6, 6), rng, 2.0), (w, h), interpolation=cv2.INTER_CUBIC) * 1.5
    out = np.zeros((h, w), np.float32)
    xs, ys = rng.integers(0, w, n), rng.integers(0, h, n)
    lengths = rng.uniform(3, 16, n)
    shades = rng.uniform(-1, 1, n)
    jitter = rng.normal(0, 0.25, n)
    for x, y, length, v, j in zip(xs, ys, lengths, shades, jitter):
        a = field[y, x] + j
        x1, y1 = int(x + length * np.cos(a)), int(y + length * np.sin(a))
        cv2.line(out, (int(x), int(y)), (x1, y1), float(v), 1, cv2.LINE_AA)
    return np.clip(out, -1.0, 1.0)


def textured_leaves(
    size: tuple[int, int], rng: np.random.Generator, *, r_range=(5.0, 160.0), n: int | None = None
) -> np.ndarray:
    """Dead leaves of several shapes (disks, ellipses, boxes, polygons), each with its own shading
    and texture (1/f grain, stripes, smooth gradients): edges, textures and flat areas the way
    photos mix them. Rendered at twice the size and reduced, so edges are anti-aliased."""
    w, h = size
    W, H = 2 * w, 2 * h
    n = int(rng.integers(200, 900)) if n is None else n
    ids = np.zeros((H, W), np.float32)
    u = rng.random(n)
    r_min, r_max = 2 * r_range[0], 2 * r_range[1]
    radii = (r_min**-2 + u * (r_max**-2 - r_min**-2)) ** -0.5
    centres = np.zeros((n + 1, 2), np.float32)
    sizes = np.ones(n + 1, np.float32)
    for k, r in enumerate(radii, start=1):
        c = (int(rng.integers(-20, W + 20)), int(rng.integers(-20, H + 20)))
        centres[k], sizes[k] = c, max(r, 1.0)
        shape = rng.random()
        if shape < 0.45:
            cv2.circle(ids, c, int(round(r)), float(k), -1)
        elif shape < 0.7:
            axes = (int(round(r)), int(round(r * rng.uniform(0.3, 1.0))))
            cv2.ellipse(ids, c, axes, float(rng.uniform(0, 180)), 0, 360, float(k), -1)
        elif shape < 0.88:
            rect = (
                (float(c[0]), float(c[1])),
                (float(2 * r), float(2 * r * rng.uniform(0.2, 1.0))),
                float(rng.uniform(0, 180)),
            )
            cv2.fillPoly(ids, [cv2.boxPoints(rect).astype(np.int32)], float(k))
        else:
            m = int(rng.integers(3, 7))
            ang = np.sort(rng.uniform(0, 2 * np.pi, m))
            rad = r * rng.uniform(0.5, 1.0, m)
            pts = np.stack([c[0] + rad * np.cos(ang), c[1] + rad * np.sin(ang)], axis=1).astype(np.int32)
            cv2.fillPoly(ids, [pts], float(k))
    ids = ids.astype(np.int32)
    m = n + 1
    colour = _palette(rng, m)
    amp = np.where(rng.random(m) < 0.5, rng.uniform(0.0, 0.35, m), rng.uniform(0.0, 0.08, m)).astype(
        np.float32
    )
    kind = rng.integers(0, 4, m)  # 0: fine grain, 1: coarse grain, 2: stripes, 3: strokes (fur, grass)
    freq = rng.uniform(0.05, 0.6, m).astype(np.float32)
    theta = rng.uniform(0, np.pi, m).astype(np.float32)
    grad = rng.normal(0, 0.6, (m, 2)).astype(np.float32) / max(W, H)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    fine = fractal_noise((W, H), rng, 1.0)
    coarse = fractal_noise((W, H), rng, 2.2)
    k_map = kind[ids]
    stripes = np.sin(freq[ids] * (xx * np.cos(theta[ids]) + yy * np.sin(theta[ids])))
    tex = np.where(
        k_map == 0, fine, np.where(k_map == 1, coarse, np.where(k_map == 2, stripes, strokes((W, H), rng)))
    )
    tex = tex.astype(np.float32)
    cx = xx - W / 2.0
    cy = yy - H / 2.0
    # some leaves are lit like rounded objects: brighter in the middle, darker toward the rim
    bulge = np.where(rng.random(m) < 0.4, rng.uniform(0.1, 0.6, m), 0.0).astype(np.float32)
    r2 = ((xx - centres[ids, 0]) ** 2 + (yy - centres[ids, 1]) ** 2) / np.square(sizes[ids])
    shade = 1.0 + grad[ids, 0] * cx + grad[ids, 1] * cy + amp[ids] * tex - bulge[ids] * np.clip(r2, 0, 1)
    img = colour[ids] * np.clip(shade, 0.1, 2.0)[:, :, None]
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    return _finish(img, rng)


def fractal_scene(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Clouds, terrain or foliage: 1/f noise through a random colour ramp."""
    w, h = size
    f = fractal_noise((w, h), rng, rng.uniform(1.6, 3.0))
    stops = np.sort(rng.uniform(-2.5, 2.5, 4))
    cols = _palette(rng, 4)
    img = np.stack([np.interp(f, stops, cols[:, c]) for c in range(3)], axis=-1).astype(np.float32)
    return _finish(img, rng)


def sky_scene(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth sky (blue, grey, dusk or white), soft clouds, and sometimes land below a horizon."""
    w, h = size
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    palettes = [
        ((0.16, 0.32, 0.7), (0.6, 0.75, 0.9)),
        ((0.45, 0.48, 0.52), (0.75, 0.77, 0.8)),
        ((0.25, 0.2, 0.45), (0.95, 0.6, 0.35)),
        ((0.75, 0.8, 0.88), (0.95, 0.95, 0.96)),
    ]
    top, bottom = (np.array(c, np.float32) for c in palettes[int(rng.integers(0, len(palettes)))])
    top = top * rng.uniform(0.85, 1.1)
    sky = np.broadcast_to(top + (bottom - top) * yy, (h, w, 3)).copy()
    clouds = np.clip(fractal_noise((w, h), rng, 3.0) * rng.uniform(0.0, 0.12), -0.2, 0.3)
    sky = sky + clouds[:, :, None]
    if rng.random() < 0.7:
        land = textured_leaves(size, rng, r_range=(1.5, 40.0), n=900).astype(np.float32) / 255.0
        land = land * rng.uniform(0.4, 0.9)
        horizon = int(h * rng.uniform(0.45, 0.9))
        edge = (horizon + 6 * np.sin(np.arange(w) / w * rng.uniform(2, 12) + rng.uniform(0, 6))).astype(int)
        below = np.arange(h)[:, None] >= edge[None, :]
        sky[below] = land[below]
    return _finish(np.clip(sky, 0, 1), rng, grain=(0.2, 1.2), levels=False)


def night(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A dark scene on purpose: dim shapes, lit windows, lamps with glow, a low-light sensor's grain."""
    w, h = size
    base = textured_leaves(size, rng, r_range=(3.0, 90.0), n=700).astype(np.float32) / 255.0
    img = base * rng.uniform(0.04, 0.2)
    for _ in range(int(rng.integers(5, 40))):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        bw, bh = int(rng.integers(2, 14)), int(rng.integers(3, 16))
        img[y : y + bh, x : x + bw] = np.array([1.0, 0.85, 0.55]) * rng.uniform(0.6, 1.0)
    lights = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(1, 8))):
        cv2.circle(
            lights, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(2, 9)), 1.0, -1
        )
    glow = cv2.GaussianBlur(lights, (0, 0), rng.uniform(3, 10)) * rng.uniform(1, 4) + lights
    img += np.clip(glow, 0, 1)[:, :, None] * np.array([1.0, 0.92, 0.78], np.float32)
    return _finish(np.clip(img, 0, 1), rng, grain=(0.8, 3.0), levels=False)


def depth_of_field(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A sharp subject anywhere in the frame on a defocused background whose blur grows with
    distance from the focal plane: intended, not a defect."""
    w, h = size
    back = textured_leaves(size, rng, r_range=(3.0, 120.0), n=900)
    near = cv2.GaussianBlur(back, (0, 0), rng.uniform(2.0, 4.0))
    far = cv2.GaussianBlur(back, (0, 0), rng.uniform(5.0, 12.0))
    ramp = np.clip(np.linspace(0, 1, h, dtype=np.float32)[::-1] * rng.uniform(0.5, 1.5), 0, 1)[:, None, None]
    background = near * (1 - ramp) + far * ramp
    subject = textured_leaves(size, rng, r_range=(1.5, 30.0), n=1200).astype(np.float32)
    mask = np.zeros((h, w), np.float32)
    cx, cy = int(w * rng.uniform(0.25, 0.75)), int(h * rng.uniform(0.25, 0.75))
    axes = (int(w * rng.uniform(0.12, 0.3)), int(h * rng.uniform(0.15, 0.4)))
    cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), rng.uniform(1.0, 2.5))[:, :, None]
    return np.clip(background * (1 - mask) + subject * mask + 0.5, 0, 255).astype(np.uint8)


def _benchdata_negative(kind: str) -> Callable[[tuple[int, int], np.random.Generator], np.ndarray]:
    make = benchdata.HARD_NEGATIVES[kind]
    return lambda size, rng: make(size, rng)


# Scene makers and how often a training scene comes from each.
SCENES: dict[str, tuple[Callable[[tuple[int, int], np.random.Generator], np.ndarray], float]] = {
    "textured_leaves": (textured_leaves, 0.40),
    "dead_leaves": (
        lambda size, rng: benchdata.dead_leaves(size, rng, r_max=float(rng.uniform(40, 160))),
        0.12,
    ),
    "fractal": (fractal_scene, 0.08),
    "sky": (sky_scene, 0.10),
    "night": (night, 0.08),
    "depth_of_field": (depth_of_field, 0.10),
    "benchdata_dof": (_benchdata_negative("dof"), 0.04),
    "benchdata_sky": (_benchdata_negative("sky"), 0.04),
    "benchdata_night": (_benchdata_negative("night"), 0.04),
}
HARD_NEGATIVE_SCENES = frozenset(
    {"sky", "night", "depth_of_field", "benchdata_dof", "benchdata_sky", "benchdata_night"}
)


def calibration_scenes(seed: int, n: int = 16, size: int = 256) -> list[np.ndarray]:
    """The scenes whose SSIM damage sets ``severity_table``: a fixed draw of the scene mix."""
    names = list(SCENES)
    probs = np.array([SCENES[k][1] for k in names])
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, 3, i])
        name = names[int(rng.choice(len(names), p=probs / probs.sum()))]
        out.append(SCENES[name][0]((size, size), rng))
    return out


# ----------------------------------------------------------------------------- shipped images
def _mpl_path(name: str) -> str:
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "sample_data", name)


def load_shipped(name: str) -> np.ndarray:
    """A training image shipped with scikit-image or matplotlib (never one in ``HELD_OUT``)."""
    if name.removeprefix("mpl:") in HELD_OUT or name not in TRAIN_SHIPPED:
        raise ValueError(f"{name!r} is not a training image (held out: the benchmark uses it)")
    if name.startswith("mpl:"):
        base = name[4:]
        if base in ("jacksboro_fault_dem", "topobathy"):
            from matplotlib import cm
            from matplotlib.colors import LightSource

            z = np.load(_mpl_path(f"{base}.npz"))
            elev = z["elevation" if "elevation" in z.files else "topo"].astype(np.float64)
            if min(elev.shape) < 200:
                elev = cv2.resize(elev, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
            rgb = LightSource(azdeg=315, altdeg=45).shade(
                elev, cmap=cm.gist_earth, blend_mode="soft", vert_exag=0.05
            )
            img = (np.clip(rgb[:, :, :3], 0, 1) * 255 + 0.5).astype(np.uint8)
        else:
            from PIL import Image

            with Image.open(_mpl_path(f"{base}.png")) as im:
                rgba = np.asarray(im.convert("RGBA")).astype(np.float32) / 255.0
            a = rgba[:, :, 3:]
            img = ((rgba[:, :, :3] * a + 0.85 * (1 - a)) * 255 + 0.5).astype(np.uint8)
            if base == "Minduka_Present_Blue_Pack":
                img = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    else:
        import skimage.data as data

        if name == "binary_blobs":
            b = data.binary_blobs(length=384, blob_size_fraction=0.08, rng=3)
            img = np.where(b, 200, 40).astype(np.uint8)
            img = cv2.GaussianBlur(img, (0, 0), 0.7)
        elif name == "colorwheel":
            img = np.asarray(data.colorwheel())
        else:
            img = np.asarray(getattr(data, name)())
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.dtype != np.uint8:
            img = (np.clip(img.astype(np.float64) / max(float(img.max()), 1e-6), 0, 1) * 255 + 0.5).astype(
                np.uint8
            )
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        if img.shape[2] == 4:
            a = img[:, :, 3:].astype(np.float32) / 255.0
            img = (img[:, :, :3] * a + 230 * (1 - a) + 0.5).astype(np.uint8)
    if min(img.shape[:2]) < 256:
        s = 256.0 / min(img.shape[:2])
        img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(img[:, :, :3])


# ----------------------------------------------------------------------------- degradations + labels
@dataclass
class Applied:
    distortion: str
    level: float
    scope: str  # "global" or "local"
    mask: np.ndarray  # H x W float 0..1
    visible: np.ndarray  # (H/8, W/8) 0..1: mask x how much the cell changed


@dataclass
class Sample:
    image: np.ndarray  # S x S x 3 uint8
    presence: np.ndarray  # (T, S/8, S/8) float32 0..1
    severity: np.ndarray  # (T, S/8, S/8) float32 0..1 (meaningful where presence > 0)
    damage: np.ndarray  # (T,) float32 0..1
    applied: list[Applied] = field(default_factory=list)
    scene: str = ""


def cell_mean(a: np.ndarray, cell: int = MAP_STRIDE) -> np.ndarray:
    h, w = a.shape[:2]
    return cv2.resize(a.astype(np.float32), (w // cell, h // cell), interpolation=cv2.INTER_AREA)


def random_mask(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A region of varied shape (box, ellipse, polygon, blob) and hard or soft edge, 0..1."""
    w, h = size
    bw, bh = int(w * rng.uniform(0.2, 0.7)), int(h * rng.uniform(0.2, 0.7))
    x0, y0 = (
        int(rng.integers(-bw // 4, w - 3 * bw // 4 + 1)),
        int(rng.integers(-bh // 4, h - 3 * bh // 4 + 1)),
    )
    box = (max(0, x0), max(0, y0), min(w, x0 + bw), min(h, y0 + bh))
    feather = 0.0 if rng.random() < 0.5 else float(rng.uniform(1.0, 10.0))
    shape = rng.random()
    if shape < 0.35:
        return region_mask((w, h), box, shape="rect", feather=feather)
    if shape < 0.7:
        return region_mask((w, h), box, shape="ellipse", feather=feather)
    mask = np.zeros((h, w), np.float32)
    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    if shape < 0.85:
        m = int(rng.integers(3, 8))
        ang = np.sort(rng.uniform(0, 2 * np.pi, m))
        pts = np.stack([cx + bw / 2 * np.cos(ang), cy + bh / 2 * np.sin(ang)], axis=1).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1.0)
    else:
        f = fractal_noise((w, h), rng, 3.5)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        bump = 1.5 - 3.0 * (((xx - cx) / max(bw, 1)) ** 2 + ((yy - cy) / max(bh, 1)) ** 2)
        mask = ((f * 0.6 + bump) > 0.5).astype(np.float32)
    if feather > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), feather)
    if mask.max() < 0.5:  # a degenerate blob: fall back to the box
        mask = region_mask((w, h), box, shape="rect", feather=feather)
    return mask


def _jpeg_at_phase(img: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """JPEG with its 8 x 8 grid at a random phase: a crop of a compressed image starts anywhere."""
    dx, dy = (int(v) for v in rng.integers(0, 8, 2))
    padded = cv2.copyMakeBorder(img, dy, 0, dx, 0, cv2.BORDER_REFLECT)
    return apply_distortion(padded, "jpeg", level, rng)[dy:, dx:]


def degrade(
    image: np.ndarray,
    plan: list[tuple[str, float, np.ndarray | None]],
    rng: np.random.Generator,
    table: SeverityTable,
) -> tuple[np.ndarray, list[Applied]]:
    """Apply (type, level, mask or None for global) in ``APPLY_ORDER``; measure where each shows."""
    out = image
    applied = []
    h, w = image.shape[:2]
    for kind, level, mask in sorted(plan, key=lambda p: APPLY_ORDER.index(p[0])):
        if kind == "jpeg":
            full = _jpeg_at_phase(out, level, rng)
        else:
            full = apply_distortion(out, kind, level, rng)
        m = np.ones((h, w), np.float32) if mask is None else mask
        new = out.astype(np.float32) * (1 - m[:, :, None]) + full.astype(np.float32) * m[:, :, None]
        new = np.clip(new + 0.5, 0, 255).astype(np.uint8)
        change = np.abs(new.astype(np.float32) - out.astype(np.float32)).mean(axis=2)
        visible = cell_mean(m) * np.clip(cell_mean(change) / VISIBLE_AT[kind], 0.0, 1.0)
        applied.append(Applied(kind, float(level), "global" if mask is None else "local", m, visible))
        out = new
    return out, applied


def labels(applied: list[Applied], shape: tuple[int, int], table: SeverityTable):
    rows, cols = shape
    t = len(TYPES)
    presence = np.zeros((t, rows, cols), np.float32)
    severity = np.zeros((t, rows, cols), np.float32)
    damage = np.zeros(t, np.float32)
    for a in applied:
        k = TYPES.index(a.distortion)
        sev = table(a.distortion, a.level)
        vis = a.visible
        presence[k] = np.maximum(presence[k], vis)
        severity[k] = np.where(vis > 0.25, np.maximum(severity[k], sev), severity[k])
        frac = float((vis > 0.5).mean())
        if frac > 0.005:
            damage[k] = max(damage[k], sev * area_weight(frac))
    return presence, severity, damage


@dataclass
class DataConfig:
    """The recipe (stored in the model card)."""

    crop: int = 160  # training crops are crop x crop (a multiple of 32)
    scene_size: int = 384  # synthesized scenes are this big before scaling and cropping
    pool: int = 240  # scenes kept in memory at once
    refresh: int = 2  # scenes replaced by new ones every ``refresh_every`` batches
    refresh_every: int = 4
    shipped_share: float = 0.08  # share of samples cut from shipped (non-benchmark) images
    clean_share: float = 0.3  # share of samples left clean (more for hard negatives)
    hard_negative_clean_share: float = 0.55
    global_share: float = 0.4  # share of distortions applied to the whole crop
    scale: tuple[float, float] = (0.55, 1.25)  # random rescale of the source before cropping
    extra_distortions: tuple[float, float] = (0.25, 0.1)  # chance of a 2nd, and of a 3rd distortion
    imperfect_share: float = 0.35  # chance of each clean-camera imperfection (grain, mild JPEG)
    grey_share: float = 0.12  # share of samples made greyscale before degrading

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def camera_imperfections(img: np.ndarray, rng: np.random.Generator, cfg: DataConfig) -> np.ndarray:
    """What a clean photo from a real camera or the web still has, below level 1 of any defect: a
    little grain, mild JPEG, somewhat fewer grey levels. Without them every real photo looks
    damaged to a network that only ever saw perfect synthetic scenes."""
    if rng.random() < cfg.imperfect_share:
        sigma = rng.uniform(0.5, 2.5)
        img = np.clip(
            img.astype(np.float32) + rng.normal(0, sigma, img.shape).astype(np.float32) + 0.5, 0, 255
        ).astype(np.uint8)
    if rng.random() < cfg.imperfect_share:
        dx, dy = (int(v) for v in rng.integers(0, 8, 2))
        padded = cv2.copyMakeBorder(img, dy, 0, dx, 0, cv2.BORDER_REFLECT)
        ok, buf = cv2.imencode(
            ".jpg", padded[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 98))]
        )
        img = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[dy:, dx:, ::-1])
    if rng.random() < 0.4 * cfg.imperfect_share:
        q = 255.0 / (rng.uniform(64, 160) - 1.0)
        img = np.clip(np.round(img.astype(np.float32) / q) * q + 0.5, 0, 255).astype(np.uint8)
    return img


class SampleStream:
    """Deterministic stream of labelled samples given a seed: a pool of synthesized scenes (partly
    renewed as training goes) and the shipped training images, cut, flipped, rescaled, colour
    jittered and degraded."""

    def __init__(self, seed: int, config: DataConfig | None = None, table: SeverityTable | None = None):
        self.config = cfg = config or DataConfig()
        self.seed = seed
        self.rng = np.random.default_rng([seed, 1])
        self._scene_count = 0
        names = list(SCENES)
        probs = np.array([SCENES[n][1] for n in names])
        self._scene_names, self._scene_probs = names, probs / probs.sum()
        self.pool: list[tuple[str, np.ndarray]] = [self._new_scene() for _ in range(cfg.pool)]
        self.shipped = [(n, load_shipped(n)) for n in TRAIN_SHIPPED]
        self.table = table or severity_table(calibration_scenes(seed), seed)
        self.batches = 0

    def _new_scene(self) -> tuple[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, 2, self._scene_count])
        self._scene_count += 1
        name = self._scene_names[int(rng.choice(len(self._scene_names), p=self._scene_probs))]
        s = self.config.scene_size
        return name, SCENES[name][0]((s, s), rng)

    def _source(self) -> tuple[str, np.ndarray]:
        if self.rng.random() < self.config.shipped_share:
            return self.shipped[int(self.rng.integers(0, len(self.shipped)))]
        return self.pool[int(self.rng.integers(0, len(self.pool)))]

    def _cut(self, img: np.ndarray, size: int) -> np.ndarray:
        rng, cfg = self.rng, self.config
        h, w = img.shape[:2]
        s = rng.uniform(*cfg.scale)
        s = max(s, (size + 8) / min(h, w))
        nh, nw = max(size + 8, round(h * s)), max(size + 8, round(w * s))
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
        img = cv2.resize(img, (nw, nh), interpolation=interp)
        y0, x0 = int(rng.integers(0, nh - size + 1)), int(rng.integers(0, nw - size + 1))
        crop = img[y0 : y0 + size, x0 : x0 + size]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        if rng.random() < 0.25:
            crop = np.rot90(crop, int(rng.integers(1, 4)))
        # colour jitter within what clean photos do (never as strong as a level-1 cast or exposure)
        x = crop.astype(np.float32) / 255.0
        grey = x.mean(axis=2, keepdims=True)
        # grey photos are common (and in the benchmark): their noise has no colour
        x = grey + (x - grey) * (0.0 if rng.random() < cfg.grey_share else rng.uniform(0.6, 1.3))
        x = x * (1.0 + rng.normal(0, 0.012, 3)).astype(np.float32) * rng.uniform(0.9, 1.08)
        out = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return camera_imperfections(out, rng, cfg)

    def sample(self, size: int | None = None) -> Sample:
        cfg, rng = self.config, self.rng
        size = size or cfg.crop
        scene, src = self._source()
        img = self._cut(src, size)
        hard = scene in HARD_NEGATIVE_SCENES
        plan: list[tuple[str, float, np.ndarray | None]] = []
        if rng.random() >= (cfg.hard_negative_clean_share if hard else cfg.clean_share):
            n = (
                1
                + int(rng.random() < cfg.extra_distortions[0])
                + int(rng.random() < cfg.extra_distortions[1])
            )
            kinds = rng.choice(len(TYPES), size=n, replace=False)
            for k in kinds:
                level = float(rng.uniform(1.0, 5.0))
                mask = None if rng.random() < cfg.global_share else random_mask((size, size), rng)
                plan.append((TYPES[int(k)], level, mask))
        out, applied = degrade(img, plan, rng, self.table)
        presence, severity, damage = labels(applied, (size // MAP_STRIDE, size // MAP_STRIDE), self.table)
        return Sample(out, presence, severity, damage, applied, scene)

    def batch(self, n: int, size: int | None = None) -> list[Sample]:
        self.batches += 1
        if self.batches % self.config.refresh_every == 0:
            for _ in range(self.config.refresh):
                self.pool[int(self.rng.integers(0, len(self.pool)))] = self._new_scene()
        return [self.sample(size) for _ in range(n)]
