"""Image reading and decoding: every mode to RGB, orientation, and each bad input's reason."""

import hashlib
import io
import pickle
import struct
import time
import zlib

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from PIL import Image

from transforms.decode import (
    FORMATS,
    DecodeError,
    DecodeImages,
    ReadError,
    _DecodeFn,
    decode_image_bytes,
    read_image_bytes,
)
from transforms.records import DecodedImage, Failure


def encode(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def smooth(h: int, w: int) -> np.ndarray:
    """Gradients that lossy codecs keep well: (h, w, 3) uint8."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1).astype(
        np.uint8
    )


def bomb_png(width: int = 40000, height: int = 40000) -> bytes:
    """A small valid PNG whose IHDR claims width x height (CRC fixed, so it parses)."""
    data = bytearray(encode(Image.new("RGB", (2, 2)), "PNG"))
    # Signature (8), then the IHDR chunk: length (4), b"IHDR", width, height, ..., CRC.
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# --- valid images -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,params,exact",
    [
        ("PNG", {}, True),
        ("WEBP", {"lossless": True}, True),
        ("BMP", {}, True),
        ("TIFF", {}, True),
        ("JPEG", {"quality": 95}, False),
    ],
)
def test_valid_images_decode_to_hw3_uint8(fmt, params, exact):
    pixels = smooth(24, 40)
    out = decode_image_bytes(encode(Image.fromarray(pixels), fmt, **params))
    assert out.shape == (24, 40, 3) and out.dtype == np.uint8
    if exact:
        np.testing.assert_array_equal(out, pixels)
    else:  # lossy: close on average, not bit-exact
        assert np.abs(out.astype(int) - pixels).mean() < 4


def test_result_is_read_only():
    out = decode_image_bytes(encode(Image.fromarray(noise(4, 4)), "PNG"))
    with pytest.raises(ValueError, match="read-only"):
        out[0, 0, 0] = 1


def test_exif_orientation_is_applied():
    # Stored 40 wide x 20 high with a red block at the top-left. Orientation 6 means "rotate
    # 90 degrees clockwise to display": shown 20 wide x 40 high, block at the top-right.
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    im.paste((255, 0, 0), (0, 0, 6, 6))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_image_bytes(encode(im, "JPEG", exif=exif, quality=95)).astype(int)
    assert out.shape == (40, 20, 3)
    assert tuple(out[2, 17]) == pytest.approx((255, 0, 0), abs=30)
    assert out[2, 2].max() < 30 and out[37, 17].max() < 30


def test_cmyk_jpeg_colours():
    cmyk = Image.new("CMYK", (16, 8), (255, 0, 0, 0))  # pure cyan
    cmyk.paste((0, 0, 0, 255), (8, 0, 16, 8))  # black
    out = decode_image_bytes(encode(cmyk, "JPEG", quality=95)).astype(int)
    assert tuple(out[4, 2]) == pytest.approx((0, 255, 255), abs=12)
    assert tuple(out[4, 13]) == pytest.approx((0, 0, 0), abs=12)


def test_16_bit_grey_maps_monotonically_onto_full_range():
    ramp = np.linspace(0, 65535, 512).round().astype(np.uint16)
    im = Image.fromarray(np.tile(ramp, (3, 1)))
    assert im.mode == "I;16"
    out = decode_image_bytes(encode(im, "PNG"))
    assert out.shape == (3, 512, 3)
    row = out[0, :, 0].astype(int)
    assert (out == out[..., :1]).all()  # grey: three equal channels
    assert (np.diff(row) >= 0).all()  # monotone
    assert row[0] == 0 and row[-1] == 255
    # Fixed full scale (not the image's range): v * 255 / 65535, rounded.
    np.testing.assert_array_equal(row, np.rint(ramp.astype(int) * 255 / 65535).astype(int))
    # Pinned where the rule differs from v >> 8 (255 -> 1, 65280 -> 254).
    picks = np.array([[0, 255, 257, 32767, 32768, 65280, 65535]], np.uint16)
    out = decode_image_bytes(encode(Image.fromarray(picks), "PNG"))
    assert out[0, :, 0].tolist() == [0, 1, 1, 127, 128, 254, 255]
    dark = Image.fromarray(np.full((2, 2), 4096, np.uint16))
    assert decode_image_bytes(encode(dark, "PNG"))[0, 0, 0] == 16  # stays dark, not stretched


def test_32_bit_int_and_float_are_stretched_over_their_range():
    values = np.linspace(-1000, 3000, 64).astype(np.int32).reshape(1, 64)
    out = decode_image_bytes(encode(Image.fromarray(values), "TIFF"))
    row = out[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and (np.diff(row) >= 0).all()

    floats = np.array([[0.25, 0.5, np.nan, 1.25]], np.float32)
    out = decode_image_bytes(encode(Image.fromarray(floats, mode="F"), "TIFF"))
    assert out[0, :, 0].tolist() == [0, 64, 0, 255]
    flat = decode_image_bytes(encode(Image.fromarray(np.full((2, 2), 7.0, np.float32)), "TIFF"))
    assert (flat == 0).all()


def test_rgba_is_composited_on_white():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 128)  # half-transparent red
    rgba[0, 2] = (0, 0, 0, 0)  # fully transparent black
    out = decode_image_bytes(encode(Image.fromarray(rgba, "RGBA"), "PNG")).astype(int)
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 1]) == pytest.approx((255, 127, 127), abs=1)
    assert tuple(out[0, 2]) == (255, 255, 255)


def test_la_is_composited_on_white():
    la = Image.new("LA", (3, 1))
    la.putdata([(0, 255), (0, 0), (0, 128)])
    out = decode_image_bytes(encode(la, "PNG")).astype(int)
    assert tuple(out[0, 0]) == (0, 0, 0)
    assert tuple(out[0, 1]) == (255, 255, 255)
    assert tuple(out[0, 2]) == pytest.approx((127, 127, 127), abs=1)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(fmt):
    im = Image.new("P", (4, 2), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 0 black, index 1 red
    im.paste(1, (2, 0, 4, 2))
    data = encode(im, fmt, transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = decode_image_bytes(data)
    assert tuple(out[0, 0]) == (255, 255, 255)  # transparent black -> white
    assert tuple(out[1, 3]) == (255, 0, 0)


def test_palette_bilevel_and_grey_modes():
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)
    im.putpixel((1, 0), 1)
    assert decode_image_bytes(encode(im, "PNG"))[0].tolist() == [[0, 0, 255], [0, 255, 0]]
    bits = Image.new("1", (2, 1))
    bits.putpixel((1, 0), 1)
    assert decode_image_bytes(encode(bits, "PNG"))[0].tolist() == [[0, 0, 0], [255, 255, 255]]
    grey = Image.fromarray(np.array([[7, 200]], np.uint8))
    assert decode_image_bytes(encode(grey, "PNG"))[0].tolist() == [[7, 7, 7], [200, 200, 200]]


def test_lab_tiff_is_converted_to_srgb():
    lab = Image.new("LAB", (3, 1))
    lab.putdata([(138, 209, 198), (255, 128, 128), (0, 128, 128)])  # red, white, black
    out = decode_image_bytes(encode(lab, "TIFF")).astype(int)
    np.testing.assert_allclose(out[0], [[255, 0, 0], [255, 255, 255], [0, 0, 0]], atol=6)


# --- bad input --------------------------------------------------------------------------------


def test_empty_bytes():
    with pytest.raises(DecodeError, match=r"^empty file \(0 bytes\)$"):
        decode_image_bytes(b"")


def test_text_is_not_an_image():
    with pytest.raises(DecodeError, match=r"^not an image \(cannot identify image file"):
        decode_image_bytes(b"hello, I am a text file pretending to be a PNG\n")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_images_fail(fmt):
    data = encode(Image.fromarray(noise(64, 64)), fmt)
    with pytest.raises(DecodeError, match=r"^truncated image \("):
        decode_image_bytes(data[: len(data) // 2])


def test_truncated_webp_fails():
    data = encode(Image.fromarray(noise(64, 64)), "WEBP")
    with pytest.raises(DecodeError, match=r"^corrupt or truncated image \("):
        decode_image_bytes(data[: len(data) // 2])


def test_formats_outside_the_allowed_list_are_refused():
    data = encode(Image.fromarray(noise(4, 4)), "SGI")
    assert Image.open(io.BytesIO(data)).format == "SGI"  # Pillow itself would open it
    with pytest.raises(DecodeError, match="not an image"):
        decode_image_bytes(data)


def test_allowed_formats_are_all_known_to_pillow():
    Image.init()
    assert set(FORMATS) <= set(Image.OPEN)


def test_decompression_bomb_is_refused_from_the_header_quickly():
    data = bomb_png()
    start = time.perf_counter()
    with pytest.raises(
        DecodeError, match=r"^image has 1600000000 pixels, above max_pixels 64000000"
    ):
        decode_image_bytes(data, max_pixels=64_000_000)
    assert time.perf_counter() - start < 1.0


def test_bomb_is_refused_by_our_check_without_pillows_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    start = time.perf_counter()
    with pytest.raises(
        DecodeError, match=r"1600000000 pixels, above max_pixels 1000 \(40000x40000"
    ):
        decode_image_bytes(bomb_png(), max_pixels=1000)
    assert time.perf_counter() - start < 1.0


def test_max_pixels_boundary():
    data = encode(Image.fromarray(noise(10, 20)), "PNG")
    assert decode_image_bytes(data, max_pixels=200).shape == (10, 20, 3)
    with pytest.raises(DecodeError, match=r"^image has 200 pixels, above max_pixels 199 \(20x10\)"):
        decode_image_bytes(data, max_pixels=199)


def test_read_image_bytes(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"12345")
    assert read_image_bytes(str(tmp_path / "f.bin")) == b"12345"
    assert read_image_bytes(str(tmp_path / "f.bin"), max_bytes=5) == b"12345"
    with pytest.raises(ReadError, match="larger than max_bytes 4"):
        read_image_bytes(str(tmp_path / "f.bin"), max_bytes=4)
    with pytest.raises(ReadError, match=r"missing.jpg: file not found$"):
        read_image_bytes(str(tmp_path / "missing.jpg"))
    with pytest.raises(ReadError, match=r"is a directory$"):
        read_image_bytes(str(tmp_path))


def test_a_gz_name_is_not_gunzipped(tmp_path):
    (tmp_path / "x.gz").write_bytes(b"raw")  # would fail as gzip if decompressed
    assert read_image_bytes(str(tmp_path / "x.gz")) == b"raw"


def test_records_pickle_and_validate():
    pixels = noise(3, 5)
    image = DecodedImage("u", "ab" * 32, 5, 3, pixels, decode_seconds=0.5)
    back = pickle.loads(pickle.dumps(image))
    assert (back.uri, back.sha256, back.width, back.height, back.decode_seconds) == (
        "u",
        "ab" * 32,
        5,
        3,
        0.5,
    )
    np.testing.assert_array_equal(back.pixels, pixels)
    assert "pixels" not in repr(image)
    failure = Failure("u", "decode", "truncated image")
    assert pickle.loads(pickle.dumps(failure)) == failure
    with pytest.raises(ValueError, match=r"pixels must be \(5, 3, 3\) uint8, got \(3, 5, 3\)"):
        DecodedImage("u", "x", 3, 5, pixels)
    with pytest.raises(ValueError, match="uint8"):
        DecodedImage("u", "x", 5, 3, pixels.astype(np.float32))


def test_worker_setup_lets_pillow_allow_our_larger_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    _DecodeFn(max_pixels=500, max_bytes=10).setup()
    assert Image.MAX_IMAGE_PIXELS == 1000  # never lowered
    _DecodeFn(max_pixels=5000, max_bytes=10).setup()
    assert Image.MAX_IMAGE_PIXELS == 5000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    _DecodeFn(max_pixels=5000, max_bytes=10).setup()
    assert Image.MAX_IMAGE_PIXELS is None  # disabled stays disabled: our check still runs


def test_decode_images_rejects_nonsense_limits():
    with pytest.raises(ValueError, match="must be positive"):
        DecodeImages(max_pixels=0)


# --- pipeline ---------------------------------------------------------------------------------


def test_decode_images_pipeline(tmp_path):
    good = {
        "a.jpg": (encode(Image.fromarray(noise(30, 50, 1)), "JPEG"), (50, 30)),
        "b.png": (encode(Image.fromarray(noise(20, 10, 2)), "PNG"), (10, 20)),
        "c.webp": (encode(Image.fromarray(noise(8, 12, 3)), "WEBP"), (12, 8)),
    }
    jpeg = encode(Image.fromarray(noise(64, 64)), "JPEG")
    bad = {
        "empty.jpg": (b"", "decode", "empty file (0 bytes)"),
        "half.jpg": (jpeg[: len(jpeg) // 2], "decode", "truncated image ("),
        "text.png": (b"just some text\n", "decode", "not an image (cannot identify image file"),
        "bomb.png": (bomb_png(), "decode", "image has 1600000000 pixels, above max_pixels"),
        "missing.jpg": (None, "read", "cannot read "),
    }
    for name, (data, *_) in {**good, **bad}.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
    uris = [str(tmp_path / n) for n in [*good, *bad]]

    p = beam.Pipeline(runner=FnApiRunner())
    out = p | beam.Create(uris) | DecodeImages()
    summaries = out.images | beam.Map(
        lambda im: (im.uri, im.sha256, im.width, im.height, im.pixels.shape, im.decode_seconds)
    )
    for name, pcoll in (("images", summaries), ("errors", out["errors"])):
        path = str(tmp_path / f"{name}.pkl")
        _ = (
            pcoll
            | f"List{name}" >> beam.combiners.ToList()
            | f"Save{name}" >> beam.Map(lambda v, path=path: _dump(v, path))
        )
    result = p.run()
    result.wait_until_finish()
    images = _load(tmp_path / "images.pkl")
    errors = _load(tmp_path / "errors.pkl")

    assert sorted(s[:5] for s in images) == sorted(
        (str(tmp_path / n), hashlib.sha256(data).hexdigest(), w, h, (h, w, 3))
        for n, (data, (w, h)) in good.items()
    )
    assert all(s[5] >= 0 for s in images)
    # Exactly one failure per bad input, with its stage and reason.
    assert sorted(f.uri for f in errors) == sorted(str(tmp_path / n) for n in bad)
    for failure in errors:
        _, stage, reason = bad[failure.uri.rsplit("/", 1)[1]]
        assert failure.stage == stage
        assert failure.error.startswith(reason), failure.error
    assert errors_by_name(errors, "missing.jpg").error.endswith("file not found")

    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace("maskmine"))["counters"]
    }
    assert counters == {"images_decoded": 3, "decode_failed": 4, "read_failed": 1}


def errors_by_name(errors, name):
    (failure,) = [f for f in errors if f.uri.endswith("/" + name)]
    return failure


def _dump(values, path):
    with open(path, "wb") as f:
        pickle.dump(values, f)


def _load(path):
    with open(path, "rb") as f:
        return pickle.load(f)


def test_read_image_bytes_reads_in_pieces_up_to_the_limit(tmp_path, monkeypatch):
    from transforms import decode

    monkeypatch.setattr(decode, "_READ_PIECE_BYTES", 3)
    path = tmp_path / "f.bin"
    path.write_bytes(b"0123456789")
    assert read_image_bytes(str(path), max_bytes=10) == b"0123456789"
    with pytest.raises(ReadError, match="larger than max_bytes 9"):
        read_image_bytes(str(path), max_bytes=9)
    (tmp_path / "empty.bin").write_bytes(b"")
    assert read_image_bytes(str(tmp_path / "empty.bin"), max_bytes=9) == b""
