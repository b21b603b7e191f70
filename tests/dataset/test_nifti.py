"""--format nifti's files: one 2D .nii.gz per image that nibabel and MONAI read, exact 8/16-bit pixels, the
spacing in the affine, the synthetic marking in the header, and the same bytes for the same image."""

from __future__ import annotations

import gzip
import io
import warnings

import nibabel as nib
import numpy as np
import pytest

from synthgen.dataset.format import Layout
from synthgen.dataset.nifti import NiftiEncoder, decode
from synthgen.errors import SynthgenError


def encoder(spacing=None) -> NiftiEncoder:
    stamp = {"job": {"seed": 1, "shard_size": 10, "spacing": spacing}, "model": {"fingerprint": "c" * 64}}
    return NiftiEncoder(Layout("nifti", ("a", "b"), file_metadata=stamp))


def images(dtype, shape) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 65536 if dtype == np.uint16 else 256, shape, dtype=dtype)


@pytest.mark.parametrize("dtype,channels", [(np.uint8, 1), (np.uint16, 1), (np.uint8, 3)])
def test_round_trip_and_what_nibabel_sees(tmp_path, dtype, channels):
    batch = images(dtype, (2, 24, 16, channels))  # H 24, W 16
    files = encoder([0.7, 0.5]).encode(np.array([3, 4]), np.array([1, 0]), batch)
    for image, data in zip(batch, files):
        assert np.array_equal(decode(data), image) and decode(data).dtype == dtype
    path = tmp_path / "x.nii.gz"
    path.write_bytes(files[0])
    img = nib.load(path)
    voxels = np.asanyarray(img.dataobj)
    assert voxels.dtype == dtype
    if channels == 1:
        assert voxels.shape == (16, 24) and np.array_equal(voxels, batch[0, :, :, 0].T)  # (W, H): x along a row
    else:
        assert voxels.shape == (16, 24, 1, 1, 3) and img.header["intent_code"] == 1007
    assert img.header.get_zooms()[:2] == pytest.approx((0.5, 0.7)) and img.header.get_xyzt_units()[0] == "mm"
    assert nib.aff2axcodes(img.affine)[:2] == ("R", "P")  # y flipped: row 0 at the top in a RAS viewer
    assert img.header["descrip"].tobytes().startswith(b"SYNTHETIC synthgen cccccccccccccccc index 3 label 1")
    assert img.header["aux_file"].tobytes().rstrip(b"\0") == b"trainedAlgorithmicMedia"


def test_bytes_are_nibabels_and_deterministic(tmp_path):
    image = images(np.uint16, (1, 10, 12, 1))
    data = encoder().encode(np.array([9]), np.array([0]), image)[0]
    assert encoder().encode(np.array([9]), np.array([0]), image)[0] == data
    assert data[4:8] == b"\0\0\0\0" and data[9] == 255  # gzip: no mtime, no OS
    with gzip.open(io.BytesIO(data)) as f:
        raw = f.read()
    img = nib.Nifti1Image.from_bytes(raw)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header), tmp_path / "again.nii")
    assert (tmp_path / "again.nii").read_bytes() == raw  # what nibabel itself writes for that image
    assert img.header.get_xyzt_units()[0] == "unknown" and tuple(img.header.get_zooms()) == (1.0, 1.0)


def test_monai_load_image_reads_the_file_with_its_spacing(tmp_path):
    from monai.transforms import LoadImage

    image = images(np.uint8, (1, 24, 16, 1))
    (tmp_path / "x.nii.gz").write_bytes(encoder([0.7, 0.5]).encode(np.array([0]), np.array([0]), image)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = LoadImage(image_only=True)(str(tmp_path / "x.nii.gz"))
    assert tuple(loaded.shape) == (16, 24) and np.array_equal(np.asarray(loaded), image[0, :, :, 0].T)
    assert [round(float(s), 4) for s in loaded.pixdim] == [0.5, 0.7]


def test_bad_pixels_are_one_line():
    with pytest.raises(SynthgenError, match="uint8 or uint16"):
        encoder().encode(np.array([0]), np.array([0]), np.zeros((1, 4, 4, 1), np.int16))
