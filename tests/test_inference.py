"""SamModelHandler under RunInference: how images are batched."""

import apache_beam as beam
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that, equal_to

from transforms.inference import ModelSpec, SamModelHandler


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
