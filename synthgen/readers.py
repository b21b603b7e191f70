"""Training data in: MedMNIST-style .npz, a folder of class subfolders, or Parquet (Hugging Face or synthgen).

Every reader returns one :class:`ImageSet` of ``(N, H, W, C)`` images, uint8 (8-bit gray or RGB) or uint16
(16-bit gray), and int64 labels, plus the sha256 of the bytes it read, so a checkpoint can say exactly which
data made it. Paths go through :mod:`synthgen.storage`, so ``s3://`` and friends work like local paths. No
torch here: readers are plain numpy + Pillow + pyarrow.

Anything wrong with the input raises :class:`SynthgenError` naming the file and what to fix, and so does
anything that cannot be kept exactly (float pixels, 16-bit colour, 32-bit values, 8- and 16-bit images mixed
in one set): never a silent conversion.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from synthgen import storage
from synthgen.dataset.format import UNLABELED, UNLABELED_NAME, Layout, raw_pixels
from synthgen.errors import SynthgenError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
# Pillow modes of 8-bit gray (kept as "L"); 16-bit gray modes are kept as uint16; other 8-bit modes (RGB, RGBA,
# P, CMYK, ...) become RGB; the rest ("F", "I" beyond 16 bits, 16-bit colour) are refused
GRAY_MODES = ("1", "L", "LA")
GRAY16_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
FLOAT_HINT = ("synthgen keeps 8- or 16-bit integer pixels exactly and will not guess a window for other data; "
              "convert it to uint8 or uint16 with the window you want first")


@dataclass
class ImageSet:
    """Images and labels read from one source."""

    images: np.ndarray  # (N, H, W, C) uint8, C in (1, 3); or uint16 with C == 1 (16-bit gray)
    labels: np.ndarray  # (N,) int64, in range(len(class_names))
    class_names: list[str]
    sha256: str  # of the source bytes (for folders: sorted relative paths + bytes)
    source: str
    pixel_spacing: list[float] | None = None  # [row, col] mm, when the files (DICOM, NIfTI) all say the same

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def bit_depth(self) -> int:
        """8 for uint8 images, 16 for uint16."""
        return 16 if self.images.dtype == np.uint16 else 8

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W), the order checkpoints use."""
        _, h, w, c = self.images.shape
        return c, h, w


def load_images(path: str, split: str = "train") -> ImageSet:
    """Read a training set from ``path``.

    Args:
        path: a ``.npz`` (MedMNIST layout), a ``.parquet`` file, a directory of ``*.parquet`` files
            (e.g. a synthgen dataset), a directory with one subfolder of PNG/JPEG/TIFF, DICOM or NIfTI images per
            class, or one NIfTI file (:mod:`synthgen.medical_readers`).
        split: which ``{split}_images`` / ``{split}_labels`` pair to read from an ``.npz``; for a Parquet
            directory, files named ``{split}-*`` are preferred when there are any.

    Returns:
        The images, labels, class names and the sha256 of the source.
    """
    loc = storage.locate(path)
    if not storage.exists(loc, loc.root):
        raise SynthgenError(f"{path}: no such file or directory (--data)")
    if storage.is_dir(loc, loc.root):
        files = storage.list_files(loc, loc.root, recursive=True)
        parquet = [f for f in files if f.endswith(".parquet") and not _is_hidden(loc, f)]
        # a synthgen PNG-layout dataset has metadata Parquet (no image column) next to images/<class>/
        parquet = [f for f in parquet if "image" in _parquet_columns(loc, f)]
        if parquet:
            return _read_parquet(loc, _pick_split(parquet, split))
        images_dir = loc.join("images")
        if storage.is_dir(loc, images_dir):
            return _read_folder(storage.Location(loc.fs, images_dir, posixpath.join(path, "images")),
                                _manifest_classes(loc))
        return _read_folder(loc)
    data = _read(loc, loc.root)
    if path.lower().endswith((".nii", ".nii.gz", ".dcm", ".dicom")):  # synthgen/medical_readers.py
        from synthgen import medical_readers

        return medical_readers.read_file(loc, data)
    if data[:4] == b"PAR1":
        return _read_parquet(loc, [loc.root], first_bytes={loc.root: data})
    if data[:2] == _ZIP_MAGIC or path.endswith(".npz"):
        return _read_npz(data, path, split)
    raise SynthgenError(f"{path}: unsupported data file; use a MedMNIST-style .npz, a .parquet file, "
                        "or a folder with one subfolder of images per class")


# ---------------------------------------------------------------- npz

_ZIP_MAGIC = b"PK"  # a .npz is a zip archive


def _read_npz(data: bytes, source: str, split: str) -> ImageSet:
    if data[:2] != _ZIP_MAGIC:  # np.load would return a bare .npy as one array, and refuse the rest as pickles
        raise SynthgenError(f"{source}: not a .npz archive (a zip of named arrays, as MedMNIST ships and "
                            "numpy.savez writes)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            keys = sorted(npz.files)
            img_key, lab_key = f"{split}_images", f"{split}_labels"
            if img_key not in keys or lab_key not in keys:
                raise SynthgenError(f"{source}: no {img_key!r}/{lab_key!r} arrays (it has: "
                                    f"{', '.join(keys) or 'nothing'}); pick another --split or use the "
                                    "MedMNIST layout")
            images, labels = npz[img_key], npz[lab_key]
            names = [str(n) for n in npz["class_names"]] if "class_names" in keys else None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        if isinstance(err, SynthgenError):
            raise
        raise SynthgenError(f"{source}: corrupt or unreadable .npz file ({type(err).__name__}: {err})") from None
    images = _npz_images(images, source, img_key)
    labels = _flat_labels(labels, len(images), source)
    return ImageSet(images, labels, _class_names(names, labels, source), _sha256(data), source)


def _npz_images(images: np.ndarray, source: str, key: str) -> np.ndarray:
    if images.ndim == 3:
        images = images[..., None]  # grayscale (N, H, W) -> (N, H, W, 1)
    if images.ndim != 4 or images.shape[3] not in (1, 3):
        raise SynthgenError(f"{source}: {key} must be (N, H, W) or (N, H, W, 3), got {images.shape}")
    images = _exact_pixels(images, f"{source}: {key}")
    if len(images) == 0:
        raise SynthgenError(f"{source}: {key} holds zero images")
    return np.ascontiguousarray(images)


def _exact_pixels(images: np.ndarray, where: str) -> np.ndarray:
    """uint8 and uint16 arrays as they are; other integer arrays as uint8 when every value fits 0-255 (as
    synthgen always read them), else uint16 when they fit 0-65535; anything else is refused."""
    if images.dtype not in (np.uint8, np.uint16):
        if not np.issubdtype(images.dtype, np.integer):
            raise SynthgenError(f"{where} holds {images.dtype} pixels; {FLOAT_HINT}")
        low, high = (int(images.min()), int(images.max())) if images.size else (0, 0)
        if low < 0 or high > 65535:
            raise SynthgenError(f"{where} holds {images.dtype} values {low}..{high}, outside 0-65535; {FLOAT_HINT}")
        images = images.astype(np.uint8 if high <= 255 else np.uint16)
    if images.dtype == np.uint16 and images.shape[-1] != 1:
        raise SynthgenError(f"{where} holds 16-bit colour images; synthgen keeps 16 bits for grayscale only "
                            "(8-bit RGB, or 16-bit single-channel images)")
    return images


def _flat_labels(labels: np.ndarray, n: int, source: str) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != n:
        raise SynthgenError(f"{source}: {n} images but labels of shape {labels.shape}; "
                            "expected one label per image")
    if not np.issubdtype(labels.dtype, np.integer) or (n and labels.min() < 0):
        raise SynthgenError(f"{source}: labels must be non-negative integers, got {labels.dtype}")
    return labels.astype(np.int64)


def placeholder_names(count: int) -> list[str]:
    """The class names of data that has none: "0", "1", ...; they match other names by position only."""
    return [str(i) for i in range(count)]


def are_placeholder_names(names: list[str] | tuple[str, ...]) -> bool:
    return list(names) == placeholder_names(len(names))


def _class_names(names: list[str] | None, labels: np.ndarray, source: str) -> list[str]:
    """The given names (checked against the labels), or "0", "1", ... up to the largest label."""
    top = int(labels.max()) + 1 if len(labels) else 1
    if names is None:
        return placeholder_names(top)
    if len(names) < top:
        raise SynthgenError(f"{source}: labels go up to {top - 1} but only {len(names)} class names are given")
    return names


# ---------------------------------------------------------------- image folder

def _manifest_classes(loc: storage.Location) -> list[str] | None:
    """The class order of a synthgen PNG-layout dataset, from its manifest (folder names sort otherwise)."""
    path = loc.join("manifest.json")
    if not storage.exists(loc, path):
        return None
    try:
        return list(json.loads(_read(loc, path))["model"]["class_names"]) or None
    except (ValueError, KeyError, TypeError):
        return None


def _read_folder(loc: storage.Location, class_order: list[str] | None = None) -> ImageSet:
    files = [f for f in storage.list_files(loc, loc.root, recursive=True) if not _is_hidden(loc, f)]
    from synthgen import medical_readers  # imports this module

    if any(medical_readers.is_medical(f) for f in files):  # DICOM / NIfTI folders
        return medical_readers.read_folder(loc, files, class_order)
    classes = sorted({_rel(loc, f).split("/")[0] for f in files if "/" in _rel(loc, f)})
    names, label_of = classes, {name: i for i, name in enumerate(classes)}
    if class_order is not None:
        # synthgen's own PNG layout: keep the model's classes and label numbers, even for a class the label
        # plan left out (folder names are the sanitised class names)
        dirs = [Layout("png", tuple(class_order)).class_dir(i) for i in range(len(class_order))]
        if set(classes) <= set(dirs):
            names, label_of = list(class_order), {d: i for i, d in enumerate(dirs)}
    if not classes:
        raise SynthgenError(f"{loc.uri}: empty folder; expected one subfolder of PNG/JPEG/TIFF images per class")
    arrays, labels, h = [], [], hashlib.sha256()
    for name in classes:
        label = label_of[name]
        members = [f for f in files if _rel(loc, f).startswith(name + "/") and f.lower().endswith(IMAGE_SUFFIXES)]
        if not members:
            raise SynthgenError(f"{loc.join(name)}: class folder has no PNG/JPEG/TIFF images")
        for f in members:
            data = _read(loc, f)
            _hash_member(h, _rel(loc, f), data)
            arrays.append((f, _decode(data, f)))
            labels.append(label)
    images = _stack(arrays)
    return ImageSet(images, np.asarray(labels, np.int64), names, h.hexdigest(), loc.uri)


# ---------------------------------------------------------------- parquet

def _read_parquet(loc: storage.Location, paths: list[str],
                  first_bytes: dict[str, bytes] | None = None) -> ImageSet:
    arrays, labels, names, h = [], [], None, hashlib.sha256()
    for path in paths:
        data = (first_bytes or {}).get(path) or _read(loc, path)
        _hash_member(h, _rel(loc, path) or posixpath.basename(path), data)
        table = _parquet_table(data, path)
        names = names if names is not None else _hf_label_names(table.schema)
        arrays += _parquet_images(table.column("image"), table.schema.field("image"), path)
        labels.append(_parquet_labels(table, path))
    if not arrays:
        raise SynthgenError(f"{loc.uri}: zero images in {len(paths)} Parquet file(s)")
    label_arr = np.concatenate(labels)
    if (label_arr == UNLABELED).all():  # a synthgen dataset from an unconditional model: one class
        label_arr, names = np.zeros_like(label_arr), [UNLABELED_NAME]
    sha = _sha256(first_bytes[paths[0]]) if first_bytes else h.hexdigest()
    return ImageSet(_stack(arrays), label_arr, _class_names(names, label_arr, loc.uri), sha, loc.uri)


def _parquet_table(data: bytes, path: str) -> pa.Table:
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as err:
        raise SynthgenError(f"{path}: cannot read as Parquet ({err})") from None
    if "image" not in table.column_names:
        raise SynthgenError(f"{path}: no 'image' column (it has: {', '.join(table.column_names)})")
    return table


def _parquet_images(column: pa.ChunkedArray, field: pa.Field, path: str) -> list[tuple[str, np.ndarray]]:
    """Decode an image column: HF's struct {bytes, path}, raw PNG/JPEG bytes, or synthgen's raw pixels."""
    try:
        stacked = raw_pixels(column, field)  # synthgen --encoding raw: (N, H, W, C)
    except ValueError as err:
        raise SynthgenError(f"{path}: {err}") from None
    if stacked is not None:
        if stacked.shape[3] not in (1, 3):
            raise SynthgenError(f"{path}: raw 'image' pixels must have 1 or 3 channels, got shape {stacked.shape[1:]}")
        stacked = _exact_pixels(stacked, f"{path}: raw 'image' column")
        return [(f"{path} row {k}", img) for k, img in enumerate(stacked)]
    out = []
    for k, cell in enumerate(column.to_pylist()):
        raw = cell.get("bytes") if isinstance(cell, dict) else cell
        if not isinstance(raw, bytes) or not raw:
            raise SynthgenError(f"{path}: row {k} of 'image' is not encoded image bytes (got {type(raw).__name__}); "
                                "expected PNG/JPEG bytes or Hugging Face's {bytes, path} struct")
        out.append((f"{path} row {k}", _decode(raw, f"{path} row {k}")))
    return out


def _parquet_columns(loc: storage.Location, path: str) -> list[str]:
    try:
        with loc.fs.open_input_file(path) as f:
            return pq.read_schema(f).names
    except (pa.ArrowException, OSError) as err:
        raise SynthgenError(f"{path}: cannot read as Parquet ({err})") from None


def _parquet_labels(table: pa.Table, path: str) -> np.ndarray:
    if "label" not in table.column_names:
        raise SynthgenError(f"{path}: no 'label' column (it has: {', '.join(table.column_names)})")
    col = table.column("label")
    if col.null_count:
        raise SynthgenError(f"{path}: 'label' column has {col.null_count} empty values")
    try:
        values = np.asarray(col.to_numpy(zero_copy_only=False))
    except (pa.ArrowException, TypeError) as err:
        raise SynthgenError(f"{path}: 'label' column is not integers ({err})") from None
    if (values == UNLABELED).all():
        return values.astype(np.int64)
    return _flat_labels(values, table.num_rows, path)


def _hf_label_names(schema: pa.Schema) -> list[str] | None:
    """ClassLabel names from Hugging Face's schema metadata.

    ``datasets`` writes ``{"info": {"features": ...}}``; older exports put ``{"features": ...}`` at the top.
    """
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return None
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # metadata is a hint, not the data: ignore it when garbled
    features = (meta.get("info") or {}).get("features") or meta.get("features") or {}
    names = (features.get("label") or {}).get("names") if isinstance(features, dict) else None
    return [str(n) for n in names] if isinstance(names, list) and names else None


def _pick_split(paths: list[str], split: str) -> list[str]:
    chosen = [p for p in paths if posixpath.basename(p).startswith(f"{split}-")]
    return chosen or paths


# ---------------------------------------------------------------- shared

def _decode(data: bytes, source: str) -> np.ndarray:
    """PNG/JPEG/TIFF bytes -> uint8 (H, W, 1) for 8-bit gray modes, uint16 (H, W, 1) for 16-bit gray,
    uint8 (H, W, 3) for other 8-bit modes; float, 32-bit and 16-bit colour images are refused."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            arr = _exact_array(img, data, source)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        # a bomb error is a header claiming hundreds of megapixels: damaged or hostile, either way not data
        raise SynthgenError(f"{source}: not a readable PNG/JPEG/TIFF image ({err})") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def _exact_array(img: Image.Image, data: bytes, source: str) -> np.ndarray:
    if img.mode in GRAY16_MODES:
        return np.asarray(img).astype(np.uint16)  # I;16B is big-endian: native order, same values
    if img.mode == "I":  # 32-bit integers (some 16-bit files open so): kept when they fit 16 bits
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise SynthgenError(f"{source}: 32-bit integer pixels {arr.min()}..{arr.max()} do not fit 16 bits; "
                                f"{FLOAT_HINT}")
        return arr.astype(np.uint16)
    if img.mode == "F" or img.mode.startswith(("I;32", "F;")):
        raise SynthgenError(f"{source}: {img.mode} (floating-point or 32-bit) pixels; {FLOAT_HINT}")
    if _png_bit_depth(data) == 16:  # Pillow reads 16-bit colour PNGs as 8-bit RGB(A): that would clip
        raise SynthgenError(f"{source}: a 16-bit colour PNG; synthgen keeps 16 bits for grayscale only "
                            "(convert it to 8-bit RGB or 16-bit gray first)")
    return np.asarray(img.convert("L" if img.mode in GRAY_MODES else "RGB"))


def _png_bit_depth(data: bytes) -> int | None:
    """The bit depth in a PNG's IHDR (None for other formats)."""
    return data[24] if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24 else None


def _stack(arrays: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """Stack decoded images; 8-bit gray ones become RGB when any image is colour, so the set has one format.
    8- and 16-bit images mixed are refused: widening one kind would be a guess at the intended window."""
    first_name, first = arrays[0]
    for name, arr in arrays:
        if arr.shape[:2] != first.shape[:2]:
            raise SynthgenError(f"{name}: image is {arr.shape[1]}x{arr.shape[0]} but {first_name} is "
                                f"{first.shape[1]}x{first.shape[0]}; all images must have one size")
        if arr.dtype != first.dtype:
            depth = {np.dtype(np.uint8): "8-bit", np.dtype(np.uint16): "16-bit"}
            raise SynthgenError(f"{name}: a {depth[arr.dtype]} image, but {first_name} is {depth[first.dtype]}; "
                                "all images of one set must have one bit depth")
    channels = max(arr.shape[2] for _, arr in arrays)
    return np.stack([np.repeat(arr, channels // arr.shape[2], axis=2) for _, arr in arrays])  # (N, H, W, C)


def _read(loc: storage.Location, path: str) -> bytes:
    try:
        return storage.read_bytes(loc, path)
    except OSError as err:
        raise SynthgenError(f"{path}: cannot read ({err})") from None


def _rel(loc: storage.Location, path: str) -> str:
    return posixpath.relpath(path, loc.root) if path != loc.root else ""


def _is_hidden(loc: storage.Location, path: str) -> bool:
    # dotfiles and synthgen's in-flight temporaries are not data
    return any(part.startswith(".") for part in _rel(loc, path).split("/"))


def _hash_member(h: "hashlib._Hash", rel: str, data: bytes) -> None:
    # length-prefixing keeps (name, bytes) boundaries unambiguous
    h.update(f"{rel}\0{len(data)}\0".encode())
    h.update(data)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
