"""A before / diagnosis / after contact sheet: what the critic saw, and what the loop made of it."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from assessor.annotate import annotate, label_font
from assessor.schema import Diagnosis


def contact_sheet(
    before: np.ndarray,
    diagnosis: Diagnosis,
    after: np.ndarray,
    final: Diagnosis | None = None,
    *,
    panel_height: int = 512,
) -> np.ndarray:
    """Three panels side by side, each with a caption: the input, the input with the diagnosed
    regions drawn on it, and the result. Returns RGB uint8."""
    annotated = annotate(before, diagnosis)
    captions = [
        f"before  {diagnosis.score:.2f}",
        f"diagnosis  {len(diagnosis.regions)} region(s)",
        f"after  {final.score:.2f}" if final is not None else "after",
    ]
    h, w = before.shape[:2]
    scale = min(1.0, panel_height / float(h))
    pw, ph = max(1, round(w * scale)), max(1, round(h * scale))
    font = label_font(max(12, ph // 28))
    bar = max(20, ph // 14)
    gap = 8
    sheet = Image.new("RGB", (3 * pw + 4 * gap, ph + bar + 2 * gap), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for i, (panel, caption) in enumerate(zip((before, annotated, after), captions)):
        img = Image.fromarray(np.asarray(panel, np.uint8)).convert("RGB")
        if img.size != (pw, ph):
            img = img.resize((pw, ph), Image.LANCZOS)
        x = gap + i * (pw + gap)
        sheet.paste(img, (x, gap + bar))
        draw.text((x + 4, gap + 2), caption, fill=(240, 240, 240), font=font)
    return np.asarray(sheet)
