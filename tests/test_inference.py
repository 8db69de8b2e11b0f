"""SamModelHandler under RunInference: how images are batched, and a model shared
across processes."""

import hashlib
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that, equal_to

from sam_core import build_sam
from sam_core.generator import AutomaticMaskGenerator
from transforms.inference import MineMasks, ModelSpec, SamModelHandler
from transforms.records import DecodedImage

CHECKPOINT = Path(__file__).parent / "fixtures" / "sam_tiny.pth"
PARAMS = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


class _BatchSizeHandler(SamModelHandler):
    """The real handler's batching; each element comes back as its batch's size."""

    def load_model(self):
        return None

    def run_inference(self, batch, model, inference_args=None):
        return [len(batch)] * len(batch)

    def get_num_bytes(self, batch):
        return len(batch)


def test_batches_are_full_and_fixed_in_size():
    # Beam's adaptive batching with a minimum of 1 gave batches of 1-3 for a
    # maximum of 4; the encoder should get full batches (one remainder at most).
    handler = _BatchSizeHandler(ModelSpec(None, "vit_b"), {}, max_batch_size=4)
    with beam.Pipeline() as p:
        sizes = p | beam.Create(range(10)) | RunInference(handler)
        assert_that(sizes, equal_to([4] * 8 + [2] * 2))


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        SamModelHandler(ModelSpec(None, "vit_b"), {}, max_batch_size=0)


def _images() -> list[DecodedImage]:
    rng = np.random.default_rng(3)
    images = []
    for i, (h, w) in enumerate([(48, 64), (64, 40), (32, 32)]):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pixels[h // 4 : h // 2, w // 4 : w // 2] = (250, 20, 20)
        images.append(DecodedImage(f"mem://{i}.png", f"sha{i}", w, h, pixels))
    return images


def _summary(mined):
    """What a MinedImage says, in comparable builtins."""
    counts = [m["segmentation"]["counts"] for m in mined.masks]
    emb = mined.embedding
    return (mined.uri, mined.checkpoint_sha256, counts, emb.shape, str(emb.dtype))


def test_a_model_shared_across_processes_mines_like_a_local_one():
    # With share_across_processes Beam serves the model from one process and hands
    # run_inference a proxy that forwards method calls only (attribute access fails).
    images = _images()
    generator = AutomaticMaskGenerator(
        build_sam(checkpoint=str(CHECKPOINT)), output_mode="coco_rle", **PARAMS
    )
    embeddings: list = []
    masks = generator.generate_batch([im.pixels for im in images], embeddings)
    sha = hashlib.sha256(CHECKPOINT.read_bytes()).hexdigest()
    expected = [
        (im.uri, sha, [m["segmentation"]["counts"] for m in ms], tuple(e.features.shape), "float16")
        for im, ms, e in zip(images, masks, embeddings)
    ]
    assert all(counts for _, _, counts, _, _ in expected)  # something to compare
    handler = SamModelHandler(
        ModelSpec(str(CHECKPOINT), precision="fp32"),
        PARAMS,
        max_batch_size=2,
        share_across_processes=True,
        keep_embeddings=True,
    )
    with beam.Pipeline() as p:
        out = p | beam.Create(images) | MineMasks(handler)
        assert_that(out["errors"], equal_to([]), label="no errors")
        assert_that(out["mined"] | beam.Map(_summary), equal_to(expected), label="mined")


def test_a_failed_batch_becomes_readable_error_rows():
    # Beam's dead letter: (batch, (exception type, repr, traceback lines)).
    from transforms.inference import _BatchFailures

    images = _images()[:2]
    letter = (images, (RuntimeError, "RuntimeError('proxy lost')", ["Traceback ..."]))
    rows = list(_BatchFailures().process(letter))
    assert [(r.uri, r.stage, r.error) for r in rows] == [
        (im.uri, "inference", "RuntimeError('proxy lost')") for im in images
    ]
