"""Images for benchmarks and tests without any download: photos that ship inside scikit-image and
matplotlib, and synthetic scenes that imitate defects without having any (hard negatives)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .degrade import SYNTHETIC_TYPES, apply_distortion, degrade_region, random_box

# Colour photos used for degradations (name -> loader); grey ones are stacked to RGB.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "hopper", "camera", "moon")
# Clean-only images: other content that must not be read as defects.
EXTRA_CLEAN = (
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "grass",
    "brick",
    "gravel",
    "coins",
    "clock",
)


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise RuntimeError(
            f"the benchmark photos come from {module}; install the test extra: pip install -e '.[test]'"
        ) from None


def load_photo(name: str) -> np.ndarray:
    """An RGB uint8 photo shipped inside scikit-image or matplotlib."""
    _need("skimage")
    import skimage.data as data

    if name == "hopper":
        _need("matplotlib")
        import matplotlib.cbook as cbook
        from PIL import Image

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            return np.asarray(Image.open(f).convert("RGB")).copy()
    if name == "motorcycle":
        img = data.stereo_motorcycle()[0]
    else:
        img = getattr(data, name)()
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    img = img[:, :, :3]
    if max(img.shape[:2]) > 1024:  # retina is 1411 px: keep the benchmark fast
        s = 1024.0 / max(img.shape[:2])
        img = cv2.resize(
            img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA
        )
    return np.ascontiguousarray(img)


def dead_leaves(
    size: tuple[int, int], rng: np.random.Generator, *, r_min: float = 3, r_max: float = 120, n: int = 4000
) -> np.ndarray:
    """Occluding disks with power-law radii: an image model with natural images' statistics.

    Made photo-like: mostly muted colours over the full tonal range, soft shading across the
    frame, the slight softness of a lens and a sensor's faint grain (flat, noise-free disks would
    look posterized)."""
    w, h = size
    canvas = np.zeros((h, w, 3), np.float32)
    canvas[:] = 128
    u = rng.random(n)
    radii = (r_min**-2 + u * (r_max**-2 - r_min**-2)) ** -0.5  # p(r) ~ r^-3
    for r in radii:
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        lum = rng.uniform(0.04, 0.96) ** 1.2
        tint = 1.0 + rng.normal(0, 0.18, 3)
        colour = np.clip(lum * tint, 0.0, 1.0) * 255.0
        cv2.circle(
            canvas, c, int(round(r)), tuple(float(v) for v in colour), thickness=-1, lineType=cv2.LINE_AA
        )
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 2)
    shading = 1.0 + 0.12 * np.sin(xx / w * np.pi * 1.3 + phase[0]) * np.cos(yy / h * np.pi * 1.1 + phase[1])
    canvas = cv2.GaussianBlur(canvas * shading[:, :, None], (0, 0), 0.6)
    canvas += rng.normal(0, 1.2, canvas.shape).astype(np.float32)
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8)


def shallow_dof(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A sharp subject on a strongly defocused background (intentional, not a defect)."""
    w, h = size
    background = cv2.GaussianBlur(dead_leaves(size, rng), (0, 0), 7.0)
    subject = dead_leaves(size, rng, r_min=2, r_max=30)
    mask = np.zeros((h, w), np.float32)
    cv2.ellipse(mask, (w // 2, h // 2), (int(w * 0.22), int(h * 0.3)), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 1.5)[:, :, None]
    return (background * (1 - mask) + subject * mask + 0.5).astype(np.uint8)


def flat_sky(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth sky gradient over a detailed landscape strip."""
    w, h = size
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    top = np.array([70, 120, 200], np.float32)
    bottom = np.array([170, 200, 235], np.float32)
    sky = top + (bottom - top) * yy[:, :, None]
    sky = np.broadcast_to(sky, (h, w, 3)).copy()
    sky += rng.normal(0, 0.6, sky.shape)  # the faint grain of a real sky
    land = dead_leaves(size, rng, r_min=2, r_max=40).astype(np.float32) * 0.8
    horizon = int(h * 0.62)
    out = sky
    out[horizon:] = land[horizon:]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def night_scene(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Dark buildings under a dark sky with a few bright lights: dark on purpose, not underexposed."""
    w, h = size
    img = (dead_leaves(size, rng, r_min=4, r_max=80).astype(np.float32) * 0.12).astype(np.float32)
    for _ in range(int(rng.integers(12, 30))):
        x, y = int(rng.integers(0, w)), int(rng.integers(h // 3, h))
        bw, bh = int(rng.integers(3, 12)), int(rng.integers(4, 14))
        colour = np.array([255, 220, 150], np.float32) * rng.uniform(0.7, 1.0)
        img[y : y + bh, x : x + bw] = colour
    lights = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(3, 7))):
        cv2.circle(
            lights, (int(rng.integers(0, w)), int(rng.integers(0, h // 2))), int(rng.integers(3, 8)), 1.0, -1
        )
    glow = cv2.GaussianBlur(lights, (0, 0), 6.0) * 3 + lights
    img += np.clip(glow, 0, 1)[:, :, None] * np.array([255, 240, 210], np.float32)
    img += rng.normal(0, 1.5, img.shape).astype(np.float32)  # a low-light sensor's grain
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


HARD_NEGATIVES = {"dof": shallow_dof, "sky": flat_sky, "night": night_scene}


@dataclass
class Case:
    name: str
    image: np.ndarray
    clean: np.ndarray | None
    distortion: str | None  # None for clean images
    level: int  # 0 for clean
    box: tuple[int, int, int, int] | None = None  # degraded region of a local case
    mask: np.ndarray | None = None


def global_cases(
    photos: dict[str, np.ndarray], levels=(1, 2, 3, 4, 5), seed: int = 0, types=SYNTHETIC_TYPES
) -> list[Case]:
    """Every photo x every synthetic type x every level, plus the clean photo (level 0).

    A subset of ``types`` draws the same noise and cast direction as the full set does."""
    out = []
    for pi, (name, img) in enumerate(photos.items()):
        out.append(Case(f"{name}/clean", img, img, None, 0))
        for kind in types:
            ti = SYNTHETIC_TYPES.index(kind)
            for level in levels:
                rng = np.random.default_rng([seed, pi, ti])  # same noise / cast direction at every level
                out.append(
                    Case(f"{name}/{kind}/{level}", apply_distortion(img, kind, level, rng), img, kind, level)
                )
    return out


def local_cases(photos: dict[str, np.ndarray], per_type: int = 2, seed: int = 0) -> list[Case]:
    """One degraded region per image: every photo x type, rectangles with hard edges and feathered
    ellipses, levels 3..5, placed at random."""
    out = []
    for pi, (name, img) in enumerate(photos.items()):
        h, w = img.shape[:2]
        for ti, kind in enumerate(SYNTHETIC_TYPES):
            for k in range(per_type):
                rng = np.random.default_rng([seed, 1000 + pi, ti, k])
                box = random_box((w, h), rng, (0.2, 0.4))
                level = int(rng.integers(3, 6))
                shape, feather = ("rect", 0.0) if k % 2 == 0 else ("ellipse", 4.0)
                d = degrade_region(img, kind, level, box, rng, shape=shape, feather=feather)
                out.append(Case(f"{name}/local-{kind}/{k}", d.image, img, kind, level, d.box, d.mask))
    return out


def clean_cases(photos: dict[str, np.ndarray], seed: int = 0, negatives_per_kind: int = 3) -> list[Case]:
    out = [Case(f"{n}/clean", img, img, None, 0) for n, img in photos.items()]
    for name in EXTRA_CLEAN:
        img = load_photo(name)
        out.append(Case(f"{name}/clean", img, img, None, 0))
    for kind, make in HARD_NEGATIVES.items():
        for k in range(negatives_per_kind):
            img = make((512, 384), np.random.default_rng([seed, 7, k]))
            out.append(Case(f"synthetic-{kind}/{k}", img, img, None, 0))
    return out
