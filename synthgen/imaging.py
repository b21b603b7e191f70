"""uint8 image arrays <-> PNG bytes, and contact-sheet grids. Pillow does the encoding."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Fixed so that PNG bytes depend only on the pixels (and the zlib build), never on who encoded them.
PNG_COMPRESS_LEVEL = 6


def to_pil(image: np.ndarray) -> Image.Image:
    """(H, W, 1) or (H, W) -> 8-bit "L"; (H, W, 3) -> "RGB"."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(image), mode=None)


def encode_png(image: np.ndarray) -> bytes:
    """One uint8 image (H, W, C) -> PNG bytes."""
    buf = io.BytesIO()
    to_pil(image).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 (H, W, C), C being 1 for grayscale."""
    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(img)
    return arr[:, :, None] if arr.ndim == 2 else arr


def image_grid(images: np.ndarray, ncol: int = 8, pad: int = 2) -> np.ndarray:
    """Tile uint8 images (N, H, W, C) into one (rows*(H+pad)+pad, ncol*(W+pad)+pad, C) sheet."""
    n, h, w, c = images.shape
    ncol = max(1, min(ncol, n))
    nrow = -(-n // ncol)
    sheet = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, ncol)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        sheet[y:y + h, x:x + w] = images[k]
    return sheet


def save_png(path: str, image: np.ndarray, scale: int = 1) -> None:
    """Write one image (or a grid) to a local PNG, optionally upscaled with nearest-neighbour for viewing."""
    img = to_pil(image)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path, format="PNG")
