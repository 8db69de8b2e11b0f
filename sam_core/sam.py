"""The SAM model: image encoder, prompt encoder and mask decoder under the
official module names, so official state dicts load unchanged."""

from __future__ import annotations

from torch import nn

from .config import SamConfig, model_type_of
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder


class Sam(nn.Module):
    """Holds the three parts and where the weights came from.

    `model_type` is "vit_b"/"vit_l"/"vit_h" or "custom"; `checkpoint_sha256` is the
    hex sha256 of the checkpoint file, or None for a model built without one.
    """

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoderViT(config)
        self.prompt_encoder = PromptEncoder(config)
        self.mask_decoder = MaskDecoder(config)
        self.checkpoint_sha256: str | None = None

    @property
    def model_type(self) -> str:
        return model_type_of(self.config)

    @property
    def image_size(self) -> int:
        return self.config.image_size
