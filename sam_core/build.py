"""Build SAM models and load official-format checkpoints safely.

Checkpoints are plain state dicts saved with `torch.save`. They are loaded with
`weights_only=True`, so a file carrying pickled code is refused rather than run.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from typing import BinaryIO

import torch

from .config import CONFIGS, SamConfig, config_from_state_dict, model_type_of
from .denormals import flush_denormals
from .sam import Sam

Opener = Callable[[str], BinaryIO]
_URI_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_CHUNK = 8 << 20


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with the reason in the message."""


def _sha256_of_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _torch_load(path: str, name: str, mmap: bool = False) -> object:
    # torch.save writes a zip archive; anything else (a truncated download, an
    # image, a bare pickle, a pre-1.6 legacy file) is rejected before unpickling.
    if not zipfile.is_zipfile(path):
        size = os.path.getsize(path)
        raise CheckpointError(
            f"{name}: not a readable PyTorch checkpoint ({size} bytes, no zip directory): "
            "truncated or another format"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        detail = str(e).split("WeightsUnpickler error:")[-1].strip().split(".")[0]
        raise CheckpointError(
            f"{name}: refused to load: it holds pickled objects other than tensors and "
            f"plain containers (loaded with weights_only=True, so no code in it was run): "
            f"{detail}"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(
            f"{name}: not a readable PyTorch checkpoint (damaged archive): {str(e).splitlines()[0]}"
        ) from e


def load_state_dict(
    checkpoint: str | os.PathLike, opener: Opener | None = None
) -> tuple[dict[str, torch.Tensor], str]:
    """Read a checkpoint file into a float32 state dict and its sha256 (hex).

    Local paths are read directly. A URI with a scheme (``gs://...``) needs `opener`
    (e.g. Beam's ``FileSystems.open``): it is streamed to a temporary file once,
    hashed on the way.
    """
    name = os.fspath(checkpoint)
    if _URI_SCHEME.match(name) and not name.startswith("file://"):
        if opener is None:
            raise CheckpointError(
                f"{name}: remote checkpoints need an opener; pass opener="
                "apache_beam.io.filesystems.FileSystems.open (the pipeline does this)"
            )
        with tempfile.NamedTemporaryFile(suffix=".pth") as tmp:
            digest = hashlib.sha256()
            with opener(name) as src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    tmp.write(chunk)
            tmp.flush()
            obj = _torch_load(tmp.name, name)
            sha256 = digest.hexdigest()
    else:
        path = name.removeprefix("file://")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint not found: {name}")
        sha256 = _sha256_of_file(path)
        obj = _torch_load(path, name)

    _check_is_state_dict(obj, name)
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in obj.items()}
    _check_finite(state_dict, name)
    return state_dict, sha256


def _check_finite(state_dict: Mapping[str, torch.Tensor], name: str) -> None:
    """CheckpointError for NaN or infinite weights: such a model mines empty masks with
    NaN scores, and its images would be recorded as mined."""
    bad = [
        k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()
    ]
    if bad:
        raise CheckpointError(
            f"{name}: {len(bad)} tensor(s) hold NaN or infinite values, e.g. {bad[0]!r} "
            f"(a damaged or diverged checkpoint)"
        )


def _check_is_state_dict(obj: object, name: str) -> None:
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{name}: not a state dict (a mapping of parameter names to tensors); "
            f"it holds a {type(obj).__name__}"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{name}: not a state dict: {len(bad)} entries are not name -> tensor, "
            f"e.g. {bad[0]!r}"
            + (" (a training checkpoint? save model.state_dict() itself)" if len(obj) < 10 else "")
        )


def _config_of(state_dict: Mapping[str, torch.Tensor], name: str) -> SamConfig:
    try:
        return config_from_state_dict(state_dict)
    except KeyError as e:
        raise CheckpointError(f"{name}: not a SAM state dict: no tensor named {e.args[0]!r}") from e
    except ValueError as e:
        raise CheckpointError(f"{name}: inconsistent SAM shapes: {e}") from e


def check_local_checkpoint(path: str | os.PathLike, model_type: str | None = None) -> str:
    """The model type ("vit_h", ..., or "custom") of a local checkpoint file, from its
    tensor shapes, and that every weight is finite: the file is memory-mapped, read
    once, so this is a quick check before a run (about a second for vit_h). Raises
    CheckpointError for an unusable file or one whose shapes are not `model_type`'s;
    build_sam checks every tensor again when it loads."""
    name = os.fspath(path)
    obj = _torch_load(name.removeprefix("file://"), name, mmap=True)
    _check_is_state_dict(obj, name)
    inferred = model_type_of(_config_of(obj, name))
    _check_finite(obj, name)
    if model_type is not None and inferred != model_type:
        raise CheckpointError(
            f"{name} does not match model_type {model_type!r}: its shapes look like {inferred!r}"
        )
    return inferred


def _shape_mismatches(
    model: Sam, state_dict: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [
        f"{k}: file {tuple(state_dict[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    return missing, unexpected, wrong


def _summarise(items: list[str], limit: int = 3) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def build_sam(
    model_type: str | SamConfig | None = None,
    checkpoint: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    opener: Opener | None = None,
) -> Sam:
    """Build a SAM model in eval mode with frozen parameters.

    model_type: "vit_h", "vit_l", "vit_b", or a SamConfig. May be omitted when a
        checkpoint is given: the config is then inferred from its tensor shapes.
    checkpoint: an official-format state dict file (local path, or any URI `opener`
        can open). Without one the weights are PyTorch's random initialisation.
    Raises CheckpointError naming the problem for unusable files, and ValueError
    for an unknown model_type.
    """
    flush_denormals()  # usually this thread's first tensor op: see sam_core.denormals
    if isinstance(model_type, str):
        if model_type not in CONFIGS:
            raise ValueError(f"unknown model_type {model_type!r}; expected one of {list(CONFIGS)}")
        config: SamConfig | None = CONFIGS[model_type]
    else:
        config = model_type

    if checkpoint is None:
        if config is None:
            raise ValueError("build_sam needs a model_type, a checkpoint, or both")
        model = Sam(config)
    else:
        state_dict, sha256 = load_state_dict(checkpoint, opener)
        if config is None:
            config = _config_of(state_dict, os.fspath(checkpoint))
        with torch.device("meta"):
            model = Sam(config)
        missing, unexpected, wrong = _shape_mismatches(model, state_dict)
        if missing or unexpected or wrong:
            problems = []
            if wrong:
                problems.append(f"{len(wrong)} shapes differ: {_summarise(wrong)}")
            if missing:
                problems.append(f"{len(missing)} tensors missing: {_summarise(missing)}")
            if unexpected:
                problems.append(f"{len(unexpected)} unexpected tensors: {_summarise(unexpected)}")
            hint = ""
            try:
                inferred = model_type_of(config_from_state_dict(state_dict))
                hint = f"; the file's shapes look like {inferred!r}"
            except (KeyError, ValueError):
                pass
            raise CheckpointError(
                f"{checkpoint} does not match model_type {model_type_of(config)!r}: "
                + "; ".join(problems)
                + hint
            )
        model.load_state_dict(state_dict, strict=True, assign=True)
        model.checkpoint_sha256 = sha256
    model.requires_grad_(False)
    return model.eval().to(device)


def save_state_dict(model: Sam, path: str | os.PathLike) -> str:
    """Save `model` as an official-format state dict; returns the file's sha256."""
    tmp = f"{os.fspath(path)}.tmp"
    torch.save(model.state_dict(), tmp)
    shutil.move(tmp, path)
    return _sha256_of_file(os.fspath(path))
