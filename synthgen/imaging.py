"""uint8 / uint16 image arrays <-> PNG bytes, the synthetic marking every written PNG carries, and grids.

Encoding uses imagecodecs (libpng): about twice as fast as Pillow on small images; uint16 images become
16-bit PNGs. Decoding and grids use Pillow. A batch in Parquet's stored-block settings takes a faster road to
the same bytes, 8- or 16-bit (see :func:`encode_pngs`).

The marking (:func:`marking_chunks`) is an iTXt chunk holding an XMP packet with IPTC's
``Iptc4xmpExt:DigitalSourceType`` = ``trainedAlgorithmicMedia``, the model's fingerprint and the image's
dataset index, placed between the image data and IEND (so the stored-block frame before it stays one per
shape). Why XMP and not a plain tEXt chunk: docs/design.md.
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


# The marking of every PNG synthgen writes (since 0.7.0): the manifest's "png_marking" names this layout, so a
# dataset started without it (0.6.0) is finished without it. No timestamp, no version: the bytes depend only on
# (fingerprint, index).
PNG_MARKING = "xmp-iptc-trainedAlgorithmicMedia-1"
DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
XMP_KEYWORD = b"XML:com.adobe.xmp"  # the iTXt keyword XMP readers (exiftool, Pillow, Adobe) look for in a PNG
_XMP_HEAD = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
             '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
             'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:synthgen="urn:synthgen:xmp:1/" '
             f'Iptc4xmpExt:DigitalSourceType="{DIGITAL_SOURCE_TYPE}" xmp:CreatorTool="synthgen" '
             'synthgen:ModelFingerprint="{fingerprint}" synthgen:Index="')
_XMP_TAIL = b'"/></rdf:RDF></x:xmpmeta>'  # the index comes last, so only a short tail follows it
_ITXT_HEAD = XMP_KEYWORD + b"\0\0\0\0\0"  # keyword, NUL, uncompressed (0, 0), no language, no translation
_DESCRIPTION = "Synthetic image made by synthgen (IPTC digital source type trainedAlgorithmicMedia), not a real " \
               "scan; model fingerprint {fingerprint}"
INDEX_DIGITS = 9  # as in the PNG tree's file names; longer indices take more digits


def _chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def marking_chunks(fingerprint: str, indices) -> np.ndarray | list[bytes]:
    """The marking of each image: a tEXt "Description" saying it is synthetic (the same for every image of a
    model) and an iTXt XMP packet with IPTC's digital source type trainedAlgorithmicMedia, the model's
    fingerprint and the image's dataset index.

    Returns:
        The chunks of image k as row k of a uint8 (B, L) array when all indices have the same number of digits
        (built in one go: the bytes before the digits and their CRC state are shared); else a list of bytes.
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    text, head_crc = _marking_parts(fingerprint)
    digits = [max(INDEX_DIGITS, len(str(int(i)))) for i in (indices.min(), indices.max())] if len(indices) else [0]
    if digits[0] != digits[-1]:  # straddles a power of ten: image by image
        return [b"".join(bytes(row) for row in marking_chunks(fingerprint, [i])) for i in indices.tolist()]
    width = digits[0]
    length = len(text[1]) + width + len(_XMP_TAIL)  # of the iTXt's data
    rows = np.empty((len(indices), len(text[0]) + 8 + length + 4), np.uint8)  # (B, chunk bytes)
    rows[:, :len(text[0])] = np.frombuffer(text[0], np.uint8)
    at = len(text[0])
    rows[:, at:at + 4] = np.frombuffer(length.to_bytes(4, "big"), np.uint8)
    rows[:, at + 4:at + 8 + len(text[1])] = np.frombuffer(b"iTXt" + text[1], np.uint8)
    at += 8 + len(text[1])
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)  # (width,)
    rows[:, at:at + width] = (indices[:, None] // powers % 10 + ord("0")).astype(np.uint8)  # (B, width) digits
    rows[:, at + width:at + width + len(_XMP_TAIL)] = np.frombuffer(_XMP_TAIL, np.uint8)
    varying = rows[:, at:at + width + len(_XMP_TAIL)]
    crcs = np.fromiter((zlib.crc32(row, head_crc) for row in varying), dtype=np.uint32, count=len(rows))
    rows[:, -4:] = crcs.astype(">u4").view(np.uint8).reshape(len(rows), 4)
    return rows


@functools.lru_cache(maxsize=4)
def _marking_parts(fingerprint: str) -> tuple[tuple[bytes, bytes], int]:
    """(the tEXt chunk, the iTXt data before the index) and the CRC state of "iTXt" + that data."""
    text = _chunk(b"tEXt", b"Description\0" + _DESCRIPTION.format(fingerprint=fingerprint).encode("latin-1"))
    head = _ITXT_HEAD + _XMP_HEAD.format(fingerprint=fingerprint).encode()
    return (text, head), zlib.crc32(b"iTXt" + head)


def png_marking(png: bytes) -> dict[str, str]:
    """The text chunks of a PNG (a marked one has "Description" and the XMP packet), as Pillow reads them."""
    with Image.open(io.BytesIO(png)) as img:
        img.load()  # chunks after the image data are read with it
        return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in img.info.items()
                if isinstance(v, (str, bytes))}


def bit_depth_of(dtype) -> int:
    """8 for uint8 pixels, 16 for uint16; anything else is refused."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return 8
    if dtype == np.uint16:
        return 16
    raise ValueError(f"pixels must be uint8 or uint16, got {dtype}")


def pixel_dtype(bit_depth: int) -> np.dtype:
    """uint8 for 8-bit images, uint16 for 16-bit."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit depth must be 8 or 16, got {bit_depth}")
    return np.dtype(np.uint8 if bit_depth == 8 else np.uint16)


def to_8bit(images: np.ndarray) -> np.ndarray:
    """For viewing only (grids, previews): uint16 -> uint8 by the top 8 bits; uint8 as is."""
    images = np.asarray(images)
    return (images >> 8).astype(np.uint8) if images.dtype == np.uint16 else images


def to_pil(image: np.ndarray) -> Image.Image:
    """(H, W, 1) or (H, W) -> 8-bit "L" (16-bit "I;16" for uint16); (H, W, 3) -> "RGB"."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(image), mode=None)


def encode_png(image: np.ndarray, settings: dict[str, int] = PNG_SETTINGS, mark: bytes | None = None) -> bytes:
    """One uint8 or uint16 image (H, W, C) -> PNG bytes: grayscale for C == 1, RGB for C == 3, 8 or 16 bits.

    Args:
        mark: a chunk to put just before IEND (:func:`marking_chunks`), or None.
    """
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    png = imagecodecs.png_encode(np.ascontiguousarray(image), **settings)
    if mark is None:
        return png
    assert png.endswith(_IEND)
    return png[:-len(_IEND)] + mark + _IEND


def encode_pngs(images: np.ndarray, settings: dict[str, int] = PNG_SETTINGS,
                marks: np.ndarray | list[bytes] | None = None) -> list[bytes]:
    """(B, H, W, C) uint8 or uint16 -> B PNGs, each exactly the bytes :func:`encode_png` gives (with
    ``marks[k]`` before image k's IEND when given: :func:`marking_chunks`).

    In the stored-block settings (PARQUET_PNG_SETTINGS) libpng's per-image setup is nearly all the cost
    (4.4 us of a 28x28 image), and every PNG of one shape is the same frame around a different scan: so
    libpng encodes one blank image of the shape, and the batch's scans, Adler-32s and CRCs are filled into
    copies of that frame at once (1.5 us per image). Any other settings, or a frame this does not
    recognise, encode image by image.
    """
    images = np.asarray(images)
    fast = images.ndim == 4 and images.dtype in (np.uint8, np.uint16)
    frame = _stored_frame(images.shape[1:], tuple(sorted(settings.items())), images.dtype.str) if fast else None
    if frame is None:
        return [encode_png(image, settings, None if marks is None else bytes(marks[k]))
                for k, image in enumerate(images)]
    return _fill_stored_frames(images, frame, marks)


_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_UINT8 = np.dtype(np.uint8)
_STORED_HEADER = 7  # zlib header (2 bytes), stored-block header (BFINAL=1, BTYPE=00), LEN, NLEN


@functools.lru_cache(maxsize=16)
def _stored_frame(shape: tuple[int, int, int], settings: tuple[tuple[str, int], ...],
                  dtype: str = "|u1") -> bytes | None:
    """The PNG of a blank (H, W, C) image of ``dtype`` (uint8 or uint16) up to its scan, when libpng writes it
    as one IDAT holding one stored deflate block of Sub-filtered rows followed by IEND; else None."""
    config = dict(settings)
    if config.get("level") != 0 or config.get("filter") != 16 or len(shape) != 3 or shape[2] not in (1, 3):
        return None
    height, width, channels = shape
    row = width * channels * np.dtype(dtype).itemsize  # bytes of one row's pixels (16-bit: big-endian pairs)
    scan = height * (1 + row)
    png = encode_png(np.zeros(shape, dtype), config)
    at = png.find(b"IDAT") - 4  # the chunk's length field
    length = int.from_bytes(png[at:at + 4], "big") if at > 0 else -1
    stream = png[at + 8:at + 8 + length]
    filter_bytes = stream[_STORED_HEADER:_STORED_HEADER + scan:1 + row]  # one per row
    if (length != _STORED_HEADER + scan + 4 or stream[2] != 1 or int.from_bytes(stream[3:5], "little") != scan
            or png[at + 12 + length:] != _IEND or filter_bytes != b"\x01" * height):
        return None
    return png[:at + 8 + _STORED_HEADER]


def _fill_stored_frames(images: np.ndarray, frame: bytes, marks: np.ndarray | list[bytes] | None = None) -> list[bytes]:
    batch, height, width, channels = images.shape
    pixel_bytes = channels * images.dtype.itemsize  # PNG's "bpp": Sub works on bytes, a whole pixel apart
    row = width * pixel_bytes
    scan = height * (1 + row)
    head, tail = len(frame), len(frame) + scan
    marked = isinstance(marks, np.ndarray)  # same-length marks, as rows: copied into the PNGs at once
    extra = marks.shape[1] if marked else 0
    out = np.empty((batch, tail + 8 + extra + len(_IEND)), np.uint8)  # (B, PNG bytes)
    out[:, :head] = np.frombuffer(frame, np.uint8)
    rows = out[:, head:tail].reshape(batch, height, 1 + row)  # (B, H, filter byte + W*C*itemsize)
    assert batch == 0 or np.may_share_memory(rows, out)  # a view: scans are written into the PNGs themselves
    if images.dtype == np.uint16:  # PNG stores 16-bit samples big-endian
        images = images.astype(">u2", copy=False).view(np.uint8)  # (B, H, W, C*2)
    pixels = images.reshape(batch, height, row)
    rows[:, :, 0] = 1  # PNG filter type Sub: each byte minus the one a pixel to its left, mod 256
    rows[:, :, 1:1 + pixel_bytes] = pixels[:, :, :pixel_bytes]
    np.subtract(pixels[:, :, pixel_bytes:], pixels[:, :, :-pixel_bytes], out=rows[:, :, 1 + pixel_bytes:])
    data = out[:, head:tail]  # (B, scan)
    # Adler-32 of each scan: A = 1 + sum(x_k), B = sum over k of (scan - k) x_k + scan, both mod 65521;
    # B < 2**53 for any scan a stored block can hold, so float64 sums are exact
    low = (1 + data.sum(axis=1, dtype=np.int64)) % 65521
    high = (scan + data @ np.arange(scan, 0, -1, dtype=np.float64)).astype(np.int64) % 65521
    out[:, tail:tail + 4] = ((high << 16) | low).astype(">u4").view(np.uint8).reshape(batch, 4)
    chunk = slice(head - _STORED_HEADER - 4, tail + 4)  # the CRC covers "IDAT" and the chunk's data
    crcs = np.fromiter((zlib.crc32(png) for png in out[:, chunk]), dtype=np.uint32, count=batch)
    out[:, tail + 4:tail + 8] = crcs.astype(">u4").view(np.uint8).reshape(batch, 4)
    out[:, out.shape[1] - len(_IEND):] = np.frombuffer(_IEND, np.uint8)
    if marked:
        out[:, tail + 8:tail + 8 + extra] = marks
    elif marks is not None:  # marks of different lengths (indices of more digits): joined one by one
        return [png[:tail + 8].tobytes() + mark + _IEND for png, mark in zip(out, marks)]
    return [png.tobytes() for png in out]


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 (H, W, C), C being 1 for grayscale; uint16 (H, W, 1) for a 16-bit grayscale PNG."""
    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(img)
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:  # Pillow's I;16 (little) or I;16B (big)
        arr = arr.astype(np.uint16)
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_pngs(pngs: list[bytes], shape: tuple[int, int, int] | None = None, dtype=None) -> np.ndarray:
    """PNG bytes of same-shape images -> uint8 or uint16 (B, H, W, C) in one array.

    The PNGs of synthgen's Parquet shards (stored deflate blocks, Sub filter) are decoded all at once, with
    their CRCs checked (about 1.5 us per 28x28 image); any other PNG by imagecodecs (libpng, about 9 us).

    Args:
        pngs: the images' PNG bytes.
        shape: (H, W, C) when known; else taken from the first image.
        dtype: uint8 or uint16 when known; else taken from the first image.
    """
    if shape is None or dtype is None:
        first = decode_png(pngs[0]) if pngs else np.zeros((0, 0, 1), np.uint8)
        shape, dtype = shape or first.shape, dtype or first.dtype
    stored = _decode_stored(pngs, tuple(shape), np.dtype(dtype))
    if stored is not None:
        return stored
    out = np.empty((len(pngs), *shape), dtype)  # (B, H, W, C)
    planes = out[:, :, :, 0] if shape[2] == 1 else out  # libpng writes grayscale as (H, W)
    for k, png in enumerate(pngs):
        # decoding straight into the batch array: 3-4x faster than Pillow per 28x28 image
        imagecodecs.png_decode(png, out=planes[k])
    return out


def decode_png_rows(rows: np.ndarray, shape: tuple[int, int, int], dtype=np.uint8) -> np.ndarray:
    """Same-length PNGs as the rows of a uint8 (B, size) array -> (B, H, W, C), as :func:`decode_pngs`
    (``dtype`` None: the first image's)."""
    if dtype is None:
        dtype = decode_png(rows[0].tobytes()).dtype if len(rows) else np.uint8
    pixels = _decode_stored(rows, tuple(shape), np.dtype(dtype))
    return pixels if pixels is not None else decode_pngs([row.tobytes() for row in rows], shape, dtype)


def _decode_stored(data: list[bytes] | np.ndarray, shape: tuple[int, int, int],
                   dtype: np.dtype = _UINT8) -> np.ndarray | None:
    """The inverse of :func:`_fill_stored_frames`: when every PNG is the stored-block frame of ``shape`` and
    ``dtype`` (as synthgen's Parquet shards hold them, marked or not: chunks between the image data and IEND
    are skipped), undo the Sub filter of the whole batch at once (a running sum per row, mod 256) after
    checking each image's CRC; else None (the caller decodes image by image).

    ``data``: PNG bytes, or same-length PNGs as the rows of a uint8 (B, size) array.
    """
    if dtype not in (np.uint8, np.uint16):
        return None
    frame = _stored_frame(shape, tuple(sorted(PARQUET_PNG_SETTINGS.items())), dtype.str)
    height, width, channels = shape
    pixel_bytes = channels * dtype.itemsize
    scan = height * (1 + width * pixel_bytes)
    least = (len(frame) + scan + 8 + len(_IEND)) if frame else -1  # an unmarked PNG; a marked one is longer
    if frame is None or len(data) == 0:
        return None
    if isinstance(data, list):
        if len({len(png) for png in data}) != 1 or len(data[0]) < least:
            return None
        data = np.frombuffer(b"".join(data), np.uint8).reshape(len(data), len(data[0]))  # (B, PNG bytes)
    if data.shape[1] < least:
        return None
    head = len(frame)
    rows = data[:, head:head + scan].reshape(len(data), height, 1 + width * pixel_bytes)  # (B, H, 1 + row)
    if not (np.array_equal(data[0, :head], np.frombuffer(frame, np.uint8)) and (data[:, :head] == data[0, :head]).all()
            and (rows[:, :, 0] == 1).all()  # same frame, every row Sub-filtered
            and (data[:, -len(_IEND):] == np.frombuffer(_IEND, np.uint8)).all()):
        return None
    crcs = data[:, head + scan + 4:head + scan + 8].copy().view(">u4")[:, 0].tolist()  # (B,)
    first, covered, size = head - _STORED_HEADER - 4, _STORED_HEADER + 4 + scan + 4, data.shape[1]
    flat = memoryview(np.ascontiguousarray(data)).cast("B")  # slicing it is cheaper than slicing numpy rows
    if [zlib.crc32(flat[at:at + covered]) for at in range(first, len(data) * size, size)] != crcs:
        return None  # a damaged image: libpng says which way
    pixels = rows[:, :, 1:].reshape(len(data), height, width, pixel_bytes).copy()  # (B, H, W, bpp) Sub deltas
    for x in range(1, width):  # undo Sub: add the pixel to the left, mod 256 (4x faster than np.cumsum here)
        pixels[:, :, x] += pixels[:, :, x - 1]
    if dtype == np.uint16:  # big-endian sample pairs -> native uint16
        return pixels.view(">u2").astype(np.uint16).reshape(len(data), height, width, channels)
    return pixels


def image_grid(images: np.ndarray, ncol: int = 8, pad: int = 2) -> np.ndarray:
    """Tile uint8 or uint16 images (N, H, W, C) into one (rows*(H+pad)+pad, ncol*(W+pad)+pad, C) sheet of
    their dtype, padded white."""
    n, h, w, c = images.shape
    ncol = max(1, min(ncol, n))
    nrow = -(-n // ncol)
    white = np.iinfo(images.dtype).max
    sheet = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), white, dtype=images.dtype)
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
