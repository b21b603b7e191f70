"""The per-image file formats (``--format png|dicom|nifti``): one encoder and one decoder for each.

An encoder is made once per actor from the dataset's :class:`~synthgen.dataset.format.Layout` and turns a
batch ``(indices, labels, images)`` into one file's bytes per image, in the actor's lanes; a file's bytes depend
only on the dataset's identity (which the layout carries), the image's index and label, and its pixels, so
``synthgen show`` re-encodes one image to compare bytes. DICOM and NIfTI take uint8 and uint16 images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from synthgen.dataset.format import Layout
from synthgen.imaging import PNG_MARKING, decode_png, encode_pngs, marking_chunks, png_settings

if TYPE_CHECKING:
    from synthgen.dataset.manifest import Manifest

Encoder = Callable[[np.ndarray, np.ndarray, np.ndarray], list]


def layout_of(manifest: Manifest) -> Layout:
    """The layout a dataset's actors were given (``generate.engine``), rebuilt from its manifest."""
    from synthgen.dataset.manifest import bit_depth

    c, h, w = manifest.model["image_shape"]
    return Layout(manifest.job["format"], tuple(manifest.model.get("class_names") or ()),
                  encoding=manifest.job.get("encoding", "png"), image_shape=(h, w, c), bit_depth=bit_depth(manifest),
                  png_marking=manifest.job.get("png_marking"), file_metadata=manifest.file_stamp())


def file_encoder(layout: Layout) -> Encoder:
    """``(indices (B,), labels (B,), images (B, H, W, C)) -> B byte strings`` for the layout's format."""
    if layout.format == "dicom":
        from synthgen.dataset.dicom import DicomEncoder

        return DicomEncoder(layout).encode
    if layout.format == "nifti":
        from synthgen.dataset.nifti import NiftiEncoder

        return NiftiEncoder(layout).encode
    settings = png_settings(layout.format)
    if layout.png_marking != PNG_MARKING:  # datasets started before PNGs were marked stay unmarked
        return lambda indices, labels, images: encode_pngs(images, settings)
    fingerprint = layout.file_metadata["model"]["fingerprint"]
    return lambda indices, labels, images: encode_pngs(images, settings, marking_chunks(fingerprint, indices))


def encoder_name(fmt: str) -> str | None:
    """What the manifest's ``file_encoder`` records: the libraries and settings that decide a DICOM or NIfTI
    file's bytes beside the pixels (PNG has its own ``png_encoder``; Parquet none)."""
    if fmt == "dicom":
        import highdicom
        import pydicom

        return f"highdicom-{highdicom.__version__}-pydicom-{pydicom.__version__}"
    if fmt == "nifti":
        from synthgen.dataset.nifti import encoder_name as nifti_name

        return nifti_name()
    return None


def decode_file(fmt: str, data: bytes, source: str = "") -> np.ndarray:
    """One stored image file -> (H, W, C) pixels (uint8, or uint16 for a 16-bit DICOM or NIfTI)."""
    if fmt == "dicom":
        from synthgen.dataset.dicom import decode

        return decode(data, source or "DICOM file")
    if fmt == "nifti":
        from synthgen.dataset.nifti import decode

        return decode(data, source or "NIfTI file")
    return decode_png(data)
