"""PNG encoding: the batch road for Parquet's stored-block PNGs gives libpng's bytes exactly."""

import numpy as np
import pytest

from synthgen.imaging import PARQUET_PNG_SETTINGS, PNG_SETTINGS, _stored_frame, decode_png, encode_png, encode_pngs


def batches(shape: tuple[int, ...]) -> list[np.ndarray]:
    rng = np.random.default_rng(sum(shape))
    ramp = np.broadcast_to(np.arange(shape[2], dtype=np.uint8)[None, None, :, None] * 37, shape)
    return [rng.integers(0, 256, shape, dtype=np.uint8), np.zeros(shape, np.uint8),
            np.full(shape, 255, np.uint8), np.ascontiguousarray(ramp)]


def uses_the_frame(shape: tuple[int, ...]) -> bool:
    return _stored_frame(shape[1:], tuple(sorted(PARQUET_PNG_SETTINGS.items()))) is not None


@pytest.mark.parametrize("shape", [(64, 28, 28, 1), (5, 28, 28, 3), (3, 64, 48, 1), (1, 3, 2, 1), (0, 28, 28, 1)])
def test_stored_pngs_of_a_batch_are_libpngs_bytes(shape):
    assert uses_the_frame(shape)  # the batch road is taken, so the comparison below tests it
    for images in batches(shape):
        pngs = encode_pngs(images, PARQUET_PNG_SETTINGS)
        assert pngs == [encode_png(image, PARQUET_PNG_SETTINGS) for image in images]
        for png, image in zip(pngs, images):
            np.testing.assert_array_equal(decode_png(png), image)


@pytest.mark.parametrize("shape", [(2, 28, 28, 2), (2, 200, 200, 3)])  # gray+alpha; a scan over one block
def test_shapes_the_frame_does_not_fit_are_encoded_one_by_one(shape):
    assert not uses_the_frame(shape)
    images = batches(shape)[0]
    assert encode_pngs(images, PARQUET_PNG_SETTINGS) == [encode_png(i, PARQUET_PNG_SETTINGS) for i in images]


def test_compressed_settings_are_encoded_by_libpng():
    images = batches((4, 28, 28, 1))[3]  # a ramp: deflate shrinks it, stored blocks cannot
    pngs = encode_pngs(images, PNG_SETTINGS)
    assert pngs == [encode_png(image) for image in images]
    assert all(len(png) < len(stored) for png, stored in zip(pngs, encode_pngs(images, PARQUET_PNG_SETTINGS)))



def test_decode_pngs_batch_matches_libpng_and_checks_crcs(breast):
    from synthgen.imaging import _decode_stored, decode_pngs

    for images in (breast.images[:300], batches((5, 28, 28, 3))[0], batches((3, 64, 48, 1))[3]):  # (N, H, W, C)
        stored = encode_pngs(images, PARQUET_PNG_SETTINGS)
        assert _decode_stored(stored, images.shape[1:]) is not None  # the batch road, not libpng, read these
        assert np.array_equal(decode_pngs(stored), images)
        assert np.array_equal(decode_pngs(encode_pngs(images, PNG_SETTINGS)), images)  # compressed: libpng
    stored = encode_pngs(breast.images[:10], PARQUET_PNG_SETTINGS)
    damaged = bytearray(stored[7])
    damaged[60] ^= 1  # one pixel byte: the CRC no longer matches, so libpng decodes the batch and says so
    with pytest.raises(Exception, match="incorrect data check|CRC"):
        decode_pngs([*stored[:7], bytes(damaged), *stored[8:]])
