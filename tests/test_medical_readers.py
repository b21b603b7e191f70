"""DICOM and NIfTI training data: exact 8/16-bit pixels, class folders, volumes as slices, pixel spacing, and
one line naming the file for everything that cannot be kept exactly."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from synthgen.cli import app
from synthgen.dataset.dicom import DicomEncoder
from synthgen.dataset.format import Layout
from synthgen.errors import SynthgenError
from synthgen.readers import load_images


def dicom_bytes(image: np.ndarray, index: int = 0, spacing=None) -> bytes:
    """A synthgen DICOM of one (H, W, C) image, with PixelSpacing when given."""
    stamp = {"job": {"shard_size": 100, "spacing": spacing}, "model": {"fingerprint": "0" * 64}}
    return DicomEncoder(Layout("dicom", ("x",), file_metadata=stamp)).encode_one(index, 0, image)


def edited(data: bytes, **attributes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for name, value in attributes.items():
        setattr(ds, name, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def ramp16(h=6, w=5, offset=0) -> np.ndarray:
    return (np.arange(h * w, dtype=np.uint16).reshape(h, w, 1) * 2000 + offset)  # (H, W, 1), spans to 58,000


def write_nifti(path: Path, voxels: np.ndarray, zooms=(0.5, 0.8), units="mm") -> None:
    img = nib.Nifti1Image(voxels, np.diag([*zooms, 2.0, 1.0]))
    img.header.set_xyzt_units(units)
    nib.save(img, path)


def test_a_dicom_folder_keeps_16_bit_values_classes_and_spacing(tmp_path):
    for cls, offset in (("benign", 0), ("malignant", 7)):
        (tmp_path / cls).mkdir()
        for k in range(2):
            (tmp_path / cls / f"{k}.dcm").write_bytes(dicom_bytes(ramp16(offset=offset + k), k, [0.3, 0.4]))
    data = load_images(str(tmp_path))
    assert data.images.dtype == np.uint16 and data.images.shape == (4, 6, 5, 1)
    assert data.images.max() == 58_008 and np.array_equal(data.images[3], ramp16(offset=8))  # not clipped to 8 bits
    assert data.class_names == ["benign", "malignant"] and data.labels.tolist() == [0, 0, 1, 1]
    assert data.pixel_spacing == [0.3, 0.4]


def test_8_bit_dicom_stays_8_bit_and_multi_frame_files_give_each_frame(tmp_path):
    (tmp_path / "a").mkdir()
    gray = np.arange(30, dtype=np.uint8).reshape(6, 5, 1)
    (tmp_path / "a" / "x.dcm").write_bytes(dicom_bytes(gray))
    frames = np.stack([gray, gray + 100])[..., 0]  # (2, H, W)
    multi = edited(dicom_bytes(gray), NumberOfFrames=2, PixelData=frames.tobytes())
    (tmp_path / "a" / "y.dcm").write_bytes(multi)
    data = load_images(str(tmp_path))
    assert data.images.dtype == np.uint8 and len(data.images) == 3
    assert np.array_equal(data.images[2, :, :, 0], frames[1]) and data.pixel_spacing is None


def test_nifti_volumes_are_read_as_slices_along_the_third_axis(tmp_path):
    volume = np.arange(5 * 6 * 3, dtype=np.uint16).reshape(5, 6, 3) * 700  # (X=5, Y=6, Z=3)
    (tmp_path / "c0").mkdir()
    write_nifti(tmp_path / "c0" / "v.nii.gz", volume)
    write_nifti(tmp_path / "c0" / "w.nii", volume[:, :, 0])  # a 2D file: one image
    data = load_images(str(tmp_path))
    assert data.images.shape == (4, 6, 5, 1) and data.images.dtype == np.uint16  # (N, H=Y, W=X, 1)
    assert np.array_equal(data.images[2, :, :, 0], volume[:, :, 2].T)
    assert data.pixel_spacing == [0.8, 0.5]  # [row (Y), column (X)] mm
    single = load_images(str(tmp_path / "c0" / "v.nii.gz"))  # one file: one class
    assert len(single.images) == 3 and single.class_names == ["0"] and single.pixel_spacing == [0.8, 0.5]


def test_spacing_is_recorded_only_when_every_file_agrees_and_units_are_known(tmp_path):
    (tmp_path / "a").mkdir()
    write_nifti(tmp_path / "a" / "1.nii.gz", np.zeros((4, 4), np.uint8), zooms=(0.5, 0.5))
    write_nifti(tmp_path / "a" / "2.nii.gz", np.zeros((4, 4), np.uint8), zooms=(0.6, 0.5))
    assert load_images(str(tmp_path)).pixel_spacing is None
    write_nifti(tmp_path / "a" / "2.nii.gz", np.zeros((4, 4), np.uint8), zooms=(0.5, 0.5), units="micron")
    assert load_images(str(tmp_path)).pixel_spacing is None  # 0.5 mm and 0.0005 mm
    (tmp_path / "a" / "2.nii.gz").unlink()
    write_nifti(tmp_path / "a" / "1.nii.gz", np.zeros((4, 4), np.uint8), units="unknown")
    assert load_images(str(tmp_path)).pixel_spacing is None


def bad_dicoms() -> dict[str, tuple[bytes, str]]:
    good = dicom_bytes(ramp16())
    return {"signed": (edited(good, PixelRepresentation=1), "signed pixel data"),
            "slope": (edited(good, RescaleSlope="2", RescaleIntercept="-1024"), "RescaleSlope 2.0"),
            "monochrome1": (edited(good, PhotometricInterpretation="MONOCHROME1"), "MONOCHROME1"),
            "garbage": (b"not dicom at all" * 20, "not a readable DICOM file")}


@pytest.mark.parametrize("case", ["signed", "slope", "monochrome1", "garbage"])
def test_dicom_that_cannot_be_kept_exactly_is_one_line_naming_the_file(tmp_path, case):
    data, message = bad_dicoms()[case]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "ok.dcm").write_bytes(dicom_bytes(ramp16()))
    (tmp_path / "a" / "bad.dcm").write_bytes(data)
    with pytest.raises(SynthgenError, match=message) as err:
        load_images(str(tmp_path))
    assert str(err.value).startswith(str(tmp_path / "a" / "bad.dcm")) and "\n" not in str(err.value)


@pytest.mark.parametrize("voxels,message", [(np.zeros((4, 4), np.int16), "int16 voxels"),
                                            (np.zeros((4, 4), np.float32), "float32 voxels"),
                                            (np.zeros((4, 4, 2, 2), np.uint8), "2D images and 3D volumes")])
def test_nifti_that_cannot_be_kept_exactly_is_one_line_naming_the_file(tmp_path, voxels, message):
    (tmp_path / "a").mkdir()
    write_nifti(tmp_path / "a" / "bad.nii.gz", voxels)
    with pytest.raises(SynthgenError, match=message) as err:
        load_images(str(tmp_path))
    assert str(err.value).startswith(str(tmp_path / "a" / "bad.nii.gz"))


def test_scaled_nifti_mixed_depths_and_mixed_formats_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    raw = nib.Nifti1Image(np.zeros((4, 4), np.uint16), np.eye(4)).to_bytes()  # nibabel.save resets scl_*
    (tmp_path / "a" / "scaled.nii").write_bytes(raw[:112] + struct.pack("<ff", 2.0, 0.0) + raw[120:])
    with pytest.raises(SynthgenError, match=r"scaled.nii: scl_slope 2.0"):
        load_images(str(tmp_path))
    (tmp_path / "a" / "scaled.nii").unlink()
    (tmp_path / "a" / "1.dcm").write_bytes(dicom_bytes(ramp16()))
    (tmp_path / "a" / "2.dcm").write_bytes(dicom_bytes(np.zeros((6, 5, 1), np.uint8)))
    with pytest.raises(SynthgenError, match=r"2.dcm: 5x6 8-bit with 1 channel\(s\) but .*1.dcm is 5x6 16-bit"):
        load_images(str(tmp_path))
    (tmp_path / "a" / "2.dcm").unlink()
    (tmp_path / "a" / "3.png").write_bytes(b"\x89PNG")
    with pytest.raises(SynthgenError, match="3.png: a PNG/JPEG among DICOM/NIfTI files"):
        load_images(str(tmp_path))


def test_train_refuses_signed_dicom_in_one_line(tmp_path):
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "a" / "s.dcm").write_bytes(bad_dicoms()["signed"][0])
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "m")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "s.dcm: signed pixel data" in lines[0]
    assert not (tmp_path / "m").exists()  # nothing half-written


def test_real_image_dataset_reads_a_dicom_folder(tmp_path):
    from synthgen.data import RealImageDataset

    (tmp_path / "a").mkdir()
    image = np.arange(30, dtype=np.uint8).reshape(6, 5, 1) * 8
    (tmp_path / "a" / "x.dcm").write_bytes(dicom_bytes(image))
    dataset = RealImageDataset(str(tmp_path))
    x, y = dataset[0]
    assert y == 0 and tuple(x.shape) == (1, 6, 5) and float(x.max()) == pytest.approx(232 / 255)
