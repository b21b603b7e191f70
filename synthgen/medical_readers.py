"""Training data in DICOM and NIfTI: a folder with one subfolder of files per class (as for PNG), or one NIfTI file.

:func:`synthgen.readers.load_images` hands a folder here when it holds ``.dcm``/``.dicom``/``.nii``/``.nii.gz``
files, and a single ``.nii``/``.nii.gz``/``.dcm`` path (one class, "0"). Pixels are kept exactly as stored:
uint8 when the files are 8-bit, uint16 when 16-bit (``(N, H, W, C)``, C 1 or 3). What cannot be kept exactly is
refused with one line naming the file, never converted: signed or float pixels, a rescale slope/intercept
(DICOM) or scl_slope/scl_inter (NIfTI) other than identity, MONOCHROME1 or YBR colour, other bit depths, and
files of different depths, channels or sizes in one set. synthgen does not window (no ``--window``): a window
is a lossy, task-specific choice that belongs in the user's own preprocessing, where it is written down.

- DICOM: every frame of every file is an image (multi-frame files give several). PixelSpacing (else
  ImagerPixelSpacing) is the pixel spacing.
- NIfTI: a 2D file (X, Y) is one image; a 3D volume (X, Y, Z) is read as its Z slices (the third voxel axis,
  the slice axis of an axial acquisition stored the usual way), slice k = ``data[:, :, k]``; synthgen's own RGB
  layout (X, Y, 1, 1, 3) is one RGB image. The image is the slice transposed, rows along Y and columns along
  X (the inverse of ``--format nifti``, and how MONAI's readers index a PNG); the affine is not applied (no
  reorientation). The spacing is pixdim of X and Y, in mm (micron and metre units converted); a file whose
  units are "unknown" (nibabel's default, pixdim 1) has none.

The pixel spacing is recorded only when every file has the same one (``ImageSet.pixel_spacing``, [row, col] mm).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib

import numpy as np

from synthgen import storage
from synthgen.dataset.format import Layout
from synthgen.errors import SynthgenError
from synthgen.readers import (
    IMAGE_SUFFIXES,
    ImageSet,
    _hash_member,
    _read,
    _rel,
    _sha256,
)

DICOM_SUFFIXES, NIFTI_SUFFIXES = (".dcm", ".dicom"), (".nii", ".nii.gz")
MEDICAL_SUFFIXES = DICOM_SUFFIXES + NIFTI_SUFFIXES
_TO_MM = {"mm": 1.0, "micron": 1e-3, "meter": 1e3}  # NIfTI's spatial units; "unknown": no spacing recorded


def is_medical(path: str) -> bool:
    return path.lower().endswith(MEDICAL_SUFFIXES)


def read_file(loc: storage.Location, data: bytes) -> ImageSet:
    """One NIfTI (or DICOM) file: its images, all of class "0"."""
    images, spacing = _decode(data, loc.root)
    stacked = _stack([(f"{loc.uri} image {k}", image) for k, image in enumerate(images)])
    return ImageSet(stacked, np.zeros(len(stacked), np.int64), ["0"], _sha256(data), loc.uri, pixel_spacing=spacing)


def read_folder(loc: storage.Location, files: list[str], class_order: list[str] | None = None) -> ImageSet:
    """A folder of class subfolders of DICOM/NIfTI files (``files``: its visible files, recursively)."""
    classes = sorted({_rel(loc, f).split("/")[0] for f in files if "/" in _rel(loc, f)})
    if not classes:
        raise SynthgenError(f"{loc.uri}: DICOM/NIfTI files must be in one subfolder per class")
    names, label_of = classes, {name: i for i, name in enumerate(classes)}
    if class_order is not None:  # synthgen's own --format dicom/nifti: the model's classes and labels
        dirs = [Layout("png", tuple(class_order)).class_dir(i) for i in range(len(class_order))]
        if set(classes) <= set(dirs):
            names, label_of = list(class_order), {d: i for i, d in enumerate(dirs)}
    arrays, labels, spacings, h = [], [], set(), hashlib.sha256()
    for name in classes:
        members = [f for f in files if _rel(loc, f).startswith(name + "/")]
        for f in members:
            if f.lower().endswith(IMAGE_SUFFIXES):
                raise SynthgenError(f"{f}: a PNG/JPEG among DICOM/NIfTI files; use one format per data folder")
        members = [f for f in members if is_medical(f)]
        if not members:
            raise SynthgenError(f"{loc.join(name)}: class folder has no DICOM/NIfTI files")
        for f in members:
            data = _read(loc, f)
            _hash_member(h, _rel(loc, f), data)
            images, spacing = _decode(data, f)
            spacings.add(None if spacing is None else tuple(spacing))
            arrays += [(f if len(images) == 1 else f"{f} image {k}", image) for k, image in enumerate(images)]
            labels += [label_of[name]] * len(images)
    spacing = list(spacings.pop()) if len(spacings) == 1 and None not in spacings else None
    return ImageSet(_stack(arrays), np.asarray(labels, np.int64), names, h.hexdigest(), loc.uri,
                    pixel_spacing=spacing)


def _decode(data: bytes, source: str) -> tuple[list[np.ndarray], list[float] | None]:
    if source.lower().endswith(NIFTI_SUFFIXES):
        return nifti_images(data, source)
    return dicom_images(data, source)


def dicom_images(data: bytes, source: str) -> tuple[list[np.ndarray], list[float] | None]:
    """A DICOM file's frames as (H, W, C) uint8/uint16 arrays, and its [row, col] pixel spacing in mm."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, OSError, ValueError, EOFError) as err:
        raise SynthgenError(f"{source}: not a readable DICOM file ({err})") from None
    if "PixelData" not in ds:
        raise SynthgenError(f"{source}: DICOM file without pixel data")
    bits, photometric = int(ds.get("BitsAllocated", 0)), str(ds.get("PhotometricInterpretation", ""))
    if int(ds.get("PixelRepresentation", 0)) != 0:
        raise SynthgenError(f"{source}: signed pixel data (PixelRepresentation 1) cannot be kept exactly as "
                            "unsigned 8/16-bit; convert or window it first (synthgen has no --window)")
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    if (slope, intercept) != (1.0, 0.0):
        raise SynthgenError(f"{source}: RescaleSlope {slope} / RescaleIntercept {intercept} map stored values to "
                            "other units, which 8/16-bit images cannot keep exactly; rescale it first")
    if bits not in (8, 16) or photometric not in ("MONOCHROME2", "RGB") or (photometric == "RGB" and bits != 8):
        raise SynthgenError(f"{source}: {bits}-bit {photometric or 'unknown'} DICOM; synthgen reads 8- or 16-bit "
                            "MONOCHROME2 and 8-bit RGB")
    try:
        pixels = ds.pixel_array
    except (AttributeError, ValueError, RuntimeError, NotImplementedError, TypeError) as err:  # missing codec, ...
        raise SynthgenError(f"{source}: cannot decode its pixels ({type(err).__name__}: {err})") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    channels = 3 if photometric == "RGB" else 1
    pixels = pixels.reshape(frames, int(ds.Rows), int(ds.Columns), channels)  # (F, H, W, C)
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    spacing = [round(float(s), 6) for s in spacing] if spacing and len(spacing) == 2 else None
    return list(pixels.astype(np.uint8 if bits == 8 else np.uint16, copy=False)), spacing


def nifti_images(data: bytes, source: str) -> tuple[list[np.ndarray], list[float] | None]:
    """A NIfTI-1 file's images (its slices along the third voxel axis) and its [row, col] spacing in mm."""
    import nibabel as nib

    try:
        img = nib.Nifti1Image.from_bytes(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
        # nibabel moves scl_slope / scl_inter from the header into the array proxy as it loads
        slope, intercept = float(img.dataobj.slope), float(img.dataobj.inter)
        voxels = np.asanyarray(img.dataobj.get_unscaled())
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as err:
        raise SynthgenError(f"{source}: not a readable NIfTI-1 file ({err})") from None
    if (slope, intercept) != (1.0, 0.0):
        raise SynthgenError(f"{source}: scl_slope {slope} / scl_inter {intercept} map stored values to other units, "
                            "which 8/16-bit images cannot keep exactly; rescale it first")
    if voxels.dtype not in (np.uint8, np.uint16):
        raise SynthgenError(f"{source}: {voxels.dtype} voxels cannot be kept exactly as 8/16-bit unsigned images; "
                            "convert to uint8 or uint16 first (synthgen has no --window)")
    if voxels.ndim == 5 and voxels.shape[2:4] == (1, 1) and voxels.shape[4] == 3:  # synthgen's RGB layout
        images = [voxels[:, :, 0, 0, :].transpose(1, 0, 2)]  # (H, W, 3)
    elif voxels.ndim in (2, 3):
        volume = voxels.reshape(*voxels.shape[:2], -1)  # (X, Y, Z)
        images = [volume[:, :, k].T[:, :, None] for k in range(volume.shape[2])]  # Z slices, (H=Y, W=X, 1)
    else:
        raise SynthgenError(f"{source}: a {voxels.shape} NIfTI; synthgen reads 2D images and 3D volumes (as slices)")
    x, y = (float(z) for z in img.header.get_zooms()[:2])
    unit = _TO_MM.get(img.header.get_xyzt_units()[0] or "unknown")
    # pixdim is float32: 0.7 reads 0.699999988; six decimals keep every real spacing (down to a micron)
    spacing = [round(y * unit, 6), round(x * unit, 6)] if unit and x > 0 and y > 0 else None
    return [np.ascontiguousarray(image) for image in images], spacing


def _stack(arrays: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """(N, H, W, C): refuses images of another size, depth or channel count than the first, naming the file."""
    first_name, first = arrays[0]
    for name, arr in arrays:
        if arr.shape != first.shape or arr.dtype != first.dtype:
            raise SynthgenError(f"{name}: {_describe(arr)} but {first_name} is {_describe(first)}; all images "
                                "of a data set must have one size, bit depth and channel count")
    return np.stack([arr for _, arr in arrays])


def _describe(arr: np.ndarray) -> str:
    return f"{arr.shape[1]}x{arr.shape[0]} {8 * arr.dtype.itemsize}-bit with {arr.shape[2]} channel(s)"
