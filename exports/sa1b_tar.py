"""SA-1B shards for training: tar files of `<key>.jpg` + `<key>.json` pairs, plus an index.

Each shard DEST/sa1b-NNNNNN.tar holds, per image, `<key>.jpg` (the image as the pipeline
decoded it: EXIF orientation applied, RGB; an RGB JPEG source with nothing to rotate is
stored as its own bytes, anything else encoded at JPEG quality 95) and `<key>.json` (SA-1B's
per-image record, exports/sa1b.py, with `file_name` = `<key>.jpg`), `<key>` = `sa_<image_id>`
(no dot: webdataset splits a sample's key from its extensions at the first dot). A shard
is closed before it would pass `max_images` images or `max_bytes` bytes (a single larger
sample still gets a shard of its own). DEST/index.json lists the shards (name, keys, image
ids, bytes) and the images that could not be read back (source gone or changed since it
was mined), which are left out. Streaming: one image and its masks in memory at a time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from collections.abc import Iterable
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from transforms.decode import DecodeError, ReadError, decode_image_bytes, read_image_bytes

from .dataset import RunImage
from .files import write_json
from .sa1b import image_record

DEFAULT_SHARD_IMAGES = 1000
DEFAULT_SHARD_MB = 1024.0
JPEG_QUALITY = 95
ORIENTATION_TAG = 0x0112  # EXIF Orientation
_TAR_BLOCK = 512


def _tar_bytes(members: int) -> int:
    """Size of a tar whose members take `members` bytes: two zero blocks end it, and
    tarfile pads the whole to its 10240-byte records."""
    record = tarfile.RECORDSIZE
    return -(-(members + 2 * _TAR_BLOCK) // record) * record


def sample_key(image: RunImage) -> str:
    return f"sa_{image.image_id}"


def _member_bytes(size: int) -> int:
    """Bytes a member of `size` bytes takes in a tar: a header block and padded data."""
    return _TAR_BLOCK + -(-size // _TAR_BLOCK) * _TAR_BLOCK


@dataclasses.dataclass
class Shard:
    name: str
    keys: list[str] = dataclasses.field(default_factory=list)
    image_ids: list[int] = dataclasses.field(default_factory=list)
    members: int = 0  # bytes of the members (headers, padded data)

    @property
    def bytes(self) -> int:
        return _tar_bytes(self.members)


def image_jpeg(image: RunImage) -> bytes:
    """The image at image.uri, decoded as the pipeline decodes it, as JPEG bytes.

    Raises ReadError/DecodeError, or ValueError when the file is no longer the one mined
    (its sha256 or decoded size differs): its masks would not fit it.
    """
    data = read_image_bytes(image.uri)
    if hashlib.sha256(data).hexdigest() != image.sha256:
        raise ValueError("source file changed since it was mined (sha256 differs)")
    pixels = decode_image_bytes(data)
    if pixels.shape[:2] != (image.height, image.width):
        raise ValueError(f"decoded size {pixels.shape[1]}x{pixels.shape[0]} is not the mined one")
    if _stored_as_decoded(data):
        return data  # the file's own bytes decode to these pixels: no second JPEG loss
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def _stored_as_decoded(data: bytes) -> bool:
    """Whether `data` is a JPEG that decodes to what the pipeline decoded: RGB (not
    CMYK or grey, which the pipeline converts) and no EXIF rotation to apply."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            orientation = im.getexif().get(ORIENTATION_TAG, 1)
            return im.format == "JPEG" and im.mode == "RGB" and orientation == 1
    except Exception:  # decodable above, so only odd EXIF can land here: re-encode
        return False


class _ShardWriter:
    def __init__(self, dest: str, max_images: int, max_bytes: int) -> None:
        self.dest, self.max_images, self.max_bytes = dest, max_images, max_bytes
        self.shards: list[Shard] = []
        self._file = self._tar = None

    def _open(self) -> None:
        self.close()
        shard = Shard(f"sa1b-{len(self.shards):06d}.tar")
        path = FileSystems.join(self.dest, shard.name)
        self._file = FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)
        # Stream mode ("w|"): no seeking back, so the file may be a gs:// upload.
        # Closed in close(): one tar for many add() calls.
        self._tar = tarfile.open(  # noqa: SIM115
            fileobj=self._file, mode="w|", format=tarfile.USTAR_FORMAT
        )
        self.shards.append(shard)

    def add(self, key: str, image_id: int, members: dict[str, bytes]) -> None:
        size = sum(_member_bytes(len(data)) for data in members.values())
        shard = self.shards[-1] if self._tar is not None else None
        if (
            shard is None
            or len(shard.keys) >= self.max_images
            or (shard.keys and _tar_bytes(shard.members + size) > self.max_bytes)
        ):
            self._open()
            shard = self.shards[-1]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            self._tar.addfile(info, io.BytesIO(data))
        shard.keys.append(key)
        shard.image_ids.append(image_id)
        shard.members += size

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()  # writes the end-of-archive blocks; leaves the file open
            self._file.close()
            self._tar = self._file = None


def export_sa1b_tar(
    images: Iterable[RunImage],
    dest: str,
    first_ann_ids: dict[str, int],
    max_images: int = DEFAULT_SHARD_IMAGES,
    max_mb: float = DEFAULT_SHARD_MB,
) -> dict[str, Any]:
    """Write the shards and DEST/index.json (local or gs://) from `images` (streamed);
    annotation ids start at first_ann_ids[image.uri]. Returns the index."""
    if max_images < 1 or not max_mb > 0:
        raise ValueError(f"shards need >= 1 image and > 0 MB, got {max_images}, {max_mb}")
    writer = _ShardWriter(dest, max_images, int(max_mb * 2**20))
    skipped, masks = [], 0
    try:
        for image in images:
            try:
                jpeg = image_jpeg(image)
            except (ReadError, DecodeError, ValueError) as e:
                skipped.append(
                    {"image_uri": image.uri, "image_id": image.image_id, "error": str(e)}
                )
                continue
            key = sample_key(image)
            record = image_record(image, first_ann_ids[image.uri])
            record["image"]["file_name"] = f"{key}.jpg"
            members = {f"{key}.jpg": jpeg, f"{key}.json": json.dumps(record).encode()}
            writer.add(key, image.image_id, members)
            masks += len(image.masks)
    finally:
        writer.close()
    index = {
        "format": "sa1b-tar",
        "shards": [
            {"name": s.name, "keys": s.keys, "image_ids": s.image_ids, "bytes": s.bytes}
            for s in writer.shards
        ],
        "images": sum(len(s.keys) for s in writer.shards),
        "masks": masks,
        "skipped": skipped,
    }
    write_json(FileSystems.join(dest, "index.json"), index)
    return index
