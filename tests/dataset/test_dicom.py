"""--format dicom's files: a valid Secondary Capture (pydicom, highdicom's checks, dciodvfy where installed),
exact 8- and 16-bit pixels, synthetic by construction, marked, and the same bytes for the same image."""

from __future__ import annotations

import io
import re
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID

from synthgen.dataset.dicom import DicomEncoder, decode
from synthgen.dataset.format import Layout
from synthgen.errors import SynthgenError

CLASSES = ("malignant", "normal")
STAMP = {"job": {"seed": 3, "shard_size": 100, "format": "dicom"},
         "model": {"fingerprint": "f" * 64, "arch": "dcgan", "class_names": list(CLASSES)}}


def encoder(stamp=STAMP, shape=(28, 28, 1)) -> DicomEncoder:
    return DicomEncoder(Layout("dicom", CLASSES, image_shape=shape, file_metadata=stamp))


def images(dtype, shape=(4, 28, 20, 1), seed=0) -> np.ndarray:
    top = 65535 if dtype == np.uint16 else 255
    return np.random.default_rng(seed).integers(0, top + 1, shape, dtype=dtype)  # (B, H, W, C)


@pytest.mark.parametrize("dtype,channels,photometric,bits", [(np.uint8, 1, "MONOCHROME2", 8),
                                                               (np.uint16, 1, "MONOCHROME2", 16),
                                                               (np.uint8, 3, "RGB", 8)])
def test_pixels_depth_and_photometric_interpretation(dtype, channels, photometric, bits):
    batch = images(dtype, (3, 28, 20, channels))
    files = encoder().encode(np.arange(3), np.array([0, 1, 0]), batch)
    for k, data in enumerate(files):
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
        assert ds.PhotometricInterpretation == photometric and ds.SamplesPerPixel == channels
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (bits, bits, bits - 1, 0)
        assert (ds.Rows, ds.Columns) == (28, 20)
        assert np.array_equal(decode(data), batch[k]) and decode(data).dtype == dtype
        if channels == 3:
            assert ds.PlanarConfiguration == 0


def test_pydicom_rewrites_the_files_to_the_same_bytes():
    # the encoder writes each image's own elements itself, around the template's: they must be what pydicom
    # would write for the same dataset, element for element
    for dtype, channels in ((np.uint8, 1), (np.uint16, 1), (np.uint8, 3)):
        for data in encoder().encode(np.array([7, 123456]), np.array([1, -1]), images(dtype, (2, 8, 6, channels))):
            out = io.BytesIO()
            pydicom.dcmread(io.BytesIO(data)).save_as(out, enforce_file_format=True)
            assert out.getvalue() == data


def test_same_image_same_bytes_and_uids_follow_dataset_shard_class_and_index():
    batch = images(np.uint8, (4, 28, 28, 1))
    labels = np.array([0, 1, 0, 1])
    first = encoder().encode(np.arange(98, 102), labels, batch)
    assert encoder().encode(np.arange(98, 102), labels, batch) == first  # a new encoder: the same bytes
    ds = [pydicom.dcmread(io.BytesIO(d)) for d in first]
    for d in ds:
        for uid in (d.SOPInstanceUID, d.SeriesInstanceUID, d.StudyInstanceUID, d.file_meta.ImplementationClassUID):
            assert UID(uid).is_valid and uid.startswith("2.25.") and len(uid) <= 64
        assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID
    assert len({d.SOPInstanceUID for d in ds}) == 4 and len({d.StudyInstanceUID for d in ds}) == 1
    # one series per (shard, class): indices 98, 99 are shard 0, 100, 101 shard 1 (shard_size 100)
    assert len({d.SeriesInstanceUID for d in ds}) == 4 and ds[0].SeriesInstanceUID != ds[2].SeriesInstanceUID
    assert [d.SeriesNumber for d in ds] == [1, 2, 3, 4] and [d.InstanceNumber for d in ds] == [99, 100, 101, 102]
    other = encoder({**STAMP, "job": {**STAMP["job"], "seed": 4}}).encode(np.arange(98, 102), labels, batch)
    assert pydicom.dcmread(io.BytesIO(other[0])).SOPInstanceUID != ds[0].SOPInstanceUID  # another dataset


def test_marked_synthetic_with_no_real_identifier_and_no_clock():
    data = encoder().encode(np.array([42]), np.array([1]), images(np.uint8, (1, 28, 28, 1)))[0]
    ds = pydicom.dcmread(io.BytesIO(data))
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert ds.ConversionType == "SYN" and ds.SyntheticData == "YES"
    assert ds.BurnedInAnnotation == "NO" and ds.RecognizableVisualFeatures == "NO"
    assert ds.SeriesDescription.startswith("SYNTHETIC normal")
    assert "synthgen" in ds.ImageComments and "index 42" in ds.ImageComments and "ffffffff" in ds.ImageComments
    assert "synthgen" in ds.DerivationDescription
    assert str(ds.PatientName) == "SYNTHETIC^SYNTHGEN" and ds.PatientID.startswith("SYNTHGEN-")
    assert not ds.PatientBirthDate and not ds.PatientSex and not ds.AccessionNumber
    # nothing from the clock or the host: no date, time or datetime element holds a value
    assert not [e.keyword for e in ds.iterall() if e.VR in ("DA", "TM", "DT") and e.value]
    assert "highdicom" not in data.decode("latin-1") and "ContributingEquipmentSequence" not in ds
    block = ds.private_block(0x0009, "SYNTHGEN 1")
    assert (block[0x01].value, block[0x02].value, block[0x03].value, block[0x04].value) == (42, 1, "normal", "f" * 64)


def test_highdicom_refuses_what_dicom_cannot_hold():
    with pytest.raises(SynthgenError, match="RGB images must be 8-bit"):
        encoder().encode(np.array([0]), np.array([0]), images(np.uint16, (1, 8, 8, 3)))
    with pytest.raises(SynthgenError, match="uint8 or uint16"):
        encoder().encode(np.array([0]), np.array([0]), np.zeros((1, 8, 8, 1), np.float32))


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not installed")
@pytest.mark.parametrize("dtype,channels", [(np.uint8, 1), (np.uint16, 1), (np.uint8, 3)])
def test_dciodvfy_finds_no_error_but_the_attribute_newer_than_it(tmp_path, dtype, channels):
    data = encoder().encode(np.array([5]), np.array([0]), images(dtype, (1, 28, 28, channels)))[0]
    (tmp_path / "x.dcm").write_bytes(data)
    out = subprocess.run(["dciodvfy", str(tmp_path / "x.dcm")], capture_output=True, text=True, check=False).stderr
    errors = [line for line in out.splitlines() if line.startswith("Error")]
    # SyntheticData (0008,001C) entered the standard after the dicom3tools release Debian ships (2022)
    assert all(re.search(r"0x0008,0x001c", line) for line in errors), out
    assert "SCImage" in out


@pytest.mark.parametrize("fmt", ["dicom", "nifti"])
def test_a_shard_of_16_bit_images_commits_verifies_and_reads_back(tmp_path, fmt):
    from synthgen import storage
    from synthgen.dataset.files import decode_file, file_encoder
    from synthgen.dataset.verify import check_shard
    from synthgen.dataset.writers import ShardWriter
    from synthgen.generate.plan import ShardSpec

    layout = Layout(fmt, CLASSES, image_shape=(12, 10, 1), file_metadata=STAMP)
    loc, spec = storage.locate(str(tmp_path)), ShardSpec(1, 100, 150)
    batch = images(np.uint16, (50, 12, 10, 1))  # (B, H, W, C), values up to 65535
    indices, labels = spec.indices(), np.arange(50) % 2
    writer = ShardWriter(loc, layout, spec)
    encode = file_encoder(layout)
    for start in (0, 17, 33):  # any batching
        stop = {0: 17, 17: 33, 33: 50}[start]
        writer.add(indices[start:stop], indices[start:stop].astype(np.uint64), labels[start:stop],
                   encode(indices[start:stop], labels[start:stop], batch[start:stop]))
    record = writer.commit()
    assert record.rows == 50 and record.class_counts == {"malignant": 25, "normal": 25}
    assert check_shard(loc, record, fmt) == []
    suffix = ".dcm" if fmt == "dicom" else ".nii.gz"
    stored = tmp_path / "images" / "normal" / f"{101:09d}{suffix}"
    assert np.array_equal(decode_file(fmt, stored.read_bytes()), batch[1])
    stored.write_bytes(stored.read_bytes()[:-2])  # damaged: the deep check names it
    damaged = f"images/normal/{101:09d}{suffix}: sha256 differs from its shard's metadata"
    assert check_shard(loc, record, fmt) == [damaged]
