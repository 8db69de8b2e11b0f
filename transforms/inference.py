"""SAM automatic mask generation under Beam's RunInference.

`SamModelHandler` loads the model once per worker process (or once per machine
with `share_across_processes`, so a GPU holds one copy), batches decoded images
for the encoder, and returns one `MinedImage` per image, or a `Failure` for an
image the generator could not process: one bad image never costs its batch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import torch
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, RunInference

from sam_core import AutomaticMaskGenerator, build_sam
from sam_core.allocator import keep_freed_memory
from sam_core.build import check_local_checkpoint
from sam_core.generator import check_params

from .metrics import NAMESPACE, counter, distribution
from .records import DecodedImage, Failure, MinedImage

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What to load: checkpoint URI (any FileSystems path) and/or model type."""

    checkpoint: str | None
    model_type: str | None = None
    precision: str = "auto"  # see sam_core.precision
    device: str = "auto"  # "auto": CUDA when present, else CPU


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_model_spec(spec: ModelSpec) -> None:
    """ValueError (CheckpointError) for a local checkpoint that is unusable or not of
    spec.model_type, found from its shapes before any worker loads it. Remote
    checkpoints are checked by the workers (reading them here would copy gigabytes)."""
    path = (spec.checkpoint or "").removeprefix("file://")
    if not path or "://" in path:
        return
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint not found: {spec.checkpoint}")
    check_local_checkpoint(path, spec.model_type)


class LoadedSam:
    """The generator and the facts about its model that go into provenance.

    With `share_across_processes` Beam keeps this object in one process per machine and
    hands run_inference a proxy that forwards public method calls only, pickling their
    arguments and results: so run_inference uses nothing but these methods, and they
    return numpy arrays and plain Python values.
    """

    def __init__(self, generator: AutomaticMaskGenerator, model_type: str, sha256: str) -> None:
        self._generator = generator
        self._model_type = model_type
        self._checkpoint_sha256 = sha256

    def provenance(self) -> tuple[str, str, dict[str, str]]:
        """(model_type, checkpoint_sha256, runtime); the sha is "" for random weights;
        runtime: the precision actually used, the device and the torch version."""
        runtime = {
            "precision": self._generator.precision,
            "device": str(self._generator.predictor.device),
            "torch_version": torch.__version__,
        }
        return self._model_type, self._checkpoint_sha256, runtime

    def mine(
        self, images: list[np.ndarray], keep_embeddings: bool = False
    ) -> tuple[list[list[dict]], list[int], list[tuple[np.ndarray, tuple[int, int]]] | None]:
        """The generator's records for each (H, W, 3) uint8 image, the point prompts it
        decoded for each, and, if asked, each image's embedding: ((C, h, w) float16, the
        resized (h, w) inside the input)."""
        embeddings: list | None = [] if keep_embeddings else None
        masks = self._generator.generate_batch(images, embeddings)
        prompts = list(self._generator.prompts_decoded)
        if embeddings is None:
            return masks, prompts, None
        return (
            masks,
            prompts,
            [
                (e.features.to(torch.float16).cpu().numpy(), tuple(int(v) for v in e.input_size))
                for e in embeddings
            ],
        )


class SamModelHandler(ModelHandler[DecodedImage, Any, LoadedSam]):
    """RunInference handler: DecodedImage batches -> MinedImage | Failure.

    generator_params: AutomaticMaskGenerator parameters by the reference's names.
    max_batch_size: images per encoder batch (Beam's default cap is 10000).
    share_across_processes: one model per machine instead of per SDK process
        (set on GPU workers, where each process would otherwise hold a copy).
    """

    def __init__(
        self,
        spec: ModelSpec,
        generator_params: dict[str, Any],
        max_batch_size: int = 4,
        share_across_processes: bool = False,
        keep_embeddings: bool = False,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        check_params(**generator_params)
        # min = max: full encoder batches of a fixed shape. With a lower minimum,
        # Beam's adaptive BatchElements sized batches from timings with 25% random
        # jitter: 200 images came as 106 batches of 1-3, never 4.
        super().__init__(
            min_batch_size=max_batch_size,
            max_batch_size=max_batch_size,
            large_model=share_across_processes,
        )
        self.spec = spec
        self.max_batch_size = max_batch_size
        self.generator_params = dict(generator_params)
        self.keep_embeddings = keep_embeddings
        self._failed = counter("inference_failed")
        self._mined = counter("images_mined")
        self._masks = counter("masks_generated")
        self._latency = distribution("inference_ms_per_image")

    def load_model(self) -> LoadedSam:
        device = resolve_device(self.spec.device)
        # A worker process does nothing but this: let glibc keep freed blocks for reuse
        # (see sam_core.allocator); a library user decides that for their own process.
        keep_freed_memory()
        t0 = time.perf_counter()
        model = build_sam(
            self.spec.model_type, self.spec.checkpoint, device=device, opener=FileSystems.open
        )
        generator = AutomaticMaskGenerator(
            model,
            output_mode="coco_rle",
            precision=self.spec.precision,
            encoder_batch_size=self.max_batch_size,
            **self.generator_params,
        )
        _LOG.info(
            "loaded SAM %s (%s) on %s in %.1f s",
            model.model_type,
            self.spec.checkpoint or "random weights",
            device,
            time.perf_counter() - t0,
        )
        return LoadedSam(generator, model.model_type, model.checkpoint_sha256 or "")

    def run_inference(
        self,
        batch: Sequence[DecodedImage],
        model: LoadedSam,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[MinedImage | Failure]:
        # `model` may be a proxy to a LoadedSam in another process: methods only.
        model_type, checkpoint_sha256, runtime = model.provenance()
        t0 = time.perf_counter()
        try:
            per_image, prompts, embeddings = model.mine(
                [im.pixels for im in batch], self.keep_embeddings
            )
            seconds = [(time.perf_counter() - t0) / len(batch)] * len(batch)
        except Exception:  # one image may be at fault: retry them one by one
            _LOG.warning("batch of %d failed; retrying image by image", len(batch))
            per_image, prompts, embeddings, seconds = [], [], [], []
            for image in batch:
                t1 = time.perf_counter()
                try:
                    masks, counts, embedding = model.mine([image.pixels], self.keep_embeddings)
                    per_image.append(masks[0])
                    prompts.append(counts[0])
                    embeddings.append(embedding[0] if embedding else None)
                except Exception as e:
                    per_image.append(e)
                    prompts.append(0)
                    embeddings.append(None)
                seconds.append(time.perf_counter() - t1)
        results: list[MinedImage | Failure] = []
        for image, masks, secs, emb, decoded in zip(
            batch, per_image, seconds, embeddings or [None] * len(batch), prompts
        ):
            if isinstance(masks, Exception):
                self._failed.inc()
                results.append(Failure(image.uri, "inference", f"{type(masks).__name__}: {masks}"))
                continue
            self._mined.inc()
            self._masks.inc(len(masks))
            self._latency.update(int(secs * 1000))
            results.append(
                MinedImage(
                    uri=image.uri,
                    sha256=image.sha256,
                    width=image.width,
                    height=image.height,
                    masks=masks,
                    masks_generated=len(masks),
                    decode_seconds=image.decode_seconds,
                    inference_seconds=secs,
                    model_type=model_type,
                    checkpoint_sha256=checkpoint_sha256,
                    embedding=None if emb is None else emb[0],
                    input_size=None if emb is None else emb[1],
                    runtime=runtime,
                    prompts_decoded=decoded,
                )
            )
        return results

    def get_num_bytes(self, batch: Sequence[DecodedImage]) -> int:
        return sum(im.pixels.nbytes for im in batch)

    def get_metrics_namespace(self) -> str:
        return NAMESPACE


class _SplitResults(beam.DoFn):
    def process(self, element):
        if isinstance(element, Failure):
            yield beam.pvalue.TaggedOutput("errors", element)
        else:
            yield element


class _BatchFailures(beam.DoFn):
    """A batch whose run_inference raised outside its own per-image handling (e.g. the
    proxy to a shared model lost its process): every image of it becomes an error row.

    Beam's dead letters are (batch, (exception type, repr, traceback lines)). A model
    that fails to load fails the worker instead: loading is outside this handling.
    """

    def process(self, element):
        batch, (_, exception_repr, _) = element
        for image in batch:
            yield Failure(image.uri, "inference", exception_repr)


class MineMasks(beam.PTransform):
    """DecodedImage -> tagged outputs "mined" (MinedImage) and "errors" (Failure)."""

    def __init__(self, handler: SamModelHandler) -> None:
        super().__init__()
        self.handler = handler

    def expand(self, images):
        results, dead_letters = (
            images | "RunInference" >> RunInference(self.handler).with_exception_handling()
        )
        split = results | "SplitFailures" >> beam.ParDo(_SplitResults()).with_outputs(
            "errors", main="mined"
        )
        batch_failures = dead_letters.failed_inferences | "BatchFailures" >> beam.ParDo(
            _BatchFailures()
        )
        errors = (split.errors, batch_failures) | "InferenceErrors" >> beam.Flatten()
        return {"mined": split.mined, "errors": errors}
