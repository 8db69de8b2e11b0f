"""The three official configs build with exactly the official key names and shapes."""

import json

import pytest
import torch

from sam_core import CONFIGS, Sam, config_from_state_dict
from sam_core.config import model_type_of

from .conftest import FIXTURES

OFFICIAL = json.loads((FIXTURES / "official_keys.json").read_text())


@pytest.mark.parametrize("model_type", ["vit_b", "vit_l", "vit_h"])
def test_state_dict_keys_and_shapes_are_official(model_type):
    with torch.device("meta"):
        model = Sam(CONFIGS[model_type])
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = OFFICIAL[model_type]
    assert sorted(set(ours) - set(expected)) == []
    assert sorted(set(expected) - set(ours)) == []
    wrong = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert wrong == {}


def test_vit_b_counts_match_the_published_checkpoint():
    with torch.device("meta"):
        state = Sam(CONFIGS["vit_b"]).state_dict()
    assert len(state) == 314
    assert sum(v.numel() for v in state.values()) == 93_735_728
    prefixes = [k.split(".")[0] for k in state]
    assert {p: prefixes.count(p) for p in set(prefixes)} == {
        "image_encoder": 177,
        "prompt_encoder": 17,
        "mask_decoder": 120,
    }


@pytest.mark.parametrize("model_type", ["vit_b", "vit_l", "vit_h"])
def test_config_is_recovered_from_official_shapes(model_type):
    shapes = {k: torch.empty(v, device="meta") for k, v in OFFICIAL[model_type].items()}
    config = config_from_state_dict(shapes)
    assert config == CONFIGS[model_type]
    assert model_type_of(config) == model_type
