"""Loading checkpoints: what works, and clear errors for every kind of bad file."""

import hashlib
import io
import os
import pickle

import pytest
import torch

from sam_core import CheckpointError, build_sam, load_state_dict


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_loads_with_config_inferred_and_sha256_exposed(tiny_checkpoint):
    model = build_sam(checkpoint=tiny_checkpoint)
    assert model.checkpoint_sha256 == sha256(tiny_checkpoint)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    state = torch.load(tiny_checkpoint, weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_explicit_config_matching_the_file_loads(tiny_checkpoint):
    inferred = build_sam(checkpoint=tiny_checkpoint).config
    assert build_sam(inferred, tiny_checkpoint).config == inferred


def test_build_without_checkpoint_has_no_sha():
    from scripts.seeded import TINY

    model = build_sam(TINY)
    assert model.checkpoint_sha256 is None


def test_remote_uri_goes_through_the_opener(tiny_checkpoint):
    data = tiny_checkpoint.read_bytes()
    opened = []

    def opener(uri):
        opened.append(uri)
        return io.BytesIO(data)

    model = build_sam(checkpoint="gs://bucket/sam.pth", opener=opener)
    assert opened == ["gs://bucket/sam.pth"]
    assert model.checkpoint_sha256 == sha256(tiny_checkpoint)


def test_remote_uri_without_opener_is_a_clear_error():
    with pytest.raises(CheckpointError, match="remote checkpoints need an opener"):
        build_sam(checkpoint="gs://bucket/sam.pth")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        build_sam(checkpoint=tmp_path / "nope.pth")


def test_truncated_file(tiny_checkpoint, tmp_path):
    data = tiny_checkpoint.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or another format"):
        build_sam(checkpoint=bad)


def test_not_a_checkpoint_at_all(tmp_path):
    bad = tmp_path / "image.pth"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(100))
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        build_sam(checkpoint=bad)


@pytest.mark.parametrize(
    "obj, message",
    [
        ([torch.zeros(2)], "it holds a list"),
        (torch.zeros(3), "it holds a Tensor"),
        ({"model": {"a": torch.zeros(1)}, "epoch": 3}, "not name -> tensor"),
    ],
)
def test_not_a_state_dict(tmp_path, obj, message):
    bad = tmp_path / "wrong.pth"
    torch.save(obj, bad)
    with pytest.raises(CheckpointError, match=message):
        build_sam(checkpoint=bad)


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_with_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "code_ran"
    bad = tmp_path / "evil.pth"
    torch.save({"image_encoder.pos_embed": _Payload(str(marker))}, bad)
    with pytest.raises(CheckpointError, match="refused to load"):
        build_sam(checkpoint=bad)
    assert not marker.exists()


def test_plain_pickle_file_is_refused(tmp_path):
    bad = tmp_path / "plain.pkl"
    bad.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        load_state_dict(bad)


def test_model_type_that_does_not_match_the_shapes(tiny_checkpoint):
    with pytest.raises(CheckpointError) as info:
        build_sam("vit_b", tiny_checkpoint)
    message = str(info.value)
    assert "does not match model_type 'vit_b'" in message
    assert (
        "image_encoder.patch_embed.proj.weight: file (64, 3, 16, 16), model (768, 3, 16, 16)"
        in message
    )
    assert "look like 'custom'" in message


def test_state_dict_of_something_else(tmp_path):
    bad = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, bad)
    with pytest.raises(CheckpointError, match="not a SAM state dict: no tensor named"):
        build_sam(checkpoint=bad)


def test_missing_and_extra_tensors_are_named(tiny_checkpoint, tmp_path):
    state = torch.load(tiny_checkpoint, weights_only=True)
    del state["mask_decoder.iou_token.weight"]
    state["mask_decoder.extra"] = torch.zeros(1)
    bad = tmp_path / "edited.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointError) as info:
        build_sam(checkpoint=bad)
    assert "1 tensors missing: mask_decoder.iou_token.weight" in str(info.value)
    assert "1 unexpected tensors: mask_decoder.extra" in str(info.value)


def test_half_precision_checkpoint_loads_as_float32(tiny_checkpoint, tmp_path):
    state = torch.load(tiny_checkpoint, weights_only=True)
    half = tmp_path / "half.pth"
    torch.save({k: v.half() for k, v in state.items()}, half)
    model = build_sam(checkpoint=half)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_unknown_model_type():
    with pytest.raises(ValueError, match="unknown model_type 'vit_x'"):
        build_sam("vit_x")
    with pytest.raises(ValueError, match="needs a model_type, a checkpoint"):
        build_sam()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load_and_at_startup(tiny_checkpoint, tmp_path, value):
    # A diverged model mines empty masks with NaN scores and records its images as mined.
    from sam_core.build import check_local_checkpoint

    state = torch.load(tiny_checkpoint, weights_only=True)
    state["mask_decoder.iou_token.weight"][0, 0] = value
    bad = tmp_path / "diverged.pth"
    torch.save(state, bad)
    for load in (lambda: build_sam(checkpoint=bad), lambda: check_local_checkpoint(bad)):
        with pytest.raises(CheckpointError, match=r"1 tensor\(s\) hold NaN or infinite values"):
            load()
