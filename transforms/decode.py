"""Read and decode images defensively: URIs -> DecodedImage, or a Failure with the reason.

The decoding is plain functions (`read_image_bytes`, `decode_image_bytes`), unit-testable
without Beam; `DecodeImages` is a thin DoFn around them that never lets one bad file stop
the pipeline.

Conversions to (H, W, 3) uint8 RGB, after EXIF orientation, first frame of multi-frame files:
- transparency (RGBA, LA, PA, P or RGB/L with a transparent colour): composited on white.
  Dropping alpha instead would expose whatever colour the encoder left under transparent
  pixels (often black or noise), which SAM would segment as structure that nobody sees.
- 16-bit grey (I;16*): fixed full scale, v * 255 / 65535 rounded. Image-independent and
  monotone, so a dark image stays dark and equal values map equally across images.
- 32-bit integer (I) and float (F): no fixed full scale exists, so the actual finite range
  [min, max] is stretched onto [0, 255] (a constant image becomes 0; NaN becomes 0).
- CMYK, 1, L, P, YCbCr, ...: Pillow's conversion. CMYK is converted without colour management
  (an embedded ICC profile is not applied), which is close enough for segmentation.
"""

from __future__ import annotations

import hashlib
import io
import re
import time
from collections.abc import Iterator
from typing import NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import PCollection, TaggedOutput
from PIL import Image, ImageOps, UnidentifiedImageError

from .metrics import counter
from .records import ERRORS, DecodedImage, Failure, outputs_getitem
from .uris import IMAGE_FORMATS, read_error_reason

IMAGES = "images"
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_BYTES = 1 << 30
# Formats Pillow may try. Fewer parsers exposed to untrusted bytes, and none that shells out
# (EPS runs Ghostscript). Phone JPEGs with several pictures (MPO) open through "JPEG".
FORMATS = IMAGE_FORMATS

_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
_WHITE = (255, 255, 255, 255)


class ReadError(OSError):
    """The bytes of an image could not be read; the message says why."""


class DecodeError(ValueError):
    """Bytes that are not a usable image; the message says why."""


class DecodeOutputs(NamedTuple):
    """images: PCollection[DecodedImage]; errors: PCollection[Failure]."""

    images: PCollection
    errors: PCollection

    __getitem__ = outputs_getitem


_READ_PIECE_BYTES = 16 << 20


def read_image_bytes(uri: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """All bytes of the file at `uri` (any FileSystems scheme), at most `max_bytes`.

    Raises ReadError with a readable reason (file not found, permission denied, too large...).
    """
    try:
        # UNCOMPRESSED: a name ending in .gz must not be silently gunzipped.
        with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            # In pieces: one read(max_bytes + 1) reserves that much memory up front
            # (1 GiB at the default), whatever the file's size.
            pieces, size = [], 0
            while size <= max_bytes:
                piece = f.read(min(_READ_PIECE_BYTES, max_bytes + 1 - size))
                if not piece:
                    break
                pieces.append(piece)
                size += len(piece)
    except Exception as e:
        raise ReadError(f"cannot read {uri}: {read_error_reason(e)}") from e
    if size > max_bytes:
        raise ReadError(f"file is larger than max_bytes {max_bytes}")
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def decode_image_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image file bytes into (H, W, 3) uint8 RGB, EXIF orientation applied.

    The pixel count in the header is checked against `max_pixels` before any pixel is
    decoded. Raises DecodeError with a readable reason. The array is read-only.
    """
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        # BytesIO shares the bytes object rather than copying it.
        im = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as e:
        # Pillow's own limit (Image.MAX_IMAGE_PIXELS) tripped first; it says how many.
        found = _BOMB_PIXELS.search(str(e))
        pixels = found.group(1) if found else "too many"
        raise DecodeError(f"image has {pixels} pixels, above max_pixels {max_pixels}") from e
    except UnidentifiedImageError as e:
        raise DecodeError(
            f"not an image (cannot identify image file as any of {', '.join(FORMATS)})"
        ) from e
    except Exception as e:
        # e.g. a truncated WEBP, which Pillow starts decoding while opening
        raise DecodeError(f"corrupt or truncated image ({_describe(e)})") from e
    with im:
        width, height = im.size
        if width * height > max_pixels:
            raise DecodeError(
                f"image has {width * height} pixels, above max_pixels {max_pixels} "
                f"({width}x{height})"
            )
        try:
            im.load()
        except Image.DecompressionBombError as e:  # a later frame or tile that is too large
            raise DecodeError(f"image too large ({_describe(e)})") from e
        except Exception as e:
            text = _describe(e)
            if "truncated" in text:
                raise DecodeError(f"truncated image ({text})") from e
            raise DecodeError(f"corrupt or truncated {im.format} image ({text})") from e
        try:
            ImageOps.exif_transpose(im, in_place=True)
        except Exception as e:
            raise DecodeError(f"bad EXIF orientation data ({_describe(e)})") from e
        return _to_rgb(im)


def _describe(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return text or type(e).__name__


def _to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16"):
        # np.asarray honours the byte order of I;16B / I;16L.
        grey = np.asarray(im).astype(np.uint32)
        return _grey_to_rgb(((grey * 255 + 32767) // 65535).astype(np.uint8))
    if mode in ("I", "F"):
        return _grey_to_rgb(_stretch(np.asarray(im, dtype=np.float64)))
    if im.has_transparency_data:  # alpha band, palette alpha or a transparent colour
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba)
    if im.mode != "RGB":
        try:
            im = im.convert("RGB")
        except ValueError as e:
            raise DecodeError(f"unsupported image mode {mode} ({_describe(e)})") from e
    return np.asarray(im)


def _stretch(values: np.ndarray) -> np.ndarray:
    """(H, W) float -> uint8, the finite range [min, max] onto [0, 255]; NaN/inf -> 0."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    lo, hi = values[finite].min(), values[finite].max()
    scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return np.where(finite, np.rint(scaled), 0).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    rgb.flags.writeable = False  # like np.asarray(PIL image): elements must not be mutated
    return rgb


# The main output's type is declared here, not read off process's annotation: Beam 2.78
# reads a bare TaggedOutput in `Iterator[T | TaggedOutput]` into the main output's type,
# and its parametrised TaggedOutput[...] does not exist in 2.77.
@beam.typehints.with_output_types(DecodedImage)
class _DecodeFn(beam.DoFn):
    def __init__(self, max_pixels: int, max_bytes: int):
        self._max_pixels = max_pixels
        self._max_bytes = max_bytes
        self._decoded = counter("images_decoded")
        self._decode_failed = counter("decode_failed")
        self._read_failed = counter("read_failed")

    def setup(self) -> None:
        # Pillow's process-wide guard raises above 2x MAX_IMAGE_PIXELS during open. Raise it
        # to our limit if lower, so images we allow are not refused; our own check runs first.
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and limit < self._max_pixels:
            Image.MAX_IMAGE_PIXELS = self._max_pixels

    def process(self, uri: str) -> Iterator:
        try:
            data = read_image_bytes(uri, self._max_bytes)
        except Exception as e:  # one unreadable file must not stop the pipeline
            self._read_failed.inc()
            yield TaggedOutput(ERRORS, Failure(uri=uri, stage="read", error=_describe(e)))
            return
        sha256 = hashlib.sha256(data).hexdigest()
        start = time.perf_counter()
        try:
            pixels = decode_image_bytes(data, self._max_pixels)
        except Exception as e:
            self._decode_failed.inc()
            error = str(e) if isinstance(e, DecodeError) else f"{type(e).__name__}: {e}"
            yield TaggedOutput(ERRORS, Failure(uri=uri, stage="decode", error=error))
            return
        seconds = time.perf_counter() - start
        del data  # the compressed bytes are not needed downstream
        self._decoded.inc()
        height, width = pixels.shape[:2]
        yield DecodedImage(uri, sha256, width, height, pixels, decode_seconds=seconds)


class DecodeImages(beam.PTransform):
    """PCollection[str] URIs -> DecodeOutputs(images=DecodedImage, errors=Failure).

    Failures: stage "read" (missing, unreadable, larger than `max_bytes`) or "decode" (not an
    image, truncated, corrupt, more than `max_pixels` pixels). Counts the Beam metrics
    maskmine/images_decoded, decode_failed and read_failed.
    """

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES):
        super().__init__()
        if max_pixels <= 0 or max_bytes <= 0:
            raise ValueError(
                f"max_pixels and max_bytes must be positive: {max_pixels}, {max_bytes}"
            )
        self._max_pixels = max_pixels
        self._max_bytes = max_bytes

    def expand(self, uris: PCollection) -> DecodeOutputs:
        out = uris | "Decode" >> beam.ParDo(
            _DecodeFn(self._max_pixels, self._max_bytes)
        ).with_outputs(ERRORS, main=IMAGES)
        return DecodeOutputs(out[IMAGES], out[ERRORS])
