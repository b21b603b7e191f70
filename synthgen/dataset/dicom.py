"""``--format dicom``: one DICOM Secondary Capture image per file, its bytes a function of the dataset and index.

highdicom builds the object (and checks it: photometric interpretation against the pixels, bit depth, the
SC modules' required attributes) once per image kind; each image then gets its own UIDs, numbers, marking and
pixels, written between the template's elements (Explicit VR Little Endian) as pydicom writes them. Nothing
comes from the clock or the host: highdicom's creation dates are removed, and the file meta names synthgen
(not the library version), so a re-run writes the same bytes. Attributes and the reasons: docs/design.md.

- UIDs: ``2.25.<decimal UUID>`` (ISO/IEC 9834-8, no registered root needed), each a name-based UUID (SHA-1,
  RFC 4122 v5) of the dataset key (sha256 of the identity every file carries), a role and the numbers it
  stands for: one study per dataset, one series per (shard, class), one instance per index.
- Synthetic by construction: patient "SYNTHETIC^SYNTHGEN", patient ID ``SYNTHGEN-<dataset key>``, no dates,
  no sex, no accession number; nothing is read from the training data but the pixel spacing.
- Marking: ImageType DERIVED\\SECONDARY, ConversionType SYN (synthetic image), SyntheticData YES (0008,001C),
  BurnedInAnnotation NO, RecognizableVisualFeatures NO, a SeriesDescription, ImageComments and
  DerivationDescription naming synthgen, the model fingerprint and the index.
- Index and label: InstanceNumber = index + 1, and synthgen's private block (group 0009, creator
  ``SYNTHGEN 1``): (0009,1001) index, (0009,1002) label, (0009,1003) class name, (0009,1004) model fingerprint.
- Pixel spacing: PixelSpacing from the job's ``spacing`` (the training data's, from the checkpoint) when known.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import uuid

import numpy as np

from synthgen.dataset.format import UNLABELED_NAME, Layout
from synthgen.errors import SynthgenError

UID_ROOT = "2.25"
# the namespace of every synthgen UUID: fixed forever, so the same dataset gets the same UIDs in any version
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://synthgen.invalid/dicom-uid")
PRIVATE_CREATOR, PRIVATE_GROUP = "SYNTHGEN 1", 0x0009
# private elements (0009,10xx) in synthgen's block: what each holds
PRIVATE_ELEMENTS = {"index": (0x01, "UL"), "label": (0x02, "SL"), "class_name": (0x03, "LO"),
                    "fingerprint": (0x04, "LO")}
IMPLEMENTATION_VERSION = "SYNTHGEN_DCM1"  # the layout of these files, not synthgen's version: same bytes across
DIGITAL_SOURCE_TYPE = "trainedAlgorithmicMedia"  # IPTC's term for images made by a trained model
_CLOCK_ATTRIBUTES = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime",
                     "DateOfSecondaryCapture", "TimeOfSecondaryCapture", "SeriesDate", "SeriesTime")


def uid(*parts: object) -> str:
    """A DICOM UID under 2.25 for ``parts`` (at most 64 characters: a UUID is below 2**128, 39 digits)."""
    return f"{UID_ROOT}.{uuid.uuid5(NAMESPACE, '/'.join(map(str, parts))).int}"


IMPLEMENTATION_UID = uid("implementation", "synthgen")


def dataset_key(layout: Layout) -> str:
    """A short name for the dataset: sha256 of the identity (job + model) every file of it carries."""
    return hashlib.sha256(json.dumps(layout.file_metadata, sort_keys=True).encode()).hexdigest()[:32]


class DicomEncoder:
    """``(indices, labels, images) -> DICOM bytes`` for one dataset; images (B, H, W, C) uint8 or uint16."""

    def __init__(self, layout: Layout):
        self.layout = layout
        job, model = layout.file_metadata.get("job", {}), layout.file_metadata.get("model", {})
        self.key = dataset_key(layout)
        self.shard_size = int(job.get("shard_size") or 10_000)
        self.fingerprint = str(model.get("fingerprint", "unknown"))
        self.arch = str(model.get("arch", "generator"))
        self.spacing = job.get("spacing")  # [row, column] mm, or None
        self._templates: dict[tuple, object] = {}

    def encode(self, indices: np.ndarray, labels: np.ndarray, images: np.ndarray) -> list[bytes]:
        return [self.encode_one(int(i), int(y), image) for i, y, image in zip(indices, labels, images)]

    def encode_one(self, index: int, label: int, image: np.ndarray) -> bytes:
        """One image (H, W, C) -> the bytes of its DICOM file: the template's elements, written once by pydicom,
        around this image's own, written here (pydicom writing a whole file costs ~1 ms an image; the tests
        check that pydicom rewrites these files to the same bytes)."""
        static, meta_head, meta_tail = self._template(image.shape, image.dtype)
        shard = index // self.shard_size
        name = self._class_name(label)
        instance = uid(self.key, "instance", index).encode()
        series_number = shard * max(1, len(self.layout.class_names)) + max(label, 0) + 1
        comments = (f"SYNTHETIC image made by synthgen ({DIGITAL_SOURCE_TYPE}); model {self.fingerprint[:16]}; "
                    f"index {index}; label {label} ({name})")
        pixels = image[:, :, 0] if image.shape[2] == 1 else image  # (H, W) or (H, W, 3)
        private = (PRIVATE_GROUP << 16) | 0x1000
        elements = dict(static)
        elements.update({
            0x00080018: _element(0x00080018, "UI", instance),
            0x0008103E: _element(0x0008103E, "LO", _text(f"SYNTHETIC {name} shard {shard}"[:64])),
            0x0020000E: _element(0x0020000E, "UI", uid(self.key, "series", shard, label).encode()),
            0x00200011: _element(0x00200011, "IS", str(series_number).encode()),
            0x00200013: _element(0x00200013, "IS", str(index + 1).encode()),
            0x00204000: _element(0x00204000, "LT", _text(comments)),
            private | 0x01: _element(private | 0x01, "UL", struct.pack("<I", index)),
            private | 0x02: _element(private | 0x02, "SL", struct.pack("<i", label)),
            private | 0x03: _element(private | 0x03, "LO", _text(name[:64])),
            0x7FE00010: _element(0x7FE00010, "OB" if image.dtype == np.uint8 else "OW",
                                 np.ascontiguousarray(pixels, pixels.dtype.newbyteorder("<")).tobytes()),
        })
        body = b"".join(elements[tag] for tag in sorted(elements))
        instance_element = _element(0x00020003, "UI", instance)
        group_length = _element(0x00020000, "UL", struct.pack("<I", len(meta_head) + len(instance_element)
                                                              + len(meta_tail)))
        return b"\0" * 128 + b"DICM" + group_length + meta_head + instance_element + meta_tail + body

    def _class_name(self, label: int) -> str:
        names = self.layout.class_names
        return names[label] if 0 <= label < len(names) else UNLABELED_NAME

    def _template(self, shape: tuple, dtype: np.dtype) -> tuple[dict[int, bytes], bytes, bytes]:
        """For one image kind: the written bytes of each shared element by tag, and the file meta's elements
        before and after the instance UID (the group length goes first, computed per file)."""
        key = (tuple(shape), np.dtype(dtype).str)
        if key not in self._templates:
            image = self._build_template(shape, np.dtype(dtype))
            private = image.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
            private.add_new(PRIVATE_ELEMENTS["fingerprint"][0], "LO", self.fingerprint[:64])
            static = {int(elem.tag): _element_bytes(elem) for elem in image if elem.tag != 0x7FE00010}
            meta = {int(elem.tag): _element_bytes(elem) for elem in image.file_meta if elem.tag > 0x00020003}
            head = [_element_bytes(elem) for elem in image.file_meta if 0x00020000 < elem.tag < 0x00020003]
            self._templates[key] = (static, b"".join(head), b"".join(meta[tag] for tag in sorted(meta)))
        return self._templates[key]

    def _build_template(self, shape: tuple, dtype: np.dtype) -> object:
        """The attributes every image of this shape and depth shares, built and checked by highdicom."""
        import highdicom as hd

        if dtype not in (np.uint8, np.uint16) or len(shape) != 3 or shape[2] not in (1, 3):
            raise SynthgenError(f"--format dicom takes uint8 or uint16 (H, W, 1|3) images, got {dtype} {shape}")
        if shape[2] == 3 and dtype != np.uint8:
            raise SynthgenError("--format dicom: RGB images must be 8-bit (DICOM RGB Secondary Capture)")
        height, width, channels = shape
        pixels = np.zeros((height, width) if channels == 1 else (height, width, 3), dtype)
        spacing = tuple(float(s) for s in self.spacing) if self.spacing else None
        image = hd.sc.SCImage(
            pixel_array=pixels, photometric_interpretation="MONOCHROME2" if channels == 1 else "RGB",
            bits_allocated=8 * dtype.itemsize, coordinate_system="PATIENT", patient_orientation=("L", "F"),
            study_instance_uid=uid(self.key, "study"), series_instance_uid=uid(self.key, "series"),
            series_number=1, sop_instance_uid=uid(self.key, "template"), instance_number=1,
            manufacturer="synthgen", patient_id=f"SYNTHGEN-{self.key[:16]}", patient_name="SYNTHETIC^SYNTHGEN",
            study_id="SYNTHGEN", pixel_spacing=spacing, manufacturer_model_name=self.arch,
        )
        for keyword in _CLOCK_ATTRIBUTES:  # all optional here; highdicom fills them from the clock
            if keyword in image:
                delattr(image, keyword)
        image.Laterality = None  # type 2C, empty: a paired organ's side is unknown for a made-up image
        image.PatientOrientation = None  # type 2: present, empty (a made-up image has no known orientation)
        image.ConversionType = "SYN"  # SC Equipment: "synthetic image"
        image.SyntheticData = "YES"
        image.BurnedInAnnotation = image.RecognizableVisualFeatures = "NO"
        image.ImageType = ["DERIVED", "SECONDARY"]
        image.StudyDescription = f"synthgen synthetic dataset {self.key[:16]}"
        image.DerivationDescription = (f"Synthetic: generated by synthgen from seeded noise with a trained "
                                       f"{self.arch} (model fingerprint {self.fingerprint[:16]}); not an acquired "
                                       "image of any patient")[:1024]
        del image.ContributingEquipmentSequence  # highdicom's own entry, dated by the clock
        image.file_meta.ImplementationClassUID = IMPLEMENTATION_UID
        image.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION
        return image


def _element_bytes(elem) -> bytes:
    """One data element as Explicit VR Little Endian bytes (sequences included), as pydicom writes it."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, elem)
    return fp.getvalue()


# VRs whose explicit-VR header has two reserved bytes and a 4-byte length (PS3.5 7.1.2)
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def _element(tag: int, vr: str, value: bytes) -> bytes:
    """One Explicit VR Little Endian element, padded to even length (UI and OB with NUL, text with a space)."""
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB") else b" "
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    if vr in _LONG_VRS:
        return head + b"\0\0" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def _text(value: str) -> bytes:
    """Text in DICOM's default repertoire (ASCII): a class name outside it keeps its ASCII letters."""
    return value.encode("ascii", "replace")


def decode(data: bytes, source: str = "DICOM") -> np.ndarray:
    """DICOM bytes of a synthgen (or any uncompressed 8/16-bit) image -> (H, W, C) uint8 or uint16."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        pixels = ds.pixel_array
    except (InvalidDicomError, AttributeError, ValueError, RuntimeError, OSError) as err:
        raise SynthgenError(f"{source}: cannot read its DICOM image ({err})") from None
    return pixels[:, :, None] if pixels.ndim == 2 else pixels
