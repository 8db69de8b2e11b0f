"""Segment Anything in plain PyTorch, loading the official checkpoints unchanged."""

from .build import CheckpointError, build_sam, load_state_dict, save_state_dict
from .config import CONFIGS, VIT_B, VIT_H, VIT_L, SamConfig, config_from_state_dict
from .generator import AutomaticMaskGenerator
from .predictor import ImageEmbedding, Prediction, SamPredictor
from .sam import Sam

__all__ = [
    "CONFIGS",
    "VIT_B",
    "VIT_H",
    "VIT_L",
    "AutomaticMaskGenerator",
    "CheckpointError",
    "ImageEmbedding",
    "Prediction",
    "Sam",
    "SamConfig",
    "SamPredictor",
    "build_sam",
    "config_from_state_dict",
    "load_state_dict",
    "save_state_dict",
]
