"""uint8 image arrays <-> PNG bytes, and contact-sheet grids.

Encoding uses imagecodecs (libpng): about twice as fast as Pillow on small images. Decoding and grids use
Pillow. A batch in Parquet's stored-block settings takes a faster road to the same bytes (see
:func:`encode_pngs`).
"""

from __future__ import annotations

import functools
import io
import zlib

import imagecodecs
import numpy as np
from PIL import Image

# Fixed so that PNG bytes depend only on the pixels, the dataset's format and the libpng/zlib build, never on
# who encoded them. The Sub filter (each byte minus its left neighbour) turns smooth scans into runs of small
# values either way.
# Single files (the PNG tree): OpenCV's fast settings, zlib level 1 with RLE: measured on 28x28 scans, 20 us
# per image against 27 us for level 6 with libpng's adaptive filters, for 5% larger files (625 vs 593 B).
PNG_SETTINGS = {"level": 1, "strategy": 3, "filter": 16}  # strategy 3 = Z_RLE, filter 16 = PNG_FILTER_SUB
# Inside Parquet: stored (uncompressed) deflate blocks, and the shard's zstd page compression works across
# all the images of a page instead. Measured on 10k bundled-model images: 5 us to encode + 2 us to write
# against 20 + 4.5 us (level 1 + snappy), and 552 B per image against 613 B. Any PNG decoder reads them.
PARQUET_PNG_SETTINGS = {"level": 0, "strategy": 0, "filter": 16}


def png_settings(fmt: str) -> dict[str, int]:
    """The encoder settings of a dataset format: "parquet" or "png" (a tree of files)."""
    return PARQUET_PNG_SETTINGS if fmt == "parquet" else PNG_SETTINGS


def png_encoder_name(settings: dict[str, int] = PNG_SETTINGS) -> str:
    """What a manifest records as its PNG encoder: library version and settings, which decide the bytes."""
    return f"imagecodecs-{imagecodecs.__version__}-" + "-".join(f"{k}{v}" for k, v in settings.items())


def to_pil(image: np.ndarray) -> Image.Image:
    """(H, W, 1) or (H, W) -> 8-bit "L"; (H, W, 3) -> "RGB"."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(image), mode=None)


def encode_png(image: np.ndarray, settings: dict[str, int] = PNG_SETTINGS) -> bytes:
    """One uint8 image (H, W, C) -> PNG bytes: 8-bit grayscale for C == 1, RGB for C == 3."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return imagecodecs.png_encode(np.ascontiguousarray(image), **settings)


def encode_pngs(images: np.ndarray, settings: dict[str, int] = PNG_SETTINGS) -> list[bytes]:
    """(B, H, W, C) uint8 -> B PNGs, each exactly the bytes :func:`encode_png` gives.

    In the stored-block settings (PARQUET_PNG_SETTINGS) libpng's per-image setup is nearly all the cost
    (4.4 us of a 28x28 image), and every PNG of one shape is the same frame around a different scan: so
    libpng encodes one blank image of the shape, and the batch's scans, Adler-32s and CRCs are filled into
    copies of that frame at once (1.5 us per image). Any other settings, or a frame this does not
    recognise, encode image by image.
    """
    images = np.asarray(images)
    frame = _stored_frame(images.shape[1:], tuple(sorted(settings.items()))) if images.ndim == 4 else None
    if frame is None or images.dtype != np.uint8:
        return [encode_png(image, settings) for image in images]
    return _fill_stored_frames(images, frame)


_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_STORED_HEADER = 7  # zlib header (2 bytes), stored-block header (BFINAL=1, BTYPE=00), LEN, NLEN


@functools.lru_cache(maxsize=16)
def _stored_frame(shape: tuple[int, int, int], settings: tuple[tuple[str, int], ...]) -> bytes | None:
    """The PNG of a blank (H, W, C) image up to its scan, when libpng writes it as one IDAT holding one
    stored deflate block of Sub-filtered rows followed by IEND; else None."""
    config = dict(settings)
    if config.get("level") != 0 or config.get("filter") != 16 or len(shape) != 3 or shape[2] not in (1, 3):
        return None
    height, width, channels = shape
    scan = height * (1 + width * channels)
    png = encode_png(np.zeros(shape, np.uint8), config)
    at = png.find(b"IDAT") - 4  # the chunk's length field
    length = int.from_bytes(png[at:at + 4], "big") if at > 0 else -1
    stream = png[at + 8:at + 8 + length]
    filter_bytes = stream[_STORED_HEADER:_STORED_HEADER + scan:1 + width * channels]  # one per row
    if (length != _STORED_HEADER + scan + 4 or stream[2] != 1 or int.from_bytes(stream[3:5], "little") != scan
            or png[at + 12 + length:] != _IEND or filter_bytes != b"\x01" * height):
        return None
    return png[:at + 8 + _STORED_HEADER]


def _fill_stored_frames(images: np.ndarray, frame: bytes) -> list[bytes]:
    batch, height, width, channels = images.shape
    row = width * channels
    scan = height * (1 + row)
    head, tail = len(frame), len(frame) + scan
    out = np.empty((batch, tail + 8 + len(_IEND)), np.uint8)  # (B, PNG bytes)
    out[:, :head] = np.frombuffer(frame, np.uint8)
    rows = out[:, head:tail].reshape(batch, height, 1 + row)  # (B, H, filter byte + W*C)
    assert batch == 0 or np.may_share_memory(rows, out)  # a view: scans are written into the PNGs themselves
    pixels = images.reshape(batch, height, row)
    rows[:, :, 0] = 1  # PNG filter type Sub: each byte minus the one a pixel to its left, mod 256
    rows[:, :, 1:1 + channels] = pixels[:, :, :channels]
    np.subtract(pixels[:, :, channels:], pixels[:, :, :-channels], out=rows[:, :, 1 + channels:])
    data = out[:, head:tail]  # (B, scan)
    # Adler-32 of each scan: A = 1 + sum(x_k), B = sum over k of (scan - k) x_k + scan, both mod 65521;
    # B < 2**53 for any scan a stored block can hold, so float64 sums are exact
    low = (1 + data.sum(axis=1, dtype=np.int64)) % 65521
    high = (scan + data @ np.arange(scan, 0, -1, dtype=np.float64)).astype(np.int64) % 65521
    out[:, tail:tail + 4] = ((high << 16) | low).astype(">u4").view(np.uint8).reshape(batch, 4)
    chunk = slice(head - _STORED_HEADER - 4, tail + 4)  # the CRC covers "IDAT" and the chunk's data
    crcs = np.fromiter((zlib.crc32(png) for png in out[:, chunk]), dtype=np.uint32, count=batch)
    out[:, tail + 4:tail + 8] = crcs.astype(">u4").view(np.uint8).reshape(batch, 4)
    out[:, tail + 8:] = np.frombuffer(_IEND, np.uint8)
    return [png.tobytes() for png in out]


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 (H, W, C), C being 1 for grayscale."""
    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(img)
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_pngs(pngs: list[bytes], shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """PNG bytes of same-shape images -> uint8 (B, H, W, C) in one array.

    The PNGs of synthgen's Parquet shards (stored deflate blocks, Sub filter) are decoded all at once, with
    their CRCs checked (about 1.5 us per 28x28 image); any other PNG by imagecodecs (libpng, about 9 us).

    Args:
        pngs: the images' PNG bytes.
        shape: (H, W, C) when known; else taken from the first image.
    """
    if shape is None:
        shape = decode_png(pngs[0]).shape if pngs else (0, 0, 1)
    stored = _decode_stored(pngs, tuple(shape))
    if stored is not None:
        return stored
    out = np.empty((len(pngs), *shape), np.uint8)  # (B, H, W, C)
    planes = out[:, :, :, 0] if shape[2] == 1 else out  # libpng writes grayscale as (H, W)
    for k, png in enumerate(pngs):
        # decoding straight into the batch array: 3-4x faster than Pillow per 28x28 image
        imagecodecs.png_decode(png, out=planes[k])
    return out


def decode_png_rows(rows: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Same-length PNGs as the rows of a uint8 (B, size) array -> uint8 (B, H, W, C), as :func:`decode_pngs`."""
    pixels = _decode_stored(rows, tuple(shape))
    return pixels if pixels is not None else decode_pngs([row.tobytes() for row in rows], shape)


def _decode_stored(data: list[bytes] | np.ndarray, shape: tuple[int, int, int]) -> np.ndarray | None:
    """The inverse of :func:`_fill_stored_frames`: when every PNG is the stored-block frame of ``shape`` (as
    synthgen's Parquet shards hold them), undo the Sub filter of the whole batch at once (a running sum per
    row, mod 256) after checking each image's CRC; else None (the caller decodes image by image).

    ``data``: PNG bytes, or same-length PNGs as the rows of a uint8 (B, size) array.
    """
    frame = _stored_frame(shape, tuple(sorted(PARQUET_PNG_SETTINGS.items())))
    height, width, channels = shape
    scan = height * (1 + width * channels)
    size = (len(frame) + scan + 8 + len(_IEND)) if frame else -1
    if isinstance(data, list):
        if not data or any(len(png) != size for png in data):
            return None
        data = np.frombuffer(b"".join(data), np.uint8).reshape(len(data), size)  # (B, PNG bytes)
    if len(data) == 0 or data.shape[1] != size:
        return None
    head = len(frame)
    rows = data[:, head:head + scan].reshape(len(data), height, 1 + width * channels)  # (B, H, 1 + W*C)
    if not (np.array_equal(data[0, :head], np.frombuffer(frame, np.uint8)) and (data[:, :head] == data[0, :head]).all()
            and (rows[:, :, 0] == 1).all()):  # same frame, every row Sub-filtered
        return None
    crcs = data[:, head + scan + 4:head + scan + 8].copy().view(">u4")[:, 0]  # (B,)
    chunk = slice(head - _STORED_HEADER - 4, head + scan + 4)  # what each image's CRC covers
    if any(zlib.crc32(png[chunk]) != int(crc) for png, crc in zip(data, crcs)):
        return None  # a damaged image: libpng says which way
    pixels = rows[:, :, 1:].reshape(len(data), height, width, channels).copy()  # (B, H, W, C) Sub deltas
    for x in range(1, width):  # undo Sub: add the pixel to the left, mod 256 (4x faster than np.cumsum here)
        pixels[:, :, x] += pixels[:, :, x - 1]
    return pixels


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
