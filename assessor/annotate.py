"""Draw a diagnosis on its image: a box and a label per region, the score in a corner."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .schema import Diagnosis

COLOURS = {
    "blur": (0, 170, 255),
    "noise": (255, 64, 64),
    "jpeg": (255, 160, 0),
    "overexposure": (255, 255, 0),
    "underexposure": (150, 90, 255),
    "low_contrast": (160, 160, 160),
    "color_cast": (255, 0, 200),
    "artifact": (0, 230, 120),
    "other": (255, 255, 255),
}


def label_font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def annotate(image: np.ndarray, diagnosis: Diagnosis, *, max_regions: int = 12) -> np.ndarray:
    """Return an RGB uint8 copy of ``image`` with the diagnosis drawn on it."""
    img = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    w, h = img.size
    draw = ImageDraw.Draw(img)
    line = max(2, round(min(w, h) / 250))
    font = label_font(max(11, round(min(w, h) / 40)))
    for region in sorted(diagnosis.regions, key=lambda r: -r.severity)[:max_regions]:
        colour = COLOURS.get(region.distortion, (255, 255, 255))
        x0, y0, x1, y1 = region.bbox
        inset = line if region.is_global((w, h)) else 0  # keep whole-image boxes visible
        draw.rectangle([x0 + inset, y0 + inset, x1 - 1 - inset, y1 - 1 - inset], outline=colour, width=line)
        label = f"{region.distortion} {region.severity:.2f}"
        tb = draw.textbbox((0, 0), label, font=font)
        tw, th = tb[2] - tb[0], tb[3] - tb[1]
        ty = y0 + inset if region.is_global((w, h)) or y0 < th + 6 else y0 - th - 6
        draw.rectangle([x0 + inset, ty, x0 + inset + tw + 6, ty + th + 6], fill=colour)
        draw.text((x0 + inset + 3, ty + 3 - tb[1]), label, fill=(0, 0, 0), font=font)
    score = f"score {diagnosis.score:.2f}"
    tb = draw.textbbox((0, 0), score, font=font)
    tw, th = tb[2] - tb[0], tb[3] - tb[1]
    draw.rectangle([w - tw - 10, h - th - 10, w, h], fill=(0, 0, 0))
    draw.text((w - tw - 5, h - th - 5 - tb[1]), score, fill=(255, 255, 255), font=font)
    return np.asarray(img)
