"""Reading and writing images the way a demanding user expects: any common mode in, 8-bit RGB out,
clear one-line errors, and writes that never leave half a file behind."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 16  # below this there is nothing to look at (and 8x8 JPEG blocks are meaningless)
MAX_PIXELS = 120_000_000  # ~ 11k x 11k; larger is almost always a mistake and would exhaust memory


class ImageError(ValueError):
    """An image that cannot be assessed or refined; the message says why and what to do."""


@dataclass
class LoadedImage:
    rgb: np.ndarray  # H x W x 3 uint8
    alpha: np.ndarray | None  # H x W uint8 when the file had transparency
    source_mode: str  # PIL mode of the file, e.g. "RGB", "CMYK", "I;16", "LA"
    path: str

    @property
    def size(self) -> tuple[int, int]:
        return (self.rgb.shape[1], self.rgb.shape[0])


def _to_rgb8(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    mode = img.mode
    alpha = None
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA") if mode != "LA" else img
        alpha = np.asarray(img.getchannel("A"), dtype=np.uint8).copy()
        img = img.convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2), alpha
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        top = 1.0 if arr.max() <= 1.0 else 255.0
        grey = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2), alpha
    if mode != "RGB":
        img = img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    return np.asarray(img, dtype=np.uint8).copy(), alpha


def load_image(path: str | os.PathLike[str], *, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Read any common image file as 8-bit RGB (CMYK, 16-bit, grey, palette, alpha all handled)."""
    path = str(path)
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ImageError(f"{path}: is a folder, not an image")
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # we check the size ourselves, with a message that says what to do
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(
                    f"{path}: {w}x{h} is {w * h / 1e6:.0f} megapixels, more than the "
                    f"{max_pixels / 1e6:.0f} MP limit; downscale it first"
                )
            img.seek(0)
            img = ImageOps.exif_transpose(img)
            mode = img.mode
            rgb, alpha = _to_rgb8(img)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (or a format Pillow cannot read)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageError):
            raise
        raise ImageError(f"{path}: cannot read image ({exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    check_image_size(rgb, path)
    return LoadedImage(rgb=rgb, alpha=alpha, source_mode=mode, path=path)


def check_image_size(rgb: np.ndarray, name: str = "image") -> None:
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageError(
            f"{name}: {w}x{h} is too small to assess; need at least {MIN_SIDE}x{MIN_SIDE} pixels"
        )


def as_rgb8(image: np.ndarray) -> np.ndarray:
    """Accept H x W, H x W x 1/3/4 arrays in uint8, uint16 or float 0..1 and return H x W x 3 uint8."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ImageError(f"expected an H x W x C image with C in 1, 3, 4; got shape {arr.shape}")
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.uint16:
        return (arr.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    arr = np.nan_to_num(arr.astype(np.float32), nan=0.0)
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _publish(tmp: str, path: Path) -> None:
    """Give the temporary file normal permissions (mkstemp makes it 0600) and move it in place."""
    os.chmod(tmp, _umask_mode())
    os.replace(tmp, path)


def save_image_atomic(
    rgb: np.ndarray, path: str | os.PathLike[str], *, alpha: np.ndarray | None = None, quality: int = 95
) -> None:
    """Write through a temporary file in the same folder and rename: never half an image on disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(as_rgb8(rgb))
    if alpha is not None and path.suffix.lower() in (".png", ".webp", ".tif", ".tiff"):
        img.putalpha(Image.fromarray(np.asarray(alpha, dtype=np.uint8)))
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"{path}: unknown image extension {path.suffix!r}; use .png, .jpg or .webp")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        kwargs = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
        img.save(tmp, format=fmt, **kwargs)
        _publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(text: str, path: str | os.PathLike[str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        _publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
