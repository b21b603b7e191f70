"""``--format nifti``: one 2D NIfTI-1 file (``.nii.gz``) per image.

One file per image, not one stacked volume per shard: MONAI's 2D pipelines (``LoadImage`` over a list of
``{"image": path, "label": ...}`` dicts, as in its MedNIST tutorial) and Hugging Face's NIfTI feature take one
file per example, and a per-shard volume would claim spatial adjacency between unrelated images (a viewer or a
3D transform would treat them as neighbouring slices); ``verify``, ``show --index`` and resume stay per image.

Layout of each file: the voxel array is (W, H) for grayscale, (W, H, 1, 1, 3) with intent VECTOR for RGB:
x runs along an image row and y down its columns, the array MONAI's PILReader makes of the same image as a
PNG. The affine puts column spacing on x and minus row spacing on y (origin at the last row), so a viewer
that draws RAS +y upward shows row 0 at the top. Spacing in mm comes from the job (``--spacing``, else the
training data's); without one, pixdim is 1 and the units are "unknown". ``descrip`` marks the file
synthetic (synthgen, model fingerprint, index, label) and ``aux_file`` holds IPTC's digital source type.

Bytes: nibabel's header and data, gzip-compressed with mtime 0, no file name and OS "unknown", so a re-run
writes the same bytes (given the zlib build, which the manifest's file encoder records).
"""

from __future__ import annotations

import gzip
import struct
import zlib

import numpy as np

from synthgen.dataset.format import Layout
from synthgen.errors import SynthgenError

GZIP_LEVEL = 6
DIGITAL_SOURCE_TYPE = b"trainedAlgorithmicMedia"  # 23 bytes: fits aux_file's 24
NIFTI_INTENT_VECTOR = 1007
_DESCRIP, _VOX_OFFSET = 148, 108  # byte offsets of the 80-byte descrip and float32 vox_offset in a NIfTI-1 header
_SINGLE_FILE_OFFSET = 352  # header + extension flag


def encoder_name() -> str:
    """What decides the bytes beside the pixels: the manifest's ``file_encoder``."""
    import nibabel

    return f"nibabel-{nibabel.__version__}-zlib-{zlib.ZLIB_VERSION}-gzip{GZIP_LEVEL}"


class NiftiEncoder:
    """``(indices, labels, images) -> .nii.gz bytes`` for one dataset; images (B, H, W, C) uint8 or uint16."""

    def __init__(self, layout: Layout):
        job, model = layout.file_metadata.get("job", {}), layout.file_metadata.get("model", {})
        self.fingerprint = str(model.get("fingerprint", "unknown"))
        self.spacing = job.get("spacing")  # [row, column] mm, or None
        self._headers: dict[tuple, bytes] = {}

    def encode(self, indices: np.ndarray, labels: np.ndarray, images: np.ndarray) -> list[bytes]:
        return [self.encode_one(int(i), int(y), image) for i, y, image in zip(indices, labels, images)]

    def encode_one(self, index: int, label: int, image: np.ndarray) -> bytes:
        """One image (H, W, C) -> its ``.nii.gz`` bytes: nibabel's header for this image kind, this image's
        description, and its voxels (x fastest, as NIfTI stores them: the image's own row-major bytes)."""
        head = self._header(image.shape, image.dtype)
        descrip = f"SYNTHETIC synthgen {self.fingerprint[:16]} index {index} label {label}"[:79].encode()
        voxels = np.ascontiguousarray(image.transpose(2, 0, 1), image.dtype.newbyteorder("<"))  # (C, H, W)
        data = head[:_DESCRIP] + descrip.ljust(80, b"\0") + head[_DESCRIP + 80:] + voxels.tobytes()
        packed = gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)
        return packed[:9] + b"\xff" + packed[10:]  # OS "unknown": zlib writes its build's OS, 3 on Unix

    def _header(self, shape: tuple, dtype: np.dtype) -> bytes:
        key = (tuple(shape), np.dtype(dtype).str)
        if key not in self._headers:
            self._headers[key] = self._build_header(shape, np.dtype(dtype))
        return self._headers[key]

    def _build_header(self, shape: tuple, dtype: np.dtype) -> bytes:
        """nibabel's header (and empty extension flag) for a blank image of this kind."""
        import nibabel as nib

        if dtype not in (np.uint8, np.uint16) or len(shape) != 3 or shape[2] not in (1, 3):
            raise SynthgenError(f"--format nifti takes uint8 or uint16 (H, W, 1|3) images, got {dtype} {shape}")
        height, width, channels = shape
        data = np.zeros((width, height) if channels == 1 else (width, height, 1, 1, 3), dtype)  # x along a row
        row, col = (float(s) for s in self.spacing) if self.spacing else (1.0, 1.0)
        affine = np.diag([col, -row, 1.0, 1.0])
        affine[1, 3] = (height - 1) * row  # row 0 at the largest y: upright in a RAS viewer
        img = nib.Nifti1Image(data, affine)
        img.header.set_xyzt_units("mm" if self.spacing else "unknown")
        if channels == 3:
            img.header.set_intent(NIFTI_INTENT_VECTOR)
        img.header["aux_file"] = DIGITAL_SOURCE_TYPE
        blank = img.to_bytes()
        offset = len(blank) - data.nbytes
        assert offset == _SINGLE_FILE_OFFSET, f"nibabel wrote a {offset}-byte header"
        # to_bytes leaves vox_offset 0; a saved .nii says 352 (where the voxels start), as nibabel.save writes
        return blank[:_VOX_OFFSET] + struct.pack("<f", offset) + blank[_VOX_OFFSET + 4:offset]


def decode(data: bytes, source: str = "NIfTI") -> np.ndarray:
    """A synthgen ``.nii.gz`` -> (H, W, C) uint8 or uint16 pixels (the inverse of :meth:`NiftiEncoder.encode_one`)."""
    import nibabel as nib

    try:
        img = nib.Nifti1Image.from_bytes(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
        voxels = np.asanyarray(img.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as err:
        raise SynthgenError(f"{source}: cannot read it as NIfTI ({err})") from None
    if voxels.ndim == 2:
        return voxels.T[:, :, None]  # (H, W, 1)
    if voxels.ndim == 5 and voxels.shape[2:4] == (1, 1):
        return np.ascontiguousarray(voxels[:, :, 0, 0, :].transpose(1, 0, 2))  # (H, W, 3)
    raise SynthgenError(f"{source}: a {voxels.shape} NIfTI is not a synthgen 2D image")
